//! The `generator` source: built-in synthetic streams for demos, tests and benchmarks.
//!
//! ```sql
//! CREATE SOURCE downloads (...) WITH (connector = 'generator', kind = 'downloads',
//!     'rows.per.second' = '1000', seed = '42', rows = '100000', partitions = '4',
//!     start = '2024-01-01T00:00:00Z', 'max.out.of.orderness' = '2s');
//! ```
//!
//! Rows are generated in one global sequence `n = 0, 1, 2, ...` from a seeded PRNG, straight
//! into column buffers, and dealt round-robin to partitions (row `n` goes to partition
//! `n % partitions`; each batch holds rows of one partition). Row `n`'s event time is
//! `start + n / rate` (with `rows.per.second = 0`, "as fast as possible", event time still
//! advances one millisecond per row), minus a random jitter of up to
//! `max.out.of.orderness`. So a run with a given `seed` and `start` is deterministic; only
//! an omitted `start` (wall-clock now at the first poll) differs between runs.
//!
//! Each kind (a `Kind`) lists the columns it can produce; the declared schema may use any
//! subset, in any order, and types that arrow can cast to (e.g. `INT` for a `BIGINT`).
//! To add a kind: a module implementing `Kind` and one arm in [`GeneratorSourceFactory`].
//! A kind may take options of its own and adjust the common ones (`Kind::configure`), have
//! one column set per table, and time its rows itself: [`nexmark`] does all three (one
//! source per Nexmark table, event time from the event number, `rows` derived from
//! `nexmark.events`).

mod columns;
mod downloads;
pub mod nexmark;
mod rng;
mod ticks;

use crate::util::{cast_to, check_castable};
use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use downloads::Downloads;
use nexmark::Nexmark;
use rng::{SplitMix64, mix};
use std::collections::VecDeque;
use std::time::Duration;
use ticks::Ticks;
use tokio::time::Instant;
use weir_engine::connector::{Source, SourceEvent, SourceFactory, SourceSpec};
use weir_engine::options::Options;
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &[
    "kind",
    "rows.per.second",
    "seed",
    "rows",
    "partitions",
    "start",
    "max.out.of.orderness",
];

/// The single-stream kinds (the embedded Kafka broker's feeds use these).
pub const KINDS: &[&str] = &["downloads", "ticks"];

/// Every kind the `kind` option takes.
const ALL_KINDS: &[&str] = &["downloads", "ticks", "nexmark"];

/// A column a generator kind can produce.
#[derive(Debug, Clone)]
pub(crate) struct ColumnDef {
    name: &'static str,
    data_type: DataType,
    /// Whether the generator produces nulls in it.
    nullable: bool,
}

impl ColumnDef {
    pub(crate) fn new(name: &'static str, data_type: DataType, nullable: bool) -> Self {
        ColumnDef {
            name,
            data_type,
            nullable,
        }
    }
}

/// One synthetic stream: its columns, and how to append row `n` to per-partition buffers.
pub(crate) trait Kind: Send + 'static {
    type Builders: Send;
    /// Every column it can produce; indexes into this list are used below.
    fn columns() -> Vec<ColumnDef>;
    fn new(seed: u64) -> Self;
    /// Buffers for `rows` rows holding only the `wanted` columns.
    fn builders(&self, wanted: &[bool], rows: usize) -> Self::Builders;
    /// Append row `n` with event time `ts` (epoch millis). Draws the same random numbers
    /// whichever columns are wanted, so values do not depend on the declared columns.
    fn append(&mut self, builders: &mut Self::Builders, n: u64, ts: i64);
    /// The wanted columns' arrays (None for the others), emptying the buffers.
    fn finish(builders: &mut Self::Builders) -> Result<Vec<Option<ArrayRef>>>;

    /// `append` computes each row's event time itself and ignores `ts` (so the common
    /// `start + n / rate` and `max.out.of.orderness` are not computed).
    const OWN_EVENT_TIME: bool = false;
    /// Any row can be generated without the rows before it, so a restore starts right at
    /// the restored position instead of regenerating the rows before it.
    const RANDOM_ACCESS: bool = false;

    /// A copy that generates the same rows, for another thread: with `OWN_EVENT_TIME` and
    /// `RANDOM_ACCESS`, an unthrottled generator fills several cycles of rows at once, one
    /// per worker. `None`: rows are generated on one thread.
    fn fork(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Every option key this kind takes, for the unknown-option error.
    fn valid_keys() -> Vec<&'static str> {
        VALID_KEYS.to_vec()
    }
    /// Build the kind from the common options, taking its own keys from `options`; it may
    /// reject or fill in common ones (e.g. derive `rows`).
    fn configure(opts: &mut GeneratorOptions, options: &mut Options) -> Result<Self>
    where
        Self: Sized,
    {
        let _ = options;
        Ok(Self::new(opts.seed))
    }
    /// The columns this instance produces (a kind with several tables picks one).
    fn table_columns(&self) -> Vec<ColumnDef> {
        Self::columns()
    }
    /// How errors name this generator.
    fn describe(&self, kind: &str) -> String {
        format!("the '{kind}' generator")
    }
}

