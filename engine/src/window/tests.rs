//! Tests of the window operators: exact rows out of TUMBLE, HOP and SESSION state for
//! batches pushed by hand (with restore-from-snapshot variants), and an ignored
//! throughput measurement.

pub(crate) mod unit {
    #![allow(clippy::unwrap_used)]
    use super::super::*;
    use datafusion::arrow::array::{AsArray, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use datafusion::common::tree_node::TreeNode;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::aggregates::AggregateExec;
    use datafusion::physical_plan::aggregates::AggregateMode;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// (window start, window end, key, count, sum)
    type Row = (i64, i64, String, i64, i64);

    /// Rows `(ts ms, k, v)` in the given (arrival) order.
    pub(crate) fn table(rows: &[(i64, &str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// The aggregator for `FROM {window} GROUP BY window_start, window_end, k` counting and
    /// summing `v`, and the rows as its pre plan makes them (in arrival order).
    async fn plan(window: &str, rows: &[(i64, &str, i64)]) -> (WindowAggregator, RecordBatch) {
        let sql = format!(
            "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total FROM {window} \
             GROUP BY window_start, window_end, k"
        );
        let mut q = Parser::new(&GenericDialect {})
            .try_with_sql(&sql)
            .unwrap()
            .parse_query()
            .unwrap();
        let spec = crate::sql::rewrite_windows(&mut q, &|_| None)
            .unwrap()
            .time
            .unwrap();
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let data = table(rows);
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(data.schema(), vec![vec![data]]).unwrap()),
        )
        .unwrap();
        let df = ctx.sql(&q.to_string()).await.unwrap();
        let physical = df.create_physical_plan().await.unwrap();
        let mut aggs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let _ = physical.apply(|n| {
            if n.downcast_ref::<AggregateExec>().is_some() {
                aggs.push(n.clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        let top = aggs[0].clone();
        let raw = aggs
            .iter()
            .find(|a| {
                matches!(
                    a.downcast_ref::<AggregateExec>().unwrap().mode(),
                    AggregateMode::Single
                        | AggregateMode::SinglePartitioned
                        | AggregateMode::Partial
                )
            })
            .unwrap()
            .clone();
        let raw = raw.downcast_ref::<AggregateExec>().unwrap();
        let agg = WindowAggregator::try_new(raw, top.schema(), &spec).unwrap();
        let pre = collect(raw.input().clone(), ctx.task_ctx()).await.unwrap();
        let pre = datafusion::arrow::compute::concat_batches(&raw.input().schema(), &pre).unwrap();
        (agg, pre)
    }

    fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
        let mut out = Vec::new();
        for b in batches {
            let ws = b.column(0).as_primitive::<TimestampMillisecondType>();
            let we = b.column(1).as_primitive::<TimestampMillisecondType>();
            let k = b.column(2).as_string::<i32>();
            let n = b.column(3).as_primitive::<Int64Type>();
            let t = b.column(4).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.push((
                    ws.value(i),
                    we.value(i),
                    k.value(i).to_string(),
                    n.value(i),
                    t.value(i),
                ));
            }
        }
        out.sort();
        out
    }

    /// HOP by brute force: every row in each of its windows.
    fn hop_expected(rows: &[(i64, &str, i64)], slide: i64, size: i64) -> Vec<Row> {
        let mut m: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
        for &(ts, k, v) in rows {
            let last = ts.div_euclid(slide) * slide;
            let mut s = last;
            while s > ts - size {
                let e = m.entry((s, k.to_string())).or_default();
                e.0 += 1;
                e.1 += v;
                s -= slide;
            }
        }
        m.into_iter()
            .map(|((s, k), (n, t))| (s, s + size, k, n, t))
            .collect()
    }

    /// SESSION by brute force: per key, sorted times split where the gap is reached.
    fn session_expected(rows: &[(i64, &str, i64)], gap: i64) -> Vec<Row> {
        let mut by_key: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
        for &(ts, k, v) in rows {
            by_key.entry(k).or_default().push((ts, v));
        }
        let mut out = Vec::new();
        for (k, mut r) in by_key {
            r.sort();
            let mut cur: Option<(i64, i64, i64, i64)> = None; // start, last, n, sum
            for (ts, v) in r {
                cur = match cur {
                    Some((s, l, n, t)) if ts - l < gap => Some((s, ts, n + 1, t + v)),
                    Some((s, l, n, t)) => {
                        out.push((s, l + gap, k.to_string(), n, t));
                        Some((ts, ts, 1, v))
                    }
                    None => Some((ts, ts, 1, v)),
                };
            }
            if let Some((s, l, n, t)) = cur {
                out.push((s, l + gap, k.to_string(), n, t));
            }
        }
        out.sort();
        out
    }

    /// Feed `pre` in chunks of `chunk` rows; after chunk `i` close at `watermarks[i]` (if
    /// any), emit early results, and snapshot and restore the state; then close everything.
    async fn run(
        mut agg: WindowAggregator,
        pre: &RecordBatch,
        chunk: usize,
        watermarks: &[i64],
    ) -> (Vec<Row>, Vec<Row>) {
        let mut closed = Vec::new();
        let mut early = Vec::new();
        let mut i = 0;
        let mut step = 0;
        while i < pre.num_rows() {
            let len = chunk.min(pre.num_rows() - i);
            let u = agg.update(&pre.slice(i, len)).unwrap();
            assert_eq!(u.late, 0, "no row is late in this input");
            i += len;
            if let Some(&w) = watermarks.get(step) {
                closed.extend(agg.close(w).unwrap());
            }
            early.extend(agg.early().unwrap());
            let state = agg.snapshot().unwrap();
            let ct = agg.closed_through();
            agg.restore(&state, ct, None).unwrap();
            step += 1;
        }
        closed.extend(agg.close(i64::MAX).unwrap());
        (rows_of(&closed), rows_of(&early))
    }

    // Out of order by up to 7 s, two keys; watermark = newest - 8 s, so nothing is late.
    const ROWS: &[(i64, &str, i64)] = &[
        (10_500, "a", 1),
        (13_000, "b", 2),
        (11_900, "a", 4),
        (17_000, "a", 8),
        (10_000, "b", 16),
        (21_000, "a", 32),
        (15_999, "b", 64),
        (14_000, "a", 128),
        (26_000, "b", 256),
        (19_000, "a", 512),
        (33_000, "a", 1024),
        (27_500, "b", 2048),
    ];

    fn watermarks(rows: &[(i64, &str, i64)], chunk: usize, delay: i64) -> Vec<i64> {
        rows.chunks(chunk)
            .scan(i64::MIN, |max, c| {
                *max = (*max).max(c.iter().map(|r| r.0).max().unwrap_or(i64::MIN));
                Some(*max - delay)
            })
            .collect()
    }

    /// `n` rows over `keys` keys spread across a minute, out of order by up to 3 s, and a
    /// few rows 20 s behind (late once the watermark has passed them).
    fn many_rows(n: usize, keys: usize) -> (Vec<(i64, String, i64)>, Vec<i64>) {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let base = 10_000 + (i as i64 * 60_000) / n as i64;
            let r = next();
            let jitter = (r % 3_000) as i64;
            let ts = if r % 97 == 0 {
                base - 20_000
            } else {
                base + jitter
            };
            // Skewed: half the rows in key 0.
            let k = if r % 2 == 0 {
                0
            } else {
                (r >> 8) as usize % keys
            };
            rows.push((ts, format!("k{k}"), (r % 100) as i64));
        }
        let marks = rows
            .chunks(5_000)
            .scan(i64::MIN, |max, c| {
                *max = (*max).max(c.iter().map(|r| r.0).max().unwrap_or(i64::MIN));
                Some(*max - 4_000)
            })
            .collect();
        (rows, marks)
    }

    /// A view's state in key partitions, worked on as tasks on several workers (big
    /// batches, so the partitions run in parallel), gives the same windows and late
    /// counts as one aggregator; through stage 1's partial states too, and across a
    /// checkpoint restored into another number of partitions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn key_partitions_on_workers_give_the_same_windows() {
        use crate::dataflow::keyed::{Keying, Windows};
        let (rows, marks) = many_rows(40_000, 700);
        let borrowed: Vec<(i64, &str, i64)> =
            rows.iter().map(|(t, k, v)| (*t, k.as_str(), *v)).collect();
        for window in [
            "TUMBLE(t, ts, INTERVAL '5' SECOND)",
            "HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)",
            "SESSION(t, ts, INTERVAL '1' SECOND)",
        ] {
            let (mut one, pre) = plan(window, &borrowed).await;
            let (agg, _) = plan(window, &borrowed).await;
            let keying = |key_partitions| Keying {
                key_partitions,
                workers: 3,
                repartition: true,
            };
            let mut keyed = Windows::new(Box::new(agg), keying(5)).unwrap();
            assert_eq!(keyed.key_partitions(), 5);
            let partials = !window.starts_with("SESSION");
            let (mut want, mut got) = (Vec::new(), Vec::new());
            let (mut late_one, mut late_keyed) = (0, 0);
            for (step, w) in marks.iter().enumerate() {
                let piece = pre.slice(step * 5_000, 5_000.min(pre.num_rows() - step * 5_000));
                late_one += one.update(&piece).unwrap().late;
                let u = if partials && step % 2 == 1 {
                    let (empty, parts) = keyed.partial_copy().unwrap();
                    let partial = empty.partial(&[piece], parts).unwrap();
                    assert_eq!(partial.states.len(), parts as usize);
                    keyed.merge_partial(partial).await.unwrap()
                } else {
                    // Rows cut by key (late rows listed), or folded whole first.
                    let list_late = step % 4 == 0;
                    let u = keyed.update(&piece, list_late).await.unwrap();
                    if list_late {
                        assert_eq!(u.late_rows.len() as u64, u.late);
                    }
                    u
                };
                late_keyed += u.late;
                if step == 0 {
                    // Half the rows are key 0's: its partition did at least half the work
                    // (an even split would give each a fifth).
                    let f = keyed.figures();
                    assert_eq!(f.key_partitions, 5);
                    assert!(f.busiest_partition_share >= 50, "{window}: {f:?}");
                }
                want.extend(one.close(*w).unwrap());
                got.extend(keyed.close(*w).await.unwrap());
                if step == 3 {
                    // A checkpoint of 5 partitions restored into 2 (repartition).
                    let state = keyed.snapshot(1).await.unwrap();
                    assert_eq!(state.len(), 5);
                    let closed = keyed.closed_through().unwrap();
                    let (agg, _) = plan(window, &borrowed).await;
                    keyed = Windows::new(Box::new(agg), keying(2)).unwrap();
                    keyed.restore(state, 5, closed, None).unwrap();
                    assert_eq!(keyed.key_partitions(), 2);
                }
            }
            want.extend(one.close(i64::MAX).unwrap());
            got.extend(keyed.close(i64::MAX).await.unwrap());
            assert!(late_one > 0, "{window}: some rows are late");
            assert_eq!(late_keyed, late_one, "{window}");
            let want = rows_of(&want);
            assert!(want.len() > 1_000, "{window}: {} rows", want.len());
            assert_eq!(rows_of(&got), want, "{window}");
        }
    }

    /// A TUMBLE view with several key partitions and workers runs stage 2 as long-lived
    /// tasks; a task that fails on a merge it was handed hands its own error to the view's
    /// next step that waits for it, and every later step says the view failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_stage2_task_fails_the_view_with_its_error() {
        use crate::dataflow::keyed::{Keying, Windows};
        let (agg, pre) = plan("TUMBLE(t, ts, INTERVAL '5' SECOND)", ROWS).await;
        let keying = Keying {
            key_partitions: 4,
            workers: 2,
            repartition: false,
        };
        let mut keyed = Windows::new(Box::new(agg), keying).unwrap();
        let described = keyed.describe_partitioning();
        assert!(described.contains("2 stage-2 tasks"), "{described}");
        let (empty, parts) = keyed.partial_copy().unwrap();
        let mut partial = empty.partial(&[pre], parts).unwrap();
        let bogus = RecordBatch::try_from_iter([(
            "x",
            Arc::new(StringArray::from(vec!["not a state"])) as _,
        )])
        .unwrap();
        partial.states[1] = vec![bogus];
        // Handed over: the task merges it in its own time, so the error comes with the next
        // send to that task, or else with the close, which waits for every task.
        let e = match keyed.merge_partial(partial).await {
            Err(e) => e,
            Ok(_) => keyed.close(i64::MAX).await.unwrap_err(),
        };
        assert!(
            matches!(&e, WeirError::Internal(m) if m == "window state column"),
            "{e:?}"
        );
        let again = keyed.close(i64::MAX - 1).await;
        let (empty, parts) = keyed.partial_copy().unwrap();
        let later = keyed
            .merge_partial(empty.partial(&[], parts).unwrap())
            .await
            .and(keyed.early().await.map(|_| ()));
        for r in [again.map(|_| ()), later] {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("failed earlier"), "{e:?}");
        }
    }

