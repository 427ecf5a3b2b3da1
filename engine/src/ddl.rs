//! The statement interpreter: applies a script's statements to a [`Pipeline`] in order.
//! CREATE builds the object (a connector from the registry, a view plan from the planner),
//! adds it to the catalog and, for sources and views, to the dataflow; DROP checks
//! dependents and removes it; SHOW, DESCRIBE and EXPLAIN answer from the catalog and the
//! planner; SELECT runs an ad-hoc query over retained rows.

use crate::catalog::{Entry, ObjectInfo, text_batch};
use crate::connector::{SinkSpec, SourceSpec, TableSpec};
use crate::dataflow::source::SourceOp;
use crate::error::{Result, WeirError};
use crate::fsutil::run_blocking;
use crate::lookup::TableHandle;
use crate::object::ObjectKind;
use crate::pipeline::{Applied, NewSink, Pipeline, ScriptOutcome, StatementResult};
use crate::planner::{PlannerEnv, Relation, RelationKind, plan_view};
use crate::serving::ViewBuffer;
use crate::sql::{self, CreateSink, CreateSource, CreateTable, CreateView, Located, WeirStatement};
use crate::stats::{Stats, Status};
use crate::tables::{RefTable, reload_table, table_description};
use crate::watermark::{EventTime, SourceWatermark};
use std::sync::Arc;

impl Pipeline {
    /// Parse and apply a script. Statements apply in order; the first error stops it and
    /// names the statement, line and column.
    pub async fn execute(&mut self, sql: &str) -> Result<Vec<StatementResult>> {
        let outcome = self.execute_script(sql).await;
        match outcome.error {
            Some(e) => Err(e),
            None => Ok(outcome.applied.into_iter().map(|a| a.result).collect()),
        }
    }

    /// Like [`Pipeline::execute`], but says which statements were applied before an error
    /// stopped the script, with their texts.
    pub async fn execute_script(&mut self, sql: &str) -> ScriptOutcome {
        let mut outcome = ScriptOutcome::default();
        let statements = match sql::parse_script(sql) {
            Ok(s) => s,
            Err(e) => {
                outcome.error = Some(e);
                return outcome;
            }
        };
        for st in statements {
            let (index, location) = (st.index, st.location);
            let statement = st.statement.label();
            let text = st.text.clone();
            match self.apply(st).await {
                Ok(result) => outcome.applied.push(Applied {
                    statement,
                    text,
                    result,
                }),
                Err(e) => {
                    outcome.error = Some(e.in_statement(index, location));
                    break;
                }
            }
        }
        outcome
    }

    async fn apply(&mut self, st: Located) -> Result<StatementResult> {
        match st.statement {
            WeirStatement::CreateSource(c) => self.create_source(c, st.text).await,
            WeirStatement::CreateView(v) => self.create_view(v, st.text).await,
            WeirStatement::CreateSink(s) => self.create_sink(s, st.text).await,
            WeirStatement::CreateTable(t) => self.create_table(t, st.text).await,
            WeirStatement::RefreshTable(name) => self.refresh_table(&name).await,
            WeirStatement::Show(kind) => Ok(StatementResult::Rows(vec![self.catalog.show(kind)?])),
            WeirStatement::Describe(name) => {
                let table = self.tables.iter().find(|t| t.name == name);
                let plan = table.map(table_description);
                let parallelism = self.dataflow.parallelism(&name);
                Ok(StatementResult::Rows(vec![self.catalog.describe(
                    &name,
                    plan,
                    parallelism.as_deref(),
                )?]))
            }
            WeirStatement::Drop {
                kind,
                name,
                if_exists,
            } => self.drop_object(kind, &name, if_exists),
            WeirStatement::Explain(v) => {
                let plan = plan_view(&v, &self.planner_env()).await?;
                Ok(StatementResult::Rows(vec![text_batch(
                    "plan",
                    plan.explain().lines().map(str::to_string).collect(),
                )?]))
            }
            WeirStatement::Select(q) => Ok(StatementResult::Rows(self.query(*q).await?)),
        }
    }

