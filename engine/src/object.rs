//! The kinds of named objects in a pipeline's catalog. A leaf module (it imports nothing),
//! so errors, SQL and the catalog can all name object kinds.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Source,
    View,
    Sink,
    /// A reference table (`CREATE TABLE`), for lookup joins.
    Table,
}

impl ObjectKind {
    /// The kind as SQL calls it, for messages: `materialized view`.
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Source => "source",
            ObjectKind::View => "materialized view",
            ObjectKind::Sink => "sink",
            ObjectKind::Table => "table",
        }
    }

    /// The kind as the HTTP API names it: `view`.
    pub fn word(self) -> &'static str {
        match self {
            ObjectKind::Source => "source",
            ObjectKind::View => "view",
            ObjectKind::Sink => "sink",
            ObjectKind::Table => "table",
        }
    }
}