    #[tokio::test]
    async fn hop_panes_merge_into_every_window() {
        let expected = hop_expected(ROWS, 2_000, 6_000);
        for chunk in [1, 3, 12] {
            let (agg, pre) =
                plan("HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)", ROWS).await;
            let (closed, early) = run(agg, &pre, chunk, &watermarks(ROWS, chunk, 8_000)).await;
            assert_eq!(closed, expected, "chunk {chunk}");
            // Every early row is a window as it stood at some point: a subset of its rows.
            for e in &early {
                let fin = expected
                    .iter()
                    .find(|x| (x.0, &x.2) == (e.0, &e.2))
                    .unwrap();
                assert!(
                    e.3 <= fin.3 && e.4 & !fin.4 == 0,
                    "early {e:?} final {fin:?}"
                );
            }
        }
        // One row makes size / slide windows.
        assert_eq!(hop_expected(&[(10_500, "a", 1)], 2_000, 6_000).len(), 3);
    }

    /// Stage 1 and 2: folding each chunk into an empty copy and merging the partial states
    /// closes the same windows, with the same late counts, as folding the rows directly;
    /// a watermark a little behind makes some rows late (panes whose windows closed).
    #[tokio::test]
    async fn partial_states_merged_close_as_rows_folded() {
        for window in [
            "TUMBLE(t, ts, INTERVAL '5' SECOND)",
            "HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)",
        ] {
            for chunk in [1, 3, 5] {
                let (mut direct, pre) = plan(window, ROWS).await;
                let (mut merged, _) = plan(window, ROWS).await;
                let (mut closed_direct, mut closed_merged) = (Vec::new(), Vec::new());
                let (mut late_direct, mut late_merged) = (0, 0);
                let marks = watermarks(ROWS, chunk, 1_000);
                let mut i = 0;
                for w in marks {
                    let len = chunk.min(pre.num_rows() - i);
                    let piece = pre.slice(i, len);
                    i += len;
                    let u = direct.update(&piece).unwrap();
                    late_direct += u.late;
                    let partial = merged.partial_copy().unwrap().partial(&[piece], 3).unwrap();
                    let m = merged.merge_partial(&partial).unwrap();
                    assert_eq!((m.accepted, m.late), (u.accepted, u.late), "{window}");
                    late_merged += m.late;
                    closed_direct.extend(direct.close(w).unwrap());
                    closed_merged.extend(merged.close(w).unwrap());
                }
                closed_direct.extend(direct.close(i64::MAX).unwrap());
                closed_merged.extend(merged.close(i64::MAX).unwrap());
                assert_eq!(rows_of(&closed_merged), rows_of(&closed_direct), "{window}");
                assert_eq!(late_merged, late_direct);
                if chunk == 1 {
                    assert!(late_direct > 0, "{window}: some rows are late");
                }
            }
        }
        let (session, _) = plan("SESSION(t, ts, INTERVAL '3' SECOND)", ROWS).await;
        assert!(
            session.partial_copy().is_none(),
            "sessions fold on the driver"
        );
    }

