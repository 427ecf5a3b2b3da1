//! Unit tests of the Postgres sink: options, keys, encoding and buffering, the fast
//! path's pauses, and which errors are retried (no database: tests/integration/postgres.rs
//! has those).

#![allow(clippy::unwrap_used)]

use super::*;
use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::TimeUnit;
use std::path::PathBuf;

const URL: &str = "postgres://weir@127.0.0.1:1/weir";

fn view_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("downloads", DataType::Int64, false),
    ]))
}

fn spec(key: &[&str], options: &[(&str, &str)]) -> SinkSpec {
    SinkSpec {
        name: "pg".into(),
        view: "health".into(),
        schema: view_schema(),
        key_columns: key.iter().map(|k| k.to_string()).collect(),
        never_null: vec![],
        changelog: false,
        options: Options::new(options.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
        data_dir: PathBuf::from("/nonexistent"),
        stats: Default::default(),
        checkpointed: false,
    }
}

fn parse(key: &[&str], options: &[(&str, &str)]) -> Result<PostgresSinkOptions> {
    let s = spec(key, options);
    let mut o = s.options.clone();
    let r = PostgresSinkOptions::parse(&mut o, &s)?;
    o.finish("the postgres sink", VALID_KEYS)?;
    Ok(r)
}

fn err(key: &[&str], options: &[(&str, &str)]) -> String {
    match PostgresSinkFactory.create(spec(key, options)) {
        Ok(_) => panic!("expected an error for {options:?}"),
        Err(e) => {
            assert!(e.is_user(), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn defaults() {
    let o = parse(&["window_start", "region"], &[("url", URL)]).unwrap();
    assert_eq!(o.mode, Mode::Upsert);
    assert_eq!(o.key, vec!["window_start", "region"]);
    assert_eq!(o.table.to_string(), "health");
    assert_eq!(o.batch_rows, 50_000);
    assert_eq!(o.retry_max, None);
    assert_eq!(o.backoff_max, Duration::from_secs(30));
    assert_eq!(o.connect.get_application_name(), Some("weir"));
    assert_eq!(o.connect.get_port(), 1);

    let o = parse(&[], &[("url", URL), ("table", "s.t")]).unwrap();
    assert_eq!(o.mode, Mode::Append);
    assert_eq!(o.key, vec![ROW_ID]);
    assert_eq!(o.table.schema.as_deref(), Some("s"));

    let o = parse(
        &["window_start", "region"],
        &[
            ("url", URL),
            ("primary.key", " region , window_start"),
            ("batch.rows", "10"),
            ("retry.max", "3"),
            ("retry.backoff.max", "2s"),
            ("MODE", "UPSERT"),
        ],
    )
    .unwrap();
    assert_eq!(o.key, vec!["region", "window_start"]);
    assert_eq!(
        (o.batch_rows, o.retry_max, o.backoff_max),
        (10, Some(3), Duration::from_secs(2))
    );
    // A key on a stateless view makes upsert the default.
    let o = parse(&[], &[("url", URL), ("primary.key", "region")]).unwrap();
    assert_eq!(o.mode, Mode::Upsert);
    // Append on a windowed view.
    let o = parse(&["region"], &[("url", URL), ("mode", "append")]).unwrap();
    assert_eq!((o.mode, o.key), (Mode::Append, vec![ROW_ID.to_string()]));
}

#[test]
fn option_errors() {
    // Whether WEIR_POSTGRES_URL is set decides the message; only check it when unset.
    if std::env::var(URL_ENV).is_err() {
        assert_eq!(
            err(&["region"], &[]),
            "the postgres sink needs option 'url' (postgres://user@host:port/database) or \
             the environment variable WEIR_POSTGRES_URL"
        );
    }
    assert_eq!(
        err(&["region"], &[("url", "mysql://x")]),
        "option 'url' is not a PostgreSQL URL like postgres://user@host:port/database"
    );
    assert!(
        err(&["region"], &[("url", "postgres://h:port/db")]).starts_with(
            "option 'url' is not a PostgreSQL URL like postgres://user@host:port/database: "
        )
    );
    assert_eq!(
        err(&[], &[("url", URL), ("mode", "upsert")]),
        "mode 'upsert' needs a key, and view 'health' has none (it is not windowed); set \
         'primary.key' = 'col1,col2' or use mode 'append'"
    );
    assert_eq!(
        err(
            &["region"],
            &[("url", URL), ("primary.key", "region,speed")]
        ),
        "option 'primary.key' names column 'speed', which view 'health' does not have; its \
         columns: window_start, region, downloads"
    );
    assert_eq!(
        err(
            &["region"],
            &[("url", URL), ("primary.key", "region,region")]
        ),
        "option 'primary.key' names column 'region' twice"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("primary.key", "region,")]),
        "option 'primary.key' has an empty column name"
    );
    assert_eq!(
        err(
            &[],
            &[("url", URL), ("mode", "append"), ("primary.key", "region")]
        ),
        "option 'primary.key' is for mode 'upsert'; mode 'append' keys rows by the \
         weir_row_id column it adds"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("mode", "merge")]),
        "option 'mode' must be one of upsert | append, got 'merge'"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("batch.rows", "0")]),
        "option 'batch.rows' must be at least 1"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("batch.rows", "many")]),
        "option 'batch.rows' has an invalid value 'many'"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("retry.max", "-1")]),
        "option 'retry.max' has an invalid value '-1'"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("retry.backoff.max", "0s")]),
        "option 'retry.backoff.max' must be more than zero"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("table", "a.b.c")]),
        "option 'table' = 'a.b.c' is not a table name (too many dots); write 'table' or \
         'schema.table', with \"double quotes\" around parts that need them"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("tabel", "t")]),
        "unknown option 'tabel' for the postgres sink; valid options: batch.rows, mode, \
         primary.key, retry.backoff.max, retry.max, table, url"
    );
    let mut s = spec(&[], &[("url", URL)]);
    s.schema = Arc::new(Schema::new(vec![Field::new(
        ROW_ID,
        DataType::Int64,
        false,
    )]));
    match PostgresSinkFactory.create(s) {
        Ok(_) => panic!("expected an error"),
        Err(e) => assert_eq!(
            e.to_string(),
            "view 'health' has a column named weir_row_id, which mode 'append' adds itself; \
             rename it in the view"
        ),
    }
    let mut s = spec(&["region"], &[("url", URL)]);
    s.schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("flags", DataType::UInt8, true),
    ]));
    match PostgresSinkFactory.create(s) {
        Ok(_) => panic!("expected an error"),
        Err(e) => assert!(
            e.to_string()
                .starts_with("the postgres sink cannot write column 'flags' of view 'health'"),
            "{e}"
        ),
    }
}

