//! The time band of a join: conditions such as `b.ts BETWEEN a.ts AND a.ts + INTERVAL '1'
//! HOUR` bound how far apart in time a left and a right row may be and still match. With
//! both ends bounded, each input's watermark tells when a stored row of the other side can
//! no longer match (see `StreamJoin::advance`): what lets a time-bounded outer join emit a
//! row without a match, and lets its state go.

use datafusion::common::{JoinSide, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal, TryCastExpr};
use datafusion::physical_expr::{PhysicalExpr, split_conjunction};
use datafusion::physical_plan::joins::utils::JoinFilter;
use std::sync::Arc;

/// `lo <= right.t - left.t <= hi` (ms), `t` the column `columns[side]` of each side's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    pub columns: [usize; 2],
    pub lo: i64,
    pub hi: i64,
}

/// A time column of one side plus a constant: (side, column, offset in ns).
type Term = (usize, usize, i128);

const NS_PER_MS: i128 = 1_000_000;

/// The band the filter's conjuncts put on one pair of columns (the first pair compared),
/// if it bounds both ends. Other conjuncts only filter.
pub fn band_of(filter: &JoinFilter) -> Option<Band> {
    let mut columns: Option<[usize; 2]> = None;
    let (mut lo, mut hi): (Option<i128>, Option<i128>) = (None, None);
    for c in split_conjunction(filter.expression()) {
        let Some(b) = c.downcast_ref::<BinaryExpr>() else {
            continue;
        };
        let (Some(x), Some(y)) = (term(b.left(), filter), term(b.right(), filter)) else {
            continue;
        };
        if x.0 == y.0 {
            continue;
        }
        // As `l.t + ol  op  r.t + or`.
        let (op, l, r) = if x.0 == 0 {
            (*b.op(), x, y)
        } else {
            match b.op().swap() {
                Some(op) => (op, y, x),
                None => continue,
            }
        };
        let pair = [l.1, r.1];
        if *columns.get_or_insert(pair) != pair {
            continue;
        }
        // l.t + ol <= r.t + or  <=>  r.t - l.t >= ol - or.
        let d = l.2 - r.2;
        let at_least = |v: &mut Option<i128>| *v = Some(v.map_or(d, |o| o.max(d)));
        let at_most = |v: &mut Option<i128>| *v = Some(v.map_or(d, |o| o.min(d)));
        match op {
            Operator::Lt | Operator::LtEq => at_least(&mut lo),
            Operator::Gt | Operator::GtEq => at_most(&mut hi),
            Operator::Eq => {
                at_least(&mut lo);
                at_most(&mut hi);
            }
            _ => {}
        }
    }
    let (columns, lo, hi) = (columns?, lo?, hi?);
    // Whole ms, rounded outwards: the band as used may be wider, never narrower.
    let ms = |v: i128, up: bool| -> Option<i64> {
        let q = v.div_euclid(NS_PER_MS) + i128::from(up && v.rem_euclid(NS_PER_MS) != 0);
        i64::try_from(q).ok()
    };
    Some(Band {
        columns,
        lo: ms(lo, false)?,
        hi: ms(hi, true)?,
    })
}

/// `e` as a column of one side plus a constant.
fn term(e: &Arc<dyn PhysicalExpr>, filter: &JoinFilter) -> Option<Term> {
    if let Some(c) = e.downcast_ref::<Column>() {
        let ci = filter.column_indices().get(c.index())?;
        let side = match ci.side {
            JoinSide::Left => 0,
            JoinSide::Right => 1,
            JoinSide::None => return None,
        };
        return Some((side, ci.index, 0));
    }
    if let Some(c) = e.downcast_ref::<CastExpr>() {
        return term(c.expr(), filter);
    }
    if let Some(c) = e.downcast_ref::<TryCastExpr>() {
        return term(c.expr(), filter);
    }
    let b = e.downcast_ref::<BinaryExpr>()?;
    match b.op() {
        Operator::Plus => match (term(b.left(), filter), term(b.right(), filter)) {
            (Some(t), None) => Some((t.0, t.1, t.2 + constant_ns(b.right())?)),
            (None, Some(t)) => Some((t.0, t.1, t.2 + constant_ns(b.left())?)),
            _ => None,
        },
        Operator::Minus => {
            let t = term(b.left(), filter)?;
            Some((t.0, t.1, t.2 - constant_ns(b.right())?))
        }
        _ => None,
    }
}

/// A literal interval or duration of fixed length, in ns (months have none).
fn constant_ns(e: &Arc<dyn PhysicalExpr>) -> Option<i128> {
    const DAY: i128 = 86_400 * 1_000_000_000;
    let v = e.downcast_ref::<Literal>()?.value();
    Some(match v {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            i128::from(v.days) * DAY + i128::from(v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            i128::from(v.days) * DAY + i128::from(v.milliseconds) * NS_PER_MS
        }
        ScalarValue::IntervalYearMonth(Some(0)) => 0,
        ScalarValue::DurationSecond(Some(v)) => i128::from(*v) * 1_000_000_000,
        ScalarValue::DurationMillisecond(Some(v)) => i128::from(*v) * NS_PER_MS,
        ScalarValue::DurationMicrosecond(Some(v)) => i128::from(*v) * 1_000,
        ScalarValue::DurationNanosecond(Some(v)) => i128::from(*v),
        _ => return None,
    })
}
