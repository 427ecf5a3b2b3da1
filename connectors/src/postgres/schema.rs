//! Arrow types to PostgreSQL types, the SQL the sink runs (DDL, staging, upsert), and the
//! check of an existing table against what the sink writes.

use datafusion::arrow::datatypes::{DataType, Schema};
use std::fmt;
use weir_engine::{Result, WeirError};

/// The column append mode adds: the row's [`RowIds`](weir_engine::connector::RowIds) id.
pub const ROW_ID: &str = "weir_row_id";
/// The per-connection temporary table rows are copied into before the upsert.
pub const STAGE: &str = "weir_stage";
/// The per-connection temporary table the keys of deleted rows are copied into (updating
/// views).
pub const STAGE_DELETES: &str = "weir_stage_deletes";
/// The target's alias in the upsert.
const TARGET: &str = "weir_target";

/// The PostgreSQL type a view column is written as (the names `format_type` prints), or
/// `None` if the sink cannot write it.
pub fn pg_type(t: &DataType) -> Option<String> {
    Some(
        match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
            DataType::Int8 | DataType::Int16 => "smallint",
            DataType::Int32 => "integer",
            DataType::Int64 | DataType::UInt32 => "bigint",
            DataType::UInt64 => "numeric(20,0)",
            DataType::Float32 => "real",
            DataType::Float64 => "double precision",
            DataType::Boolean => "boolean",
            DataType::Decimal128(p, s) if *s >= 0 && *s as u8 <= *p => {
                return Some(format!("numeric({p},{s})"));
            }
            DataType::Timestamp(_, _) => "timestamp with time zone",
            DataType::Date32 => "date",
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea",
            t if is_nested(t) => "jsonb",
            _ => return None,
        }
        .to_string(),
    )
}

/// Lists, structs and maps: written as `jsonb`, the value as the JSON the API serves.
pub fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::Struct(_)
            | DataType::Map(_, _)
    )
}

/// `pg_type`, or a user error naming the column.
pub fn pg_type_of(view: &str, column: &str, t: &DataType) -> Result<String> {
    pg_type(t).ok_or_else(|| {
        WeirError::user(format!(
            "the postgres sink cannot write column '{column}' of view '{view}': its type {t} has \
             no PostgreSQL mapping (supported: text, integers, UInt32/UInt64, real, double, \
             boolean, decimal, timestamp, date, binary, and lists, structs and maps as jsonb); \
             cast it in the view"
        ))
    })
}

/// Whether a table column of type `table_type` (as `format_type` prints it) takes the
/// binary COPY encoding of `arrow` unchanged: the staging table has the target's column
/// types, so only types with the same send/receive format fit.
pub fn compatible(arrow: &DataType, table_type: &str) -> bool {
    let t = table_type;
    match arrow {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            t == "text" || t.starts_with("character varying")
        }
        DataType::Int8 | DataType::Int16 => t == "smallint",
        DataType::Int32 => t == "integer",
        DataType::Int64 | DataType::UInt32 => t == "bigint",
        DataType::UInt64 => numeric_fits(t, 20, 0),
        DataType::Float32 => t == "real",
        DataType::Float64 => t == "double precision",
        DataType::Boolean => t == "boolean",
        DataType::Decimal128(p, s) if *s >= 0 => numeric_fits(t, *p as u32, *s as u32),
        DataType::Timestamp(_, _) => {
            t.starts_with("timestamp")
                && (t.ends_with("with time zone") || t.ends_with("without time zone"))
        }
        DataType::Date32 => t == "date",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => t == "bytea",
        a if is_nested(a) => t == "jsonb",
        _ => false,
    }
}

