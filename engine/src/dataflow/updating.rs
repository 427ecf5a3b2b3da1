//! An updating view: an aggregate without a window (`GROUP BY` over the whole stream). Its
//! output is a changelog (`changelog.rs`): per micro-batch, each group whose row changed
//! retracts the row it had and inserts the one it has now, after the post plan (HAVING,
//! projection) ran over both. The pre plan (scan, WHERE, the aggregate's inputs) runs per
//! micro-batch; [`UpdatingAggregator`] holds the groups. No row is ever late.

use super::operator::{Context, NodeState, Operator, StateFigures, meta_field};
use crate::changelog::{self, DELETE, INSERT};
use crate::error::Result;
use crate::planner::slot::SlotPlan;
use crate::window::UpdatingAggregator;
use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

pub struct UpdatingOp {
    pre: SlotPlan,
    aggregate: Box<UpdatingAggregator>,
    post: SlotPlan,
    /// The view's rows with the op column.
    changes_schema: SchemaRef,
    watermark: i64,
    /// `EMIT EVERY` (ms): changes are held and come out once per interval of processing
    /// time (aligned to the epoch), at the first tick of a new interval.
    every: Option<i64>,
    /// The interval (`now / every`) of the last emission.
    period: i64,
}

impl UpdatingOp {
    pub fn new(
        pre: SlotPlan,
        mut aggregate: Box<UpdatingAggregator>,
        post: SlotPlan,
        output_schema: &SchemaRef,
        every: Option<std::time::Duration>,
        now_ms: i64,
    ) -> Self {
        let every = every.map(|d| (d.as_millis() as i64).max(1));
        if every.is_some() {
            aggregate.hold();
        }
        UpdatingOp {
            pre,
            aggregate,
            post,
            changes_schema: changelog::with_op(output_schema),
            watermark: i64::MIN,
            every,
            period: every.map_or(0, |e| now_ms.div_euclid(e)),
        }
    }

    /// The view's changes from aggregate rows retracted and added: one batch, the
    /// retractions first.
    async fn changes(&mut self, old: RecordBatch, new: RecordBatch) -> Result<Vec<RecordBatch>> {
        let mut parts = Vec::new();
        for (rows, op) in [(old, DELETE), (new, INSERT)] {
            if rows.num_rows() == 0 {
                continue;
            }
            for b in self.post.run(rows).await? {
                if b.num_rows() > 0 {
                    parts.push(changelog::tag(b, op)?);
                }
            }
        }
        if parts.is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![concat_batches(&self.changes_schema, &parts)?])
    }
}

#[async_trait]
impl Operator for UpdatingOp {
    async fn on_batch(
        &mut self,
        _port: usize,
        batch: RecordBatch,
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        if changelog::is_changes(&batch) {
            // Over an updating view: its inserted rows are folded in, its deleted rows
            // taken out (the order within a batch does not change an aggregate).
            let (_, ops) = changelog::split(&batch)?;
            let mut rows = Vec::new();
            let mut signs: Vec<i8> = Vec::new();
            for op in [INSERT, DELETE] {
                let mask: BooleanArray = ops.iter().map(|o| Some(o == Some(op))).collect();
                let part = filter_record_batch(&batch, &mask)?;
                if part.num_rows() == 0 {
                    continue;
                }
                for b in self.pre.run(part).await? {
                    signs.extend(std::iter::repeat_n(op, b.num_rows()));
                    rows.push(b);
                }
            }
            let Some(first) = rows.first() else {
                return Ok(out);
            };
            let rows = concat_batches(&first.schema(), &rows)?;
            let c = self.aggregate.update(&rows, Some(&signs), cx.now_ms)?;
            out.extend(self.changes(c.old, c.new).await?);
            return Ok(out);
        }
        for b in self.pre.run(batch).await? {
            let c = self.aggregate.update(&b, None, cx.now_ms)?;
            out.extend(self.changes(c.old, c.new).await?);
        }
        Ok(out)
    }

    async fn on_watermark(
        &mut self,
        inputs: &[i64],
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        super::operator::follow_inputs(&mut self.watermark, inputs);
        Ok(vec![])
    }