    /// `IF NOT EXISTS` on an existing name: nothing to do.
    fn unchanged_if_exists(
        &self,
        if_not_exists: bool,
        kind: ObjectKind,
        name: &str,
    ) -> Option<StatementResult> {
        (if_not_exists && self.catalog.kind_of(name).is_some()).then(|| {
            StatementResult::Unchanged {
                kind,
                name: name.to_string(),
            }
        })
    }

    async fn create_source(&mut self, c: CreateSource, text: String) -> Result<StatementResult> {
        if let Some(r) = self.unchanged_if_exists(c.if_not_exists, ObjectKind::Source, &c.name) {
            return Ok(r);
        }
        self.catalog.check_new_name(&c.name)?;
        let mut options = c.options.clone();
        let connector = options.take("connector").ok_or_else(|| {
            WeirError::user(format!(
                "CREATE SOURCE needs WITH (connector = '...'); available: {}",
                self.registry.source_names().join(", ")
            ))
        })?;
        let idle = options
            .take_duration("idle.timeout")?
            .unwrap_or(self.config.idle_timeout);
        let factory = self.registry.source(&connector)?;
        let valid_keys = factory.metadata_keys();
        let mut metadata = c.metadata.clone();
        for (i, m) in metadata.iter_mut().enumerate() {
            let Some((key, _)) = valid_keys
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&m.key))
            else {
                let at = c.metadata_at.get(i).copied().unwrap_or_default();
                let message = if valid_keys.is_empty() {
                    format!(
                        "column '{}': the {connector} connector has no message metadata, so \
                         METADATA FROM cannot be used",
                        m.column
                    )
                } else {
                    format!(
                        "column '{}': unknown METADATA key '{}'; valid keys: {}",
                        m.column,
                        m.key,
                        valid_keys
                            .iter()
                            .map(|(k, t)| format!("{k} ({t})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(WeirError::user_at(message, at));
            };
            m.key = key.to_string();
        }
        let stats = Arc::new(Stats::with_status(Status::Starting));
        let spec = SourceSpec {
            name: c.name.clone(),
            schema: c.schema.clone(),
            event_time: c.watermark.as_ref().map(|w| w.column.clone()),
            metadata,
            options: options.also_takes("every source", &["connector", "idle.timeout"]),
            data_dir: self.config.data_dir.clone(),
            batch: self.config.batch,
            stats: stats.clone(),
            workers: self.config.workers,
            idle_timeout: idle,
        };
        let source = run_blocking("creating the source", move || factory.create(spec)).await??;
        let event_time = match &c.watermark {
            Some(w) => EventTime::Column {
                index: c.schema.index_of(&w.column)?,
                delay_ms: w.delay.as_millis() as i64,
            },
            None if source.connector_event_time() => EventTime::Connector,
            None => EventTime::None,
        };
        let clock = SourceWatermark::new(
            event_time,
            idle.as_millis() as i64,
            source.partitions(),
            self.clock.now_ms(),
        );
        self.dataflow.add_source(
            &c.name,
            SourceOp::new(c.schema.clone(), clock),
            stats.clone(),
        )?;
        self.new_sources.push((c.name.clone(), source));
        self.catalog.add(Entry {
            info: ObjectInfo {
                kind: ObjectKind::Source,
                name: c.name.clone(),
                detail: connector.to_ascii_lowercase(),
                stats,
                sql: text,
                schema: c.schema,
                input: None,
                inputs: vec![],
                buffer: None,
                key: vec![],
            },
            props: None,
            relation: Some(RelationKind::Source {
                event_time: event_time != EventTime::None,
            }),
            tables: vec![],
            plan: None,
            shown: connector.to_ascii_lowercase(),
        });
        Ok(StatementResult::Created {
            kind: ObjectKind::Source,
            name: c.name,
        })
    }

    /// What the planner may read: every source and view, and the reference tables.
    fn planner_env(&self) -> PlannerEnv {
        PlannerEnv {
            relations: self
                .catalog
                .entries()
                .filter_map(|e| {
                    Some(Relation {
                        name: e.info.name.clone(),
                        schema: e.info.schema.clone(),
                        kind: e.relation?,
                        key: e.info.key.clone(),
                    })
                })
                .collect(),
            tables: self
                .tables
                .iter()
                .map(|t| (t.name.clone(), t.handle.clone()))
                .collect(),
            retention_rows: self.config.retention_rows,
        }
    }

    async fn create_view(&mut self, v: CreateView, text: String) -> Result<StatementResult> {
        if let Some(r) = self.unchanged_if_exists(v.if_not_exists, ObjectKind::View, &v.name) {
            return Ok(r);
        }
        self.catalog.check_new_name(&v.name)?;
        let plan = plan_view(&v, &self.planner_env()).await?;
        let explain = plan.explain();
        let props = plan.props.clone();
        let inputs = plan.inputs.clone();
        let tables = plan.tables.clone();
        let schema = plan.output_schema.clone();
        let buffer = Arc::new(if props.changelog {
            let key = props
                .key_columns
                .iter()
                .map(|k| schema.index_of(k))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            ViewBuffer::keyed(schema.clone(), key, props.retention_rows)?
        } else {
            ViewBuffer::new(schema.clone(), props.retention_rows)
        });
        // A view created again under a dropped view's name goes on numbering.
        if let Some(seq) = self.sequencers.get(&v.name) {
            buffer.resume(seq.last_seq());
        }
        let stats = Arc::new(Stats::default());
        let shown = inputs.join(", ");
        self.dataflow.add_view(
            &v.name,
            plan,
            stats.clone(),
            self.config.keying(),
            self.clock.now_ms(),
        )?;
        self.sequencers.entry(v.name.clone()).or_default();
        self.catalog.add(Entry {
            info: ObjectInfo {
                kind: ObjectKind::View,
                name: v.name.clone(),
                detail: inputs.join(", "),
                stats,
                sql: text,
                schema,
                input: inputs.first().cloned(),
                inputs,
                buffer: Some(buffer),
                key: props.key_columns.clone(),
            },
            relation: Some(RelationKind::View {
                windowed: props.window.is_some(),
                emits_updates: props.emits_updates(),
                changelog: props.changelog,
            }),
            props: Some(props),
            tables,
            plan: Some(explain),
            shown,
        });
        Ok(StatementResult::Created {
            kind: ObjectKind::View,
            name: v.name,
        })
    }

    async fn create_table(&mut self, t: CreateTable, text: String) -> Result<StatementResult> {
        if let Some(r) = self.unchanged_if_exists(t.if_not_exists, ObjectKind::Table, &t.name) {
            return Ok(r);
        }
        self.catalog.check_new_name(&t.name)?;
        let mut options = t.options.clone();
        let connector = options.take("connector").ok_or_else(|| {
            WeirError::user(format!(
                "CREATE TABLE needs WITH (connector = '...'); available: {}",
                self.registry.table_names().join(", ")
            ))
        })?;
        let refresh = match options.take_duration("refresh.interval")? {
            Some(d) if d.is_zero() => {
                return Err(WeirError::user(
                    "option 'refresh.interval' must be longer than zero (leave it out to load \
                     the table once)",
                ));
            }
            other => other,
        };
        let loader = self.registry.table(&connector)?.create(TableSpec {
            name: t.name.clone(),
            schema: t.schema.clone(),
            options,
            data_dir: self.config.data_dir.clone(),
        })?;
        let handle = Arc::new(TableHandle::new(t.schema.clone()));
        let stats = Arc::new(Stats::default());
        // Loaded now, so views created next see the table and a bad table is an error of
        // this statement.
        reload_table(&t.name, loader.as_ref(), &handle, &stats)
            .await
            .map_err(|e| match e {
                WeirError::User { .. } => e,
                other => WeirError::user(format!("loading table '{}': {other}", t.name)),
            })?;
        let table = RefTable {
            name: t.name.clone(),
            sql: text.clone(),
            connector: connector.to_ascii_lowercase(),
            loader,
            handle,
            refresh,
            stats: stats.clone(),
            started: false,
        };
        self.catalog.add(Entry {
            info: ObjectInfo {
                kind: ObjectKind::Table,
                name: t.name.clone(),
                detail: table.connector.clone(),
                stats,
                sql: text,
                schema: t.schema,
                input: None,
                inputs: vec![],
                buffer: None,
                key: vec![],
            },
            props: None,
            relation: None,
            tables: vec![],
            plan: None,
            shown: table.loader.describe(),
        });
        self.tables.push(table);
        Ok(StatementResult::Created {
            kind: ObjectKind::Table,
            name: t.name,
        })
    }

    async fn refresh_table(&mut self, name: &str) -> Result<StatementResult> {
        let t = self
            .tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| WeirError::user(format!("there is no table '{name}'")))?;
        let rows = reload_table(&t.name, t.loader.as_ref(), &t.handle, &t.stats).await?;
        Ok(StatementResult::Rows(vec![text_batch(
            "refreshed",
            vec![format!("table {name}: {rows} rows")],
        )?]))
    }

    async fn create_sink(&mut self, s: CreateSink, text: String) -> Result<StatementResult> {
        if let Some(r) = self.unchanged_if_exists(s.if_not_exists, ObjectKind::Sink, &s.name) {
            return Ok(r);
        }
        self.catalog.check_new_name(&s.name)?;
        let view = self
            .catalog
            .get_kind(ObjectKind::View, &s.from)
            .ok_or_else(|| {
                WeirError::user(format!(
                    "CREATE SINK reads FROM a materialized view; there is no view '{}'",
                    s.from
                ))
            })?;
        let schema = view.info.schema.clone();
        let key_columns = view.info.key.clone();
        // In a windowed view, columns of these names are the window's bounds (a window
        // replaces its input's columns of the same names).
        let windowed = view.props.as_ref().is_some_and(|p| p.window.is_some());
        let never_null = key_columns
            .iter()
            .filter(|k| windowed && (*k == "window_start" || *k == "window_end"))
            .cloned()
            .collect();
        // An updating view's batches are changes (`crate::changelog`); each connector
        // decides in `create` whether and how it writes them.
        let changelog = view.props.as_ref().is_some_and(|p| p.changelog);
        let (mut options, text) =
            sink_options(&s.name, &s.options, text, &self.config.sink_options);
        let connector = options.take("connector").ok_or_else(|| {
            WeirError::user(format!(
                "CREATE SINK needs WITH (connector = '...'); available: {}",
                self.registry.sink_names().join(", ")
            ))
        })?;
        let stats = Arc::new(Stats::default());
        let factory = self.registry.sink(&connector)?;
        let spec = SinkSpec {
            name: s.name.clone(),
            view: s.from.clone(),
            schema: schema.clone(),
            key_columns,
            never_null,
            changelog,
            options,
            data_dir: self.config.data_dir.clone(),
            stats: stats.clone(),
            checkpointed: self.config.checkpoints,
        };
        let sink = run_blocking("creating the sink", move || factory.create(spec)).await??;
        self.new_sinks.push(NewSink {
            name: s.name.clone(),
            view: s.from.clone(),
            stats: stats.clone(),
            sink,
            restored: None,
        });
        self.catalog.add(Entry {
            info: ObjectInfo {
                kind: ObjectKind::Sink,
                name: s.name.clone(),
                detail: connector.to_ascii_lowercase(),
                stats,
                sql: text,
                schema,
                input: Some(s.from.clone()),
                inputs: vec![s.from.clone()],
                buffer: None,
                key: vec![],
            },
            props: None,
            relation: None,
            tables: vec![],
            plan: None,
            shown: format!("{} <- {}", connector.to_ascii_lowercase(), s.from),
        });
        Ok(StatementResult::Created {
            kind: ObjectKind::Sink,
            name: s.name,
        })
    }

    fn drop_object(
        &mut self,
        kind: ObjectKind,
        name: &str,
        if_exists: bool,
    ) -> Result<StatementResult> {
        if self.catalog.kind_of(name) != Some(kind) {
            if if_exists {
                return Ok(StatementResult::Unchanged {
                    kind,
                    name: name.to_string(),
                });
            }
            return Err(WeirError::user(format!(
                "there is no {} '{name}'",
                kind.noun()
            )));
        }
        let entry = self.catalog.remove(kind, name)?;
        match kind {
            ObjectKind::Source => {
                self.dataflow.remove(name)?;
                self.new_sources.retain(|(n, _)| n != name);
            }
            ObjectKind::View => {
                self.dataflow.remove(name)?;
                if let Some(b) = &entry.info.buffer {
                    b.close();
                }
            }
            ObjectKind::Sink => self.new_sinks.retain(|s| s.name != name),
            ObjectKind::Table => self.tables.retain(|t| t.name != name),
        }
        Ok(StatementResult::Dropped {
            kind,
            name: name.to_string(),
        })
    }
}

/// A sink's options: the statement's, with the configuration's `[sinks.<name>]` applied:
/// a `connector` different from the statement's replaces them all (the other connector's
/// options mean nothing to it), otherwise each key given replaces the statement's. With
/// any applied, the statement text recorded for the sink says so, so that a checkpoint
/// taken with other options is not restored into it (a sink's checkpoint belongs to its
/// connector and options).
fn sink_options(
    name: &str,
    statement: &crate::options::Options,
    text: String,
    config: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
) -> (crate::options::Options, String) {
    let Some(over) = config.get(name).filter(|o| !o.is_empty()) else {
        return (statement.clone(), text);
    };
    let replaces = over
        .get("connector")
        .is_some_and(|c| statement.get("connector") != Some(c.as_str()));
    let mut merged: std::collections::BTreeMap<String, String> = if replaces {
        Default::default()
    } else {
        statement
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    merged.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
    let applied: Vec<String> = over.iter().map(|(k, v)| format!("'{k}' = '{v}'")).collect();
    let text = format!(
        "{text}\n-- options from the configuration [sinks.{name}]{}: {}",
        if replaces {
            ", replacing the statement's"
        } else {
            ""
        },
        applied.join(", ")
    );
    (crate::options::Options::new(merged), text)
}

#[cfg(test)]
mod tests {
    use crate::connector::testing::PushedSource;
    use crate::connector::{ConnectorRegistry, Source, SourceFactory, SourceSpec};
    use crate::error::{Result, WeirError};
    use crate::pipeline::{EngineConfig, Pipeline};
    use std::sync::Mutex;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn sink_options_from_the_configuration_merge_or_replace() {
        use crate::options::Options;
        use std::collections::BTreeMap;
        let statement = Options::new([
            ("connector".to_string(), "parquet".to_string()),
            ("path".to_string(), "data/lake".to_string()),
            ("partition.by".to_string(), "day".to_string()),
        ]);
        let config = |pairs: &[(&str, &str)]| {
            BTreeMap::from([(
                "lake".to_string(),
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            )])
        };
        let pairs = |o: &Options| {
            o.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        // None for this sink: the statement as it is.
        let (o, text) = super::sink_options("other", &statement, "SQL".into(), &config(&[]));
        assert_eq!(
            pairs(&o),
            "connector=parquet,partition.by=day,path=data/lake"
        );
        assert_eq!(text, "SQL");
        // Same connector: key by key.
        let (o, text) =
            super::sink_options("lake", &statement, "SQL".into(), &config(&[("path", "/x")]));
        assert_eq!(pairs(&o), "connector=parquet,partition.by=day,path=/x");
        assert!(text.starts_with("SQL\n-- options from the configuration [sinks.lake]: "));
        // Another connector: the statement's options go.
        let (o, _) = super::sink_options(
            "lake",
            &statement,
            "SQL".into(),
            &config(&[("connector", "iceberg"), ("table", "lake.t")]),
        );
        assert_eq!(pairs(&o), "connector=iceberg,table=lake.t");
    }

    /// A factory whose `create` blocks until a task on the runtime signals it.
    struct Blocking(Mutex<mpsc::Receiver<()>>);

    impl SourceFactory for Blocking {
        fn name(&self) -> &'static str {
            "blocking"
        }
        fn create(&self, _spec: SourceSpec) -> Result<Box<dyn Source>> {
            let rx = self
                .0
                .lock()
                .map_err(|_| WeirError::Internal("lock".into()))?;
            rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
                WeirError::Internal("create ran on the runtime's only worker".into())
            })?;
            Ok(Box::new(PushedSource))
        }
    }