/// `numeric` unconstrained, or `numeric(P,S)` holding every `numeric(p,s)` value exactly.
fn numeric_fits(t: &str, p: u32, s: u32) -> bool {
    if t == "numeric" {
        return true;
    }
    let Some(args) = t.strip_prefix("numeric(").and_then(|r| r.strip_suffix(')')) else {
        return false;
    };
    let mut it = args.split(',').map(|x| x.trim().parse::<i64>());
    let (Some(Ok(tp)), Some(Ok(ts)), None) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    ts >= s as i64 && tp - ts >= p as i64 - s as i64
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled; as `E'...'` with backslashes doubled too when
/// there are any, so it reads the same whatever `standard_conforming_strings` says.
pub fn quote_literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// A table name from the `table` option: `name` or `schema.name`. Unquoted parts fold to
/// lower case as in SQL; `"Quoted"` parts are kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            WeirError::user(format!(
                "option 'table' = '{s}' is not a table name ({why}); write 'table' or \
                 'schema.table', with \"double quotes\" around parts that need them"
            ))
        };
        let mut parts: Vec<String> = Vec::new();
        let mut chars = s.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(bad("unterminated quote")),
                    }
                }
                if part.is_empty() {
                    return Err(bad("empty name"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if !(c.is_alphanumeric() || c == '_' || c == '$') {
                        return Err(bad(&format!("unexpected character '{c}'")));
                    }
                    part.push(c.to_lowercase().next().unwrap_or(c));
                    chars.next();
                }
                if part.is_empty() {
                    return Err(bad("empty name"));
                }
                if part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                    return Err(bad("a name cannot start with a digit"));
                }
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => return Err(bad(&format!("unexpected character '{c}'"))),
            }
        }
        match parts.len() {
            1 => Ok(TableName {
                schema: None,
                name: parts.remove(0),
            }),
            2 => Ok(TableName {
                name: parts.remove(1),
                schema: Some(parts.remove(0)),
            }),
            _ => Err(bad("too many dots")),
        }
    }

    /// The name quoted for SQL.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// How rows are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// By the view's key (or `primary.key`): a newer row for a key replaces the older.
    Upsert,
    /// By [`ROW_ID`]: every output row once, replays add nothing.
    Append,
    /// An updating view's changes: upserted and deleted by the view's key. With no key (a
    /// global aggregate) the table holds one row, which each change replaces.
    Changelog,
}

/// One column the sink writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// The view's Arrow type (Int64 for [`ROW_ID`]).
    pub arrow: DataType,
    /// The PostgreSQL type it is created as.
    pub pg: String,
    pub not_null: bool,
}

/// What the sink writes where: the columns in COPY order ([`ROW_ID`] first in append
/// mode, then the view's), the conflict key, and the SQL that follows from them.
#[derive(Debug, Clone)]
pub struct Layout {
    pub table: TableName,
    pub view: String,
    pub mode: Mode,
    pub columns: Vec<Column>,
    pub key: Vec<String>,
}

impl Layout {
    pub fn new(
        table: TableName,
        view: &str,
        schema: &Schema,
        mode: Mode,
        key: Vec<String>,
    ) -> Result<Self> {
        let mut columns = Vec::with_capacity(schema.fields().len() + 1);
        if mode == Mode::Append {
            columns.push(Column {
                name: ROW_ID.into(),
                arrow: DataType::Int64,
                pg: "bigint".into(),
                not_null: true,
            });
        }
        for f in schema.fields() {
            columns.push(Column {
                name: f.name().clone(),
                arrow: f.data_type().clone(),
                pg: pg_type_of(view, f.name(), f.data_type())?,
                not_null: !f.is_nullable(),
            });
        }
        Ok(Layout {
            table,
            view: view.to_string(),
            mode,
            columns,
            key,
        })
    }

    /// Declare `columns` NOT NULL (the engine knows they never are).
    pub fn never_null(mut self, columns: &[String]) -> Self {
        for c in &mut self.columns {
            if columns.contains(&c.name) {
                c.not_null = true;
            }
        }
        self
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the upsert updates rows: in upsert mode when some column is not part of
    /// the key. A key may then appear only once per statement, so the sink keeps the last
    /// row per key. Append mode inserts with `DO NOTHING`: a replayed row id carries the same
    /// row, so the one already there is left as it is.
    pub fn updates(&self) -> bool {
        self.mode != Mode::Append && self.columns.iter().any(|c| !self.key.contains(&c.name))
    }

    /// Whether a key column can be NULL (never in append mode, keyed by row id).
    pub fn nullable_key(&self) -> bool {
        self.nullable_key_columns().next().is_some()
    }

    /// The key columns that can be NULL.
    fn nullable_key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns
            .iter()
            .filter(|c| !c.not_null && self.key.contains(&c.name))
    }

