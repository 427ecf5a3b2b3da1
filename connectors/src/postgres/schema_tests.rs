//! Unit tests of the Postgres table layout: type mapping, names, the SQL each mode sends,
//! and the checks of an existing table.

#![allow(clippy::unwrap_used)]

use super::*;
use datafusion::arrow::datatypes::{Field, TimeUnit};

fn health() -> Schema {
    Schema::new(vec![
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("downloads", DataType::Int64, false),
        Field::new("avg_speed", DataType::Float64, true),
    ])
}

fn key() -> Vec<String> {
    vec!["window_start".into(), "window_end".into(), "region".into()]
}

#[test]
fn type_mapping() {
    let cases: Vec<(DataType, &str)> = vec![
        (DataType::Utf8, "text"),
        (DataType::LargeUtf8, "text"),
        (DataType::Int8, "smallint"),
        (DataType::Int16, "smallint"),
        (DataType::Int32, "integer"),
        (DataType::Int64, "bigint"),
        (DataType::UInt32, "bigint"),
        (DataType::UInt64, "numeric(20,0)"),
        (DataType::Float32, "real"),
        (DataType::Float64, "double precision"),
        (DataType::Boolean, "boolean"),
        (DataType::Decimal128(12, 3), "numeric(12,3)"),
        (
            DataType::Timestamp(TimeUnit::Second, None),
            "timestamp with time zone",
        ),
        (
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            "timestamp with time zone",
        ),
        (DataType::Date32, "date"),
        (DataType::Binary, "bytea"),
        (
            DataType::List(std::sync::Arc::new(Field::new("x", DataType::Int32, true))),
            "jsonb",
        ),
        (
            DataType::Struct(vec![Field::new("a", DataType::Utf8, true)].into()),
            "jsonb",
        ),
    ];
    for (t, pg) in cases {
        assert_eq!(pg_type(&t).as_deref(), Some(pg), "{t}");
        assert!(compatible(&t, pg), "{t} should fit its own type {pg}");
    }
    for t in [
        DataType::UInt8,
        DataType::Float16,
        DataType::Date64,
        DataType::Decimal128(5, -2),
    ] {
        assert_eq!(pg_type(&t), None, "{t}");
    }
    let e = pg_type_of("v", "flags", &DataType::UInt8).unwrap_err();
    assert!(e.is_user());
    assert!(
        e.to_string().starts_with(
            "the postgres sink cannot write column 'flags' of view 'v': its type UInt8"
        ),
        "{e}"
    );
}

#[test]
fn compatible_types() {
    assert!(compatible(&DataType::Utf8, "character varying(20)"));
    assert!(!compatible(&DataType::Utf8, "character(3)"));
    assert!(!compatible(&DataType::Int64, "integer"));
    assert!(!compatible(&DataType::Int32, "bigint"));
    assert!(compatible(
        &DataType::Timestamp(TimeUnit::Millisecond, None),
        "timestamp(3) without time zone"
    ));
    assert!(!compatible(
        &DataType::Timestamp(TimeUnit::Millisecond, None),
        "date"
    ));
    assert!(compatible(&DataType::UInt64, "numeric"));
    assert!(compatible(&DataType::UInt64, "numeric(22,2)"));
    assert!(!compatible(&DataType::UInt64, "numeric(19,0)"));
    assert!(compatible(&DataType::Decimal128(10, 2), "numeric(12,4)"));
    assert!(!compatible(&DataType::Decimal128(10, 2), "numeric(10,4)"));
    assert!(!compatible(&DataType::Decimal128(10, 2), "numeric(12,1)"));
    assert!(!compatible(&DataType::Float64, "real"));
}

#[test]
fn literals() {
    assert_eq!(quote_literal("health_pg"), "'health_pg'");
    assert_eq!(quote_literal("it's"), "'it''s'");
    assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
}

