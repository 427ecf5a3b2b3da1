//! The engine's half of a Weir cluster (docs/cluster.md): a view's work cut into what
//! one member does for one input partition (stage 1) and what the owner of one key
//! partition does (stage 2). The transport (the exchange topic, consumer groups,
//! transactions) is the Kafka connector's (`connectors/src/kafka/cluster.rs`); nothing
//! here talks to Kafka.
//!
//! - **Stage 1** ([`ClusterView::stage1`]) runs the view's pre plan over one batch of one
//!   input partition and folds its rows into partial states per pane, cut into the view's
//!   key partitions, and says how far the partition's watermark got. It keeps no state:
//!   the batch is its whole input, so any member can run it for any input partition.
//! - **Stage 2** ([`KeyTask`]) owns one key partition: it takes the exchange's messages in
//!   the order of the exchange partition's log, merges partial states, keeps each input
//!   partition's watermark (the least of them closes windows, and an input partition not
//!   heard from holds it back) and runs the post plan over each closed window. Its state
//!   is a function of the log alone, so a snapshot taken at any offset, restored by any
//!   member and fed the log from that offset, gives the same rows again.

use crate::dataflow::exchange::{Aligner, Envelope, Step};
use crate::error::{Result, WeirError};
use crate::planner::mark_final;
use crate::planner::slot::SlotPlan;
use crate::window::WindowAggregator;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use std::sync::Arc;

/// What a view gives a cluster (`Operator::cluster`): its pre plan, an empty aggregator,
/// its post plan and output schema.
pub struct ClusterParts {
    pub pre: Arc<SlotPlan>,
    pub aggregate: WindowAggregator,
    pub post: Arc<SlotPlan>,
    pub schema: SchemaRef,
}

/// A view as a cluster runs it (`Pipeline::cluster_view`).
pub struct ClusterView {
    pub view: String,
    /// The one source the view reads.
    pub source: String,
    pub key_partitions: u32,
    /// The view's output schema.
    pub schema: SchemaRef,
    /// The source's event-time column and WATERMARK delay (ms).
    pub(crate) event: (usize, i64),
    pub(crate) pre: Arc<SlotPlan>,
    /// An empty aggregator, copied for each stage-1 batch and each stage-2 task (the lock
    /// is held only to copy it: accumulators are not `Sync`).
    pub(crate) empty: Mutex<WindowAggregator>,
    pub(crate) post: Arc<SlotPlan>,
}

/// Stage 1's work on one batch of one input partition.
#[derive(Debug, Default)]
pub struct Stage1Batch {
    /// Partial states per pane, by key partition (partitions without rows are empty).
    pub states: Vec<Vec<RecordBatch>>,
    /// The latest event time in the batch (epoch ms), if any row has one.
    pub max_event_ms: Option<i64>,
    /// Rows without an event time (dropped: late in any case).
    pub no_time: u64,
}

impl ClusterView {
    /// The partition's watermark once it has seen `max_event_ms`: the WATERMARK delay
    /// behind it.
    pub fn watermark_after(&self, max_event_ms: i64) -> i64 {
        max_event_ms.saturating_sub(self.event.1)
    }

    /// Stage 1 over one batch of one input partition (in the source's schema).
    pub async fn stage1(&self, batch: &RecordBatch) -> Result<Stage1Batch> {
        let times = crate::dataflow::source::ts_millis(batch.column(self.event.0))?;
        let max_event_ms = times.iter().flatten().max();
        let rows = self.pre.run(batch.clone()).await?;
        let copy = self.empty.lock().partial_copy().ok_or_else(|| {
            WeirError::Internal(format!("view '{}' has no partial states", self.view))
        })?;
        let partial = copy.partial(&rows, self.key_partitions)?;
        Ok(Stage1Batch {
            states: partial.states,
            max_event_ms,
            no_time: partial.no_time,
        })
    }

    /// A new stage-2 task for one key partition, hearing from `inputs` input partitions.
    pub fn task(&self, inputs: usize) -> Result<KeyTask> {
        let aggregate = self.empty.lock().partial_copy().ok_or_else(|| {
            WeirError::Internal(format!("view '{}' has no partial states", self.view))
        })?;
        Ok(KeyTask {
            aggregate,
            post: self.post.clone(),
            schema: self.schema.clone(),
            aligner: Aligner::new(inputs),
        })
    }
}

/// One key partition of a view, owned by one member at a time.
pub struct KeyTask {
    aggregate: WindowAggregator,
    post: Arc<SlotPlan>,
    schema: SchemaRef,
    aligner: Aligner,
}

/// A [`KeyTask`]'s state: what [`KeyTask::restore`] takes back.
#[derive(Debug, Clone)]
pub struct KeySnapshot {
    /// Each input partition's watermark and the window close point.
    pub meta: serde_json::Value,
    /// The open panes, in [`KeySnapshot::schema`].
    pub batches: Vec<RecordBatch>,
    pub schema: SchemaRef,
}

