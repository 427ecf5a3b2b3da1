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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::GeneratorSourceFactory;
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;
    use weir_engine::connector::SourceEvent;

    const START_MS: i64 = 1_704_067_200_000;

    fn schema(table: Table) -> SchemaRef {
        table_schema(table, &[])
    }

    fn source(schema: SchemaRef, options: &[(&str, &str)]) -> Result<Box<dyn Source>> {
        source_on(schema, options, 1)
    }

    fn source_on(
        schema: SchemaRef,
        options: &[(&str, &str)],
        workers: usize,
    ) -> Result<Box<dyn Source>> {
        let limits = BatchLimits {
            max_rows: 1000,
            max_delay: Duration::from_millis(20),
        };
        let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        generator_source(schema, options, limits, workers)
    }

    /// With several workers an unthrottled generator fills several cycles at once on as
    /// many threads: the same batches, partitions and positions as on one, after a restore
    /// too.
    #[tokio::test]
    async fn generated_on_several_threads_as_on_one() {
        for parts in ["1", "3"] {
            let opts = [
                ("nexmark.table", "bid"),
                ("nexmark.events", "45500"),
                ("partitions", parts),
            ];
            let schema = schema(Table::Bid);
            let one = run(&mut source_on(schema.clone(), &opts, 1).unwrap()).await;
            let mut three = source_on(schema.clone(), &opts, 3).unwrap();
            let all = run(&mut three).await;
            assert!(one.len() > 10, "{} batches", one.len());
            assert_eq!(all.len(), one.len(), "partitions {parts}");
            for (a, b) in one.iter().zip(&all) {
                assert_eq!((a.0, &a.1, a.2), (b.0, &b.1, b.2), "partitions {parts}");
            }
            // Restored half way: the rest, as one thread gives it.
            let mid = &one[one.len() / 2];
            let mut resumed = source_on(schema, &opts, 3).unwrap();
            let positions: Vec<(usize, i64)> = (0..parts.parse::<usize>().unwrap())
                .map(|p| (p, mid.2))
                .collect();
            resumed.seek(&positions).unwrap();
            let rest = run(&mut resumed).await;
            let want: Vec<_> = one.iter().filter(|(_, _, pos)| *pos > mid.2).collect();
            assert_eq!(rest.len(), want.len(), "partitions {parts}");
            for (a, b) in want.iter().zip(&rest) {
                assert_eq!((a.0, &a.1, a.2), (b.0, &b.1, b.2), "partitions {parts}");
            }
        }
    }

    /// Every batch: partition, rows, position after it.
    async fn run(source: &mut Box<dyn Source>) -> Vec<(usize, RecordBatch, i64)> {
        let mut out = Vec::new();
        loop {
            match source.next().await.unwrap() {
                SourceEvent::Batch {
                    partition,
                    batch,
                    position,
                    ..
                } => out.push((partition, batch, position.unwrap())),
                SourceEvent::End => return out,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// All rows of one table, in row order (one partition).
    async fn table(table: Table, options: &[(&str, &str)]) -> RecordBatch {
        let mut opts = vec![("nexmark.table", table.name())];
        opts.extend_from_slice(options);
        let schema = schema(table);
        let batches = run(&mut source(schema.clone(), &opts).unwrap()).await;
        assert!(batches.iter().all(|(p, ..)| *p == 0));
        let batches: Vec<RecordBatch> = batches.into_iter().map(|(_, b, _)| b).collect();
        concat_batches(&schema, &batches).unwrap()
    }

    fn ints(b: &RecordBatch, name: &str) -> Vec<i64> {
        let c = b.column_by_name(name).unwrap();
        match c.data_type() {
            DataType::Int64 => c.as_primitive::<Int64Type>().values().to_vec(),
            _ => c
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec(),
        }
    }

    fn texts(b: &RecordBatch, name: &str) -> Vec<String> {
        let c = b.column_by_name(name).unwrap().as_string::<i32>();
        c.iter().map(|s| s.unwrap().to_string()).collect()
    }

    /// Event ids from event times at 1000 events/s (one event per millisecond).
    fn event_ids(b: &RecordBatch) -> Vec<u64> {
        ints(b, "date_time")
            .iter()
            .map(|t| (t - START_MS) as u64)
            .collect()
    }

    const EVENTS_5000: &[(&str, &str)] =
        &[("nexmark.events", "5000"), ("nexmark.event.rate", "1000")];

    #[tokio::test]
    async fn fifty_events_hold_one_person_three_auctions_and_46_bids() {
        let mut owner: HashMap<u64, Table> = HashMap::new();
        for t in Table::ALL {
            let rows = table(t, EVENTS_5000).await;
            let ids = event_ids(&rows);
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{t:?} in event order");
            for id in ids {
                assert!(owner.insert(id, t).is_none(), "event {id} twice");
            }
        }
        assert_eq!(owner.len(), 5000);
        for block in 0..100u64 {
            let kinds: Vec<Table> = (block * 50..block * 50 + 50).map(|id| owner[&id]).collect();
            assert_eq!(kinds[0], Table::Person);
            assert!(kinds[1..4].iter().all(|k| *k == Table::Auction));
            assert!(kinds[4..].iter().all(|k| *k == Table::Bid));
        }
    }

    #[tokio::test]
    async fn person_and_auction_ids_follow_the_event_ids() {
        let people = table(Table::Person, EVENTS_5000).await;
        assert_eq!(ints(&people, "id"), (1000..1100).collect::<Vec<i64>>());
        let auctions = table(Table::Auction, EVENTS_5000).await;
        let expected: Vec<i64> = event_ids(&auctions)
            .iter()
            .map(|&k| 1000 + (k / 50 * 3 + (k % 50 - 1)) as i64)
            .collect();
        assert_eq!(ints(&auctions, "id"), expected);
        assert_eq!(ints(&auctions, "id"), (1000..1300).collect::<Vec<i64>>());
    }

    /// `(n / g) * g + (n * 953) % g`, written out again for the tests.
    fn adjusted(n: u64, g: u64) -> u64 {
        (n / g) * g + (n * 953) % g
    }

    #[tokio::test]
    async fn event_times_follow_the_rate_partitions_and_groups() {
        let events = 3000u64;
        for (rate, group, parts) in [
            (7_000u64, 1u64, 1usize),
            (3, 1, 3),
            (1000, 50, 2),
            (10_000, 7, 4),
        ] {
            // Expected: the bid rows in emission order, dealt round-robin.
            let expected: Vec<u64> = (0..events)
                .map(|n| adjusted(n, group))
                .filter(|id| id % 50 >= 4)
                .collect();
            let opts = [
                ("nexmark.table", "bid"),
                ("nexmark.events", &events.to_string()),
                ("nexmark.event.rate", &rate.to_string()),
                ("nexmark.out.of.order.group", &group.to_string()),
                ("partitions", &parts.to_string()),
            ];
            let batches = run(&mut source(schema(Table::Bid), &opts).unwrap()).await;
            let mut per_part: Vec<Vec<i64>> = vec![Vec::new(); parts];
            for (p, b, _) in &batches {
                per_part[*p].extend(ints(b, "date_time"));
            }
            for (p, times) in per_part.iter().enumerate() {
                let want: Vec<i64> = expected
                    .iter()
                    .skip(p)
                    .step_by(parts)
                    .map(|&id| START_MS + (id * 1000 / rate) as i64)
                    .collect();
                assert_eq!(times, &want, "rate {rate} group {group} partition {p}");
            }
        }
        // With groups, the ids of each group come out permuted and complete.
        let grouped = |t: Table, group: &'static str| async move {
            let mut opts = EVENTS_5000.to_vec();
            opts.push(("nexmark.out.of.order.group", group));
            table(t, &opts).await
        };
        let bids = grouped(Table::Bid, "50").await;
        let ids = event_ids(&bids);
        assert!(ids.windows(2).any(|w| w[0] > w[1]), "out of order");
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..5000).filter(|k| k % 50 >= 4).collect::<Vec<u64>>()
        );
        let auctions = grouped(Table::Auction, "64").await;
        for (k, id) in event_ids(&auctions).iter().zip(ints(&auctions, "id")) {
            assert_eq!(id, 1000 + (k / 50 * 3 + (k % 50 - 1)) as i64);
        }
    }

    #[tokio::test]
    async fn references_point_at_existing_ids_within_the_lead() {
        let opts = [("nexmark.events", "100000"), ("nexmark.event.rate", "1000")];
        let people = table(Table::Person, &opts).await;
        let auctions = table(Table::Auction, &opts).await;
        let bids = table(Table::Bid, &opts).await;
        // The newest person and auction id created before each event id.
        let last_person = |k: u64| 1000 + (k / 50) as i64;
        let last_auction = |k: u64| 999 + (k / 50 * 3 + (k % 50).clamp(1, 4) - 1) as i64;
        let person_ids: HashSet<i64> = ints(&people, "id").into_iter().collect();
        let auction_ids: HashMap<i64, u64> = ints(&auctions, "id")
            .into_iter()
            .zip(event_ids(&auctions))
            .collect();
        for (k, seller) in event_ids(&auctions)
            .into_iter()
            .zip(ints(&auctions, "seller"))
        {
            assert!(
                (1000..=last_person(k) + 10).contains(&seller),
                "event {k}: seller {seller}"
            );
        }
        let (mut joined, mut hot_auctions, mut hot_bidders) = (0usize, 0usize, 0usize);
        let bid_events = event_ids(&bids);
        for ((k, auction), bidder) in bid_events
            .iter()
            .zip(ints(&bids, "auction"))
            .zip(ints(&bids, "bidder"))
        {
            let last = last_auction(*k);
            assert!(
                (1000.max(last - 100)..=last + 10).contains(&auction)
                    || auction == (last - 1000) / 100 * 100 + 1000,
                "event {k}: auction {auction}, last {last}"
            );
            assert!(
                (1000..=last_person(*k) + 10).contains(&bidder),
                "event {k}: bidder {bidder}"
            );
            // The auction, when it exists by now, was created before the bid.
            if let Some(created) = auction_ids.get(&auction)
                && *created < *k
            {
                joined += 1;
            } else {
                assert!(auction > last, "event {k}: auction {auction} missing");
            }
            assert!(person_ids.contains(&bidder) || bidder > last_person(*k));
            hot_auctions += usize::from(auction % 100 == 0);
            hot_bidders += usize::from(bidder % 100 == 1);
        }
        // Half the bids go to a hot auction, three quarters come from a hot bidder, and
        // only the non-hot picks that ran into the lead do not join.
        let n = bid_events.len() as f64;
        assert_eq!(n, 92_000.0);
        assert!(
            (0.49..0.53).contains(&(hot_auctions as f64 / n)),
            "{hot_auctions}"
        );
        assert!(
            (0.74..0.77).contains(&(hot_bidders as f64 / n)),
            "{hot_bidders}"
        );
        assert!((0.93..0.98).contains(&(joined as f64 / n)), "{joined}");
    }

    #[tokio::test]
    async fn field_values_stay_in_their_ranges() {
        let opts = [("nexmark.events", "50000")];
        let auctions = table(Table::Auction, &opts).await;
        let categories: HashSet<i64> = ints(&auctions, "category").into_iter().collect();
        assert_eq!(categories, (10..15).collect());
        let initial = ints(&auctions, "initial_bid");
        let reserve = ints(&auctions, "reserve");
        for (i, r) in initial.iter().zip(&reserve) {
            assert!((100..=100_000_000).contains(i));
            assert!(r - i >= 100 && r - i <= 100_000_000);
        }
        for (t, e) in ints(&auctions, "date_time")
            .iter()
            .zip(ints(&auctions, "expires"))
        {
            // Open about as long as 1666 events take at 10,000/s: 166 ms, at most twice.
            assert!(e > *t && e <= t + 1 + 2 * 167, "{t} {e}");
        }
        let auction_extra: Vec<usize> = texts(&auctions, "extra").iter().map(String::len).collect();
        let mean = auction_extra.iter().sum::<usize>() as f64 / auction_extra.len() as f64;
        assert!((380.0..420.0).contains(&mean), "{mean}");

        let people = table(Table::Person, &opts).await;
        let states: HashSet<String> = texts(&people, "state").into_iter().collect();
        assert_eq!(
            states,
            ["AZ", "CA", "ID", "OR", "WA", "WY"]
                .map(String::from)
                .into()
        );
        assert!(
            texts(&people, "city")
                .iter()
                .all(|c| text::CITIES.contains(&c.as_str()))
        );
        for (name, email) in texts(&people, "name")
            .iter()
            .zip(texts(&people, "email_address"))
        {
            let (first, last) = name.split_once(' ').unwrap();
            assert!(text::FIRST_NAMES.contains(&first) && text::LAST_NAMES.contains(&last));
            assert!(email.ends_with(".com") && email.contains('@'), "{email}");
        }
        // Each person pads to 200 bytes on average.
        for (i, extra) in texts(&people, "extra").iter().enumerate() {
            let size = 8 + [
                &people.column(1),
                &people.column(2),
                &people.column(3),
                &people.column(4),
                &people.column(5),
            ]
            .iter()
            .map(|c| c.as_string::<i32>().value(i).len())
            .sum::<usize>();
            let d = 200 - size;
            let delta = (d as f64 * 0.2).round() as usize;
            assert!(
                (d - delta..d + delta).contains(&extra.len()),
                "{size} {}",
                extra.len()
            );
        }

        let bids = table(Table::Bid, &opts).await;
        assert!(
            ints(&bids, "price")
                .iter()
                .all(|p| (100..=100_000_000).contains(p))
        );
        assert!(
            texts(&bids, "extra")
                .iter()
                .all(|e| (54..82).contains(&e.len()))
        );
        let channels: HashSet<String> = texts(&bids, "channel").into_iter().collect();
        for hot in text::HOT_CHANNELS {
            assert!(channels.contains(hot));
        }
        assert!(channels.len() > 1000);
    }

    #[tokio::test]
    async fn same_options_same_rows_and_undeclared_extra_changes_nothing() {
        let opts = [("nexmark.events", "20000"), ("seed", "5")];
        for t in Table::ALL {
            let a = table(t, &opts).await;
            assert_eq!(a, table(t, &opts).await, "{t:?}");
            let other = table(t, &[("nexmark.events", "20000"), ("seed", "6")]).await;
            assert_eq!(ints(&a, "date_time"), ints(&other, "date_time"));
            assert_ne!(a, other);
            // Without `extra`, in another order: the same values.
            let fields: Vec<Field> = table_columns(t)
                .iter()
                .rev()
                .filter(|c| c.name != "extra")
                .map(|c| Field::new(c.name, c.data_type.clone(), true))
                .collect();
            let narrow = Arc::new(Schema::new(fields));
            let mut o = vec![("nexmark.table", t.name())];
            o.extend_from_slice(&opts);
            let batches: Vec<RecordBatch> = run(&mut source(narrow.clone(), &o).unwrap())
                .await
                .into_iter()
                .map(|(_, b, _)| b)
                .collect();
            let b = concat_batches(&narrow, &batches).unwrap();
            for f in narrow.fields() {
                assert_eq!(
                    b.column_by_name(f.name()),
                    a.column_by_name(f.name()),
                    "{t:?} {}",
                    f.name()
                );
            }
        }
    }

    #[tokio::test]
    async fn tables_with_the_same_options_join() {
        // Sources declared apart describe one sequence: at 10,000 events/s several events
        // share a millisecond, yet every bid's auction was created by the bid's time or is
        // one of the 10 ids the spec lets bids run ahead.
        let opts = [
            ("nexmark.events", "60000"),
            ("seed", "9"),
            ("partitions", "1"),
        ];
        let auctions = table(Table::Auction, &opts).await;
        let people = table(Table::Person, &opts).await;
        let bids = table(Table::Bid, &opts).await;
        let created: HashMap<i64, i64> = ints(&auctions, "id")
            .into_iter()
            .zip(ints(&auctions, "date_time"))
            .collect();
        let max_auction = *ints(&auctions, "id").iter().max().unwrap();
        let mut by_time: Vec<(i64, i64)> = created.iter().map(|(a, t)| (*t, *a)).collect();
        by_time.sort_unstable();
        let (mut joined, mut created_before) = (0usize, 0usize);
        for (a, t) in ints(&bids, "auction").iter().zip(ints(&bids, "date_time")) {
            // The newest auction created by the bid's time; bids may run 10 ids ahead.
            let upto = by_time.partition_point(|(c, _)| *c <= t);
            let newest = upto.checked_sub(1).map_or(999, |i| by_time[i].1);
            assert!(*a <= newest + 10, "auction {a} at {t}, newest {newest}");
            match created.get(a) {
                Some(c) => {
                    joined += 1;
                    created_before += usize::from(*c <= t);
                }
                None => assert!(*a > max_auction, "auction {a} never created"),
            }
        }
        let share = created_before as f64 / bids.num_rows() as f64;
        assert!((0.93..0.99).contains(&share), "{share}");
        // Bids whose auction is beyond the last one created (the lead at the very end).
        let beyond = ints(&bids, "auction")
            .iter()
            .filter(|a| **a > max_auction)
            .count();
        assert_eq!(joined + beyond, bids.num_rows());
        assert_eq!(bids.num_rows(), 55_200);
        assert_eq!(auctions.num_rows(), 3_600);
        assert_eq!(people.num_rows(), 1_200);
        let person_ids: HashSet<i64> = ints(&people, "id").into_iter().collect();
        let sellers_known = ints(&auctions, "seller")
            .iter()
            .filter(|s| person_ids.contains(s))
            .count();
        assert!(sellers_known >= auctions.num_rows() - 10, "{sellers_known}");
    }

    #[tokio::test]
    async fn restored_positions_continue_where_they_were() {
        let opts = [
            ("nexmark.table", "bid"),
            ("nexmark.events", "30000"),
            ("partitions", "3"),
            ("nexmark.out.of.order.group", "10"),
        ];
        let all = run(&mut source(schema(Table::Bid), &opts).unwrap()).await;
        assert_eq!(
            all.iter().map(|(_, b, _)| b.num_rows()).sum::<usize>(),
            27_600
        );
        // Resume partition 0 after its 4th batch, 1 after its 2nd, 2 from its 7th.
        let cut = [4usize, 2, 7];
        let mut positions = Vec::new();
        let mut expected: Vec<Vec<RecordBatch>> = vec![Vec::new(); 3];
        for p in 0..3 {
            let mine: Vec<&(usize, RecordBatch, i64)> =
                all.iter().filter(|(q, ..)| *q == p).collect();
            positions.push((p, mine[cut[p] - 1].2));
            expected[p] = mine[cut[p]..].iter().map(|(_, b, _)| b.clone()).collect();
        }
        let mut resumed = source(schema(Table::Bid), &opts).unwrap();
        resumed.seek(&positions).unwrap();
        let rest = run(&mut resumed).await;
        for (p, want) in expected.iter().enumerate() {
            let got: Vec<RecordBatch> = rest
                .iter()
                .filter(|(q, ..)| *q == p)
                .map(|(_, b, _)| b.clone())
                .collect();
            let s = schema(Table::Bid);
            assert_eq!(
                concat_batches(&s, &got).unwrap(),
                concat_batches(&s, want).unwrap(),
                "partition {p}"
            );
        }
    }

    #[test]
    fn option_errors_name_the_problem() {
        let err =
            |opts: &[(&str, &str)]| source(schema(Table::Bid), opts).err().unwrap().to_string();
        assert_eq!(
            err(&[]),
            "the nexmark generator needs option 'nexmark.table' (person | auction | bid): each \
             source is one table of the Nexmark stream"
        );
        assert_eq!(
            err(&[("nexmark.table", "bids")]),
            "option 'nexmark.table' must be one of person | auction | bid, got 'bids'"
        );
        assert!(
            err(&[("nexmark.table", "bid"), ("rows", "10")]).starts_with(
                "option 'rows' does not apply to kind 'nexmark': use 'nexmark.events'"
            )
        );
        assert!(
            err(&[("nexmark.table", "bid"), ("max.out.of.orderness", "1s")])
                .starts_with("option 'max.out.of.orderness' does not apply")
        );
        assert_eq!(
            err(&[("nexmark.table", "bid"), ("nexmark.rate", "5")]),
            "unknown option 'nexmark.rate' for the generator source; valid options: kind, \
             nexmark.event.rate, nexmark.events, nexmark.out.of.order.group, nexmark.table, \
             partitions, rows.per.second, seed, start"
        );
        assert!(
            err(&[("nexmark.table", "bid"), ("nexmark.event.rate", "0")]).contains("at least 1")
        );
        assert!(
            err(&[
                ("nexmark.table", "bid"),
                ("nexmark.out.of.order.group", "1906")
            ])
            .contains("multiple of 953")
        );
        assert_eq!(
            err(&[("nexmark.table", "bid"), ("nexmark.events", "many")]),
            "option 'nexmark.events' has an invalid value 'many'"
        );
        // Columns of another table.
        let e = source(schema(Table::Person), &[("nexmark.table", "bid")])
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "the 'nexmark' generator's bid table cannot produce columns 'id', 'name', \
             'email_address', 'credit_card', 'city', 'state'; it produces: auction, bidder, \
             price, channel, url, date_time, extra"
        );
        // Other kinds do not take nexmark options.
        let e = GeneratorSourceFactory
            .create(SourceSpec {
                metadata: vec![],
                name: "t".into(),
                schema: Arc::new(Schema::new(vec![Field::new(
                    "symbol",
                    DataType::Utf8,
                    true,
                )])),
                event_time: None,
                options: Options::new([
                    ("kind".to_string(), "ticks".to_string()),
                    ("nexmark.table".to_string(), "bid".to_string()),
                ]),
                data_dir: std::env::temp_dir(),
                batch: BatchLimits::default(),
                stats: Default::default(),
                workers: 1,
            })
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with("unknown option 'nexmark.table'"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn defaults_start_in_2024_at_ten_thousand_events_per_second() {
        let mut s = source(schema(Table::Person), &[("nexmark.table", "person")]).unwrap();
        assert!(!s.bounded());
        let SourceEvent::Batch { batch, .. } = s.next().await.unwrap() else {
            panic!("a batch");
        };
        assert_eq!(batch.num_rows(), 1000);
        // Person j is event 50 j: 5 ms apart at 10,000 events/s.
        let times = ints(&batch, "date_time");
        assert_eq!(times[0], DEFAULT_START_MS);
        assert_eq!(times[999], DEFAULT_START_MS + 999 * 5);
        let bounded = source(
            schema(Table::Person),
            &[("nexmark.table", "person"), ("nexmark.events", "1")],
        )
        .unwrap();
        assert!(bounded.bounded());
    }

    #[tokio::test]
    async fn json_lines_carry_epoch_millis() {
        let bids = table(Table::Bid, &[("nexmark.events", "50")]).await;
        let mut out = Vec::new();
        write_json_lines(&bids, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 46);
        let first = &lines[0];
        assert_eq!(first["date_time"], serde_json::json!(DEFAULT_START_MS));
        assert_eq!(
            first["auction"],
            serde_json::json!(ints(&bids, "auction")[0])
        );
        assert_eq!(first["url"], serde_json::json!(texts(&bids, "url")[0]));
        assert_eq!(
            first
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<HashSet<_>>(),
            [
                "auction",
                "bidder",
                "price",
                "channel",
                "url",
                "date_time",
                "extra"
            ]
            .map(String::from)
            .into()
        );
    }
}
