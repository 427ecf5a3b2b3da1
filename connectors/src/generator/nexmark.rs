//! `kind = 'nexmark'`: the Nexmark benchmark's event stream (people, auctions, bids), one
//! source per table.
//!
//! ```sql
//! CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
//!     date_time TIMESTAMP, extra TEXT,
//!     WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
//! WITH (connector = 'generator', kind = 'nexmark', 'nexmark.table' = 'bid',
//!     'nexmark.events' = '10000000', 'nexmark.event.rate' = '100000');
//! ```
//!
//! The stream follows the standard generator (Beam / nexmark-flink, summarised in the
//! design notes' NEXMARK.md): event ids `0, 1, 2, ...`, of each 50 one person, three
//! auctions and 46 bids; event time `start + floor(k * 1000 / rate)` ms for event number
//! `k`; ids of people and auctions from the event id, references to recent (or hot) ones.
//! Each event draws its random numbers from its own generator seeded by the seed and the
//! event id, so any event can be generated on its own: a `bid` source computes only bids,
//! and `person`, `auction` and `bid` sources with the same seed, start, rate, group size
//! and event count describe one and the same event sequence (they join).
//!
//! Rows of the table are dealt round-robin to partitions (row `j` of the table to partition
//! `j % partitions`), and positions are table row numbers, as for the other kinds.
//! The arithmetic is in `model`, the text recipes in `text`; docs/nexmark.md describes the
//! options, the formulas and where this differs from the Java generator.

mod model;
mod text;

pub use model::Table;

use super::columns::{StrCol, TIMESTAMP, i64_array, ts_array};
use super::rng::{SplitMix64, mix};
use super::{ColumnDef, GeneratorOptions, Kind};
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use model::{
    AUCTION_PROPORTION, Cursor, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_PERSON_ID,
    HOT_AUCTION_RATIO, HOT_BIDDERS_RATIO, HOT_GROUP, HOT_SELLERS_RATIO, NUM_CATEGORIES,
    NUM_IN_FLIGHT_AUCTIONS, TOTAL_PROPORTION, Timeline, last_base0_auction_id,
    last_base0_person_id, next_base0_auction_id, next_base0_person_id,
};
use std::sync::Arc;
use text::{
    CITIES, FIRST_NAMES, LAST_NAMES, STATES, Span, Texts, extra_len, next_price, push_credit_card,
    push_string,
};
use weir_engine::connector::{BatchLimits, Source, SourceFactory, SourceSpec};
use weir_engine::options::Options;
use weir_engine::{Result, WeirError};

/// Every option this kind takes.
pub const VALID_KEYS: &[&str] = &[
    "kind",
    "nexmark.table",
    "nexmark.events",
    "nexmark.event.rate",
    "nexmark.out.of.order.group",
    "rows.per.second",
    "seed",
    "partitions",
    "start",
];

/// Default `nexmark.event.rate`: the spec's `firstEventRate`.
pub const DEFAULT_EVENT_RATE: u64 = 10_000;
/// Default `start`: 2024-01-01T00:00:00Z. Fixed (not "now") so that sources declared apart
/// describe the same events.
pub const DEFAULT_START_MS: i64 = 1_704_067_200_000;
/// Default `rows.per.second`: as fast as possible (the spec's `maxEmitSpeed`).
pub(crate) const DEFAULT_ROWS_PER_SECOND: u64 = 0;

/// The "idealised" byte sizes the `extra` field pads each event up to, on average.
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
/// Events until `NUM_IN_FLIGHT_AUCTIONS` more auctions exist: an auction's expected life.
const IN_FLIGHT_EVENTS: u64 = NUM_IN_FLIGHT_AUCTIONS as u64 * TOTAL_PROPORTION / AUCTION_PROPORTION;
/// Salt of the per-event random generators.
const EVENT_SALT: u64 = 0x4E45_584D_4152_4B00;

/// Each table's columns, as declared in SQL (the contract the queries are written against).
pub fn columns_sql(table: Table) -> &'static str {
    match table {
        Table::Person => {
            "id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT, state TEXT, \
             date_time TIMESTAMP, extra TEXT"
        }
        Table::Auction => {
            "id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT, reserve BIGINT, \
             date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra TEXT"
        }
        Table::Bid => {
            "auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, \
             date_time TIMESTAMP, extra TEXT"
        }
    }
}

