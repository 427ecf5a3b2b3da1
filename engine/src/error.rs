//! Weir's error type. Errors are classified so callers can react without reading their
//! text:
//!
//! - `User`: bad SQL or a bad option, the user's to fix; reported verbatim with its
//!   statement and position (HTTP 400).
//! - `Conflict`: the statement is fine but the catalog refuses it (a DROP of an object others
//!   read, with the dependents listed; HTTP 409).
//! - `Limit`: a statement or query went past a configured bound (expression depth, query
//!   time, memory or rows); says which limit (HTTP 4xx).
//! - `External`: a system outside Weir failed (file, broker, database), with its source
//!   error kept; [`WeirError::is_retryable`] says whether trying again may help.
//! - `Internal`: a bug in Weir (HTTP 500 with a generic message; the chain goes to the log).

use crate::object::ObjectKind;
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

/// Any error, as the source of an [`WeirError::External`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which bound a [`WeirError::Limit`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Expressions nested deeper than the planner accepts.
    ExpressionDepth,
    /// An ad-hoc query ran longer than allowed.
    QueryTime,
    /// An ad-hoc query needed more memory than allowed.
    QueryMemory,
    /// An ad-hoc query returned more rows than allowed.
    QueryRows,
    /// A value (a string built by a function) larger than allowed.
    ValueSize,
}

impl LimitKind {
    /// A stable name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::ExpressionDepth => "expression_depth",
            LimitKind::QueryTime => "query_time",
            LimitKind::QueryMemory => "query_memory",
            LimitKind::QueryRows => "query_rows",
            LimitKind::ValueSize => "value_size",
        }
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
    /// The catalog refuses to drop `object`: `dependents` read it and must go first.
    #[error("{}", fmt_user(&fmt_conflict(.object, .dependents), .statement, .location))]
    Conflict {
        object: (ObjectKind, String),
        dependents: Vec<(ObjectKind, String)>,
        statement: Option<usize>,
        location: Option<Location>,
    },
    /// A configured bound was reached.
    #[error("{}", fmt_user(.message, .statement, &None))]
    Limit {
        kind: LimitKind,
        message: String,
        statement: Option<usize>,
    },
    /// A system outside Weir failed (file, broker, database).
    #[error("{}", fmt_external(.context, .source))]
    External {
        /// What Weir was doing (`writing /data/x.parquet`, `sink 'lake'`).
        context: String,
        #[source]
        source: Option<BoxError>,
        /// Whether the same operation may succeed if tried again (a connection that
        /// broke, a server restarting), as opposed to failing the same way (a missing
        /// permission, a constraint).
        retryable: bool,
    },
    /// A write was rejected because another cluster member took over what it was for (a
    /// zombie's late write, docs/cluster.md): not retryable by this member.
    #[error("fenced: {0}")]
    Fenced(String),
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

fn fmt_conflict(object: &(ObjectKind, String), dependents: &[(ObjectKind, String)]) -> String {
    let names: Vec<String> = dependents
        .iter()
        .map(|(k, n)| format!("{} {n}", k.noun()))
        .collect();
    format!(
        "cannot drop {} '{}': it is used by {}; drop those first",
        object.0.noun(),
        object.1,
        names.join(", ")
    )
}

fn fmt_external(context: &str, source: &Option<BoxError>) -> String {
    match source {
        Some(s) => format!("{context}: {s}"),
        None => context.to_string(),
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

    /// An outside system failed; `context` says what Weir was doing and why it failed.
    /// Not retryable (see [`WeirError::retryable`]).
    pub fn external(context: impl Into<String>) -> Self {
        WeirError::External {
            context: context.into(),
            source: None,
            retryable: false,
        }
    }

    /// An outside system failed with `source` while Weir was doing `context`.
    pub fn external_source(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        WeirError::External {
            context: context.into(),
            source: Some(source.into()),
            retryable: false,
        }
    }

    /// The same error, marked as worth retrying (only `External` errors can be).
    pub fn retryable(self) -> Self {
        match self {
            WeirError::External {
                context, source, ..
            } => WeirError::External {
                context,
                source,
                retryable: true,
            },
            other => other,
        }
    }

    /// Wrap an error of any kind with what Weir was doing when it happened. User,
    /// conflict and limit errors keep their kind (they are reported verbatim); others
    /// become `External` with the original as the source.
    pub fn context(self, context: impl Into<String>) -> Self {
        match self {
            e @ (WeirError::User { .. }
            | WeirError::Conflict { .. }
            | WeirError::Limit { .. }
            | WeirError::Fenced(_)) => e,
            WeirError::External {
                context: inner,
                source,
                retryable,
            } => WeirError::External {
                context: format!("{}: {inner}", context.into()),
                source,
                retryable,
            },
            other => WeirError::External {
                context: context.into(),
                source: Some(Box::new(other)),
                retryable: false,
            },
        }
    }

    /// A DataFusion error from planning a user's SQL: a user error, at the position
    /// DataFusion's diagnostic points to when it has one.
    pub fn planning(e: DataFusionError) -> Self {
        let location = e.diagnostic().and_then(|d| d.span).map(|s| Location {
            line: s.start.line,
            column: s.start.column,
        });
        WeirError::User {
            message: e.strip_backtrace().to_string(),
            statement: None,
            location,
        }
    }

    pub fn is_user(&self) -> bool {
        matches!(self, WeirError::User { .. })
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WeirError::External { retryable, .. } => *retryable,
            WeirError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
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
            WeirError::Conflict {
                object,
                dependents,
                location,
                ..
            } => WeirError::Conflict {
                object,
                dependents,
                statement: Some(index),
                location: location.or(Some(fallback)),
            },
            WeirError::Limit { kind, message, .. } => WeirError::Limit {
                kind,
                message,
                statement: Some(index),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_errors_keep_their_source_and_say_whether_to_retry() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = WeirError::external_source("writing to the broker", io);
        assert_eq!(e.to_string(), "writing to the broker: reset by peer");
        assert!(std::error::Error::source(&e).is_some());
        assert!(!e.is_retryable());
        assert!(e.retryable().is_retryable());
        assert!(WeirError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)).is_retryable());
        assert!(!WeirError::user("bad").is_retryable());
    }

    #[test]
    fn conflicts_name_their_dependents_and_statement() {
        let e = WeirError::Conflict {
            object: (ObjectKind::View, "v".into()),
            dependents: vec![
                (ObjectKind::Sink, "s".into()),
                (ObjectKind::View, "w".into()),
            ],
            statement: None,
            location: None,
        }
        .in_statement(2, Location { line: 3, column: 1 });
        assert_eq!(
            e.to_string(),
            "statement 2 (line 3, column 1): cannot drop materialized view 'v': it is used by \
             sink s, materialized view w; drop those first"
        );
    }

    #[test]
    fn context_wraps_other_errors_and_keeps_user_ones() {
        let e = WeirError::Internal("x".into()).context("restoring view v");
        assert_eq!(e.to_string(), "restoring view v: internal error: x");
        assert!(std::error::Error::source(&e).is_some());
        assert!(WeirError::user("bad").context("ctx").is_user());
    }
}
