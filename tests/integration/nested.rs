//! Nested events end to end: JSON lines with a struct inside a struct, a list of structs, a
//! list of text and a map, read by the file source, written by a view into PostgreSQL
//! (`jsonb` columns) and into Parquet (native nested columns), and read back by independent
//! readers (sqlx with PostgreSQL's own JSON operators; DataFusion over the Parquet files):
//! every value as written.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;

const CITIES: [&str; 3] = ["Paris", "Oslo", "Lima"];
const ORDERS: i64 = 300;

/// Order `i` as the JSON object the file holds.
fn order(i: i64) -> Value {
    let items: Vec<Value> = (0..i % 4)
        .map(|k| json!({"sku": format!("s{k}"), "qty": k + 1, "price": 0.5 * k as f64}))
        .collect();
    json!({
        "id": format!("o{i:04}"),
        "ts": 1_714_557_600_000i64 + i * 1_000,
        "customer": {
            "name": format!("c{}", i % 7),
            "address": {"city": CITIES[i as usize % 3], "zip": format!("{i:05}")}
        },
        "items": items,
        "tags": [format!("t{}", i % 2), "all"],
        "attrs": {"channel": if i % 2 == 0 { "web" } else { "app" }}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_json_into_postgres_and_parquet() {
    let Some(url) = crate::postgres::pg_url() else {
        return;
    };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("orders.jsonl");
    let text: String = (0..ORDERS).map(|i| format!("{}\n", order(i))).collect();
    std::fs::write(&input, text).expect("write input");
    let table = format!(
        "nested_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros() % 1_000_000_000
    );
    let lake = dir.path().join("lake");
    let sql = format!(
        "CREATE SOURCE orders (id TEXT NOT NULL, ts TIMESTAMP NOT NULL, \
           customer STRUCT<name TEXT, address STRUCT<city TEXT, zip TEXT>>, \
           items ARRAY<STRUCT<sku TEXT, qty INT, price DOUBLE>>, tags TEXT[], \
           attrs MAP<TEXT, TEXT>, WATERMARK FOR ts AS ts) \
         WITH (connector = 'file', path = '{}', format = 'json'); \
         CREATE MATERIALIZED VIEW o AS SELECT id, customer, items, tags, attrs FROM orders; \
         CREATE SINK pg FROM o WITH (connector = 'postgres', url = '{url}', table = '{table}'); \
         CREATE SINK pq FROM o WITH (connector = 'parquet', path = '{}');",
        input.display(),
        lake.display()
    );
    weir_tests::run_until_done(&dir.path().join("data"), &sql).await;

    // PostgreSQL: jsonb columns, read back as JSON text and through its own operators.
    let db = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect");
    let types: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_name = $1 AND column_name IN ('customer', 'items', 'tags', 'attrs') \
         ORDER BY column_name",
    )
    .bind(&table)
    .fetch_all(&db)
    .await
    .expect("columns");
    assert_eq!(
        types,
        ["attrs", "customer", "items", "tags"]
            .iter()
            .map(|c| (c.to_string(), "jsonb".to_string()))
            .collect::<Vec<_>>()
    );
    let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(&format!(
        "SELECT id, customer::text, items::text, tags::text, attrs::text, \
           customer->'address'->>'city' FROM {table} ORDER BY id"
    ))
    .fetch_all(&db)
    .await
    .expect("read back");
    assert_eq!(rows.len(), ORDERS as usize);
    for (i, (id, customer, items, tags, attrs, city)) in rows.into_iter().enumerate() {
        let want = order(i as i64);
        let parse = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        assert_eq!(id, want["id"]);
        assert_eq!(parse(&customer), want["customer"], "{id}");
        assert_eq!(parse(&items), want["items"], "{id}");
        assert_eq!(parse(&tags), want["tags"], "{id}");
        assert_eq!(parse(&attrs), want["attrs"], "{id}");
        assert_eq!(city, CITIES[i % 3]);
    }

    // Parquet: nested columns, read with DataFusion's own field access.
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "lake",
        lake.to_str().expect("utf8 path"),
        ParquetReadOptions::default(),
    )
    .await
    .expect("register parquet");
    let batches = ctx
        .sql(
            "SELECT id, customer['address']['city'] AS city, cardinality(items) AS n, \
             items[1]['qty'] AS qty, tags[1] AS tag, attrs['channel'] AS channel \
             FROM lake ORDER BY id",
        )
        .await
        .expect("plan")
        .collect()
        .await
        .expect("read");
    let mut got = Vec::new();
    for b in &batches {
        let s = |c: usize, r: usize| -> Option<String> {
            let a = datafusion::arrow::compute::cast(
                b.column(c),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .expect("cast");
            let a = a.as_string::<i32>();
            a.is_valid(r).then(|| a.value(r).to_string())
        };
        let n = datafusion::arrow::compute::cast(
            b.column(2),
            &datafusion::arrow::datatypes::DataType::Int64,
        )
        .expect("cast");
        let n = n.as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            got.push((s(0, r), s(1, r), n.value(r), s(3, r), s(4, r), s(5, r)));
        }
    }
    let want: Vec<_> = (0..ORDERS)
        .map(|i| {
            let o = order(i);
            (
                Some(o["id"].as_str().expect("id").to_string()),
                Some(CITIES[i as usize % 3].to_string()),
                i % 4,
                (i % 4 > 0).then(|| "1".to_string()),
                Some(format!("t{}", i % 2)),
                Some(if i % 2 == 0 { "web" } else { "app" }.to_string()),
            )
        })
        .collect();
    assert_eq!(got, want);
}
