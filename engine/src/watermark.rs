//! Event-time progress of one source: per-partition bookkeeping and the watermark rules,
//! as plain functions of the partitions' state and processing time (no I/O, no clock).
//!
//! - A partition's contribution is its newest event time minus the declared delay.
//! - The source's watermark is the least contribution over its *active* partitions: not
//!   ended, and heard from within `idle_timeout` of processing time (a batch, or an
//!   [`SourceWatermark::keep_active`] from a connector whose partition is quiet but not idle,
//!   such as one whose broker cannot be reached).
//! - When every live partition is idle, event time follows processing time from the
//!   newest event seen, so the last windows still close.
//! - When every partition has ended, the watermark is the end of time (`i64::MAX`).
//! - The watermark never goes backwards.
//!
//! Lateness is decided per row in arrival order within a partition: [`cut_points`] finds
//! where, inside one micro-batch, the watermark implied by the rows before a row could have
//! passed that row's time. The dataflow delivers the batch in pieces cut there and advances
//! watermarks between them, so a row is late or on time exactly as if every batch held one
//! row, whatever the batching.

/// One partition's event-time state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionState {
    /// The newest event time seen (epoch ms).
    pub max_event: Option<i64>,
    /// Processing time this partition was last heard from (epoch ms).
    pub last_active: i64,
    pub ended: bool,
    /// Where the partition resumes after the last batch processed (see
    /// `SourceEvent::Batch::position`).
    pub position: Option<i64>,
}

impl PartitionState {
    pub fn new(now_ms: i64) -> Self {
        PartitionState {
            max_event: None,
            last_active: now_ms,
            ended: false,
            position: None,
        }
    }
}

/// Where a source's event time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTime {
    /// No event time: the watermark moves only when the source ends.
    None,
    /// Column `index` of the batches (`WATERMARK FOR col AS col - delay`).
    Column { index: usize, delay_ms: i64 },
    /// The connector reports it (`SourceEvent::Progress`: Kafka message timestamps), with
    /// no delay.
    Connector,
}

/// A connector's word on a partition's event time, given without a batch. Both count as
/// the partition's newest event time: the first because it is one, the second because a
/// partition that holds nothing earlier must not hold the watermark back any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeReport {
    /// The connector's own event time (`SourceEvent::Progress`: Kafka message timestamps),
    /// for sources whose event time is [`EventTime::Connector`].
    Progress,
    /// No row still to come is earlier (`SourceEvent::EarliestEventTime`: Parquet row-group
    /// statistics), for sources whose event time is a column; until the partition
    /// delivers rows, it holds the watermark there less the delay.
    Earliest,
}

/// A source's partitions and watermark.
#[derive(Debug, Clone)]
pub struct SourceWatermark {
    pub event_time: EventTime,
    pub idle_timeout_ms: i64,
    pub partitions: Vec<PartitionState>,
    watermark: i64,
}

impl SourceWatermark {
    pub fn new(event_time: EventTime, idle_timeout_ms: i64, partitions: usize, now: i64) -> Self {
        SourceWatermark {
            event_time,
            idle_timeout_ms,
            partitions: vec![PartitionState::new(now); partitions.max(1)],
            watermark: i64::MIN,
        }
    }

    /// The watermark as last advanced (`i64::MIN` before the first).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Put back a watermark from a checkpoint.
    pub fn set_watermark(&mut self, w: i64) {
        self.watermark = w;
    }

    fn delay(&self) -> i64 {
        match self.event_time {
            EventTime::Column { delay_ms, .. } => delay_ms,
            _ => 0,
        }
    }

    /// Every partition counts as active from `now` (the runtime starts: idle timeouts run
    /// from the start, not from when the source was declared or checkpointed).
    pub fn start(&mut self, now: i64) {
        for p in &mut self.partitions {
            p.last_active = p.last_active.max(now);
        }
    }

    /// The source now knows it has `count` partitions: new ones hold the watermark back
    /// until they deliver data or go idle, and ones without data yet count as active from
    /// now (the source is alive).
    pub fn set_partitions(&mut self, count: usize, now: i64) {
        for p in self.partitions.iter_mut().filter(|p| p.max_event.is_none()) {
            p.last_active = p.last_active.max(now);
        }
        while self.partitions.len() < count {
            self.partitions.push(PartitionState::new(now));
        }
    }