/// The parsed options.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    pub kind: String,
    /// Rows per second over all partitions; 0 means as fast as possible.
    pub rows_per_second: u64,
    pub seed: u64,
    /// Total rows; `None` means unbounded.
    pub rows: Option<u64>,
    pub partitions: usize,
    /// Event time of row 0 in epoch millis; `None` means wall-clock now at the first poll.
    pub start_ms: Option<i64>,
    pub max_out_of_orderness: Duration,
}

impl GeneratorOptions {
    pub fn parse(options: &mut Options) -> Result<Self> {
        let kind = match options.take("kind") {
            Some(k) => {
                let k = k.trim().to_ascii_lowercase();
                if !ALL_KINDS.contains(&k.as_str()) {
                    return Err(WeirError::user(format!(
                        "option 'kind' must be one of {}, got '{k}'",
                        ALL_KINDS.join(" | ")
                    )));
                }
                k
            }
            None => {
                return Err(WeirError::user(format!(
                    "the generator source needs option 'kind' ({})",
                    ALL_KINDS.join(" | ")
                )));
            }
        };
        let default_rate = match kind.as_str() {
            "nexmark" => nexmark::DEFAULT_ROWS_PER_SECOND,
            _ => 1000,
        };
        let rows_per_second = options
            .take_parse::<u64>("rows.per.second")?
            .unwrap_or(default_rate);
        let seed = options.take_parse::<u64>("seed")?.unwrap_or(42);
        let rows = options.take_parse::<u64>("rows")?;
        let partitions = options.take_parse::<usize>("partitions")?.unwrap_or(1);
        if partitions == 0 {
            return Err(WeirError::user("option 'partitions' must be at least 1"));
        }
        let start_ms = options.take("start").map(|s| parse_start(&s)).transpose()?;
        let max_out_of_orderness = options
            .take_duration("max.out.of.orderness")?
            .unwrap_or(Duration::ZERO);
        Ok(GeneratorOptions {
            kind,
            rows_per_second,
            seed,
            rows,
            partitions,
            start_ms,
            max_out_of_orderness,
        })
    }
}

/// RFC 3339 (`2024-01-01T00:00:00Z`), or epoch milliseconds.
fn parse_start(s: &str) -> Result<i64> {
    let t = s.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .map_err(|e| {
            WeirError::user(format!(
                "option 'start' must be an RFC 3339 time like '2024-01-01T00:00:00Z' or epoch \
                 milliseconds, got '{s}': {e}"
            ))
        })
}

pub struct GeneratorSourceFactory;

impl SourceFactory for GeneratorSourceFactory {
    fn name(&self) -> &'static str {
        "generator"
    }

    fn create(&self, spec: SourceSpec) -> Result<Box<dyn Source>> {
        let mut options = spec.options.clone();
        let opts = GeneratorOptions::parse(&mut options)?;
        match opts.kind.as_str() {
            "downloads" => create::<Downloads>(&spec, opts, options),
            "ticks" => create::<Ticks>(&spec, opts, options),
            "nexmark" => create::<Nexmark>(&spec, opts, options),
            other => Err(WeirError::user(format!(
                "option 'kind' must be one of {}, got '{other}'",
                ALL_KINDS.join(" | ")
            ))),
        }
    }
}

fn create<K: Kind>(
    spec: &SourceSpec,
    mut opts: GeneratorOptions,
    mut options: Options,
) -> Result<Box<dyn Source>> {
    let kind = K::configure(&mut opts, &mut options)?;
    options.finish("the generator source", &K::valid_keys())?;
    Ok(Box::new(GeneratorSource::new(spec, opts, kind)?))
}

/// Which generator column feeds each declared column, and the declared type.
#[derive(Debug)]
struct ColumnPlan {
    wanted: Vec<bool>,
    /// Per declared column: index into `Kind::columns()`.
    sources: Vec<usize>,
}

