//! The catalog: every named object of a pipeline (sources, views, sinks, reference
//! tables) with its SQL text, schema, live figures and what it reads, in creation order.
//! It answers SHOW and DESCRIBE and the dependency checks of DROP, and publishes a
//! read-only copy, [`CatalogHandle`], that other tasks (the HTTP server, progress lines)
//! read without going through the driver. It holds no dataflow state.

use crate::error::{Result, WeirError};
use crate::object::ObjectKind;
use crate::planner::{RelationKind, ViewProps};
use crate::serving::ViewBuffer;
use crate::stats::{CheckpointStats, Stats};
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::RwLock;
use std::sync::Arc;

/// A live object for display.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub kind: ObjectKind,
    pub name: String,
    /// The connector (sources, sinks, tables) or the inputs (views).
    pub detail: String,
    pub stats: Arc<Stats>,
    /// The statement that created it, as written.
    pub sql: String,
    /// Its columns (a sink's are its view's).
    pub schema: SchemaRef,
    /// What it reads: a view's source or view (a join view's left input), a sink's view.
    pub input: Option<String>,
    /// Everything it reads: a view's inputs (two for a join view), a sink's view.
    pub inputs: Vec<String>,
    /// A view's retained rows and subscribers.
    pub buffer: Option<Arc<ViewBuffer>>,
    /// What identifies a view's output row (window bounds and group keys; empty for
    /// stateless views): rows with the same key replace each other (early results).
    pub key: Vec<String>,
}

/// One object in the catalog.
#[derive(Debug, Clone)]
pub struct Entry {
    pub info: ObjectInfo,
    /// Views: their typed properties.
    pub props: Option<ViewProps>,
    /// Sources and views: what the planner sees of them.
    pub relation: Option<RelationKind>,
    /// Views: the reference tables their plan reads.
    pub tables: Vec<String>,
    /// Views: what DESCRIBE shows under `plan` (tables describe their loads, which change).
    pub plan: Option<String>,
    /// What SHOW lists beside the name: the connector (a table's where it reads from, a
    /// sink's `connector <- view`) or a view's inputs.
    pub shown: String,
}

