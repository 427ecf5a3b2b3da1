//! `CREATE SOURCE` and `CREATE TABLE`: column lists with SQL types mapped to Arrow,
//! `WATERMARK FOR` and `METADATA FROM`.

use super::{
    CreateSource, CreateTable, MetadataColumn, WatermarkSpec, WeirStatement, interval_duration,
    loc, parse_err, parse_if_not_exists, parse_with_options, word_is,
};
use crate::error::{Location, Result, WeirError};
use crate::options::Options;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ColumnOption, DataType as SqlType, Expr};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn parse_create_source(p: &mut Parser) -> Result<WeirStatement> {
    let at = loc(&p.peek_token());
    let pe = |e| parse_err(e, at);
    let if_not_exists = parse_if_not_exists(p);
    let name = p.parse_identifier().map_err(pe)?.value;
    p.expect_token(&Token::LParen).map_err(pe)?;
    let mut fields = Vec::new();
    let mut watermark = None;
    let mut metadata = Vec::new();
    let mut metadata_at = Vec::new();
    loop {
        if word_is(&p.peek_token(), "WATERMARK") {
            p.next_token();
            p.expect_keyword(Keyword::FOR).map_err(pe)?;
            let column = p.parse_identifier().map_err(pe)?.value;
            p.expect_keyword(Keyword::AS).map_err(pe)?;
            let e_at = loc(&p.peek_token());
            let expr = p.parse_expr().map_err(pe)?;
            watermark = Some(watermark_spec(&column, &expr, e_at)?);
        } else {
            let col = parse_column(p)?;
            let dt = col.data_type;
            if word_is(&p.peek_token(), "METADATA") {
                p.next_token();
                p.expect_keyword(Keyword::FROM).map_err(pe)?;
                let k_at = loc(&p.peek_token());
                let key = p.parse_literal_string().map_err(pe)?;
                metadata.push(MetadataColumn {
                    column: col.name.clone(),
                    key,
                    data_type: dt.clone(),
                });
                metadata_at.push(k_at);
            }
            fields.push(Field::new(col.name, dt, !col.not_null));
        }
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen).map_err(pe)?;
    let options = if p.peek_keyword(Keyword::WITH) {
        parse_with_options(p)?
    } else {
        Options::default()
    };
    // The event-time column of a source with a WATERMARK is implicitly NOT NULL: a record
    // without its event time cannot be placed in time, so it is a bad record (it follows
    // 'bad.records' with the reason) rather than a row every window would call late.
    if let Some(w) = &watermark {
        for f in fields.iter_mut().filter(|f| f.name() == &w.column) {
            *f = f.clone().with_nullable(false);
        }
    }
    let schema = Arc::new(Schema::new(fields));
    if let Some(w) = &watermark {
        match schema.field_with_name(&w.column) {
            Ok(f) if matches!(f.data_type(), DataType::Timestamp(_, _)) => {}
            Ok(f) => {
                return Err(WeirError::user_at(
                    format!(
                        "WATERMARK column '{}' must be a TIMESTAMP, it is {}",
                        w.column,
                        f.data_type()
                    ),
                    at,
                ));
            }
            Err(_) => {
                return Err(WeirError::user_at(
                    format!(
                        "WATERMARK names column '{}', which is not declared",
                        w.column
                    ),
                    at,
                ));
            }
        }
    }
    Ok(WeirStatement::CreateSource(CreateSource {
        name,
        if_not_exists,
        schema,
        watermark,
        metadata,
        metadata_at,
        options,
    }))
}

/// `CREATE TABLE`: the column list of `CREATE SOURCE` without WATERMARK or METADATA.
pub(super) fn parse_create_table(p: &mut Parser) -> Result<WeirStatement> {
    let at = loc(&p.peek_token());
    let WeirStatement::CreateSource(s) = parse_create_source(p)? else {
        return Err(WeirError::Internal("CREATE TABLE parse".into()));
    };
    if s.watermark.is_some() {
        return Err(WeirError::user_at(
            "a table has no event time: WATERMARK is for CREATE SOURCE",
            at,
        ));
    }
    if let Some(l) = s.metadata_at.first() {
        return Err(WeirError::user_at(
            "METADATA columns are for CREATE SOURCE, not tables",
            *l,
        ));
    }
    Ok(WeirStatement::CreateTable(CreateTable {
        name: s.name,
        if_not_exists: s.if_not_exists,
        schema: s.schema,
        options: s.options,
    }))
}