impl KeyTask {
    /// Take the next message of the exchange partition's log; returns the view's rows of
    /// the windows it closed, oldest first.
    pub async fn push(&mut self, envelope: Envelope) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for step in self.aligner.push(envelope)? {
            match step {
                Step::Data { batch, .. } => self.aggregate.merge_states(&[batch])?,
                Step::Watermark(w) => {
                    for closed in self.aggregate.close(w)? {
                        for b in self.post.run(closed).await? {
                            out.push(mark_final(&self.schema, b, true)?);
                        }
                    }
                }
                // The log is the order: a snapshot at any offset is consistent, so
                // barriers and marks mean nothing here.
                Step::Checkpoint(_) | Step::Mark { .. } | Step::End => {}
            }
        }
        Ok(out)
    }

    /// The least watermark over the input partitions (`i64::MIN` until every one has
    /// sent one).
    pub fn watermark(&self) -> i64 {
        self.aligner.watermark()
    }

    pub fn open_groups(&self) -> usize {
        self.aggregate.open_groups()
    }

    pub fn snapshot(&mut self) -> Result<KeySnapshot> {
        Ok(KeySnapshot {
            meta: serde_json::json!({
                "inputs": self.aligner.input_watermarks(),
                "closed_through": self.aggregate.closed_through(),
            }),
            batches: self.aggregate.snapshot()?,
            schema: self.aggregate.state_schema()?,
        })
    }

    /// Put back a [`KeyTask::snapshot`] of the same view's task.
    pub fn restore(&mut self, snapshot: &KeySnapshot) -> Result<()> {
        let m = &snapshot.meta;
        let inputs: Vec<i64> =
            crate::dataflow::operator::meta_field(m, "inputs")?.unwrap_or_default();
        let closed: i64 =
            crate::dataflow::operator::meta_field(m, "closed_through")?.unwrap_or(i64::MIN);
        self.aligner.resume(&inputs)?;
        self.aggregate.restore(&snapshot.batches, closed, None)
    }
}

/// A member's numbering of a view's rows as its results topic gives them (docs/cluster.md,
/// "Serving"). The topic has one partition, so every member reads the same records in the
/// same order; each record is a batch of one key partition's rows with the count of that
/// partition's rows before it. A key partition's owner writes its rows again after a
/// failover (the same rows: its state is a function of the exchange log), so a row already
/// taken is recognised by that count and dropped. Every member takes the same rows with the
/// same seqs.
#[derive(Debug, Default)]
pub struct ResultsReader {
    sequencer: crate::sequencer::Sequencer,
}

impl ResultsReader {
    /// The rows of `batch` (key partition `kp`'s rows from its `first`-th on) not taken
    /// before, numbered; `None` when every one was.
    pub fn take(
        &mut self,
        kp: u32,
        first: u64,
        batch: RecordBatch,
    ) -> Option<(crate::sequencer::Numbered, RecordBatch)> {
        let taken = self.sequencer.rows_from(kp);
        let n = batch.num_rows() as u64;
        if first + n <= taken {
            return None;
        }
        if first > taken {
            // Rows between were never written: not something a key partition's owner does
            // (it writes its rows in order and writes again from an earlier count only).
            tracing::error!(
                kp,
                first,
                taken,
                "results: rows of a key partition are missing"
            );
        }
        let skip = taken.saturating_sub(first) as usize;
        let rows = batch.slice(skip, batch.num_rows() - skip);
        let numbered = self.sequencer.next(kp, rows.num_rows());
        Some((numbered, rows))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::connector::ConnectorRegistry;
    use crate::connector::testing::Pushed;
    use crate::dataflow::exchange::Message;
    use crate::pipeline::{EngineConfig, Pipeline};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn events(rows: &[(i64, &str, i64)]) -> RecordBatch {
        crate::window::tests::unit::table(rows)
    }

    async fn pipeline(key_partitions: u32) -> Pipeline {
        let config = EngineConfig {
            key_partitions,
            ..EngineConfig::default()
        };
        let mut p = Pipeline::new(config, ConnectorRegistry::new().with_source(Pushed));
        p.execute(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, k VARCHAR, v BIGINT, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'pushed'); \
             CREATE MATERIALIZED VIEW per_region AS SELECT window_start, k, COUNT(*) AS n, SUM(v) AS s \
             FROM TUMBLE(ev, ts, INTERVAL '10' SECOND) GROUP BY window_start, k \
             HAVING COUNT(*) > 1",
        )
        .await
        .unwrap();
        p
    }

    fn sorted(batches: &[RecordBatch]) -> Vec<String> {
        if batches.is_empty() {
            return vec![];
        }
        let all = concat_batches(&batches[0].schema(), batches).unwrap();
        let text = pretty_format_batches(&[all]).unwrap().to_string();
        let mut lines: Vec<String> = text.lines().skip(3).map(str::to_string).collect();
        lines.retain(|l| !l.starts_with('+'));
        lines.sort();
        lines
    }