#[test]
fn table_names() {
    let t = TableName::parse("Health").unwrap();
    assert_eq!(t.sql(), "\"health\"");
    assert_eq!(t.to_string(), "health");
    let t = TableName::parse("analytics.\"Region \"\"Health\"\"\"").unwrap();
    assert_eq!(t.schema.as_deref(), Some("analytics"));
    assert_eq!(t.name, "Region \"Health\"");
    assert_eq!(t.sql(), "\"analytics\".\"Region \"\"Health\"\"\"");
    for (bad, why) in [
        ("", "empty name"),
        ("a.b.c", "too many dots"),
        ("a b", "unexpected character ' '"),
        ("\"a", "unterminated quote"),
        ("a.", "empty name"),
        ("1abc", "a name cannot start with a digit"),
        ("x;drop", "unexpected character ';'"),
    ] {
        let e = TableName::parse(bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "option 'table' = '{bad}' is not a table name ({why}); write 'table' or \
                 'schema.table', with \"double quotes\" around parts that need them"
            )
        );
    }
}

#[test]
fn upsert_sql() {
    let l = Layout::new(
        TableName::parse("public.health").unwrap(),
        "health",
        &health(),
        Mode::Upsert,
        key(),
    )
    .unwrap();
    // Before PostgreSQL 15: a primary key, the nullable key column made NOT NULL.
    assert_eq!(
        l.create_table(false),
        "CREATE TABLE IF NOT EXISTS \"public\".\"health\" (\"window_start\" timestamp with time zone NOT NULL, \
         \"window_end\" timestamp with time zone NOT NULL, \"region\" text NOT NULL, \
         \"downloads\" bigint NOT NULL, \"avg_speed\" double precision, \
         PRIMARY KEY (\"window_start\", \"window_end\", \"region\"))"
    );
    // From 15: the key column keeps its NULLs, one NULL key like any other.
    assert_eq!(
        l.create_table(true),
        "CREATE TABLE IF NOT EXISTS \"public\".\"health\" (\"window_start\" timestamp with time zone NOT NULL, \
         \"window_end\" timestamp with time zone NOT NULL, \"region\" text, \
         \"downloads\" bigint NOT NULL, \"avg_speed\" double precision, \
         UNIQUE NULLS NOT DISTINCT (\"window_start\", \"window_end\", \"region\"))"
    );
    assert!(l.nullable_key());
    // Window bounds the schema calls nullable, which the engine says never are.
    let loose = Schema::new(vec![
        Field::new("window_start", DataType::Int64, true),
        Field::new("region", DataType::Utf8, false),
        Field::new("n", DataType::Int64, true),
    ]);
    let keyed = |never_null: &[String]| {
        Layout::new(
            TableName::parse("t").unwrap(),
            "v",
            &loose,
            Mode::Upsert,
            vec!["window_start".into(), "region".into()],
        )
        .unwrap()
        .never_null(never_null)
        .create_table(true)
    };
    assert_eq!(
        keyed(&["window_start".into()]),
        "CREATE TABLE IF NOT EXISTS \"t\" (\"window_start\" bigint NOT NULL, \"region\" text \
         NOT NULL, \"n\" bigint, PRIMARY KEY (\"window_start\", \"region\"))"
    );
    assert!(keyed(&[]).ends_with("UNIQUE NULLS NOT DISTINCT (\"window_start\", \"region\"))"));
    assert_eq!(
        l.create_stage(),
        "CREATE TEMP TABLE IF NOT EXISTS weir_stage ON COMMIT DELETE ROWS AS SELECT \
         \"window_start\", \"window_end\", \"region\", \"downloads\", \"avg_speed\" \
         FROM \"public\".\"health\" WITH NO DATA"
    );
    assert_eq!(l.copy(), "COPY weir_stage FROM STDIN (FORMAT binary)");
    assert_eq!(
        l.copy_direct(),
        "COPY \"public\".\"health\" (\"window_start\", \"window_end\", \"region\", \
         \"downloads\", \"avg_speed\") FROM STDIN (FORMAT binary)"
    );
    assert_eq!(
        l.upsert(),
        "INSERT INTO \"public\".\"health\" AS weir_target (\"window_start\", \"window_end\", \
         \"region\", \"downloads\", \"avg_speed\") SELECT \"window_start\", \"window_end\", \
         \"region\", \"downloads\", \"avg_speed\" FROM weir_stage ON CONFLICT (\"window_start\", \
         \"window_end\", \"region\") DO UPDATE SET \"downloads\" = EXCLUDED.\"downloads\", \
         \"avg_speed\" = EXCLUDED.\"avg_speed\" WHERE (weir_target.\"downloads\", \
         weir_target.\"avg_speed\") IS DISTINCT FROM (EXCLUDED.\"downloads\", EXCLUDED.\"avg_speed\")"
    );
    assert!(l.updates());
    // Every column in the key: nothing to update.
    let l = Layout::new(
        TableName::parse("k").unwrap(),
        "v",
        &Schema::new(vec![Field::new("a", DataType::Int32, false)]),
        Mode::Upsert,
        vec!["a".into()],
    )
    .unwrap();
    assert!(!l.updates());
    assert_eq!(
        l.upsert(),
        "INSERT INTO \"k\" AS weir_target (\"a\") SELECT \"a\" FROM weir_stage ON CONFLICT (\"a\") \
         DO NOTHING"
    );
}