/// `what` names the generator in errors ("the 'ticks' generator").
fn plan_columns(schema: &SchemaRef, available: &[ColumnDef], what: &str) -> Result<ColumnPlan> {
    let mut wanted = vec![false; available.len()];
    let mut sources = Vec::with_capacity(schema.fields().len());
    let mut unknown = Vec::new();
    for field in schema.fields() {
        let Some(i) = available.iter().position(|c| c.name == field.name()) else {
            unknown.push(format!("'{}'", field.name()));
            continue;
        };
        let def = &available[i];
        check_castable(field.name(), &def.data_type, field.data_type(), what)?;
        if def.nullable && !field.is_nullable() {
            return Err(WeirError::user(format!(
                "column '{}' is declared NOT NULL but {what} produces nulls in it",
                field.name()
            )));
        }
        wanted[i] = true;
        sources.push(i);
    }
    if !unknown.is_empty() {
        let names: Vec<&str> = available.iter().map(|c| c.name).collect();
        return Err(WeirError::user(format!(
            "{what} cannot produce column{} {}; it produces: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            names.join(", ")
        )));
    }
    Ok(ColumnPlan { wanted, sources })
}

/// Rows filled into per-partition buffers, and the rows in each.
type Filled<K> = (Vec<<K as Kind>::Builders>, Vec<usize>);

/// Fill rows `first .. first + count` (event time `ts_of(n)`) into one set of buffers per
/// partition, dealing row `n` to partition `n % parts`.
fn fill<K: Kind>(
    kind: &mut K,
    wanted: &[bool],
    parts: usize,
    first: u64,
    count: u64,
    mut ts_of: impl FnMut(u64) -> i64,
) -> Filled<K> {
    let per_part = (count as usize).div_ceil(parts);
    let mut builders: Vec<K::Builders> = (0..parts)
        .map(|_| kind.builders(wanted, per_part))
        .collect();
    let mut rows_per_part = vec![0usize; parts];
    let mut p = (first % parts as u64) as usize;
    for n in first..first + count {
        let ts = ts_of(n);
        kind.append(&mut builders[p], n, ts);
        rows_per_part[p] += 1;
        p += 1;
        if p == parts {
            p = 0;
        }
    }
    (builders, rows_per_part)
}

/// Event time of row `n` before jitter, at `rows_per_second` (0: as fast as possible, event
/// time still advancing one millisecond per row).
fn event_time(rows_per_second: u64, start_ms: i64, n: u64) -> i64 {
    let rate = if rows_per_second == 0 {
        1000
    } else {
        rows_per_second
    };
    start_ms.saturating_add((u128::from(n) * 1000 / u128::from(rate)) as i64)
}

/// A generator source for one [`Kind`].
pub(crate) struct GeneratorSource<K: Kind> {
    kind: K,
    schema: SchemaRef,
    plan: ColumnPlan,
    opts: GeneratorOptions,
    max_rows: usize,
    max_delay: Duration,
    jitter: SplitMix64,
    /// The next row number to generate.
    next_row: u64,
    /// Batches to hand on: partition, rows, and the position after them (the global row
    /// number generation had reached).
    ready: VecDeque<(usize, RecordBatch, u64)>,
    /// Set at the first poll: when row 0 was due, and its event time.
    clock: Option<(Instant, i64)>,
    last_emit: Option<Instant>,
    /// Restored positions: partition `p` skips rows numbered below `resume[p]`.
    resume: Option<Vec<u64>>,
    /// Copies of `kind` ([`Kind::fork`]) that generate further cycles of rows on other
    /// threads, one per extra worker; empty: one thread.
    forks: Vec<K>,
}

impl<K: Kind> GeneratorSource<K> {
    fn new(spec: &SourceSpec, opts: GeneratorOptions, kind: K) -> Result<Self> {
        let plan = plan_columns(
            &spec.schema,
            &kind.table_columns(),
            &kind.describe(&opts.kind),
        )?;
        let forks = if K::OWN_EVENT_TIME && K::RANDOM_ACCESS && opts.rows_per_second == 0 {
            (1..spec.workers).filter_map(|_| kind.fork()).collect()
        } else {
            Vec::new()
        };
        Ok(GeneratorSource {
            forks,
            kind,
            schema: spec.schema.clone(),
            plan,
            jitter: SplitMix64::new(mix(opts.seed ^ 0x6A17_7E42_0F0F_1234)),
            opts,
            max_rows: spec.batch.max_rows.max(1),
            max_delay: spec.batch.max_delay,
            next_row: 0,
            ready: VecDeque::new(),
            clock: None,
            last_emit: None,
            resume: None,
        })
    }

    fn remaining(&self) -> u64 {
        self.remaining_from(self.next_row)
    }

    /// Rows left to generate from row `n` on.
    fn remaining_from(&self, n: u64) -> u64 {
        match self.opts.rows {
            Some(total) => total.saturating_sub(n),
            None => u64::MAX,
        }
    }

