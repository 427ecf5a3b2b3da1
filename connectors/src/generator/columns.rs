//! Column buffers the generators append to: plain vectors turned into Arrow arrays without
//! per-value builder overhead.

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use std::sync::Arc;
use weir_engine::{Result, WeirError};

pub(crate) const TIMESTAMP: DataType = DataType::Timestamp(TimeUnit::Millisecond, None);

/// A UTF-8 column under construction.
#[derive(Debug, Default)]
pub(crate) struct StrCol {
    values: Vec<u8>,
    offsets: Vec<i32>,
    valid: Vec<bool>,
    any_null: bool,
}

impl StrCol {
    pub(crate) fn with_capacity(rows: usize, bytes_per_row: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        StrCol {
            values: Vec::with_capacity(rows * bytes_per_row),
            offsets,
            valid: Vec::with_capacity(rows),
            any_null: false,
        }
    }

    #[inline]
    fn end_value(&mut self, valid: bool) {
        self.offsets.push(self.values.len() as i32);
        self.valid.push(valid);
    }

    #[inline]
    pub(crate) fn push(&mut self, s: &str) {
        self.values.extend_from_slice(s.as_bytes());
        self.end_value(true);
    }

    /// `prefix` followed by `n` in decimal.
    #[inline]
    pub(crate) fn push_prefixed_u64(&mut self, prefix: &str, n: u64) {
        self.values.extend_from_slice(prefix.as_bytes());
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = n;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.values.extend_from_slice(&buf[i..]);
        self.end_value(true);
    }

    #[inline]
    pub(crate) fn push_null(&mut self) {
        self.any_null = true;
        self.end_value(false);
    }

    pub(crate) fn finish(&mut self) -> Result<ArrayRef> {
        let this = std::mem::take(self);
        if this.values.len() > i32::MAX as usize {
            return Err(WeirError::Internal(
                "generated string column over 2 GiB".to_string(),
            ));
        }
        let nulls = this.any_null.then(|| NullBuffer::from(this.valid));
        let array = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(this.offsets)),
            this.values.into(),
            nulls,
        )?;
        Ok(Arc::new(array))
    }
}

pub(crate) fn f64_array(values: &mut Vec<f64>) -> ArrayRef {
    Arc::new(Float64Array::new(
        ScalarBuffer::from(std::mem::take(values)),
        None,
    ))
}

pub(crate) fn i64_array(values: &mut Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::new(
        ScalarBuffer::from(std::mem::take(values)),
        None,
    ))
}

pub(crate) fn ts_array(values: &mut Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::new(
        ScalarBuffer::from(std::mem::take(values)),
        None,
    ))
}

/// Round to `1 / scale` (e.g. scale 100 for cents) so values read nicely.
#[inline]
pub(crate) fn round_to(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}
