//! A NULL in a view's key column, into Postgres: the group of NULLs is one row like any
//! other, upserted, updated, deleted and replayed by its key, for an updating view
//! (changelog mode) and a windowed view (upsert mode); a table whose key cannot hold a NULL
//! stops the sink with a message that says what to do.

use super::{SinksByView, pg_url, pool, sinks_by_view, unique, write_outputs};
use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sqlx::PgPool;
use std::sync::Arc;
use weir_engine::pipeline::{Output, Pipeline};

const SOURCE: &str = "CREATE SOURCE r (site TEXT, temp DOUBLE, ts TIMESTAMP NOT NULL, \
    WATERMARK FOR ts AS ts) WITH (connector = 'test');";

/// Sites (NULL among them) with fewer than three readings.
const QUIET: &str = "SELECT site, count(*) AS n, max(temp) AS hottest FROM r \
    GROUP BY site HAVING count(*) < 3";

/// Readings per site and 10 seconds.
const PER_WINDOW: &str = "SELECT window_start, window_end, site, count(*) AS n \
    FROM TUMBLE(r, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, site";

/// [`PER_WINDOW`] in batch SQL.
const PER_WINDOW_BATCH: &str = "SELECT date_bin(INTERVAL '10' SECOND, ts) AS window_start, \
    date_bin(INTERVAL '10' SECOND, ts) + INTERVAL '10' SECOND AS window_end, site, \
    count(*) AS n FROM r GROUP BY 1, 2, 3";

/// Each step's readings: (site, temp, second). The NULL site comes in, changes, goes away
/// (its third reading) and comes back with the windows.
/// A reading: (site, temp, second).
type Reading = (Option<&'static str>, Option<f64>, i64);

const STEPS: &[&[Reading]] = &[
    &[
        (None, Some(1.5), 1),
        (Some("a"), Some(2.0), 2),
        (Some("b"), None, 3),
    ],
    &[(None, Some(4.0), 11), (Some("a"), None, 12)],
    &[(None, None, 21), (Some("b"), Some(3.0), 22)],
    &[(Some("a"), Some(0.5), 31), (Some("c"), Some(7.0), 32)],
];

type QuietRow = (Option<String>, i64, Option<f64>);
type WindowRow = (chrono::DateTime<chrono::Utc>, Option<String>, i64);

fn step_batch(schema: &SchemaRef, rows: &[Reading]) -> RecordBatch {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter()
                    .map(|r| 1_714_521_600_000 + r.2 * 1000)
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// `sql` in batch over `tables` (name, rows), its rows read through a table in `db` (so that they come
/// back in the same types and order as the sink's table).
async fn batch_rows<T>(
    db: &PgPool,
    tables: &[(&str, &[RecordBatch])],
    sql: &str,
    select: &str,
) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let ctx = SessionContext::new();
    for (name, pushed) in tables {
        let schema = pushed[0].schema();
        ctx.register_table(
            *name,
            Arc::new(MemTable::try_new(schema, vec![pushed.to_vec()]).unwrap()),
        )
        .unwrap();
    }
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    // The answer as VALUES rows: every value a literal (strings here are plain names).
    let mut values = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            let cols: Vec<String> = b
                .columns()
                .iter()
                .map(|c| {
                    let v = datafusion::arrow::util::display::array_value_to_string(c, i).unwrap();
                    if c.is_null(i) {
                        "NULL".to_string()
                    } else if matches!(c.data_type(), DataType::Timestamp(_, None)) {
                        // A UTC instant, as the sink writes it.
                        format!("'{v}+00'")
                    } else {
                        format!("'{v}'")
                    }
                })
                .collect();
            values.push(format!("({})", cols.join(", ")));
        }
    }
    if values.is_empty() {
        return vec![];
    }
    let names: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (select, order) = select.split_once(" ORDER BY ").unwrap();
    sqlx::query_as(&format!(
        "WITH answer ({}) AS (VALUES {}) {select} FROM answer ORDER BY {order}",
        names.join(", "),
        values.join(", ")
    ))
    .fetch_all(db)
    .await
    .unwrap()
}

const READ_QUIET: &str =
    "SELECT site, n::bigint, hottest::double precision ORDER BY site NULLS FIRST";
const READ_WINDOWS: &str =
    "SELECT window_start::timestamptz, site, n::bigint ORDER BY window_start, site NULLS FIRST";

async fn table_rows<T>(db: &PgPool, table: &str, read: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let (select, order) = read.split_once(" ORDER BY ").unwrap();
    sqlx::query_as(&format!("{select} FROM {table} ORDER BY {order}"))
        .fetch_all(db)
        .await
        .unwrap()
}