#[test]
fn changelog_sql() {
    let schema = Schema::new(vec![
        Field::new("site", DataType::Utf8, false),
        Field::new("zone", DataType::Int32, false),
        Field::new("n", DataType::Int64, false),
    ]);
    let l = Layout::new(
        TableName::parse("per_site").unwrap(),
        "per_site",
        &schema,
        Mode::Changelog,
        vec!["site".into(), "zone".into()],
    )
    .unwrap();
    // No key column can be NULL: a primary key on any server.
    assert!(!l.nullable_key());
    assert!(
        l.create_table(true)
            .ends_with("PRIMARY KEY (\"site\", \"zone\"))")
    );
    assert_eq!(
        l.create_delete_stage().unwrap(),
        "CREATE TEMP TABLE IF NOT EXISTS weir_stage_deletes ON COMMIT DELETE ROWS AS SELECT \
         \"site\", \"zone\" FROM \"per_site\" WITH NO DATA"
    );
    assert_eq!(
        l.copy_deletes(),
        "COPY weir_stage_deletes FROM STDIN (FORMAT binary)"
    );
    assert_eq!(
        l.delete(),
        "DELETE FROM \"per_site\" AS weir_target USING weir_stage_deletes WHERE \
         weir_target.\"site\" = weir_stage_deletes.\"site\" AND weir_target.\"zone\" = \
         weir_stage_deletes.\"zone\""
    );
    // With a nullable key column, the staged keys holding a NULL are deleted apart.
    let nullable = Schema::new(vec![
        Field::new("site", DataType::Utf8, true),
        Field::new("zone", DataType::Int32, false),
        Field::new("n", DataType::Int64, false),
    ]);
    let n = Layout::new(
        TableName::parse("per_site").unwrap(),
        "per_site",
        &nullable,
        Mode::Changelog,
        vec!["site".into(), "zone".into()],
    )
    .unwrap();
    assert_eq!(
        n.delete_nulls(),
        "DELETE FROM \"per_site\" AS weir_target USING weir_stage_deletes WHERE \
         (weir_stage_deletes.\"site\" IS NULL) AND weir_target.\"site\" IS NOT DISTINCT FROM \
         weir_stage_deletes.\"site\" AND weir_target.\"zone\" IS NOT DISTINCT FROM \
         weir_stage_deletes.\"zone\""
    );
    assert!(
        l.upsert().ends_with(
            "ON CONFLICT (\"site\", \"zone\") DO UPDATE SET \"n\" = EXCLUDED.\"n\" \
             WHERE (weir_target.\"n\") IS DISTINCT FROM (EXCLUDED.\"n\")"
        ),
        "{}",
        l.upsert()
    );

    // A global aggregate: one row, no key, replaced by each change.
    let l = Layout::new(
        TableName::parse("totals").unwrap(),
        "totals",
        &Schema::new(vec![Field::new("n", DataType::Int64, false)]),
        Mode::Changelog,
        vec![],
    )
    .unwrap();
    assert_eq!(
        l.create_table(true),
        "CREATE TABLE IF NOT EXISTS \"totals\" (\"n\" bigint NOT NULL)"
    );
    assert_eq!(l.create_delete_stage(), None);
    assert_eq!(l.delete(), "DELETE FROM \"totals\"");
    assert_eq!(
        l.upsert(),
        "INSERT INTO \"totals\" AS weir_target (\"n\") SELECT \"n\" FROM weir_stage"
    );
    // Any table with the column fits: no key to check.
    let t = TableInfo {
        name: "public.totals".into(),
        columns: vec![col("n", "bigint", false, false)],
        unique_keys: vec![],
    };
    assert_eq!(l.problems(&t), Vec::<String>::new());
    // Not an updating view: no delete staging table.
    assert_eq!(health_layout().create_delete_stage(), None);
}