    /// The table for the view. Its key is the primary key when no key column can be NULL.
    /// Otherwise, with `nulls_not_distinct` (PostgreSQL 15 and later), a unique constraint
    /// `UNIQUE NULLS NOT DISTINCT`, under which a NULL key is one key like any other (the
    /// view's group of NULLs is one row); without it, the primary key, which makes the key
    /// columns NOT NULL, and a row with a NULL key is refused by the sink.
    pub fn create_table(&self, nulls_not_distinct: bool) -> String {
        let unique = nulls_not_distinct && self.nullable_key();
        let mut defs: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote_ident(&c.name),
                    c.pg,
                    if c.not_null || (!unique && self.key.contains(&c.name)) {
                        " NOT NULL"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        // A global aggregate's table (one row) has no key.
        if unique {
            defs.push(format!("UNIQUE NULLS NOT DISTINCT ({})", self.key_list()));
        } else if !self.key.is_empty() {
            defs.push(format!("PRIMARY KEY ({})", self.key_list()));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.table.sql(),
            defs.join(", ")
        )
    }

    /// A temporary table with the target's types for exactly the columns the sink writes
    /// (no constraints or defaults to evaluate), emptied by every commit.
    pub fn create_stage(&self) -> String {
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS SELECT {} FROM {} \
             WITH NO DATA",
            self.column_list(),
            self.table.sql()
        )
    }

    pub fn copy(&self) -> String {
        format!("COPY {STAGE} FROM STDIN (FORMAT binary)")
    }

    /// For an updating view with a key: a temporary table of the key columns (the target's
    /// types), for the keys a transaction deletes, emptied by every commit.
    pub fn create_delete_stage(&self) -> Option<String> {
        (self.mode == Mode::Changelog && !self.key.is_empty()).then(|| {
            format!(
                "CREATE TEMP TABLE IF NOT EXISTS {STAGE_DELETES} ON COMMIT DELETE ROWS AS SELECT \
                 {} FROM {} WITH NO DATA",
                self.key_list(),
                self.table.sql()
            )
        })
    }

    pub fn copy_deletes(&self) -> String {
        format!("COPY {STAGE_DELETES} FROM STDIN (FORMAT binary)")
    }

    /// The statement that deletes the rows whose keys are staged; with no key (a global
    /// aggregate), the table's one row. A key that is not there (a replayed delete) deletes
    /// nothing.
    pub fn delete(&self) -> String {
        if self.key.is_empty() {
            return format!("DELETE FROM {}", self.table.sql());
        }
        format!(
            "DELETE FROM {} AS {TARGET} USING {STAGE_DELETES} WHERE {}",
            self.table.sql(),
            self.staged_key_match("=")
        )
    }