async fn pipeline(
    dir: &std::path::Path,
    url: &str,
    quiet: &str,
    windows: &str,
) -> (Pipeline, SinksByView) {
    let mut p = weir_tests::slt::test_pipeline(dir);
    p.execute(&format!(
        "{SOURCE}
         CREATE MATERIALIZED VIEW quiet AS {QUIET};
         CREATE MATERIALIZED VIEW windows AS {PER_WINDOW};
         CREATE SINK quiet_pg FROM quiet WITH (connector = 'postgres', url = '{url}', \
           table = '{quiet}', 'batch.rows' = '2');
         CREATE SINK windows_pg FROM windows WITH (connector = 'postgres', url = '{url}', \
           table = '{windows}');"
    ))
    .await
    .unwrap();
    let sinks = sinks_by_view(&mut p);
    (p, sinks)
}

/// `outputs` into the sinks, then a checkpoint.
async fn write(sinks: &mut SinksByView, outputs: &[Output], epoch: u64) {
    write_outputs(sinks, outputs).await;
    for s in sinks.values_mut() {
        s.precommit(epoch).await.unwrap();
        s.commit(epoch).await.unwrap();
    }
}

/// After every step both tables equal the same SQL in batch, the NULL site's row among
/// them (inserted, updated, deleted); the key is `UNIQUE NULLS NOT DISTINCT`; writing every
/// output again (a replay from the start) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_key_is_one_key() {
    let Some(url) = pg_url() else { return };
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let (quiet, windows) = (unique("pg_null_quiet"), unique("pg_null_windows"));
    let dir = tempfile::tempdir().unwrap();
    let (mut p, mut sinks) = pipeline(dir.path(), &url, &quiet, &windows).await;
    for s in sinks.values_mut() {
        s.recover(None).await.unwrap();
    }
    let schema = p.source_schema("r").unwrap();
    let mut pushed = Vec::new();
    let mut outputs = Vec::new();
    let mut null_rows = Vec::new();
    for (step, rows) in STEPS.iter().enumerate() {
        let batch = step_batch(&schema, rows);
        pushed.push(batch.clone());
        let out = p.push("r", 0, batch, 0).await.unwrap();
        write(&mut sinks, &out, step as u64 + 1).await;
        outputs.extend(out);
        let want: Vec<QuietRow> = batch_rows(&db, &[("r", &pushed)], QUIET, READ_QUIET).await;
        let got: Vec<QuietRow> = table_rows(&db, &quiet, READ_QUIET).await;
        assert_eq!(got, want, "quiet after step {}", step + 1);
        null_rows.push(got.iter().find(|r| r.0.is_none()).cloned());
    }
    // The NULL site's row came, changed and went.
    assert_eq!(
        null_rows,
        vec![
            Some((None, 1, Some(1.5))),
            Some((None, 2, Some(4.0))),
            None,
            None
        ]
    );
    // The end of input closes every window.
    let out = p.end_source("r").await.unwrap();
    write(&mut sinks, &out, 5).await;
    outputs.extend(out);
    let want: Vec<WindowRow> =
        batch_rows(&db, &[("r", &pushed)], PER_WINDOW_BATCH, READ_WINDOWS).await;
    assert_eq!(want.iter().filter(|r| r.1.is_none()).count(), 3, "{want:?}");
    assert_eq!(
        table_rows::<WindowRow>(&db, &windows, READ_WINDOWS).await,
        want
    );
    for s in sinks.values_mut() {
        s.close().await.unwrap();
    }
    for table in [&quiet, &windows] {
        let nulls_not_distinct: Vec<bool> = sqlx::query_scalar(
            "SELECT indnullsnotdistinct FROM pg_index WHERE indrelid = to_regclass($1) \
             AND indisunique",
        )
        .bind(format!("public.{table}"))
        .fetch_all(&db)
        .await
        .unwrap();
        assert_eq!(nulls_not_distinct, vec![true], "{table}");
    }

    // Everything again, one change per transaction: nothing changes.
    let again = tempfile::tempdir().unwrap();
    let (_p2, mut sinks2) = pipeline(again.path(), &url, &quiet, &windows).await;
    for s in sinks2.values_mut() {
        s.recover(None).await.unwrap();
    }
    write(&mut sinks2, &outputs, 1).await;
    for s in sinks2.values_mut() {
        s.close().await.unwrap();
    }
    let want: Vec<QuietRow> = batch_rows(&db, &[("r", &pushed)], QUIET, READ_QUIET).await;
    assert_eq!(table_rows::<QuietRow>(&db, &quiet, READ_QUIET).await, want);
    let want: Vec<WindowRow> =
        batch_rows(&db, &[("r", &pushed)], PER_WINDOW_BATCH, READ_WINDOWS).await;
    assert_eq!(
        table_rows::<WindowRow>(&db, &windows, READ_WINDOWS).await,
        want
    );
}