/// An updating view's spec: `region, downloads` keyed by `key`.
fn changes_spec(key: &[&str], options: &[(&str, &str)]) -> SinkSpec {
    let mut s = spec(key, options);
    s.changelog = true;
    s
}

#[test]
fn updating_views_are_keyed_by_the_view() {
    let parse_changes = |key: &[&str], options: &[(&str, &str)]| {
        let s = changes_spec(key, options);
        let mut o = s.options.clone();
        let r = PostgresSinkOptions::parse(&mut o, &s);
        r.and_then(|r| o.finish("the postgres sink", VALID_KEYS).map(|()| r))
    };
    let o = parse_changes(&["region"], &[("url", URL)]).unwrap();
    assert_eq!(
        (o.mode, o.key),
        (Mode::Changelog, vec!["region".to_string()])
    );
    // A global aggregate: no key, no primary key needed.
    let o = parse_changes(&[], &[("url", URL)]).unwrap();
    assert_eq!((o.mode, o.key), (Mode::Changelog, vec![]));
    // 'primary.key' naming the view's key, in another order, sets the table's order.
    let o = parse_changes(
        &["window_start", "region"],
        &[
            ("url", URL),
            ("primary.key", "region, window_start"),
            ("mode", "upsert"),
        ],
    )
    .unwrap();
    assert_eq!(o.key, vec!["region", "window_start"]);

    let err = |key: &[&str], options: &[(&str, &str)]| {
        let e = PostgresSinkFactory
            .create(changes_spec(key, options))
            .err()
            .unwrap();
        assert!(e.is_user(), "{e}");
        e.to_string()
    };
    assert_eq!(
        err(&["region"], &[("url", URL), ("mode", "append")]),
        "view 'health' is an updating view (an aggregate without a window): its rows \
         change and go away, so the postgres sink upserts and deletes them by the view's \
         key; mode 'append' cannot take a row back. Leave 'mode' out or set it to 'upsert'"
    );
    assert_eq!(
        err(
            &["region"],
            &[("url", URL), ("primary.key", "region,downloads")]
        ),
        "option 'primary.key' = 'region,downloads' does not match updating view 'health': \
         its rows are upserted and deleted by its key (region); leave 'primary.key' out or \
         name exactly those columns"
    );
    assert_eq!(
        err(&[], &[("url", URL), ("primary.key", "downloads")]),
        "option 'primary.key' = 'downloads' does not match updating view 'health': it is \
         a global aggregate, one row without a key, which every change replaces; leave \
         'primary.key' out"
    );
    assert_eq!(
        err(&["region"], &[("url", URL), ("primary.key", "speed")]),
        "option 'primary.key' names column 'speed', which view 'health' does not have; its \
         columns: window_start, region, downloads"
    );
}

