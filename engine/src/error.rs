//! Weir's error type. Errors are classified so callers can react: a `User` error
//! (bad SQL, bad option) is reported verbatim with its position, an `External` error
//! (a broker or database that went away) may be retried, an `Internal` error is a bug.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use std::fmt;

/// A position in submitted SQL text, 1-based like editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeirError {
    /// Bad SQL or a bad option: the user's to fix. `statement` is the 1-based index of the
    /// statement in the submitted text.
    #[error("{}", fmt_user(.message, .statement, .location))]
    User {
        message: String,
        statement: Option<usize>,
        location: Option<Location>,
    },
    /// A system outside Weir failed (file, broker, database). May succeed on retry.
    #[error("{0}")]
    External(String),
    /// A malformed record with `bad.records = 'fail'`.
    #[error("bad record: {0}")]
    BadRecord(String),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A bug in Weir.
    #[error("internal error: {0}")]
    Internal(String),
}

fn fmt_user(message: &str, statement: &Option<usize>, location: &Option<Location>) -> String {
    match (statement, location) {
        (Some(s), Some(l)) => format!("statement {s} ({l}): {message}"),
        (Some(s), None) => format!("statement {s}: {message}"),
        (None, Some(l)) => format!("{l}: {message}"),
        (None, None) => message.to_string(),
    }
}

impl WeirError {
    /// A user error with no position yet; the SQL layer adds statement and location.
    pub fn user(message: impl Into<String>) -> Self {
        WeirError::User {
            message: message.into(),
            statement: None,
            location: None,
        }
    }

    pub fn user_at(message: impl Into<String>, location: Location) -> Self {
        WeirError::User {
            message: message.into(),
            statement: None,
            location: Some(location),
        }
    }

    pub fn is_user(&self) -> bool {
        matches!(self, WeirError::User { .. })
    }

    /// Attach the statement index (and a fallback location) to a user error. DataFusion
    /// planning errors are user errors too when they come out of a user's statement.
    pub fn in_statement(self, index: usize, fallback: Location) -> Self {
        match self {
            WeirError::User {
                message, location, ..
            } => WeirError::User {
                message,
                statement: Some(index),
                location: location.or(Some(fallback)),
            },
            WeirError::DataFusion(e) => WeirError::User {
                message: e.strip_backtrace().to_string(),
                statement: Some(index),
                location: Some(fallback),
            },
            other => other,
        }
    }
}

pub type Result<T, E = WeirError> = std::result::Result<T, E>;