/// A declared column: its name, Arrow type, and whether it is NOT NULL.
struct Column {
    name: String,
    data_type: DataType,
    not_null: bool,
}

/// `name TYPE [NOT NULL | NULL | PRIMARY KEY ...]`, with the nested types of
/// [`parse_type`].
fn parse_column(p: &mut Parser) -> Result<Column> {
    let at = loc(&p.peek_token());
    let pe = |e| parse_err(e, at);
    let name = p.parse_identifier().map_err(pe)?.value;
    let mut types = TypeParser { pending_gt: 0 };
    let data_type = types.parse_type(p)?;
    if types.pending_gt > 0 {
        return Err(WeirError::user_at(
            "a '>' closes no STRUCT<, ARRAY<, LIST< or MAP<",
            loc(&p.peek_token()),
        ));
    }
    let mut not_null = false;
    loop {
        let o_at = loc(&p.peek_token());
        match p
            .parse_optional_column_option()
            .map_err(|e| parse_err(e, o_at))?
        {
            Some(ColumnOption::NotNull | ColumnOption::PrimaryKey(_)) => not_null = true,
            Some(ColumnOption::Null) => not_null = false,
            Some(other) => {
                return Err(WeirError::user_at(
                    format!("column option {other} is not supported; use NOT NULL or NULL"),
                    o_at,
                ));
            }
            None => break,
        }
    }
    Ok(Column {
        name,
        data_type,
        not_null,
    })
}

/// Column types: the scalar types of [`arrow_type`], and nested to any depth
/// `STRUCT<name TYPE, ...>`, `ARRAY<TYPE>` / `LIST<TYPE>` / `TYPE[]` and `MAP<KEY, VALUE>`
/// (struct fields, list items and map values nullable, map keys not).
struct TypeParser {
    /// `>` still owed from a `>>` token that closed two levels at once.
    pending_gt: usize,
}

impl TypeParser {
    fn parse_type(&mut self, p: &mut Parser) -> Result<DataType> {
        let at = loc(&p.peek_token());
        let pe = |e| parse_err(e, at);
        let token = p.peek_token();
        let nested = ["STRUCT", "ARRAY", "LIST", "MAP"]
            .into_iter()
            .find(|w| word_is(&token, w));
        let mut dt = match nested {
            Some(kind) => {
                p.next_token();
                if !p.consume_token(&Token::Lt) {
                    return Err(WeirError::user_at(
                        format!(
                            "{kind} needs its element types in angle brackets: {}",
                            match kind {
                                "STRUCT" => "STRUCT<name TYPE, ...>",
                                "MAP" => "MAP<KEY_TYPE, VALUE_TYPE>",
                                _ => "ARRAY<TYPE> (or TYPE[])",
                            }
                        ),
                        at,
                    ));
                }
                let dt = match kind {
                    "STRUCT" => {
                        let mut fields = Vec::new();
                        loop {
                            let f_at = loc(&p.peek_token());
                            let name = p.parse_identifier().map_err(pe)?.value;
                            let t = self.parse_type(p)?;
                            if fields.iter().any(|f: &Field| f.name() == &name) {
                                return Err(WeirError::user_at(
                                    format!("STRUCT field '{name}' is declared twice"),
                                    f_at,
                                ));
                            }
                            fields.push(Field::new(name, t, true));
                            if self.pending_gt > 0 || !p.consume_token(&Token::Comma) {
                                break;
                            }
                        }
                        DataType::Struct(fields.into())
                    }
                    "MAP" => {
                        let key = self.parse_type(p)?;
                        if self.pending_gt > 0 || !p.consume_token(&Token::Comma) {
                            return Err(WeirError::user_at(
                                "MAP needs a key and a value type: MAP<KEY_TYPE, VALUE_TYPE>",
                                at,
                            ));
                        }
                        let value = self.parse_type(p)?;
                        let entries = Field::new(
                            "entries",
                            DataType::Struct(
                                vec![
                                    Field::new("keys", key, false),
                                    Field::new("values", value, true),
                                ]
                                .into(),
                            ),
                            false,
                        );
                        DataType::Map(Arc::new(entries), false)
                    }
                    _ => DataType::new_list(self.parse_type(p)?, true),
                };
                self.close(p, kind)?;
                dt
            }
            None => {
                let sql = p.parse_data_type().map_err(pe)?;
                arrow_type(&sql).map_err(|m| WeirError::user_at(m, at))?
            }
        };
        // `TYPE[]`, any number of times (sqlparser took the ones after a scalar type).
        while self.pending_gt == 0 && p.peek_token().token == Token::LBracket {
            p.next_token();
            p.expect_token(&Token::RBracket).map_err(pe)?;
            dt = DataType::new_list(dt, true);
        }
        Ok(dt)
    }