    /// The target's key columns each compared with the staged one by `op`, ANDed.
    fn staged_key_match(&self, op: &str) -> String {
        self.key
            .iter()
            .map(|k| format!("{TARGET}.{0} {op} {STAGE_DELETES}.{0}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The statement that deletes the staged keys with a NULL in them, which `=` in
    /// [`Layout::delete`] does not match. `IS NOT DISTINCT FROM` cannot use the key's
    /// index, so this runs only in a transaction that deletes such a key (a view has at
    /// most one group of NULLs per combination of its other key columns).
    pub fn delete_nulls(&self) -> String {
        let nulls: Vec<String> = self
            .nullable_key_columns()
            .map(|c| format!("{STAGE_DELETES}.{} IS NULL", quote_ident(&c.name)))
            .collect();
        format!(
            "DELETE FROM {} AS {TARGET} USING {STAGE_DELETES} WHERE ({}) AND {}",
            self.table.sql(),
            nulls.join(" OR "),
            self.staged_key_match("IS NOT DISTINCT FROM")
        )
    }

    /// The fast path: the same rows straight into the target, for when none of their keys
    /// is there yet (see the sink's `transaction`).
    pub fn copy_direct(&self) -> String {
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.table.sql(),
            self.column_list()
        )
    }

    /// The statement that moves the staged rows into the target. A row whose values are
    /// all equal to the stored ones (a replay) is left alone: no new row version, no WAL
    /// for it, about three times cheaper than rewriting it.
    pub fn upsert(&self) -> String {
        let cols = self.column_list();
        if self.key.is_empty() {
            // A global aggregate: the old row was deleted first, in the same transaction.
            return format!(
                "INSERT INTO {} AS {TARGET} ({cols}) SELECT {cols} FROM {STAGE}",
                self.table.sql()
            );
        }
        let action = if self.updates() {
            let values: Vec<&Column> = self
                .columns
                .iter()
                .filter(|c| !self.key.contains(&c.name))
                .collect();
            let set: Vec<String> = values
                .iter()
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
                .collect();
            let old: Vec<String> = values
                .iter()
                .map(|c| format!("{TARGET}.{}", quote_ident(&c.name)))
                .collect();
            let new: Vec<String> = values
                .iter()
                .map(|c| format!("EXCLUDED.{}", quote_ident(&c.name)))
                .collect();
            format!(
                "DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
                set.join(", "),
                old.join(", "),
                new.join(", ")
            )
        } else {
            "DO NOTHING".to_string()
        };
        format!(
            "INSERT INTO {} AS {TARGET} ({cols}) SELECT {cols} FROM {STAGE} ON CONFLICT ({}) \
             {action}",
            self.table.sql(),
            self.key_list()
        )
    }

    /// Every way `table` (as read from the catalog) does not fit: missing columns, columns
    /// of another type, NOT NULL columns the sink cannot fill, a missing unique key.
    pub fn problems(&self, table: &TableInfo) -> Vec<String> {
        let t = &table.name;
        let mut out = Vec::new();
        for c in &self.columns {
            match table.columns.iter().find(|tc| tc.name == c.name) {
                None => out.push(format!("missing column {} ({})", c.name, c.pg)),
                Some(tc) if !compatible(&c.arrow, &tc.type_name) => {
                    let has = if c.name == ROW_ID && self.mode == Mode::Append {
                        format!("the sink writes {} (append-mode row ids)", c.pg)
                    } else {
                        format!("the view has {} ({})", c.pg, c.arrow)
                    };
                    out.push(format!(
                        "column {} is {} in table {t} but {has}",
                        c.name, tc.type_name
                    ))
                }
                Some(_) => {}
            }
        }
        for tc in &table.columns {
            if tc.not_null && !tc.has_default && !self.columns.iter().any(|c| c.name == tc.name) {
                out.push(format!(
                    "column {} in table {t} is NOT NULL without a default, and the view has no such column",
                    tc.name
                ));
            }
        }
        if self.key.is_empty() {
            return out;
        }
        let mut want: Vec<&str> = self.key.iter().map(String::as_str).collect();
        want.sort_unstable();
        if self.unique_key(table).is_none() {
            out.push(format!(
                "no primary key or unique index on ({})",
                self.key.join(", ")
            ));
        }
        out
    }

    /// The unique index of `table` on exactly the key columns.
    fn unique_key<'a>(&self, table: &'a TableInfo) -> Option<&'a UniqueKey> {
        let mut want: Vec<&str> = self.key.iter().map(String::as_str).collect();
        want.sort_unstable();
        table.unique_keys.iter().find(|k| {
            let mut have: Vec<&str> = k.columns.iter().map(String::as_str).collect();
            have.sort_unstable();
            have == want
        })
    }

    /// Whether `table` holds rows whose key has a NULL as one key: its unique index on the
    /// key columns is `NULLS NOT DISTINCT`. (A primary key's columns are NOT NULL, and a
    /// plain unique index would let the same NULL key in twice.)
    pub fn holds_null_keys(&self, table: &TableInfo) -> bool {
        self.unique_key(table).is_some_and(|k| k.nulls_not_distinct)
    }
}

/// A unique index of an existing table.
#[derive(Debug, Clone, Default)]
pub struct UniqueKey {
    pub columns: Vec<String>,
    /// `NULLS NOT DISTINCT` (PostgreSQL 15 and later).
    pub nulls_not_distinct: bool,
}

/// An existing table as the catalog describes it.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    /// `schema.table`, as found.
    pub name: String,
    pub columns: Vec<TableColumn>,
    /// The columns of each usable unique index (immediate, valid, not partial, no
    /// expressions), the primary key among them.
    pub unique_keys: Vec<UniqueKey>,
}

#[derive(Debug, Clone)]
pub struct TableColumn {
    pub name: String,
    /// As `format_type` prints it: `text`, `double precision`, `numeric(20,0)`, ...
    pub type_name: String,
    pub not_null: bool,
    /// A default, identity or generated value fills it when the sink does not.
    pub has_default: bool,
}

/// `schema.table` of the relation, if it exists (`$1`: the quoted name).
pub const FIND_TABLE: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)";

pub const TABLE_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
    a.attnotnull, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
    FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
    AND NOT a.attisdropped ORDER BY a.attnum";

/// The columns of each unique index and whether it is `NULLS NOT DISTINCT`; read through
/// `to_jsonb` so the query also runs on servers before 15, which lack that column.
pub const UNIQUE_KEYS: &str = "SELECT array_agg(a.attname::text ORDER BY k.ord), \
    bool_or(coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false)) FROM pg_index i \
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
    WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate AND i.indisvalid \
    AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts \
    GROUP BY i.indexrelid";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
}
