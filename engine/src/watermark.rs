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
//! Lateness is decided per row in arrival order within a partition:
//! [`SourceWatermark::split_points`] finds where, inside one micro-batch, the watermark
//! implied by the rows before a row has passed that row's time. The dataflow delivers the
//! batch in pieces cut there and advances watermarks between them, so a row is late or on
//! time exactly as if every batch held one row, whatever the batching.

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

    /// The connector's event time for a partition (`EventTime::Connector` only).
    pub fn progress(&mut self, partition: usize, event_time_ms: i64, now: i64) {
        if self.event_time != EventTime::Connector {
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

    /// Where to cut a micro-batch of `partition` arriving at `now` so that lateness is
    /// decided per row: `event[i]` is row `i`'s event time (the WATERMARK column), and
    /// `probe[i]` the earliest time a window could judge it by (the least of the window
    /// time columns views read, `None` when it has none). Returns the row indexes (in
    /// increasing order, never 0) at which a new piece starts: before each, the watermark
    /// implied by the rows before that row has moved past what the views have seen and past
    /// that row's time, so the views must advance first.
    pub fn split_points(
        &self,
        partition: usize,
        event: &[i64],
        probe: Option<&[Option<i64>]>,
        now: i64,
    ) -> Vec<usize> {
        let EventTime::Column { delay_ms, .. } = self.event_time else {
            return vec![];
        };
        let Some(own) = self.partitions.get(partition) else {
            return vec![];
        };
        // What the other partitions had reached when the batch began; this partition is
        // active (it is delivering).
        let others = self
            .partitions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != partition)
            .filter_map(|(_, p)| self.contribution(p, now))
            .min()
            .unwrap_or(i64::MAX);
        // The views have seen the watermark of the last advance; the first row is judged
        // by it (a batch is delivered before watermarks advance).
        cut_points(
            event,
            probe,
            delay_ms,
            self.watermark,
            others,
            own.max_event.unwrap_or(i64::MIN),
        )
    }
}

/// The rule of [`SourceWatermark::split_points`] as a pure function: `watermark` is what
/// the views have heard, `others` the least the partition's siblings allow (`i64::MAX`:
/// no limit), `newest` the partition's newest event time before the batch.
///
/// Stage 1 (`dataflow/prepare.rs`) cuts with `watermark = i64::MIN`, `others = i64::MAX`
/// and `newest = i64::MIN`, which needs nothing but the batch: that cuts wherever these
/// values cut and possibly more (every limit it uses is at or above the true one), and a
/// cut only makes the views advance to the true watermark before the rows after it, so
/// every row is still judged by the watermark its predecessors imply.
pub fn cut_points(
    event: &[i64],
    probe: Option<&[Option<i64>]>,
    delay_ms: i64,
    watermark: i64,
    others: i64,
    newest: i64,
) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut seen = watermark;
    let mut newest = newest;
    for (i, &t) in event.iter().enumerate() {
        if i > 0 {
            let implied = watermark.max(others.min(newest.saturating_sub(delay_ms)));
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
        k.progress(2, 7_000, 0);
        assert_eq!(k.partitions.len(), 3);
        k.progress(0, 9_000, 0);
        k.progress(1, 8_000, 0);
        k.advance(0);
        assert_eq!(k.watermark(), 7_000);
    }

    #[test]
    fn split_points_cut_where_earlier_rows_of_the_batch_made_a_row_late() {
        // One partition, delay 0: rows 10 s, 40 s, 12 s, 41 s, 5 s, 90 s, 80 s.
        let w = SourceWatermark::new(column(0), 60_000, 1, 0);
        let t = [10_000, 40_000, 12_000, 41_000, 5_000, 90_000, 80_000];
        // Row 2 (12 s) is behind 40 s; row 4 (5 s) is behind 41 s; row 6 (80 s) is
        // behind 90 s.
        assert_eq!(w.split_points(0, &t, None, 0), vec![2, 4, 6]);
        // In order: no cuts.
        assert!(w.split_points(0, &[1, 2, 3, 3, 4], None, 0).is_empty());
    }

    #[test]
    fn split_points_respect_the_delay_other_partitions_and_runs_of_late_rows() {
        let mut w = SourceWatermark::new(column(5_000), 60_000, 2, 0);
        w.observe(1, Some(30_000), 0);
        w.advance(0);
        // Partition 1 holds the watermark at 25 s: rows of partition 0 can be late only
        // behind 25 s, and a run of late rows needs one cut.
        let t = [40_000, 20_000, 24_000, 26_000, 10_000];
        assert_eq!(w.split_points(0, &t, None, 0), vec![1]);
        // Within the delay nothing is late.
        let mut solo = SourceWatermark::new(column(5_000), 60_000, 1, 0);
        solo.observe(0, Some(0), 0);
        assert!(
            solo.split_points(0, &[10_000, 6_000, 12_000], None, 0)
                .is_empty()
        );
        // A probe column other than event time decides lateness: row 1's window time
        // (4 s) is behind the 5 s that row 0 implies; row 2 has none.
        let probe = [Some(10_000), Some(4_000), None];
        assert_eq!(
            solo.split_points(0, &[10_000, 20_000, 30_000], Some(&probe), 0),
            vec![1]
        );
        let probe = [Some(10_000), Some(9_000), None];
        assert!(
            solo.split_points(0, &[10_000, 20_000, 30_000], Some(&probe), 0)
                .is_empty()
        );
    }
}