/// `rows` as changes: (window_start, region, downloads, op).
fn changes(rows: &[(i64, &str, i64, i8)]) -> RecordBatch {
    let b = batch(&rows.iter().map(|r| (r.0, r.1, r.2)).collect::<Vec<_>>());
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(datafusion::arrow::array::Int8Array::from(
        rows.iter().map(|r| r.3).collect::<Vec<_>>(),
    )));
    RecordBatch::try_new(changelog::with_op(&b.schema()), cols).unwrap()
}

#[tokio::test]
async fn changes_are_netted_per_key_across_buffered_batches() {
    use changelog::{DELETE, INSERT};
    let mut sink = PostgresSink::new(changes_spec(
        &["region"],
        &[("url", URL), ("batch.rows", "100")],
    ))
    .unwrap();
    // EU: inserted, then updated in the next batch; US: inserted then deleted; AP:
    // deleted (it was written before).
    sink.write(
        changes(&[
            (1, "EU", 1, INSERT),
            (1, "US", 1, INSERT),
            (1, "AP", 5, DELETE),
        ]),
        RowIds::default(),
    )
    .await
    .unwrap();
    sink.write(
        changes(&[
            (1, "EU", 1, DELETE),
            (1, "EU", 2, INSERT),
            (1, "US", 1, DELETE),
        ]),
        RowIds::default(),
    )
    .await
    .unwrap();
    let p = sink.encode_buffer().unwrap();
    assert_eq!((p.rows, p.changes()), (1, 3));
    assert_eq!(p.bytes, encode::encode(&[batch(&[(1, "EU", 2)])]).unwrap());
    let d = p.deletes.unwrap();
    assert_eq!(d.rows, 2);
    let keys = |regions: Vec<&str>| {
        let s = Arc::new(Schema::new(vec![Field::new(
            "region",
            DataType::Utf8,
            true,
        )]));
        RecordBatch::try_new(s, vec![Arc::new(StringArray::from(regions))]).unwrap()
    };
    assert_eq!(d.keys, encode::encode(&[keys(vec!["AP", "US"])]).unwrap());

    // A global aggregate: the last change, and the old row always goes.
    let mut sink =
        PostgresSink::new(changes_spec(&[], &[("url", URL), ("batch.rows", "100")])).unwrap();
    sink.write(
        changes(&[(1, "EU", 1, DELETE), (1, "EU", 2, INSERT)]),
        RowIds::default(),
    )
    .await
    .unwrap();
    let p = sink.encode_buffer().unwrap();
    assert_eq!(
        (p.rows, p.deletes.map(|d| (d.keys.len(), d.rows))),
        (1, Some((0, 0)))
    );
    sink.write(changes(&[(1, "EU", 2, DELETE)]), RowIds::default())
        .await
        .unwrap();
    let p = sink.encode_buffer().unwrap();
    assert_eq!((p.rows, p.deletes.map(|d| d.rows)), (0, Some(1)));
}

