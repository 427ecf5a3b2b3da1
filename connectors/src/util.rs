//! Small helpers shared by connectors.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::FormatOptions;
use weir_engine::{Result, WeirError};

/// Error unless a `from` column can be cast to the declared `to` type.
pub(crate) fn check_castable(
    column: &str,
    from: &DataType,
    to: &DataType,
    what: &str,
) -> Result<()> {
    if from == to || can_cast_types(from, to) {
        Ok(())
    } else {
        Err(WeirError::user(format!(
            "column '{column}' is declared as {to} but {what} provides {from}, which cannot be cast to it"
        )))
    }
}

/// Cast to the declared type; values that do not fit are an error, not a silent null.
pub(crate) fn cast_to(array: &ArrayRef, to: &DataType, column: &str) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    let options = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    cast_with_options(array, to, &options).map_err(|e| {
        WeirError::external_source(
            format!(
                "column '{column}': cannot cast {} to {to}",
                array.data_type()
            ),
            e,
        )
    })
}

pub(crate) use weir_engine::fsutil::io_error;