    /// Two input partitions, four key partitions, messages in the order a log could hold
    /// them, and a snapshot and restore halfway: the rows are the single process's.
    #[tokio::test]
    async fn key_tasks_give_the_single_process_rows_across_a_restore() {
        let p0 = [
            events(&[(1_000, "eu", 1), (2_000, "us", 2), (3_000, "eu", 3)]),
            events(&[(12_000, "eu", 4), (13_000, "eu", 5), (25_000, "ap", 1)]),
        ];
        let p1 = [
            events(&[(4_000, "us", 7), (5_000, "ap", 1), (9_000, "us", 1)]),
            events(&[(11_000, "us", 2), (26_000, "ap", 2), (27_000, "ap", 3)]),
        ];
        // The single process: partition 0's and 1's batches in turn.
        let mut single = pipeline(1).await;
        single.set_partitions("ev", 2).unwrap();
        let mut expected = Vec::new();
        for step in 0..2 {
            for (from, batches) in [(0, &p0), (1, &p1)] {
                for o in single
                    .push("ev", from, batches[step].clone(), 0)
                    .await
                    .unwrap()
                {
                    expected.push(o.batch);
                }
            }
        }
        let expected = sorted(&expected);
        assert_eq!(expected.len(), 3, "{expected:?}");
        let kps = 4;
        let p = pipeline(kps).await;
        let view = p.cluster_view("per_region").unwrap();
        let mut logs: Vec<Vec<Envelope>> = vec![vec![]; kps as usize];
        for step in 0..2 {
            for (from, batches) in [(0, &p0), (1, &p1)] {
                let out = view.stage1(&batches[step]).await.unwrap();
                let w = view.watermark_after(out.max_event_ms.unwrap());
                for (kp, states) in out.states.into_iter().enumerate() {
                    for batch in states {
                        logs[kp].push(Envelope {
                            from,
                            message: Message::Data {
                                partition: kp as u32,
                                batch,
                            },
                        });
                    }
                    logs[kp].push(Envelope {
                        from,
                        message: Message::Watermark(w),
                    });
                }
            }
        }
        let mut rows = Vec::new();
        for log in logs {
            let half = log.len() / 2;
            let mut task = view.task(2).unwrap();
            for e in &log[..half] {
                rows.extend(task.push(e.clone()).await.unwrap());
            }
            let snap = task.snapshot().unwrap();
            let mut task = view.task(2).unwrap();
            task.restore(&snap).unwrap();
            for e in &log[half..] {
                rows.extend(task.push(e.clone()).await.unwrap());
            }
        }
        assert_eq!(sorted(&rows), expected);
    }

    #[test]
    fn results_written_again_after_a_failover_are_taken_once() {
        let rows =
            |from: i64, n: i64| events(&(from..from + n).map(|i| (i, "k", i)).collect::<Vec<_>>());
        let mut r = ResultsReader::default();
        // kp 0's rows 0..3, kp 1's rows 0..2, then kp 0 again from its snapshot at row 1
        // (rows 1..5: 1 and 2 seen), then kp 1's rows 0..2 once more.
        let (a, _) = r.take(0, 0, rows(0, 3)).unwrap();
        let (b, _) = r.take(1, 0, rows(100, 2)).unwrap();
        let (c, c_rows) = r.take(0, 1, rows(1, 4)).unwrap();
        assert!(r.take(1, 0, rows(100, 2)).is_none());
        assert_eq!((a.first_seq, b.first_seq, c.first_seq), (1, 4, 6));
        assert_eq!(c.ids.first, 3);
        let ts = crate::dataflow::source::ts_millis(c_rows.column(0)).unwrap();
        assert_eq!(ts.values().to_vec(), vec![3, 4]);
    }

    #[tokio::test]
    async fn an_input_partition_not_heard_from_holds_the_windows() {
        let p = pipeline(1).await;
        let view = p.cluster_view("per_region").unwrap();
        let mut task = view.task(2).unwrap();
        let out = view
            .stage1(&events(&[(1_000, "eu", 1), (2_000, "eu", 1)]))
            .await
            .unwrap();
        for batch in out.states.into_iter().flatten() {
            task.push(Envelope {
                from: 0,
                message: Message::Data {
                    partition: 0,
                    batch,
                },
            })
            .await
            .unwrap();
        }
        let rows = task
            .push(Envelope {
                from: 0,
                message: Message::Watermark(60_000),
            })
            .await
            .unwrap();
        assert!(rows.is_empty(), "input 1 has not spoken: nothing closes");
        let rows = task
            .push(Envelope {
                from: 1,
                message: Message::Watermark(60_000),
            })
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }

    #[tokio::test]
    async fn views_a_cluster_cannot_run_yet_are_refused_by_name() {
        let mut p = pipeline(4).await;
        p.execute(
            "CREATE MATERIALIZED VIEW sessions AS SELECT window_start, k, COUNT(*) AS n \
             FROM SESSION(ev, ts, INTERVAL '5' SECOND) GROUP BY window_start, k",
        )
        .await
        .unwrap();
        let e = p.cluster_view("sessions").err().unwrap().to_string();
        assert!(e.contains("sessions"), "{e}");
        assert!(e.contains("TUMBLE or HOP"), "{e}");
    }
}