fn batch(rows: &[(i64, &str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        view_schema(),
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

#[test]
fn keeps_the_last_row_per_key() {
    let a = batch(&[(1, "EU", 1), (1, "US", 2), (2, "EU", 3)]);
    let b = batch(&[(1, "EU", 4), (3, "EU", 5)]);
    let c = batch(&[(1, "US", 6)]);
    assert_eq!(
        // By region: EU's last row is b[1], US's is a[1].
        last_per_key(&[a.clone(), b.clone()], &[1]).unwrap(),
        Some(vec![vec![1], vec![1]])
    );
    assert_eq!(
        last_per_key(&[a.clone(), b.clone(), c], &[0, 1]).unwrap(),
        Some(vec![vec![2], vec![0, 1], vec![0]])
    );
    assert_eq!(
        last_per_key(&[a, b], &[0, 1]).unwrap(),
        Some(vec![vec![1, 2], vec![0, 1]])
    );
    assert_eq!(
        last_per_key(&[batch(&[(1, "EU", 1), (2, "EU", 1)])], &[0, 1]).unwrap(),
        None
    );
    assert_eq!(last_per_key(&[], &[0]).unwrap(), None);
}

#[tokio::test]
async fn buffers_until_batch_rows_and_encodes_with_ids() {
    let mut sink = PostgresSink::new(spec(
        &[],
        &[("url", URL), ("batch.rows", "100"), ("table", "t")],
    ))
    .unwrap();
    // Below batch.rows: buffered, no connection attempted.
    sink.write(
        batch(&[(1, "EU", 1), (2, "US", 2)]),
        RowIds {
            origin: 1,
            first: 5,
        },
    )
    .await
    .unwrap();
    sink.write(batch(&[]), RowIds::default()).await.unwrap();
    assert_eq!(sink.buffered_rows, 2);
    let p = sink.encode_buffer().unwrap();
    assert_eq!(p.rows, 2);
    assert_eq!(sink.buffered_rows, 0);
    let mut expected = encode::HEADER.to_vec();
    for (id, ts, region, n) in [
        (1i64 << 40 | 5, 1i64, "EU", 1i64),
        (1 << 40 | 6, 2, "US", 2),
    ] {
        expected.extend_from_slice(&[0, 4, 0, 0, 0, 8]);
        expected.extend_from_slice(&id.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&(ts * 1000 - 946_684_800_000_000).to_be_bytes());
        expected.extend_from_slice(&(region.len() as i32).to_be_bytes());
        expected.extend_from_slice(region.as_bytes());
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&n.to_be_bytes());
    }
    expected.extend_from_slice(encode::TRAILER);
    assert_eq!(p.bytes, expected);
}

#[tokio::test]
async fn null_in_a_key_column_is_refused() {
    let mut sink = PostgresSink::new(spec(&["region"], &[("url", URL)])).unwrap();
    let b = RecordBatch::try_new(
        view_schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("EU"), None])),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    let e = sink.write(b, RowIds::default()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "postgres sink 'pg' (table health): a row of view 'health' has NULL in key \
             column 'region', which the table's key cannot hold (a primary key, or a unique \
             index whose NULLs are distinct). {NULL_KEY_HELP}"
        )
    );
    assert_eq!(sink.buffered_rows, 0);
}

#[tokio::test]
async fn gives_up_after_retry_max_and_keeps_the_rows() {
    // Nothing listens on port 1: every attempt fails to connect.
    let s = spec(
        &["region"],
        &[
            ("url", URL),
            ("retry.max", "2"),
            ("retry.backoff.max", "10ms"),
            ("batch.rows", "1"),
        ],
    );
    let stats = s.stats.clone();
    let mut sink = PostgresSink::new(s).unwrap();
    let e = sink
        .write(batch(&[(1, "EU", 1)]), RowIds::default())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "postgres sink 'pg' (table health): gave up after 3 attempts (retry.max = 2): \
             connecting: "
        ),
        "{msg}"
    );
    assert!(e.is_retryable());
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(Stats::get(&stats.errors), 3);
    assert_eq!(stats.status(), Status::Retrying);
    assert!(stats.last_error().unwrap().contains("connecting"));
    // The rows wait for the next write.
    assert_eq!(sink.pending.as_ref().map(|p| p.rows), Some(1));
    assert_eq!(sink.rows_written(), 0);
}

#[test]
fn fast_path_pauses_after_conflicts() {
    let mut f = FastPath::default();
    assert!(f.ready());
    f.record(true, true);
    assert!(f.ready());
    // A conflict: 4 transactions on the upsert path, then another try.
    f.record(true, false);
    for _ in 0..4 {
        assert!(!f.ready());
        f.record(false, false);
    }
    assert!(f.ready());
    // Conflicts again: the pause doubles, up to 64.
    f.record(true, false);
    assert_eq!(f.skip, 8);
    for _ in 0..10 {
        f.skip = 0;
        f.record(true, false);
    }
    assert_eq!(f.skip, 64);
    // A success resets the pause.
    f.skip = 0;
    f.record(true, true);
    f.record(true, false);
    assert_eq!(f.skip, 4);
}

#[test]
fn sqlstates() {
    for c in [
        "08006", "57P01", "57P03", "53300", "40001", "40P01", "55P03", "58030",
    ] {
        assert!(transient_sqlstate(c), "{c}");
    }
    for c in [
        "23505", "23502", "22003", "42P01", "42501", "3F000", "XX000",
    ] {
        assert!(!transient_sqlstate(c), "{c}");
    }
}