#[test]
fn append_sql() {
    let l = Layout::new(
        TableName::parse("failed").unwrap(),
        "failed_only",
        &Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("region", DataType::Utf8, true),
        ]),
        Mode::Append,
        vec![ROW_ID.into()],
    )
    .unwrap();
    assert_eq!(
        l.create_table(true),
        "CREATE TABLE IF NOT EXISTS \"failed\" (\"weir_row_id\" bigint NOT NULL, \
         \"ts\" timestamp with time zone NOT NULL, \"region\" text, PRIMARY KEY (\"weir_row_id\"))"
    );
    assert_eq!(
        l.upsert(),
        "INSERT INTO \"failed\" AS weir_target (\"weir_row_id\", \"ts\", \"region\") SELECT \
         \"weir_row_id\", \"ts\", \"region\" FROM weir_stage ON CONFLICT (\"weir_row_id\") DO NOTHING"
    );
}

fn col(name: &str, t: &str, not_null: bool, has_default: bool) -> TableColumn {
    TableColumn {
        name: name.into(),
        type_name: t.into(),
        not_null,
        has_default,
    }
}

fn unique(columns: &[&str], nulls_not_distinct: bool) -> UniqueKey {
    UniqueKey {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        nulls_not_distinct,
    }
}

/// View `health` upserted into table `t`.
fn health_layout() -> Layout {
    Layout::new(
        TableName::parse("t").unwrap(),
        "health",
        &health(),
        Mode::Upsert,
        key(),
    )
    .unwrap()
}

#[test]
fn table_problems() {
    let l = health_layout();
    let good = TableInfo {
        name: "public.t".into(),
        columns: vec![
            col("window_start", "timestamp with time zone", true, false),
            col("window_end", "timestamp with time zone", true, false),
            col("region", "character varying(32)", true, false),
            col("downloads", "bigint", false, false),
            col("avg_speed", "double precision", false, false),
            col("note", "text", false, false),
            col("inserted_at", "timestamp with time zone", true, true),
        ],
        unique_keys: vec![
            unique(&["downloads"], false),
            unique(&["region", "window_end", "window_start"], false),
        ],
    };
    assert_eq!(l.problems(&good), Vec::<String>::new());
    assert!(!l.holds_null_keys(&good));
    let mut nulls = good.clone();
    nulls.unique_keys[1].nulls_not_distinct = true;
    assert!(l.holds_null_keys(&nulls));

    let bad = TableInfo {
        name: "public.t".into(),
        columns: vec![
            col("window_start", "timestamp with time zone", true, false),
            col("window_end", "date", true, false),
            col("downloads", "integer", false, false),
            col("avg_speed", "text", false, false),
            col("id", "bigint", true, false),
        ],
        unique_keys: vec![unique(&["window_start", "region"], true)],
    };
    assert_eq!(
        l.problems(&bad),
        vec![
            "column window_end is date in table public.t but the view has timestamp with time \
             zone (Timestamp(ms))",
            "missing column region (text)",
            "column downloads is integer in table public.t but the view has bigint (Int64)",
            "column avg_speed is text in table public.t but the view has double precision (Float64)",
            "column id in table public.t is NOT NULL without a default, and the view has no such column",
            "no primary key or unique index on (window_start, window_end, region)",
        ]
    );
}
