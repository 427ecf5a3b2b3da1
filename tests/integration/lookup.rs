//! Lookup joins with reference tables (CREATE TABLE): the same table from CSV, JSON lines
//! and Parquet files and from a real PostgreSQL table; reloads by REFRESH TABLE and by
//! `refresh.interval` take effect from the next micro-batch; a failed reload keeps the
//! previous contents.

#![allow(clippy::unwrap_used)]

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::pipeline::Pipeline;
use weir_tests::slt::{format_batches, test_pipeline};

const SOURCE: &str = "CREATE SOURCE clicks (ts TIMESTAMP NOT NULL, user_id BIGINT) \
                      WITH (connector = 'test');";
const COLUMNS: &str =
    "id BIGINT NOT NULL, name TEXT, since TIMESTAMP, score DOUBLE, active BOOLEAN";

/// The users table every format holds.
const USERS_CSV: &str = "id,name,since,score,active\n\
                         1,alice,2024-01-02 03:04:05,1.5,true\n\
                         2,bob,2023-12-31 23:59:59.250,,false\n\
                         3,,2024-02-29 12:00:00,-2.25,\n";

/// What a join of clicks by users 1, 2, 3 and 4 (unknown) gives.
fn expected_rows() -> Vec<Vec<String>> {
    let row = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        row(&["1", "alice", "2024-01-02T03:04:05", "1.5", "true"]),
        row(&["2", "bob", "2023-12-31T23:59:59.250", "NULL", "false"]),
        row(&["3", "NULL", "2024-02-29T12:00:00", "-2.25", "NULL"]),
        row(&["4", "NULL", "NULL", "NULL", "NULL"]),
    ]
}

fn write_parquet(path: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "since",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("score", DataType::Float64, true),
        Field::new("active", DataType::Boolean, true),
        Field::new("ignored", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3])),
        Arc::new(StringArray::from(vec![Some("alice"), Some("bob"), None])),
        Arc::new(TimestampMillisecondArray::from(vec![
            1_704_164_645_000,
            1_704_067_199_250,
            1_709_208_000_000,
        ])),
        Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-2.25)])),
        Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
        Arc::new(StringArray::from(vec!["x", "y", "z"])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn clicks(users: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("user_id", DataType::Int64, true),
    ]));
    let ts: Vec<i64> = (0..users.len() as i64).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampMillisecondArray::from(ts)),
            Arc::new(Int64Array::from(users.to_vec())),
        ],
    )
    .unwrap()
}

/// Push clicks by `users` and return what view `view` emitted, sorted.
async fn push(p: &mut Pipeline, view: &str, users: &[i64]) -> Vec<Vec<String>> {
    let out = p.push("clicks", 0, clicks(users), 0).await.unwrap();
    let batches: Vec<RecordBatch> = out
        .into_iter()
        .filter(|o| o.view == view)
        .map(|o| o.batch)
        .collect();
    let mut rows = format_batches(&batches).unwrap();
    rows.sort();
    rows
}

fn enrich_view(name: &str, table: &str) -> String {
    format!(
        "CREATE MATERIALIZED VIEW {name} AS SELECT c.user_id, u.name, u.since, u.score, u.active \
         FROM clicks c LEFT JOIN {table} u ON c.user_id = u.id;"
    )
}

#[tokio::test]
async fn csv_json_and_parquet_tables_join_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("users.csv"), USERS_CSV).unwrap();
    std::fs::write(
        d.join("users.jsonl"),
        "{\"id\":1,\"name\":\"alice\",\"since\":\"2024-01-02T03:04:05\",\"score\":1.5,\"active\":true}\n\
         {\"id\":2,\"name\":\"bob\",\"since\":\"2023-12-31T23:59:59.250\",\"active\":false}\n\
         {\"id\":3,\"since\":\"2024-02-29T12:00:00\",\"score\":-2.25}\n",
    )
    .unwrap();
    write_parquet(&d.join("users.parquet"));
    std::fs::write(d.join("users.tsv"), USERS_CSV.replace(',', "\t")).unwrap();

    let mut p = test_pipeline(d);
    let mut sql = SOURCE.to_string();
    for (table, file, extra) in [
        ("csv_users", "users.csv", ""),
        ("json_users", "users.jsonl", ""),
        ("parquet_users", "users.parquet", ""),
        (
            "tsv_users",
            "users.tsv",
            ", format = 'csv', 'csv.delimiter' = '\t'",
        ),
    ] {
        sql.push_str(&format!(
            "CREATE TABLE {table} ({COLUMNS}) WITH (connector = 'file', path = '{}'{extra});",
            d.join(file).display()
        ));
        sql.push_str(&enrich_view(&format!("v_{table}"), table));
    }
    p.execute(&sql).await.unwrap();
    let out = p.push("clicks", 0, clicks(&[4, 2, 1, 3]), 0).await.unwrap();
    for view in [
        "v_csv_users",
        "v_json_users",
        "v_parquet_users",
        "v_tsv_users",
    ] {
        let batches: Vec<RecordBatch> = out
            .iter()
            .filter(|o| o.view == view)
            .map(|o| o.batch.clone())
            .collect();
        let mut rows = format_batches(&batches).unwrap();
        rows.sort();
        assert_eq!(rows, expected_rows(), "{view}");
    }
}