    /// Rows generated at a time: a batch for each partition.
    fn cycle(&self) -> u64 {
        (self.max_rows as u64).saturating_mul(self.opts.partitions as u64)
    }

    /// Event time of row `n` before jitter.
    fn event_time(&self, start_ms: i64, n: u64) -> i64 {
        event_time(self.opts.rows_per_second, start_ms, n)
    }

    /// Wall-clock offset from the start at which row `n` is due (rate-limited mode).
    fn due_at(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.opts.rows_per_second.max(1));
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    /// How many rows to generate next, sleeping as the rate requires.
    async fn rows_to_generate(&mut self, t0: Instant) -> u64 {
        let remaining = self.remaining();
        let cycle = self.cycle();
        if self.opts.rows_per_second == 0 {
            return cycle.min(remaining);
        }
        let rate = u128::from(self.opts.rows_per_second);
        loop {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(t0).as_nanos();
            let due_total = (elapsed * rate / 1_000_000_000).min(u128::from(u64::MAX)) as u64;
            let due = due_total.saturating_sub(self.next_row).min(remaining);
            let waited = self
                .last_emit
                .is_none_or(|t| now.saturating_duration_since(t) >= self.max_delay);
            if due >= cycle || (due > 0 && waited) {
                return due.min(cycle);
            }
            // Wake when a full cycle is due, or when the delay is up (but not before at
            // least one row is due).
            let full = t0 + self.due_at(self.next_row.saturating_add(cycle.min(remaining)));
            let one = t0 + self.due_at(self.next_row.saturating_add(1));
            let delay_up = self.last_emit.map_or(now, |t| t + self.max_delay);
            tokio::time::sleep_until(full.min(one.max(delay_up))).await;
        }
    }

    /// Generate rows `next_row .. next_row + count` and queue one batch per partition.
    fn generate(&mut self, count: u64, start_ms: i64) -> Result<()> {
        let ooo = self
            .opts
            .max_out_of_orderness
            .as_millis()
            .min(u128::from(u64::MAX)) as u64;
        let first = self.next_row;
        let (rate, jitter) = (self.opts.rows_per_second, &mut self.jitter);
        let ts_of = |n: u64| {
            if K::OWN_EVENT_TIME {
                return 0;
            }
            let ts = event_time(rate, start_ms, n);
            if ooo > 0 {
                ts.saturating_sub(jitter.below(ooo + 1) as i64)
            } else {
                ts
            }
        };
        let filled = fill(
            &mut self.kind,
            &self.plan.wanted,
            self.opts.partitions,
            first,
            count,
            ts_of,
        );
        self.next_row = first + count;
        self.queue(filled, first, self.next_row)
    }

    /// With forks ([`Kind::fork`]): the next cycles of rows (one per thread, each as
    /// `generate` would make it, so the batches and positions are the same), filled at
    /// once and queued in order.
    fn generate_parallel(&mut self) -> Result<()> {
        let cycle = self.cycle();
        let mut ranges = Vec::with_capacity(self.forks.len() + 1);
        let mut next = self.next_row;
        for _ in 0..=self.forks.len() {
            let count = cycle.min(self.remaining_from(next));
            if count == 0 {
                break;
            }
            ranges.push((next, count));
            next += count;
        }
        let (parts, wanted) = (self.opts.partitions, &self.plan.wanted);
        let kinds = std::iter::once(&mut self.kind).chain(self.forks.iter_mut());
        let filled: Vec<Filled<K>> = std::thread::scope(|scope| {
            let mut jobs = ranges.iter().zip(kinds);
            let Some((&(first, count), own)) = jobs.next() else {
                return Ok(Vec::new());
            };
            let others: Vec<_> = jobs
                .map(|(&(first, count), kind)| {
                    std::thread::Builder::new()
                        .name("weir-generator".into())
                        .spawn_scoped(scope, move || {
                            fill(kind, wanted, parts, first, count, |_| 0)
                        })
                })
                .collect::<std::io::Result<_>>()
                .map_err(|e| WeirError::Internal(format!("starting a generator thread: {e}")))?;
            let mut out = vec![fill(own, wanted, parts, first, count, |_| 0)];
            for t in others {
                out.push(
                    t.join()
                        .map_err(|_| WeirError::Internal("a generator thread panicked".into()))?,
                );
            }
            Ok::<_, WeirError>(out)
        })?;
        for (f, &(first, count)) in filled.into_iter().zip(&ranges) {
            self.next_row = first + count;
            self.queue(f, first, self.next_row)?;
        }
        Ok(())
    }