/// A table made before (a primary key on a column the view can leave NULL) cannot hold the
/// NULL site: the sink stops on it with a message that says why and what to do, and the
/// rows before it are in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_key_refuses_a_null_key_with_help() {
    let Some(url) = pg_url() else { return };
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let (quiet, windows) = (unique("pg_pk_quiet"), unique("pg_pk_windows"));
    sqlx::query(&format!(
        "CREATE TABLE {quiet} (site text PRIMARY KEY, n bigint NOT NULL, hottest double precision)"
    ))
    .execute(&db)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, mut sinks) = pipeline(dir.path(), &url, &quiet, &windows).await;
    for s in sinks.values_mut() {
        s.recover(None).await.unwrap();
    }
    let schema = p.source_schema("r").unwrap();
    let batch = step_batch(&schema, &[(Some("a"), Some(1.0), 1)]);
    let out = p.push("r", 0, batch, 0).await.unwrap();
    write(&mut sinks, &out, 1).await;
    let batch = step_batch(&schema, &[(None, Some(1.0), 2)]);
    let out = p.push("r", 0, batch, 0).await.unwrap();
    let sink = sinks.get_mut("quiet").unwrap();
    let o = out.iter().find(|o| o.view == "quiet").unwrap();
    let e = sink.write(o.batch.clone(), o.ids).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "postgres sink 'quiet_pg' (table {quiet}): a row of view 'quiet' has NULL in key \
             column 'site', which the table's key cannot hold (a primary key, or a unique \
             index whose NULLs are distinct). On PostgreSQL 15 and later the sink creates the \
             table with UNIQUE NULLS NOT DISTINCT on the key, which holds a NULL key as one \
             key: drop the table to have it created so, or add such a constraint; or filter \
             the NULLs out or COALESCE them in the view"
        )
    );
    let rows: Vec<QuietRow> = table_rows(&db, &quiet, READ_QUIET).await;
    assert_eq!(rows, vec![(Some("a".to_string()), 1, Some(1.0))]);
}

/// An outer join without a bound (an updating view keyed by all its columns, the padded
/// ones NULL) into Postgres: after every step the table is the same LEFT JOIN in batch over
/// the rows so far, a user's row without a device deleted when the first login comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updating_outer_join_deletes_its_padded_rows() {
    let Some(url) = pg_url() else { return };
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_user_devices");
    let dir = tempfile::tempdir().unwrap();
    let mut p = weir_tests::slt::test_pipeline(dir.path());
    let join = "SELECT u.id, u.name, l.device FROM users u LEFT JOIN logins l ON u.id = l.user_id";
    p.execute(&format!(
        "CREATE SOURCE users (id BIGINT, name TEXT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
           WITH (connector = 'test');
         CREATE SOURCE logins (user_id BIGINT, device TEXT, ts TIMESTAMP NOT NULL, \
           WATERMARK FOR ts AS ts) WITH (connector = 'test');
         CREATE MATERIALIZED VIEW user_devices AS {join};
         CREATE SINK devices_pg FROM user_devices WITH (connector = 'postgres', url = '{url}', \
           table = '{table}');"
    ))
    .await
    .unwrap();
    let mut sinks = sinks_by_view(&mut p);
    for s in sinks.values_mut() {
        s.recover(None).await.unwrap();
    }
    let (users, logins) = (
        p.source_schema("users").unwrap(),
        p.source_schema("logins").unwrap(),
    );
    let row = |schema: &SchemaRef, id: Option<i64>, text: &str, second: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(datafusion::arrow::array::Int64Array::from(vec![id])) as ArrayRef,
                Arc::new(StringArray::from(vec![text])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    1_714_521_600_000 + second * 1000,
                ])),
            ],
        )
        .unwrap()
    };
    let steps = [
        ("users", row(&users, Some(1), "ann", 0)),
        ("users", row(&users, None, "nobody", 1)),
        ("logins", row(&logins, Some(1), "phone", 2)),
        ("logins", row(&logins, Some(3), "tv", 3)),
        ("users", row(&users, Some(2), "bob", 4)),
        ("logins", row(&logins, Some(1), "laptop", 5)),
        ("users", row(&users, Some(3), "cy", 6)),
    ];
    let read = "SELECT id::bigint, name, device ORDER BY id NULLS FIRST, device NULLS FIRST";
    let (mut pushed_users, mut pushed_logins) = (Vec::new(), Vec::new());
    type Row = (Option<i64>, Option<String>, Option<String>);
    for (epoch, (source, batch)) in steps.into_iter().enumerate() {
        match source {
            "users" => pushed_users.push(batch.clone()),
            _ => pushed_logins.push(batch.clone()),
        }
        let out = p.push(source, 0, batch, 0).await.unwrap();
        write(&mut sinks, &out, epoch as u64 + 1).await;
        let got: Vec<Row> = table_rows(&db, &table, read).await;
        let want: Vec<Row> = if pushed_logins.is_empty() {
            // DataFusion cannot scan an empty list of batches: no logins, no devices.
            batch_rows(
                &db,
                &[("u", &pushed_users)],
                "SELECT id, name, CAST(NULL AS TEXT) AS device FROM u",
                read,
            )
            .await
        } else {
            batch_rows(
                &db,
                &[("users", &pushed_users), ("logins", &pushed_logins)],
                join,
                read,
            )
            .await
        };
        assert_eq!(got, want, "after step {}", epoch + 1);
    }
    for s in sinks.values_mut() {
        s.close().await.unwrap();
    }
}
