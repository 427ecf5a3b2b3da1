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
        let t = p.peek_token();
        if word_is(&p.peek_token(), "WATERMARK") {
            p.next_token();
            p.expect_keyword(Keyword::FOR).map_err(pe)?;
            let column = p.parse_identifier().map_err(pe)?.value;
            p.expect_keyword(Keyword::AS).map_err(pe)?;
            let e_at = loc(&p.peek_token());
            let expr = p.parse_expr().map_err(pe)?;
            watermark = Some(watermark_spec(&column, &expr, e_at)?);
        } else {
            let col = p.parse_column_def().map_err(pe)?;
            let dt = arrow_type(&col.data_type).map_err(|m| WeirError::user_at(m, loc(&t)))?;
            if word_is(&p.peek_token(), "METADATA") {
                p.next_token();
                p.expect_keyword(Keyword::FROM).map_err(pe)?;
                let k_at = loc(&p.peek_token());
                let key = p.parse_literal_string().map_err(pe)?;
                metadata.push(MetadataColumn {
                    column: col.name.value.clone(),
                    key,
                    data_type: dt.clone(),
                });
                metadata_at.push(k_at);
            }
            let not_null = col.options.iter().any(|o| {
                matches!(
                    o.option,
                    ColumnOption::NotNull | ColumnOption::PrimaryKey(_)
                )
            });
            fields.push(Field::new(col.name.value, dt, !not_null));
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
                 SMALLINT, INT, BIGINT, REAL, DOUBLE or DECIMAL(p, s)"
            ));
        }
    })
}