    async fn on_tick(&mut self, cx: &mut Context<'_>) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        if let Some(gone) = self.aggregate.expire(cx.now_ms)? {
            let empty = RecordBatch::new_empty(gone.schema());
            out.extend(self.changes(gone, empty).await?);
        }
        if let Some(every) = self.every {
            let period = cx.now_ms.div_euclid(every);
            if period > self.period {
                self.period = period;
                let c = self.aggregate.flush()?;
                out.extend(self.changes(c.old, c.new).await?);
            }
        }
        Ok(out)
    }

    fn watermark(&self) -> i64 {
        self.watermark
    }

    fn figures(&self) -> StateFigures {
        StateFigures {
            open_groups: self.aggregate.groups() as u64,
            bytes: self.aggregate.state_bytes() as u64,
            ..StateFigures::default()
        }
    }

    async fn snapshot(&mut self) -> Result<NodeState> {
        Ok(NodeState {
            meta: serde_json::json!({ "watermark": self.watermark, "period": self.period }),
            parts: vec![
                self.aggregate.snapshot()?,
                self.aggregate.snapshot_pending()?,
            ],
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        self.watermark = meta_field(&state.meta, "watermark")?.unwrap_or(i64::MIN);
        if let Some(p) = meta_field(&state.meta, "period")? {
            self.period = p;
        }
        let mut parts = state.parts.into_iter();
        self.aggregate.restore(&parts.next().unwrap_or_default())?;
        self.aggregate
            .restore_pending(&parts.next().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use crate::changelog;
    use crate::connector::{ConnectorRegistry, testing::Pushed};
    use crate::pipeline::{EngineConfig, Output, Pipeline, StatementResult};
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn rows(rows: &[(&str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..rows.len() as i64).map(|i| i * 1000),
                )),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    /// A view's changes in an output: `(op, k, every other column)`.
    fn changes(out: &[Output], view: &str) -> Vec<(i8, String, Vec<i64>)> {
        let mut all = Vec::new();
        for o in out.iter().filter(|o| o.view == view) {
            let (b, ops) = changelog::split(&o.batch).unwrap();
            let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                let values = (1..b.num_columns())
                    .map(|c| {
                        b.column(c)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .value(i)
                    })
                    .collect();
                all.push((ops.value(i), k.value(i).to_string(), values));
            }
        }
        all
    }

    /// One change per changed group and batch, the old row retracted before the new one
    /// is inserted; HAVING turning false retracts; an unchanged value emits nothing; and
    /// DESCRIBE tells the state's size.
    #[tokio::test(flavor = "current_thread")]
    async fn emits_one_change_per_group_and_batch() {
        let mut p = Pipeline::new(
            EngineConfig::default(),
            ConnectorRegistry::new().with_source(Pushed),
        );
        p.execute(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, k TEXT, v BIGINT, \
               WATERMARK FOR ts AS ts) WITH (connector = 'pushed'); \
             CREATE MATERIALIZED VIEW few AS SELECT k, count(*) AS n, max(v) AS top \
               FROM ev GROUP BY k HAVING count(*) < 3; \
             CREATE MATERIALIZED VIEW tops AS SELECT k, max(v) AS top FROM ev GROUP BY k",
        )
        .await
        .unwrap();
        const I: i8 = changelog::INSERT;
        const D: i8 = changelog::DELETE;
        let out = p
            .push("ev", 0, rows(&[("a", 1), ("b", 2), ("a", 3)]), 0)
            .await
            .unwrap();
        assert_eq!(
            changes(&out, "few"),
            vec![(I, "a".into(), vec![2, 3]), (I, "b".into(), vec![1, 2])]
        );
        let out = p
            .push("ev", 0, rows(&[("a", 1), ("b", 1)]), 0)
            .await
            .unwrap();
        assert_eq!(
            changes(&out, "few"),
            vec![
                (D, "a".into(), vec![2, 3]),
                (D, "b".into(), vec![1, 2]),
                (I, "b".into(), vec![2, 2]),
            ]
        );
        assert_eq!(changes(&out, "tops"), vec![], "maxima unchanged");
        let out = p
            .push("ev", 0, rows(&[("c", 5), ("b", 4), ("c", 6)]), 0)
            .await
            .unwrap();
        assert_eq!(
            changes(&out, "few"),
            vec![(D, "b".into(), vec![2, 2]), (I, "c".into(), vec![2, 6])]
        );
        assert_eq!(
            changes(&out, "tops"),
            vec![
                (D, "b".into(), vec![2]),
                (I, "b".into(), vec![4]),
                (I, "c".into(), vec![6]),
            ]
        );
        let described = match p.execute("DESCRIBE tops").await.unwrap().remove(0) {
            StatementResult::Rows(b) => b,
            other => panic!("{other:?}"),
        };
        let lines = described[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let state = lines
            .iter()
            .flatten()
            .find(|l| l.starts_with("state "))
            .expect("a state line");
        assert!(state.starts_with("state groups=3 bytes="), "{state}");
        assert_ne!(state, "state groups=3 bytes=0");
    }
}