    /// Queue the batches of rows `first..` (`filled`), each with position `position`,
    /// leaving out the rows a restored checkpoint covers.
    fn queue(&mut self, filled: Filled<K>, first: u64, position: u64) -> Result<()> {
        let parts = self.opts.partitions;
        let (mut builders, rows_per_part) = filled;
        for (p, b) in builders.iter_mut().enumerate() {
            if rows_per_part[p] == 0 {
                continue;
            }
            let mut batch = self.build_batch(b, rows_per_part[p])?;
            // Rows a restored checkpoint covers: partition p's rows here are numbered
            // first.., every `parts`-th from the first one in p.
            if let Some(cut) = self.resume.as_ref().map(|r| r[p])
                && cut > first
            {
                let first_p =
                    first + (p as u64 + parts as u64 - first % parts as u64) % parts as u64;
                let covered = cut.saturating_sub(first_p).div_ceil(parts as u64) as usize;
                let covered = covered.min(batch.num_rows());
                batch = batch.slice(covered, batch.num_rows() - covered);
                if batch.num_rows() == 0 {
                    continue;
                }
            }
            self.ready.push_back((p, batch, position));
        }
        Ok(())
    }

    /// Start the clock; after a restore, as if the rows before the restored positions had
    /// already been generated, and generate (and drop) them so the random streams are
    /// where they were.
    async fn start_clock(&mut self) -> Result<(Instant, i64)> {
        let start = self.opts.start_ms;
        let from = self
            .resume
            .as_ref()
            .and_then(|r| r.iter().min().copied())
            .unwrap_or(0);
        let now = Instant::now();
        let t0 = if self.opts.rows_per_second == 0 {
            now
        } else {
            now.checked_sub(self.due_at(from)).unwrap_or(now)
        };
        let start_ms = match start {
            Some(s) => s,
            None => {
                let now_ms = chrono::Utc::now().timestamp_millis();
                now_ms - (self.event_time(0, from))
            }
        };
        if from > 0 && K::RANDOM_ACCESS {
            self.next_row = from;
        } else if from > 0 {
            tracing::info!(
                rows = from,
                "generator fast-forwarding to the restored position"
            );
            let cycle = self.cycle();
            while self.next_row < from {
                let n = cycle.min(from - self.next_row);
                self.generate(n, start_ms)?;
                self.ready.clear();
                tokio::task::yield_now().await;
            }
        }
        Ok((t0, start_ms))
    }

    fn build_batch(&self, builders: &mut K::Builders, rows: usize) -> Result<RecordBatch> {
        let mut arrays = K::finish(builders)?;
        let mut columns = Vec::with_capacity(self.plan.sources.len());
        for (field, &i) in self.schema.fields().iter().zip(&self.plan.sources) {
            let array = arrays.get_mut(i).and_then(Option::take).ok_or_else(|| {
                WeirError::Internal(format!("generator column '{}' was not built", field.name()))
            })?;
            columns.push(cast_to(&array, field.data_type(), field.name())?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

#[async_trait]
impl<K: Kind> Source for GeneratorSource<K> {
    fn partitions(&self) -> usize {
        self.opts.partitions
    }

    fn bounded(&self) -> bool {
        self.opts.rows.is_some()
    }

    /// Positions are global row numbers (row `n` goes to partition `n % partitions`): the
    /// generator restarts at the smallest, regenerating (and dropping) the rows before it
    /// so every random stream is where it was, and each partition skips the rows its own
    /// position covers. Without a `start` option, event time continues from now.
    fn seek(&mut self, positions: &[(usize, i64)]) -> Result<()> {
        let mut resume = vec![0u64; self.opts.partitions];
        for &(p, pos) in positions {
            if let Some(r) = resume.get_mut(p) {
                *r = pos.max(0) as u64;
            }
        }
        self.resume = Some(resume);
        Ok(())
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        loop {
            if let Some((partition, batch, position)) = self.ready.pop_front() {
                return Ok(SourceEvent::Batch {
                    partition,
                    batch,
                    bad_records: 0,
                    position: Some(position as i64),
                });
            }
            if self.remaining() == 0 {
                return Ok(SourceEvent::End);
            }
            let (t0, start_ms) = match self.clock {
                Some(c) => c,
                None => {
                    // A restore may have fast-forwarded to the end: check again.
                    self.clock = Some(self.start_clock().await?);
                    continue;
                }
            };
            let count = self.rows_to_generate(t0).await;
            if count > 0 {
                if self.forks.is_empty() {
                    self.generate(count, start_ms)?;
                } else {
                    self.generate_parallel()?;
                }
                self.last_emit = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests;