#[tokio::test]
async fn reloads_take_effect_from_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.csv");
    std::fs::write(&file, "id,name\n1,alice\n2,bob\n").unwrap();
    let mut p = test_pipeline(dir.path());
    p.execute(&format!(
        "{SOURCE} CREATE TABLE users (id BIGINT NOT NULL, name TEXT) \
         WITH (connector = 'file', path = '{}', 'refresh.interval' = '50ms'); \
         CREATE MATERIALIZED VIEW v AS SELECT c.user_id, u.name FROM clicks c \
         JOIN users u ON c.user_id = u.id;",
        file.display()
    ))
    .await
    .unwrap();
    let row = |id: &str, name: &str| vec![id.to_string(), name.to_string()];
    assert_eq!(
        push(&mut p, "v", &[1, 2, 3]).await,
        vec![row("1", "alice"), row("2", "bob")]
    );

    // REFRESH TABLE reloads at once.
    std::fs::write(&file, "id,name\n1,alicia\n3,carol\n").unwrap();
    p.execute("REFRESH TABLE users").await.unwrap();
    assert_eq!(
        push(&mut p, "v", &[1, 2, 3]).await,
        vec![row("1", "alicia"), row("3", "carol")]
    );

    // The runtime's refresh task reloads every refresh.interval.
    let mut refreshes = p.take_new_table_refreshes();
    assert_eq!(refreshes.len(), 1);
    let refresh = refreshes.remove(0);
    let handle = refresh.handle.clone();
    let task = tokio::spawn(refresh.run());
    std::fs::write(&file, "id,name\n2,bobby\n").unwrap();
    let loads = handle.info().loads;
    wait_until(|| handle.info().loads > loads && handle.info().rows == 1).await;
    assert_eq!(push(&mut p, "v", &[1, 2, 3]).await, vec![row("2", "bobby")]);

    // A reload that fails keeps the table as it was and says why.
    std::fs::write(&file, "id,name\nnot-a-number,x\n").unwrap();
    wait_until(|| handle.info().last_error.is_some()).await;
    let err = handle.info().last_error.unwrap();
    assert!(err.contains("users.csv"), "{err}");
    assert_eq!(push(&mut p, "v", &[1, 2, 3]).await, vec![row("2", "bobby")]);
    let described = p.execute("DESCRIBE users").await.unwrap();
    let text = format!("{described:?}");
    assert!(text.contains("last_error"), "{text}");
    task.abort();
}

async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_table_joins_with_every_type() {
    let Some(url) = crate::postgres::pg_url() else {
        return;
    };
    let _pg = crate::crash::pg_lock().read().await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let table = format!("lookup_users_{}", std::process::id());
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, since timestamp, \
         score double precision, active boolean, joined timestamptz, level int, \
         balance numeric(10,2), born date)"
    ))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES \
         (1, 'alice', '2024-01-02 03:04:05', 1.5, true, '2024-01-02 03:04:05+02', 7, 12.34, '1990-05-17'), \
         (2, 'bob', '2023-12-31 23:59:59.25', NULL, false, NULL, NULL, -0.5, NULL), \
         (3, NULL, '2024-02-29 12:00:00', -2.25, NULL, '2024-02-29 12:00:00+00', 0, NULL, '2000-02-29')"
    ))
    .execute(&db)
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut p = test_pipeline(dir.path());
    p.execute(&format!(
        "{SOURCE} \
         CREATE TABLE users ({COLUMNS}, joined TIMESTAMP, level INT, balance DECIMAL(10, 2), born DATE) \
         WITH (connector = 'postgres', url = '{url}', table = 'public.{table}'); \
         CREATE TABLE active_users (id BIGINT NOT NULL, name TEXT) \
         WITH (connector = 'postgres', url = '{url}', query = 'SELECT id, upper(name) AS name FROM {table} WHERE active'); \
         CREATE MATERIALIZED VIEW v AS SELECT c.user_id, u.name, u.since, u.score, u.active, \
         u.joined, u.level, u.balance, u.born FROM clicks c LEFT JOIN users u ON c.user_id = u.id; \
         CREATE MATERIALIZED VIEW a AS SELECT c.user_id, u.name FROM clicks c JOIN active_users u \
         ON c.user_id = u.id;"
    ))
    .await
    .unwrap();
    let out = p.push("clicks", 0, clicks(&[3, 1, 4, 2]), 0).await.unwrap();
    let rows = |view: &str| {
        let b: Vec<RecordBatch> = out
            .iter()
            .filter(|o| o.view == view)
            .map(|o| o.batch.clone())
            .collect();
        let mut r = format_batches(&b).unwrap();
        r.sort();
        r
    };
    let extra = [
        ["2024-01-02T01:04:05", "7", "12.34", "1990-05-17"],
        ["NULL", "NULL", "-0.50", "NULL"],
        ["2024-02-29T12:00:00", "0", "NULL", "2000-02-29"],
        ["NULL", "NULL", "NULL", "NULL"],
    ];
    let expected: Vec<Vec<String>> = expected_rows()
        .into_iter()
        .zip(extra)
        .map(|(mut r, e)| {
            r.extend(e.iter().map(|s| s.to_string()));
            r
        })
        .collect();
    assert_eq!(rows("v"), expected);
    assert_eq!(rows("a"), vec![vec!["1".to_string(), "ALICE".to_string()]]);

    // A value that does not fit the declared column fails CREATE TABLE, naming both.
    let e = p
        .execute(&format!(
            "CREATE TABLE bad (id BIGINT, name BIGINT) WITH (connector = 'postgres', \
             url = '{url}', table = '{table}')"
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("loading table 'bad'") && e.contains("column 'name'") && e.contains("Int64"),
        "{e}"
    );
    // A missing table names it.
    let e = p
        .execute(&format!(
            "CREATE TABLE gone (id BIGINT) WITH (connector = 'postgres', url = '{url}', \
             table = 'no_such_table_here')"
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"no_such_table_here\""), "{e}");
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&db)
        .await
        .unwrap();
}