    /// The `>` that closes `kind<...`: a `>` token, a `>>` (one `>` left owed to the level
    /// above), or one owed already.
    fn close(&mut self, p: &mut Parser, kind: &str) -> Result<()> {
        if self.pending_gt > 0 {
            self.pending_gt -= 1;
            return Ok(());
        }
        let t = p.next_token();
        match t.token {
            Token::Gt => Ok(()),
            Token::ShiftRight => {
                self.pending_gt += 1;
                Ok(())
            }
            _ => Err(WeirError::user_at(
                format!("expected '>' to close {kind}<...>, found {}", t.token),
                loc(&t),
            )),
        }
    }
}

fn watermark_spec(column: &str, expr: &Expr, at: Location) -> Result<WatermarkSpec> {
    let is_col = |e: &Expr| matches!(e, Expr::Identifier(i) if i.value == column);
    let bad = || {
        WeirError::user_at(
            format!("WATERMARK must be `{column}` or `{column} - INTERVAL '...'`, found {expr}"),
            at,
        )
    };
    match expr {
        e if is_col(e) => Ok(WatermarkSpec {
            column: column.to_string(),
            delay: Duration::ZERO,
        }),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Minus,
            right,
        } if is_col(left) => Ok(WatermarkSpec {
            column: column.to_string(),
            delay: interval_duration(right).map_err(|m| WeirError::user_at(m, at))?,
        }),
        _ => Err(bad()),
    }
}

/// SQL column types a source may declare, mapped to Arrow. TIMESTAMP is millisecond
/// precision, UTC, which is what JSON epoch-millis carry.
pub fn arrow_type(t: &SqlType) -> std::result::Result<DataType, String> {
    use SqlType::*;
    Ok(match t {
        Text | Varchar(_) | String(_) | Char(_) | CharVarying(_) | Character(_) => DataType::Utf8,
        Timestamp(_, _) | Datetime(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
        Date => DataType::Date32,
        Boolean | Bool => DataType::Boolean,
        SmallInt(_) | Int16 => DataType::Int16,
        Int(_) | Integer(_) | Int4(_) | Int32 => DataType::Int32,
        BigInt(_) | Int8(_) | Int64 => DataType::Int64,
        Real | Float4 | Float32 => DataType::Float32,
        Double(_) | DoublePrecision | Float8 | Float64 | Float(_) => DataType::Float64,
        Array(ast::ArrayElemTypeDef::SquareBracket(inner, None)) => {
            DataType::new_list(arrow_type(inner)?, true)
        }
        Decimal(info) | Numeric(info) => {
            use ast::ExactNumberInfo::*;
            let (p, s) = match info {
                None => (38, 10),
                Precision(p) => (*p as u8, 0),
                PrecisionAndScale(p, s) => (*p as u8, *s as i8),
            };
            DataType::Decimal128(p.min(38), s)
        }
        other => {
            return Err(format!(
                "column type {other} is not supported; use TEXT, TIMESTAMP, DATE, BOOLEAN, \
                 SMALLINT, INT, BIGINT, REAL, DOUBLE, DECIMAL(p, s), or nested: \
                 STRUCT<name TYPE, ...>, ARRAY<TYPE> (LIST<TYPE>, TYPE[]), MAP<KEY, VALUE>"
            ));
        }
    })
}