    /// A partition is alive though quiet.
    pub fn keep_active(&mut self, partition: usize, now: i64) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.last_active = p.last_active.max(now);
        }
    }

    /// Rows of `partition` whose newest event time is `max_event` arrived at `now`.
    pub fn observe(&mut self, partition: usize, max_event: Option<i64>, now: i64) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.last_active = now;
            if let Some(m) = max_event {
                p.max_event = Some(p.max_event.map_or(m, |x| x.max(m)));
            }
        }
    }

    /// What a connector says of `partition`'s event time without a batch (see
    /// [`TimeReport`]); ignored when it does not apply to this source's kind of event time.
    pub fn report(&mut self, partition: usize, report: TimeReport, event_time_ms: i64, now: i64) {
        let applies = match report {
            TimeReport::Progress => self.event_time == EventTime::Connector,
            TimeReport::Earliest => matches!(self.event_time, EventTime::Column { .. }),
        };
        if !applies {
            return;
        }
        if partition >= self.partitions.len() {
            self.set_partitions(partition + 1, now);
        }
        self.observe(partition, Some(event_time_ms), now);
    }

    pub fn end_partition(&mut self, partition: usize) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.ended = true;
        }
    }

    pub fn end_all(&mut self) {
        for p in &mut self.partitions {
            p.ended = true;
        }
    }

    pub fn all_ended(&self) -> bool {
        self.partitions.iter().all(|p| p.ended)
    }

    fn idle(&self, p: &PartitionState, now: i64) -> bool {
        now - p.last_active >= self.idle_timeout_ms
    }

    /// A partition's contribution to the watermark, `None` if it does not hold it back
    /// (ended or idle).
    fn contribution(&self, p: &PartitionState, now: i64) -> Option<i64> {
        if p.ended || self.idle(p, now) {
            return None;
        }
        Some(
            p.max_event
                .map_or(i64::MIN, |m| m.saturating_sub(self.delay())),
        )
    }

    /// The watermark the rules give at `now` (never below the current one).
    pub fn compute(&self, now: i64) -> i64 {
        if self.all_ended() {
            return i64::MAX;
        }
        if self.event_time == EventTime::None {
            return self.watermark;
        }
        let active = self
            .partitions
            .iter()
            .filter_map(|p| self.contribution(p, now))
            .min();
        let candidate = match active {
            Some(w) => w,
            None => {
                // Every live partition is idle: event time follows processing time from
                // the newest event seen.
                let newest = self.partitions.iter().filter_map(|p| p.max_event).max();
                let last = self
                    .partitions
                    .iter()
                    .map(|p| p.last_active)
                    .max()
                    .unwrap_or(now);
                match newest {
                    Some(m) => m
                        .saturating_sub(self.delay())
                        .saturating_add(now - last - self.idle_timeout_ms),
                    None => i64::MIN,
                }
            }
        };
        self.watermark.max(candidate)
    }

    /// Move the watermark to what the rules give at `now`; whether it changed.
    pub fn advance(&mut self, now: i64) -> bool {
        let w = self.compute(now);
        let changed = w != self.watermark;
        self.watermark = w;
        changed
    }
}