/// The objects of a pipeline, in creation order.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    handle: CatalogHandle,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.info.name == name)
    }

    /// The kind of the object called `name`, if there is one.
    pub fn kind_of(&self, name: &str) -> Option<ObjectKind> {
        self.get(name).map(|e| e.info.kind)
    }

    /// The object `name` if it is of `kind`.
    pub fn get_kind(&self, kind: ObjectKind, name: &str) -> Option<&Entry> {
        self.get(name).filter(|e| e.info.kind == kind)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn of_kind(&self, kind: ObjectKind) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.info.kind == kind)
    }

    /// Fail if the name is taken, saying by what.
    pub fn check_new_name(&self, name: &str) -> Result<()> {
        match self.kind_of(name) {
            Some(kind) => Err(WeirError::user(format!(
                "a {} named '{name}' already exists",
                kind.noun()
            ))),
            None => Ok(()),
        }
    }

    pub fn add(&mut self, entry: Entry) {
        self.entries.push(entry);
        self.publish();
    }

    /// Remove `name` (of `kind`); fails naming the dependents if others read it.
    pub fn remove(&mut self, kind: ObjectKind, name: &str) -> Result<Entry> {
        let dependents = self.dependents(name);
        if !dependents.is_empty() {
            return Err(WeirError::Conflict {
                object: (kind, name.to_string()),
                dependents,
                statement: None,
                location: None,
            });
        }
        let i = self
            .entries
            .iter()
            .position(|e| e.info.kind == kind && e.info.name == name)
            .ok_or_else(|| WeirError::user(format!("there is no {} '{name}'", kind.noun())))?;
        let e = self.entries.remove(i);
        self.publish();
        Ok(e)
    }

    /// The objects that read `name` (views over it, views joining its table, its sinks).
    pub fn dependents(&self, name: &str) -> Vec<(ObjectKind, String)> {
        let mut views: Vec<(ObjectKind, String)> = self
            .of_kind(ObjectKind::View)
            .filter(|e| {
                e.info.inputs.iter().any(|i| i == name) || e.tables.iter().any(|t| t == name)
            })
            .map(|e| (ObjectKind::View, e.info.name.clone()))
            .collect();
        views.extend(
            self.of_kind(ObjectKind::Sink)
                .filter(|e| e.info.inputs.iter().any(|i| i == name))
                .map(|e| (ObjectKind::Sink, e.info.name.clone())),
        );
        views
    }

    /// A handle on the published list of objects, updated on every change.
    pub fn handle(&self) -> CatalogHandle {
        self.handle.clone()
    }

    fn publish(&self) {
        // Sources, views, tables, then sinks, each in creation order.
        let order = [
            ObjectKind::Source,
            ObjectKind::View,
            ObjectKind::Table,
            ObjectKind::Sink,
        ];
        let objects = order
            .iter()
            .flat_map(|k| self.of_kind(*k).map(|e| e.info.clone()))
            .collect();
        *self.handle.objects.write() = Arc::new(objects);
    }

    /// `SHOW SOURCES | VIEWS | SINKS | TABLES`: name and connector (or inputs).
    pub fn show(&self, kind: ObjectKind) -> Result<RecordBatch> {
        let (names, details): (Vec<String>, Vec<String>) = self
            .of_kind(kind)
            .map(|e| (e.info.name.clone(), e.shown.clone()))
            .unzip();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new(
                match kind {
                    ObjectKind::View => "input",
                    _ => "connector",
                },
                DataType::Utf8,
                false,
            ),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(details)),
            ],
        )?)
    }

    /// `DESCRIBE name`: columns, SQL, status and plan (or `plan`, when given), one line
    /// each.
    /// `parallelism`: how a view's work is shared among the workers.
    pub fn describe(
        &self,
        name: &str,
        plan: Option<String>,
        parallelism: Option<&str>,
    ) -> Result<RecordBatch> {
        let e = self
            .get(name)
            .filter(|e| e.info.kind != ObjectKind::Sink)
            .ok_or_else(|| {
                WeirError::user(format!(
                    "there is no source, materialized view or table '{name}'"
                ))
            })?;
        let mut lines: Vec<String> = e
            .info
            .schema
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "column {} {}{}",
                    f.name(),
                    f.data_type(),
                    if f.is_nullable() { "" } else { " NOT NULL" }
                )
            })
            .collect();
        lines.push(format!("sql {}", e.info.sql));
        let s = e.info.stats.snapshot();
        lines.push(format!(
            "status rows_in={} rows_out={} late_rows={} bad_rows={} watermark={}",
            s.rows_in,
            s.rows_out,
            s.late_rows,
            s.bad_rows,
            crate::stats::fmt_watermark(s.watermark)
        ));
        // An updating view's state grows with its keys: say how big it is.
        if e.props.as_ref().is_some_and(|p| p.changelog) {
            lines.push(format!(
                "state groups={} bytes={}",
                s.open_groups, s.state_bytes
            ));
        }
        if let Some(p) = parallelism {
            lines.push(format!("parallel {p}"));
        }
        if let Some(p) = plan.as_ref().or(e.plan.as_ref()) {
            lines.extend(p.lines().map(|l| format!("plan {l}")));
        }
        text_batch("describe", lines)
    }
}

/// A one-column batch of text lines (SHOW, DESCRIBE, EXPLAIN output).
pub fn text_batch(column: &str, lines: Vec<String>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from(lines)) as ArrayRef],
    )?)
}

/// The objects of a running pipeline as last published, readable from any task. Replaced
/// as a whole on every CREATE and DROP.
#[derive(Debug, Clone, Default)]
pub struct CatalogHandle {
    objects: Arc<RwLock<Arc<Vec<ObjectInfo>>>>,
    checkpoints: Arc<CheckpointStats>,
}

impl CatalogHandle {
    pub fn objects(&self) -> Arc<Vec<ObjectInfo>> {
        self.objects.read().clone()
    }

    /// The pipeline's checkpoint figures (the runtime's coordinator fills them).
    pub fn checkpoint_stats(&self) -> Arc<CheckpointStats> {
        self.checkpoints.clone()
    }

    pub fn get(&self, name: &str) -> Option<ObjectInfo> {
        self.objects().iter().find(|o| o.name == name).cloned()
    }
}