    #[tokio::test]
    async fn tumble_is_one_pane_per_window() {
        let mut m: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
        for &(ts, k, v) in ROWS {
            let e = m
                .entry((ts.div_euclid(5_000) * 5_000, k.into()))
                .or_default();
            e.0 += 1;
            e.1 += v;
        }
        let expected: Vec<Row> = m
            .into_iter()
            .map(|((s, k), (n, t))| (s, s + 5_000, k, n, t))
            .collect();
        for chunk in [1, 5] {
            let (agg, pre) = plan("TUMBLE(t, ts, INTERVAL '5' SECOND)", ROWS).await;
            let (closed, _) = run(agg, &pre, chunk, &watermarks(ROWS, chunk, 8_000)).await;
            assert_eq!(closed, expected, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn sessions_extend_and_merge_out_of_order() {
        // Gap 3 s. Key a: 10.5, 11.9, 14 | 17, 19, 21 (17 - 14 = 3: a new session) | 33.
        // 14.0 arrives after 17 and 21 and bridges nothing; 19 arrives last and joins
        // 17 and 21, which were two sessions until then.
        let rows: &[(i64, &str, i64)] = &[
            (10_500, "a", 1),
            (17_000, "a", 2),
            (11_900, "a", 4),
            (21_000, "a", 8),
            (14_000, "a", 16),
            (10_000, "b", 32),
            (12_900, "b", 64),
            (19_000, "a", 128),
            (33_000, "a", 256),
            (30_000, "b", 512),
        ];
        let expected = session_expected(rows, 3_000);
        assert_eq!(
            expected,
            vec![
                (10_000, 15_900, "b".into(), 2, 96),
                (10_500, 17_000, "a".into(), 3, 21),
                (17_000, 24_000, "a".into(), 3, 138),
                (30_000, 33_000, "b".into(), 1, 512),
                (33_000, 36_000, "a".into(), 1, 256),
            ]
        );
        for chunk in [1, 2, 10] {
            let (agg, pre) = plan("SESSION(t, ts, INTERVAL '3' SECOND)", rows).await;
            // Watermarks far behind: sessions close only at the end.
            let wms = vec![5_000; rows.len()];
            let (closed, early) = run(agg, &pre, chunk, &wms).await;
            assert_eq!(closed, expected, "chunk {chunk}");
            assert!(!early.is_empty());
        }
        // Closing as the watermark moves: the first sessions close before the last rows.
        let (agg, pre) = plan("SESSION(t, ts, INTERVAL '3' SECOND)", rows).await;
        let wms: Vec<i64> = (0..rows.len())
            .map(|i| if i < 8 { 5_000 } else { 29_000 })
            .collect();
        let (closed, _) = run(agg, &pre, 1, &wms).await;
        assert_eq!(closed, expected);
    }

    #[tokio::test]
    async fn late_rows_name_the_window_they_missed() {
        let rows: &[(i64, &str, i64)] = &[(10_000, "a", 1), (3_000, "a", 2), (9_000, "a", 4)];
        // HOP 2 s / 6 s: at watermark 9 s the pane [2, 4) has no open window ([2, 8) closed).
        let (mut agg, pre) =
            plan("HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)", rows).await;
        agg.close(9_000).unwrap();
        let u = agg.update(&pre).unwrap();
        assert_eq!((u.accepted, u.late), (2, 1));
        assert_eq!(
            u.late_rows,
            vec![LateRow {
                row: 1,
                window: Some((2_000, 8_000)),
                reason: LATE_HOP
            }]
        );
        // SESSION gap 3 s: at watermark 9 s, 3 s makes a session ending at 6 s: late; 9 s
        // and 10 s are on time.
        let (mut agg, pre) = plan("SESSION(t, ts, INTERVAL '3' SECOND)", rows).await;
        agg.close(9_000).unwrap();
        let u = agg.update(&pre).unwrap();
        assert_eq!(u.late_rows.len(), 1);
        assert_eq!(u.late_rows[0].window, Some((3_000, 6_000)));
        let out = rows_of(&agg.close(i64::MAX).unwrap());
        assert_eq!(out, vec![(9_000, 13_000, "a".into(), 2, 5)]);
        // A row less than a gap after a closed session's last row is late too.
        let (mut agg, pre) = plan(
            "SESSION(t, ts, INTERVAL '3' SECOND)",
            &[(10_000, "a", 1), (12_000, "a", 2)],
        )
        .await;
        agg.update(&pre.slice(0, 1)).unwrap();
        assert_eq!(rows_of(&agg.close(13_000).unwrap()).len(), 1);
        let u = agg.update(&pre.slice(1, 1)).unwrap();
        assert_eq!(u.late_rows[0].window, Some((10_000, 13_000)));
        assert_eq!(u.late_rows[0].reason, session::LATE_CLOSED);
    }

    #[test]
    fn window_bounds_in_every_timestamp_unit() {
        use datafusion::arrow::datatypes::{
            TimestampMicrosecondType, TimestampNanosecondType, TimestampSecondType,
        };
        let tz: Option<Arc<str>> = Some("+01:00".into());
        let t = |u| DataType::Timestamp(u, tz.clone());
        let a = bound_array(vec![-1_500, 2_000], &t(TimeUnit::Second)).unwrap();
        assert_eq!(a.data_type(), &t(TimeUnit::Second));
        assert_eq!(a.as_primitive::<TimestampSecondType>().values(), &[-2, 2]);
        let a = bound_array(vec![1_500], &t(TimeUnit::Microsecond)).unwrap();
        assert_eq!(
            a.as_primitive::<TimestampMicrosecondType>().values(),
            &[1_500_000]
        );
        let a = bound_array(vec![1_500], &t(TimeUnit::Nanosecond)).unwrap();
        assert_eq!(
            a.as_primitive::<TimestampNanosecondType>().values(),
            &[1_500_000_000]
        );
        assert_eq!(to_ms(-2, TimeUnit::Second), -2_000);
        assert_eq!(to_ms(-1, TimeUnit::Microsecond), -1);
    }

    #[tokio::test]
    async fn output_watermark_is_the_first_open_window() {
        let (agg, _) = plan("HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)", ROWS).await;
        // Watermark 9 s: [2, 8) closed, [4, 10) open.
        assert_eq!(agg.output_watermark(9_000), 4_000);
        assert_eq!(agg.output_watermark(10_000), 6_000);
        let (agg, _) = plan("TUMBLE(t, ts, INTERVAL '5' SECOND)", ROWS).await;
        assert_eq!(agg.output_watermark(9_000), 5_000);
    }
}

/// Throughput of the window operators through a pipeline (pre plan, windows, post plan):
/// `cargo test --release -p weir-engine --lib window::bench -- --ignored --nocapture`.
mod bench {
    #![allow(clippy::unwrap_used)]
    use crate::connector::ConnectorRegistry;
    use crate::connector::testing::Pushed;
    use crate::pipeline::{EngineConfig, Pipeline};
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    async fn rows_per_second(window: &str, rows: i64) -> f64 {
        let mut p = Pipeline::new(
            EngineConfig::default(),
            ConnectorRegistry::new().with_source(Pushed),
        );
        p.execute(&format!(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, k TEXT, v BIGINT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'pushed');
             CREATE MATERIALIZED VIEW w AS SELECT window_start, window_end, k, count(*) AS n, \
               sum(v) AS total, max(v) AS top FROM {window} GROUP BY window_start, window_end, k;"
        ))
        .await
        .unwrap();
        let schema = p.source_schema("ev").unwrap();
        let keys: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
        // One row per millisecond, 100 keys, 8192-row micro-batches.
        let batches: Vec<RecordBatch> = (0..rows)
            .step_by(8192)
            .map(|from| {
                let to = (from + 8192).min(rows);
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(TimestampMillisecondArray::from(
                            (from..to)
                                .map(|i| 1_700_000_000_000 + i)
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(
                            (from..to)
                                .map(|i| keys[(i * 7 % 100) as usize].as_str())
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(Int64Array::from((from..to).collect::<Vec<_>>())),
                    ],
                )
                .unwrap()
            })
            .collect();
        let started = std::time::Instant::now();
        let mut out = 0;
        for b in batches {
            out += p.push("ev", 0, b, 0).await.unwrap().len();
        }
        out += p.end_source("ev").await.unwrap().len();
        assert!(out > 0);
        rows as f64 / started.elapsed().as_secs_f64()
    }

    #[tokio::test(flavor = "current_thread")]
    #[ignore = "a measurement, not a test"]
    async fn tumble_hop_session_throughput() {
        let rows = 1_000_000;
        for (name, window) in [
            ("TUMBLE 10s", "TUMBLE(ev, ts, INTERVAL '10' SECOND)"),
            (
                "HOP 10s/2s",
                "HOP(ev, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND)",
            ),
            (
                "HOP 60s/1s",
                "HOP(ev, ts, INTERVAL '1' SECOND, INTERVAL '60' SECOND)",
            ),
            ("SESSION 50ms", "SESSION(ev, ts, INTERVAL '50' MILLISECOND)"),
            ("SESSION 5s", "SESSION(ev, ts, INTERVAL '5' SECOND)"),
        ] {
            let r = rows_per_second(window, rows).await;
            println!("{name:>14}: {:>10.0} rows/s over {rows} rows", r);
        }
    }
}