/// Where to cut a micro-batch of one partition so that lateness is decided per row:
/// `event[i]` is row `i`'s event time (the WATERMARK column) and `probe[i]` the earliest
/// time a window could judge it by (the least of the window time columns views read,
/// `None` when it has none). Returns the row indexes (increasing, never 0) at which a new
/// piece starts: the rows before such a row imply a watermark past that row's time and
/// past the one at the previous cut, so the views must advance before it.
///
/// Only the batch's own rows are used (not the other partitions, not the watermark the
/// views have heard): the rows before a row imply at least what the true watermark would
/// be if they alone held it back, so this cuts wherever a row could be late by them, and an
/// extra cut only makes the views advance to the true watermark sooner. Every row is
/// judged by the watermark the rows before it imply, as if every batch held one row, and
/// the cuts depend on nothing but the batch: stage 1 computes them on any worker and the
/// driver uses them as they are, so the views advance at the same points, and emit the
/// same rows in the same order, whatever the number of workers.
pub fn cut_points(event: &[i64], probe: Option<&[Option<i64>]>, delay_ms: i64) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut seen = i64::MIN;
    let mut newest = i64::MIN;
    for (i, &t) in event.iter().enumerate() {
        if i > 0 {
            let implied = newest.saturating_sub(delay_ms);
            let time = match probe {
                Some(p) => p.get(i).copied().flatten(),
                None => Some(t),
            };
            if implied > seen && time.is_some_and(|time| time < implied) {
                cuts.push(i);
                seen = implied;
            }
        }
        newest = newest.max(t);
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(delay_ms: i64) -> EventTime {
        EventTime::Column { index: 0, delay_ms }
    }

    #[test]
    fn least_active_partition_holds_the_watermark() {
        let mut w = SourceWatermark::new(column(1_000), 10_000, 2, 0);
        assert_eq!(w.compute(0), i64::MIN, "partition 1 has no data yet");
        w.observe(0, Some(50_000), 0);
        w.observe(1, Some(20_000), 0);
        assert!(w.advance(0));
        assert_eq!(w.watermark(), 19_000);
        w.observe(1, Some(60_000), 1);
        w.advance(1);
        assert_eq!(w.watermark(), 49_000);
        assert!(!w.advance(2), "nothing moved");
    }

    #[test]
    fn an_earliest_event_time_holds_an_unread_partition_there() {
        let mut w = SourceWatermark::new(column(1_000), 10_000, 3, 0);
        w.observe(0, Some(50_000), 0);
        w.report(1, TimeReport::Earliest, 30_000, 0);
        w.advance(0);
        assert_eq!(w.watermark(), i64::MIN, "partition 2 says nothing yet");
        w.report(2, TimeReport::Earliest, 40_000, 0);
        w.advance(0);
        assert_eq!(
            w.watermark(),
            29_000,
            "partition 1 holds at its earliest time"
        );
        // Its rows come: the newest of them counts as before.
        w.observe(1, Some(45_000), 1);
        w.advance(1);
        assert_eq!(w.watermark(), 39_000);
        // Sources without an event-time column ignore it.
        let mut none = SourceWatermark::new(EventTime::None, 10_000, 1, 0);
        none.report(0, TimeReport::Earliest, 30_000, 0);
        assert_eq!(none.partitions[0].max_event, None);
    }

    #[test]
    fn idle_partitions_stop_holding_it_back_and_all_idle_follows_processing_time() {
        let mut w = SourceWatermark::new(column(0), 10_000, 2, 0);
        w.observe(0, Some(100_000), 0);
        w.advance(5_000);
        assert_eq!(w.watermark(), i64::MIN, "partition 1 is active and empty");
        w.observe(0, Some(100_000), 9_000);
        w.advance(10_000);
        assert_eq!(w.watermark(), 100_000, "partition 1 went idle");
        // Both idle: event time moves on with processing time after the timeout.
        w.advance(19_000);
        assert_eq!(w.watermark(), 100_000);
        w.advance(25_000);
        assert_eq!(w.watermark(), 106_000);
    }

    #[test]
    fn keep_active_holds_a_quiet_partition() {
        let mut w = SourceWatermark::new(column(0), 10_000, 2, 0);
        w.observe(0, Some(100_000), 0);
        w.observe(1, Some(50_000), 0);
        w.advance(0);
        w.observe(0, Some(200_000), 15_000);
        w.keep_active(1, 15_000);
        w.advance(15_000);
        assert_eq!(w.watermark(), 50_000, "partition 1 is alive, not idle");
    }

    #[test]
    fn ending_every_partition_is_the_end_of_time_and_it_never_goes_back() {
        let mut w = SourceWatermark::new(column(0), 10_000, 2, 0);
        w.observe(0, Some(100_000), 0);
        w.observe(1, Some(90_000), 0);
        w.advance(0);
        w.end_partition(0);
        w.advance(0);
        assert_eq!(w.watermark(), 90_000);
        w.set_partitions(3, 1);
        assert_eq!(
            w.compute(1),
            90_000,
            "a new empty partition cannot move it back"
        );
        w.end_all();
        w.advance(1);
        assert_eq!(w.watermark(), i64::MAX);
    }

    #[test]
    fn no_event_time_moves_only_at_the_end_and_connector_time_has_no_delay() {
        let mut w = SourceWatermark::new(EventTime::None, 10_000, 1, 0);
        w.observe(0, Some(5), 0);
        w.advance(100_000);
        assert_eq!(w.watermark(), i64::MIN);
        w.end_all();
        w.advance(100_000);
        assert_eq!(w.watermark(), i64::MAX);
        let mut k = SourceWatermark::new(EventTime::Connector, 10_000, 1, 0);
        k.report(2, TimeReport::Progress, 7_000, 0);
        assert_eq!(k.partitions.len(), 3);
        k.report(0, TimeReport::Progress, 9_000, 0);
        k.report(1, TimeReport::Progress, 8_000, 0);
        k.advance(0);
        assert_eq!(k.watermark(), 7_000);
    }

    #[test]
    fn cut_points_cut_where_earlier_rows_of_the_batch_made_a_row_late() {
        // One partition, delay 0: rows 10 s, 40 s, 12 s, 41 s, 5 s, 90 s, 80 s.
        let t = [10_000, 40_000, 12_000, 41_000, 5_000, 90_000, 80_000];
        // Row 2 (12 s) is behind 40 s; row 4 (5 s) is behind 41 s; row 6 (80 s) is
        // behind 90 s.
        assert_eq!(cut_points(&t, None, 0), vec![2, 4, 6]);
        // In order: no cuts.
        assert!(cut_points(&[1, 2, 3, 3, 4], None, 0).is_empty());
    }

    #[test]
    fn cut_points_respect_the_delay_and_runs_of_late_rows() {
        // Row 1 (20 s) is behind the 35 s row 0 implies; rows 2 to 4 are behind it too, but
        // the watermark the rows imply has not moved since: one cut for the run.
        let t = [40_000, 20_000, 24_000, 26_000, 10_000];
        assert_eq!(cut_points(&t, None, 5_000), vec![1]);
        // Within the delay nothing is late.
        assert!(cut_points(&[10_000, 6_000, 12_000], None, 5_000).is_empty());
        // A probe column other than event time decides lateness: row 1's window time
        // (4 s) is behind the 5 s that row 0 implies; row 2 has none.
        let probe = [Some(10_000), Some(4_000), None];
        assert_eq!(
            cut_points(&[10_000, 20_000, 30_000], Some(&probe), 5_000),
            vec![1]
        );
        let probe = [Some(10_000), Some(9_000), None];
        assert!(cut_points(&[10_000, 20_000, 30_000], Some(&probe), 5_000).is_empty());
    }
}