    /// A connector factory's `create` may block (a file source lists its files and reads
    /// Parquet footers), so it must run off the async workers: on a one-thread runtime, a
    /// task spawned before CREATE SOURCE still runs while `create` waits for it.
    #[tokio::test(flavor = "current_thread")]
    async fn factories_create_off_the_async_workers() {
        let (tx, rx) = mpsc::channel();
        let mut p = Pipeline::new(
            EngineConfig::default(),
            ConnectorRegistry::new().with_source(Blocking(Mutex::new(rx))),
        );
        let signal = tokio::spawn(async move { tx.send(()) });
        p.execute(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, v BIGINT) WITH (connector = 'blocking')",
        )
        .await
        .unwrap();
        signal.await.unwrap().unwrap();
    }

    /// DESCRIBE says how each view's work is shared out: stateless views and TUMBLE/HOP
    /// aggregates that drop late rows are prepared on the workers; SESSION windows, views
    /// over stateful views and views that dead-letter late rows run on the driver.
    #[tokio::test(flavor = "current_thread")]
    async fn describe_says_what_runs_on_the_workers() {
        let mut p = Pipeline::new(
            EngineConfig::default(),
            ConnectorRegistry::new().with_source(crate::connector::testing::Pushed),
        );
        p.execute(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, k TEXT, v BIGINT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'pushed'); \
             CREATE MATERIALIZED VIEW big AS SELECT * FROM ev WHERE v > 10; \
             CREATE MATERIALIZED VIEW per_k AS SELECT window_start, window_end, k, count(*) AS n \
               FROM TUMBLE(big, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, k; \
             CREATE MATERIALIZED VIEW sessions AS SELECT window_start, window_end, k, count(*) AS n \
               FROM SESSION(ev, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, k; \
             CREATE MATERIALIZED VIEW kept_late WITH ('late.policy' = 'dead-letter') AS \
               SELECT window_start, window_end, count(*) AS n \
               FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end; \
             CREATE MATERIALIZED VIEW over_view AS SELECT * FROM per_k WHERE n > 1",
        )
        .await
        .unwrap();
        let parallel = |p: &Pipeline, view: &str| p.dataflow.parallelism(view).unwrap_or_default();
        assert_eq!(parallel(&p, "big"), "stage 1 on any worker: the whole plan");
        assert_eq!(
            parallel(&p, "per_k"),
            format!(
                "stage 1 on any worker: pre plan and partial aggregates per pane; stage 2: \
                 merge and close windows; state in 16 key partitions by [k], up to {} worked \
                 on at once",
                p.config().workers.min(16)
            )
        );
        assert_eq!(
            parallel(&p, "sessions"),
            format!(
                "no stage 1: every row is handled in stage 2; state in 16 key partitions by [k], up \
                 to {} worked on at once",
                p.config().workers.min(16)
            )
        );
        assert_eq!(
            parallel(&p, "kept_late"),
            "no stage 1: every row is handled in stage 2; state in 1 key partition"
        );
        assert_eq!(parallel(&p, "over_view"), "driver only");
        assert_eq!(p.dataflow.parallelism("ev"), None, "sources have no line");
    }

    /// With two workers, a keyed TUMBLE aggregate's partitions go to stage-2 tasks; a
    /// SESSION aggregate's and a join's are worked on per step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_names_the_stage2_tasks() {
        let mut p = Pipeline::new(
            EngineConfig {
                workers: 2,
                ..EngineConfig::default()
            },
            ConnectorRegistry::new().with_source(crate::connector::testing::Pushed),
        );
        p.execute(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, k TEXT, v BIGINT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'pushed'); \
             CREATE MATERIALIZED VIEW per_k AS SELECT window_start, window_end, k, count(*) AS n \
               FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, k; \
             CREATE MATERIALIZED VIEW sessions AS SELECT window_start, window_end, k, count(*) AS n \
               FROM SESSION(ev, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, k; \
             CREATE MATERIALIZED VIEW pairs AS SELECT a.k, a.v, b.v AS w FROM ev a JOIN ev b ON a.k = b.k",
        )
        .await
        .unwrap();
        let parallel = |view: &str| p.dataflow.parallelism(view).unwrap_or_default();
        assert_eq!(
            parallel("pairs"),
            "no stage 1: every row is handled in stage 2; state in 16 key partitions by \
             [k@0 = k@0], worked on as 2 shards"
        );
        assert_eq!(
            parallel("per_k"),
            "stage 1 on any worker: pre plan and partial aggregates per pane; stage 2: merge \
             and close windows; state in 16 key partitions by [k], worked on by 2 stage-2 \
             tasks fed by the exchange"
        );
        assert_eq!(
            parallel("sessions"),
            "no stage 1: every row is handled in stage 2; state in 16 key partitions by [k], up to \
             2 worked on at once"
        );
    }
}