fn table_columns(table: Table) -> Vec<ColumnDef> {
    use DataType::{Int64, Utf8};
    let c = |name, data_type| ColumnDef::new(name, data_type, false);
    match table {
        Table::Person => vec![
            c("id", Int64),
            c("name", Utf8),
            c("email_address", Utf8),
            c("credit_card", Utf8),
            c("city", Utf8),
            c("state", Utf8),
            c("date_time", TIMESTAMP),
            c("extra", Utf8),
        ],
        Table::Auction => vec![
            c("id", Int64),
            c("item_name", Utf8),
            c("description", Utf8),
            c("initial_bid", Int64),
            c("reserve", Int64),
            c("date_time", TIMESTAMP),
            c("expires", TIMESTAMP),
            c("seller", Int64),
            c("category", Int64),
            c("extra", Utf8),
        ],
        Table::Bid => vec![
            c("auction", Int64),
            c("bidder", Int64),
            c("price", Int64),
            c("channel", Utf8),
            c("url", Utf8),
            c("date_time", TIMESTAMP),
            c("extra", Utf8),
        ],
    }
}

/// One table's columns, but `skip`, as declared in SQL without `NOT NULL`.
pub fn table_schema(table: Table, skip: &[&str]) -> SchemaRef {
    let fields: Vec<Field> = table_columns(table)
        .iter()
        .filter(|c| !skip.contains(&c.name))
        .map(|c| Field::new(c.name, c.data_type.clone(), true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// A source for one Nexmark table outside any pipeline (benchmarks, file writers): the
/// table's columns but `skip`, the WITH options `options` (`kind` and `'nexmark.table'` are
/// added) and the engine's default batch limits.
pub fn table_source(
    table: Table,
    skip: &[&str],
    options: impl IntoIterator<Item = (String, String)>,
) -> Result<Box<dyn Source>> {
    let table_option = ("nexmark.table".to_string(), table.name().to_string());
    generator_source(
        table_schema(table, skip),
        options.into_iter().chain([table_option]),
        BatchLimits::default(),
        1,
    )
}

/// A `kind = 'nexmark'` generator source declared with `schema` and `options`.
fn generator_source(
    schema: SchemaRef,
    options: impl IntoIterator<Item = (String, String)>,
    batch: BatchLimits,
    workers: usize,
) -> Result<Box<dyn Source>> {
    let kind = ("kind".to_string(), "nexmark".to_string());
    super::GeneratorSourceFactory.create(SourceSpec {
        metadata: vec![],
        name: "nexmark".into(),
        schema,
        event_time: Some("date_time".into()),
        options: Options::new(options.into_iter().chain([kind])),
        data_dir: std::env::temp_dir(),
        batch,
        stats: Default::default(),
        workers,
        idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
    })
}

/// Rows of one table as JSON lines, one object per row with the column names as keys and
/// timestamps as epoch milliseconds (what Weir's and Flink's JSON formats both read).
pub fn write_json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(field.data_type(), DataType::Timestamp(..)) {
            fields.push(Field::new(
                field.name(),
                DataType::Int64,
                field.is_nullable(),
            ));
            columns.push(cast(column, &DataType::Int64)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut writer = LineDelimitedWriter::new(out);
    writer.write(&batch)?;
    writer.finish()?;
    Ok(())
}

/// The parsed `nexmark.*` options.
#[derive(Debug, Clone, Copy)]
struct NexmarkOptions {
    table: Table,
    events: Option<u64>,
    event_rate: u64,
    group: u64,
}

impl NexmarkOptions {
    fn take(options: &mut Options) -> Result<Self> {
        let tables = Table::ALL.map(Table::name).join(" | ");
        let table = match options.take("nexmark.table") {
            None => {
                return Err(WeirError::user(format!(
                    "the nexmark generator needs option 'nexmark.table' ({tables}): each source \
                     is one table of the Nexmark stream"
                )));
            }
            Some(t) => Table::parse(&t).ok_or_else(|| {
                WeirError::user(format!(
                    "option 'nexmark.table' must be one of {tables}, got '{t}'"
                ))
            })?,
        };
        let events = options.take_parse::<u64>("nexmark.events")?;
        let event_rate = options
            .take_parse::<u64>("nexmark.event.rate")?
            .unwrap_or(DEFAULT_EVENT_RATE);
        if event_rate == 0 {
            return Err(WeirError::user(
                "option 'nexmark.event.rate' must be at least 1 (events per second of event time)",
            ));
        }
        let group = options
            .take_parse::<u64>("nexmark.out.of.order.group")?
            .unwrap_or(1);
        if group == 0 {
            return Err(WeirError::user(
                "option 'nexmark.out.of.order.group' must be at least 1 (1 = in order)",
            ));
        }
        if group % model::OUT_OF_ORDER_MULTIPLIER == 0 {
            return Err(WeirError::user(format!(
                "option 'nexmark.out.of.order.group' must not be a multiple of {}: the \
                 generator's permutation (n * {0}) % group would repeat events",
                model::OUT_OF_ORDER_MULTIPLIER
            )));
        }
        Ok(NexmarkOptions {
            table,
            events,
            event_rate,
            group,
        })
    }
}

#[derive(Clone)]
pub(crate) struct Nexmark {
    table: Table,
    timeline: Timeline,
    cursor: Cursor,
    /// Mixed into every event's seed.
    key: u64,
    texts: Arc<Texts>,
    /// Reused for the composed strings of people and auctions.
    scratch: String,
}

/// A column under construction, by type.
enum Col {
    Int(Vec<i64>),
    Time(Vec<i64>),
    Text(StrCol),
    /// Text copied out of the `extra` buffer (`extra`) or the channel pool (`channel`,
    /// `url`) when the batch is finished.
    Spans {
        extra: bool,
        spans: Vec<Span>,
    },
}

/// Buffers for the wanted columns, indexed like the table's columns.
pub(crate) struct NexmarkBuilders {
    cols: Vec<Option<Col>>,
    texts: Arc<Texts>,
}

impl NexmarkBuilders {
    #[inline]
    fn int(&mut self, i: usize, v: i64) {
        if let Some(Col::Int(c) | Col::Time(c)) = &mut self.cols[i] {
            c.push(v);
        }
    }

    #[inline]
    fn text(&mut self, i: usize, s: &str) {
        if let Some(Col::Text(c)) = &mut self.cols[i] {
            c.push(s);
        }
    }

    #[inline]
    fn span(&mut self, i: usize, span: Span) {
        if let Some(Col::Spans { spans, .. }) = &mut self.cols[i] {
            spans.push(span);
        }
    }
}

/// A string column of `spans` of `text`, copied in one tight loop.
fn span_array(text: &str, spans: &[Span]) -> Result<ArrayRef> {
    let bytes = text.as_bytes();
    let total: usize = spans.iter().map(|(a, b)| (b - a) as usize).sum();
    if total > i32::MAX as usize {
        return Err(WeirError::Internal(
            "generated string column over 2 GiB".to_string(),
        ));
    }
    let mut values = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(spans.len() + 1);
    offsets.push(0i32);
    for &(a, b) in spans {
        values.extend_from_slice(&bytes[a as usize..b as usize]);
        offsets.push(values.len() as i32);
    }
    Ok(Arc::new(StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        values.into(),
        None,
    )?))
}

impl Nexmark {
    fn with(seed: u64, opts: NexmarkOptions, start_ms: i64) -> Self {
        let timeline = Timeline {
            start_ms,
            rate: opts.event_rate,
            group: opts.group,
        };
        Nexmark {
            table: opts.table,
            cursor: Cursor::new(opts.table, &timeline),
            timeline,
            key: mix(seed ^ EVENT_SALT),
            texts: Arc::new(Texts::new(seed)),
            scratch: String::with_capacity(128),
        }
    }

    /// Append a random string to the scratch buffer, push it to column `i`, and return its
    /// length.
    #[inline]
    fn string_col(
        &mut self,
        b: &mut NexmarkBuilders,
        i: usize,
        rng: &mut SplitMix64,
        max: u64,
    ) -> usize {
        self.scratch.clear();
        push_string(rng, max, b' ', &mut self.scratch);
        b.text(i, &self.scratch);
        self.scratch.len()
    }

    fn person(&mut self, b: &mut NexmarkBuilders, id: u64, ts: i64, rng: &mut SplitMix64) {
        b.int(0, last_base0_person_id(id) + FIRST_PERSON_ID);
        let s = &mut self.scratch;
        s.clear();
        s.push_str(FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize]);
        s.push(' ');
        s.push_str(LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]);
        b.text(1, s);
        let mut size = 8 + s.len();
        s.clear();
        push_string(rng, 7, b' ', s);
        s.push('@');
        push_string(rng, 5, b' ', s);
        s.push_str(".com");
        b.text(2, s);
        size += s.len();
        s.clear();
        push_credit_card(rng, s);
        b.text(3, s);
        size += s.len();
        let city = CITIES[rng.below(CITIES.len() as u64) as usize];
        let state = STATES[rng.below(STATES.len() as u64) as usize];
        b.text(4, city);
        b.text(5, state);
        size += city.len() + state.len();
        b.int(6, ts);
        let len = extra_len(rng, size, AVG_PERSON_BYTES);
        b.span(7, self.texts.extra(rng, len));
    }

    fn auction(&mut self, b: &mut NexmarkBuilders, id: u64, ts: i64, rng: &mut SplitMix64) {
        b.int(0, last_base0_auction_id(id) + FIRST_AUCTION_ID);
        let seller = if rng.below(HOT_SELLERS_RATIO) > 0 {
            (last_base0_person_id(id) / HOT_GROUP) * HOT_GROUP
        } else {
            next_base0_person_id(id, rng)
        };
        b.int(7, seller + FIRST_PERSON_ID);
        b.int(8, FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
        let initial_bid = next_price(rng);
        b.int(3, initial_bid);
        // Auctions stay open for about the event time the next NUM_IN_FLIGHT_AUCTIONS
        // auctions take to arrive.
        let horizon = self.timeline.time_of(id + IN_FLIGHT_EVENTS) - ts;
        b.int(5, ts);
        b.int(6, ts + 1 + rng.below((2 * horizon).max(1) as u64) as i64);
        let mut size = 8 + 40;
        size += self.string_col(b, 1, rng, 20);
        size += self.string_col(b, 2, rng, 100);
        b.int(4, initial_bid + next_price(rng));
        let len = extra_len(rng, size, AVG_AUCTION_BYTES);
        b.span(9, self.texts.extra(rng, len));
    }

    #[inline]
    fn bid(&self, b: &mut NexmarkBuilders, id: u64, ts: i64, rng: &mut SplitMix64) {
        let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
            (last_base0_auction_id(id) / HOT_GROUP) * HOT_GROUP
        } else {
            next_base0_auction_id(id, rng)
        };
        b.int(0, auction + FIRST_AUCTION_ID);
        let bidder = if rng.below(HOT_BIDDERS_RATIO) > 0 {
            // The second person of the group, so hot bidders are not the hot sellers.
            (last_base0_person_id(id) / HOT_GROUP) * HOT_GROUP + 1
        } else {
            next_base0_person_id(id, rng)
        };
        b.int(1, bidder + FIRST_PERSON_ID);
        b.int(2, next_price(rng));
        let (channel, url) = self.texts.channel(rng);
        b.span(3, channel);
        b.span(4, url);
        b.int(5, ts);
        let len = extra_len(rng, 32, AVG_BID_BYTES);
        b.span(6, self.texts.extra(rng, len));
    }
}

impl Kind for Nexmark {
    type Builders = NexmarkBuilders;

    const OWN_EVENT_TIME: bool = true;
    const RANDOM_ACCESS: bool = true;

    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// The `bid` table's columns (the default table); a source uses its own table's.
    fn columns() -> Vec<ColumnDef> {
        table_columns(Table::Bid)
    }

    /// The `bid` table with the default options.
    fn new(seed: u64) -> Self {
        let opts = NexmarkOptions {
            table: Table::Bid,
            events: None,
            event_rate: DEFAULT_EVENT_RATE,
            group: 1,
        };
        Nexmark::with(seed, opts, DEFAULT_START_MS)
    }

    fn valid_keys() -> Vec<&'static str> {
        VALID_KEYS.to_vec()
    }

    fn configure(opts: &mut GeneratorOptions, options: &mut Options) -> Result<Self> {
        if opts.rows.is_some() {
            return Err(WeirError::user(
                "option 'rows' does not apply to kind 'nexmark': use 'nexmark.events', the \
                 number of Nexmark events (all three tables) the stream covers; each table's \
                 source emits its share",
            ));
        }
        if !opts.max_out_of_orderness.is_zero() {
            return Err(WeirError::user(
                "option 'max.out.of.orderness' does not apply to kind 'nexmark': use \
                 'nexmark.out.of.order.group' (events are permuted within groups of that many)",
            ));
        }
        let nexmark = NexmarkOptions::take(options)?;
        let start_ms = *opts.start_ms.get_or_insert(DEFAULT_START_MS);
        let kind = Nexmark::with(opts.seed, nexmark, start_ms);
        opts.rows = nexmark
            .events
            .map(|events| kind.timeline.table_rows(nexmark.table, events));
        Ok(kind)
    }

    fn table_columns(&self) -> Vec<ColumnDef> {
        table_columns(self.table)
    }

    fn describe(&self, _kind: &str) -> String {
        format!("the 'nexmark' generator's {} table", self.table.name())
    }

    fn builders(&self, wanted: &[bool], rows: usize) -> NexmarkBuilders {
        let cols =
            table_columns(self.table)
                .iter()
                .enumerate()
                .map(|(i, def)| {
                    wanted.get(i).copied().unwrap_or(false).then(|| {
                        match (&def.data_type, def.name) {
                            (DataType::Int64, _) => Col::Int(Vec::with_capacity(rows)),
                            (_, "extra" | "channel" | "url") => Col::Spans {
                                extra: def.name == "extra",
                                spans: Vec::with_capacity(rows),
                            },
                            (DataType::Utf8, name) => {
                                Col::Text(StrCol::with_capacity(rows, text_bytes(name)))
                            }
                            _ => Col::Time(Vec::with_capacity(rows)),
                        }
                    })
                })
                .collect();
        NexmarkBuilders {
            cols,
            texts: self.texts.clone(),
        }
    }

    /// Row `n` of the table: the event at its position, with that event's own random
    /// stream and event time.
    #[inline]
    fn append(&mut self, b: &mut NexmarkBuilders, n: u64, _ts: i64) {
        let position = self.cursor.position(n, &self.timeline);
        let id = self.timeline.adjusted(position);
        let ts = self.timeline.time_of(id);
        let mut rng = SplitMix64::new(mix(id ^ self.key));
        match self.table {
            Table::Person => self.person(b, id, ts, &mut rng),
            Table::Auction => self.auction(b, id, ts, &mut rng),
            Table::Bid => self.bid(b, id, ts, &mut rng),
        }
    }

    fn finish(b: &mut NexmarkBuilders) -> Result<Vec<Option<ArrayRef>>> {
        let texts = &b.texts;
        b.cols
            .iter_mut()
            .map(|c| {
                Ok(match c.take() {
                    None => None,
                    Some(Col::Int(mut v)) => Some(i64_array(&mut v)),
                    Some(Col::Time(mut v)) => Some(ts_array(&mut v)),
                    Some(Col::Text(mut s)) => Some(s.finish()?),
                    Some(Col::Spans { extra, spans }) => {
                        let text = if extra { &texts.extra } else { &texts.pool };
                        Some(span_array(text, &spans)?)
                    }
                })
            })
            .collect()
    }
}

/// Typical bytes of a composed text column, to size its buffer.
fn text_bytes(column: &str) -> usize {
    match column {
        "description" => 50,
        _ => 16,
    }
}

#[cfg(test)]
mod tests;
