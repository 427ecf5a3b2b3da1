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
#[path = "schema_tests.rs"]
mod tests;
