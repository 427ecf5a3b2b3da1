//! `weir.toml`: every setting with its default, overridable by environment variables
//! `WEIR__SECTION__KEY` (for example `WEIR__ENGINE__DATA_DIR=/var/lib/weir`) and then by
//! command-line flags. Nested tables take one more `__` per level
//! (`WEIR__KAFKA__EMBEDDED__ENABLED=false`); under `[kafka.properties]` the underscores of
//! the last part become dots (`WEIR__KAFKA__PROPERTIES__SASL_PASSWORD` sets
//! `sasl.password`), and `WEIR__KAFKA__BOOTSTRAP_SERVERS` sets `bootstrap.servers`.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineSection,
    pub run: RunSection,
    pub kafka: KafkaSection,
    pub server: ServerSection,
    pub checkpoint: CheckpointSection,
    pub database: DatabaseSection,
    pub cluster: ClusterSection,
    pub log: LogSection,
    pub dead_letter: DeadLetterSection,
    /// `[sinks.<name>]`: options for the sink `name`, over its statement's WITH options (a
    /// different `connector` replaces them all): `weir run` on the same SQL files can write
    /// to another place or format per deployment (docs/lake.md, the demo on Iceberg).
    pub sinks: BTreeMap<String, BTreeMap<String, OptionValue>>,
}

/// A sink option's value in the configuration: text, or a number or boolean written bare.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Text(s) => f.write_str(s),
            OptionValue::Integer(i) => write!(f, "{i}"),
            OptionValue::Float(x) => write!(f, "{x}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Config {
    /// `[sinks.*]` as the engine takes it.
    pub fn sink_options(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.sinks
            .iter()
            .map(|(sink, opts)| {
                let opts = opts
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                    .collect();
                (sink.clone(), opts)
            })
            .collect()
    }
}

/// `[[server.tokens]]`: an API token limited to a role and to some objects.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// The token itself...
    pub token: Option<String>,
    /// ...or the environment variable that holds it.
    pub token_env: Option<String>,
    /// `read`, `write` or `admin`.
    #[serde(default = "default_token_role")]
    pub role: String,
    /// The objects it may use: names, or prefixes ending in `*`; empty or `*`: every one.
    #[serde(default)]
    pub objects: Vec<String>,
}

fn default_token_role() -> String {
    "read".into()
}

/// `[dead_letter]`: dead-letter records (kept under `<data_dir>/dead-letter/`) also go to
/// an object store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSection {
    /// `s3://bucket/prefix` to upload the records to; unset: they stay local only.
    pub upload: Option<String>,
    /// Object-store settings for `upload` (object_store's S3 keys), on top of `AWS_*`.
    pub storage: BTreeMap<String, String>,
    /// How often new records are uploaded (and once more at a clean stop).
    pub interval: String,
}

impl Default for DeadLetterSection {
    fn default() -> Self {
        DeadLetterSection {
            upload: None,
            storage: BTreeMap::new(),
            interval: "10s".into(),
        }
    }
}

/// `[log]`: how `weir` writes its log (to stdout). `RUST_LOG` sets the levels.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people: time, level, message, fields (coloured on a terminal only).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields` with `message`), for log
    /// collectors.
    Json,
}

/// `[cluster]`: run as one member of a Weir cluster on Kafka (docs/cluster.md). Every
/// member runs the same SQL with the same `group`; without a group Weir runs alone.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The cluster's name (`WEIR__CLUSTER__GROUP`); unset: no cluster.
    pub group: Option<String>,
    /// This member's id, unique in the cluster and the same across its restarts (Kafka
    /// static membership). Default: the host name and the data directory.
    pub member: Option<String>,
    /// A member not heard from this long is out of the group and its partitions move.
    pub session_timeout: String,
    /// Where key partitions' state snapshots go: a directory every member reaches.
    /// Default: `weir-cluster/<group>` under the system's temporary directory (members on
    /// one machine only).
    pub state_dir: Option<PathBuf>,
    /// How often each key partition's state is snapshotted and its exchange offset
    /// committed: what a successor replays at most after a crash.
    pub snapshot_interval: String,
    /// A stage-1 step (one Kafka transaction with the input positions) takes up to this
    /// many input records...
    pub step_rows: usize,
    /// ...or what came within this long, whichever comes first.
    pub step_delay: String,
    /// The consumer-group protocol: `classic` (the members assign, with `assignor`)
    /// or `consumer` (KIP-848: the broker assigns; docs/cluster.md).
    pub group_protocol: String,
    /// The classic protocol's assignor: `roundrobin` (eager; the default), `range`, or
    /// `cooperative-sticky` (see docs/cluster.md for its problem with static members).
    pub assignor: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            group: None,
            member: None,
            session_timeout: "10s".into(),
            state_dir: None,
            snapshot_interval: "5s".into(),
            step_rows: 65_536,
            step_delay: "200ms".into(),
            group_protocol: "classic".into(),
            assignor: "roundrobin".into(),
        }
    }
}

/// `[database]`: a PostgreSQL database for Weir's own tables (see migrations/). When set,
/// statements submitted over the API are kept there instead of the state directory.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://user:password@host:port/db`; unset: no database.
    pub url: Option<String>,
}

/// `[checkpoint]`: periodic checkpoints of source positions, window state and sink
/// progress, and the restore from the newest one at start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Take checkpoints and restore from them. Unset: on for `weir run`, off for
    /// `--until-done` (a backfill recomputes from its inputs each time).
    pub enabled: Option<bool>,
    /// How often a checkpoint is taken.
    pub interval: String,
    /// Where checkpoints go; default `<data_dir>/checkpoints`. An object-store URL
    /// (`s3://bucket/prefix`) keeps them there, with `<data_dir>/checkpoints` as a working
    /// copy, so a replacement machine can resume (docs/lake.md).
    pub dir: Option<PathBuf>,
    /// Object-store settings for a `dir` URL (object_store's S3 keys: `aws_endpoint_url`,
    /// `aws_region`, `aws_allow_http`, ...), on top of the `AWS_*` environment.
    pub storage: std::collections::BTreeMap<String, String>,
    /// How many complete checkpoints to keep (at least 1).
    pub retain: usize,
    /// A checkpoint whose sinks have not all pre-committed within this long is abandoned.
    pub timeout: String,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            enabled: None,
            interval: "10s".into(),
            dir: None,
            storage: Default::default(),
            retain: 2,
            timeout: "60s".into(),
        }
    }
}

/// `[server]`: the REST API, WebSocket subscriptions and the dashboard.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Serve at all (`weir run`; `--until-done` serves only with an explicit `--listen`).
    pub enabled: bool,
    /// `host:port`. With no tokens configured only loopback addresses are used.
    pub listen: String,
    /// Tokens with every right (a list, or one comma-separated string from the environment).
    #[serde(deserialize_with = "string_list")]
    pub admin_tokens: Vec<String>,
    /// Tokens that may only GET and subscribe.
    #[serde(deserialize_with = "string_list")]
    pub read_tokens: Vec<String>,
    /// Tokens with a role and a scope (`[[server.tokens]]`).
    pub tokens: Vec<TokenSection>,
    /// Origins allowed to call the API from a browser page served elsewhere ("*": any).
    #[serde(deserialize_with = "string_list")]
    pub cors_origins: Vec<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Largest SQL text in POST /api/v1/sql and /api/v1/query, bytes.
    pub max_sql_bytes: usize,
    /// Largest message a WebSocket client may send, bytes.
    pub ws_max_message_bytes: usize,
    /// Open WebSocket subscriptions at most, in all...
    pub ws_max_subscribers: usize,
    /// ...and from one client address.
    pub ws_max_subscribers_per_client: usize,
    /// A subscriber that does not take a message within this long is dropped.
    pub ws_send_timeout: String,
    /// A request that takes longer is answered 408.
    pub request_timeout: String,
    /// A connection that has not sent a whole request head (request line and headers)
    /// within this long is closed (slow-header clients); an idle keep-alive connection too.
    pub header_read_timeout: String,
    /// Most rows one rows or query response returns.
    pub max_result_rows: usize,
    /// Serve HTTPS and WSS with this PEM certificate chain...
    pub tls_cert: Option<PathBuf>,
    /// ...and this PEM private key.
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            admin_tokens: vec![],
            read_tokens: vec![],
            tokens: vec![],
            tls_cert: None,
            tls_key: None,
            cors_origins: vec![],
            max_body_bytes: 1 << 20,
            max_sql_bytes: 256 << 10,
            ws_max_message_bytes: 64 << 10,
            ws_max_subscribers: 10_000,
            ws_max_subscribers_per_client: 256,
            ws_send_timeout: "10s".into(),
            request_timeout: "30s".into(),
            header_read_timeout: "10s".into(),
            max_result_rows: 10_000,
        }
    }
}

/// A list of strings, or one string of comma-separated items (how environment variables
/// give lists).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let items = match v {
        toml::Value::Array(a) => a
            .into_iter()
            .map(|x| match x {
                toml::Value::String(s) => Ok(s),
                other => Ok(other.to_string()),
            })
            .collect::<Result<Vec<String>, D::Error>>()?,
        toml::Value::String(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
        other => vec![other.to_string()],
    };
    Ok(items.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `[kafka]`: the cluster Kafka sources and sinks use unless their WITH clause names one.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// `host:port,...`. Unset: `weir run` starts the embedded broker (`[kafka.embedded]`).
    #[serde(rename = "bootstrap.servers", alias = "bootstrap_servers")]
    pub bootstrap_servers: Option<String>,
    /// librdkafka properties for every Kafka client (`security.protocol`, `sasl.*`, ...).
    #[serde(deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
    pub embedded: EmbeddedSection,
}

/// `[kafka.embedded]`: the in-process Kafka-protocol broker (librdkafka's mock cluster)
/// started when no `bootstrap.servers` is configured.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSection {
    pub enabled: bool,
    /// Partitions of every topic it creates.
    pub partitions: i32,
    /// The topics filled from the built-in generators (`[[kafka.embedded.feed]]`).
    #[serde(rename = "feed", alias = "feeds")]
    pub feeds: Vec<FeedConfig>,
}

/// One `[[kafka.embedded.feed]]`: a topic filled from a generator.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    pub topic: String,
    /// The generator kind: `downloads` or `ticks`.
    pub kind: String,
    #[serde(default = "default_feed_rate")]
    pub rows_per_second: u64,
    #[serde(default = "default_feed_seed")]
    pub seed: u64,
    /// Events' timestamps jitter backwards by up to this.
    #[serde(default = "default_feed_disorder")]
    pub max_out_of_orderness: String,
}

fn default_feed_rate() -> u64 {
    1000
}

fn default_feed_seed() -> u64 {
    42
}

fn default_feed_disorder() -> String {
    "0s".into()
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        EmbeddedSection {
            enabled: true,
            partitions: 4,
            feeds: vec![
                FeedConfig {
                    topic: "downloads".into(),
                    kind: "downloads".into(),
                    rows_per_second: 2000,
                    seed: 7,
                    max_out_of_orderness: "1s".into(),
                },
                FeedConfig {
                    topic: "ticks".into(),
                    kind: "ticks".into(),
                    rows_per_second: 500,
                    seed: 11,
                    max_out_of_orderness: "0s".into(),
                },
            ],
        }
    }
}

/// A table of librdkafka properties: strings, or numbers and booleans written bare
/// (`"linger.ms" = 5`), all passed on as strings.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, toml::Value>::deserialize(d)?;
    table
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "kafka.properties.{k} must be a string, number or boolean, got {}",
                        other.type_str()
                    )));
                }
            };
            Ok((k, s))
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Where Parquet output (relative sink paths stay relative to the working directory),
    /// dead letters and state go.
    pub data_dir: PathBuf,
    /// A micro-batch closes at this many rows...
    pub batch_rows: usize,
    /// ...or after this long, whichever comes first.
    pub batch_delay: String,
    /// A partition silent this long stops holding the watermark back.
    pub idle_timeout: String,
    /// Result rows each view keeps in memory for queries.
    pub retention_rows: usize,
    /// An ad-hoc query (POST /api/v1/query, a SELECT statement) running longer is stopped.
    pub query_timeout: String,
    /// Most memory an ad-hoc query's operators may hold, and most bytes it may return.
    pub max_query_bytes: usize,
    /// Most rows an ad-hoc query may return.
    pub max_query_rows: usize,
    /// Worker threads that compute (0: one per available core). Above one, micro-batches
    /// are prepared on all of them at once (docs/engine.md, "Workers").
    pub workers: usize,
    /// Key partitions a new windowed view's state is split into: the units stage 2 runs
    /// on the workers and checkpoints store (docs/engine.md, "Key partitions"). A view
    /// restored from a checkpoint keeps its own count unless `repartition` is set.
    pub key_partitions: u32,
    /// On restore, re-split every view's state into `key_partitions` (after a clean stop;
    /// docs/engine.md, "Key partitions").
    pub repartition: bool,
}

impl EngineSection {
    /// `workers`, with 0 meaning every available core.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => weir_engine::pipeline::available_cores(),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// How often the progress lines are printed; "0s" turns them off.
    pub progress_interval: String,
    /// Micro-batches in flight per channel (backpressure bound).
    pub channel_capacity: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            data_dir: PathBuf::from("data"),
            batch_rows: 8192,
            batch_delay: "50ms".into(),
            idle_timeout: "10s".into(),
            retention_rows: 100_000,
            query_timeout: "10s".into(),
            max_query_bytes: 256 << 20,
            max_query_rows: 1_000_000,
            workers: 0,
            key_partitions: weir_engine::dataflow::keyed::DEFAULT_KEY_PARTITIONS,
            repartition: false,
        }
    }
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            progress_interval: "5s".into(),
            channel_capacity: 8,
        }
    }
}

/// Turn an environment value into the TOML value it most likely means.
fn env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = v.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_string())
    }
}

/// Load the file (if given; a missing explicit file is an error), then apply `vars`.
pub fn load(path: Option<&Path>, vars: impl Iterator<Item = (String, String)>) -> Result<Config> {
    let mut root = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("parsing config file {}", p.display()))?
        }
        None => toml::Table::new(),
    };
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix("WEIR__") else {
            continue;
        };
        let mut parts: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if parts.len() < 2 || parts.iter().any(String::is_empty) {
            bail!("environment variable {k} must look like WEIR__SECTION__KEY");
        }
        let Some(mut key) = parts.pop() else {
            bail!("environment variable {k} must look like WEIR__SECTION__KEY");
        };
        let mut value = env_value(&v);
        let mut aliases: Vec<String> = vec![];
        match parts
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            // librdkafka property names are dotted; environment names cannot be.
            ["kafka", "properties"] => {
                key = key.replace('_', ".");
                value = toml::Value::String(v.clone());
            }
            ["kafka"] if key == "bootstrap_servers" => {
                aliases.push(key);
                key = "bootstrap.servers".into();
                value = toml::Value::String(v.clone());
            }
            _ => {}
        }
        let mut table = &mut root;
        let mut path = String::new();
        for p in &parts {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(p);
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = entry.as_table_mut() else {
                bail!("environment variable {k}: config key {path} is not a table");
            };
            table = t;
        }
        for a in aliases {
            table.remove(&a);
        }
        table.insert(key, value);
    }
    let config: Config = toml::Value::Table(root)
        .try_into()
        .context("invalid configuration (see the README's configuration table for every key)")?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sink_options_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weir.toml");
        std::fs::write(
            &p,
            "[sinks.region_health_lake]\nconnector = 'iceberg'\n'partition.by' = 'day'\n\
             'rollover.rows' = 500\n",
        )
        .unwrap();
        let c = load(
            Some(&p),
            vec![(
                "WEIR__SINKS__REGION_HEALTH_LAKE__TABLE".to_string(),
                "lake.region_health".to_string(),
            )]
            .into_iter(),
        )
        .unwrap();
        let opts = c.sink_options();
        let want: BTreeMap<String, String> = [
            ("connector", "iceberg"),
            ("partition.by", "day"),
            ("rollover.rows", "500"),
            ("table", "lake.region_health"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(opts.get("region_health_lake"), Some(&want));
    }

    #[test]
    fn env_overrides_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weir.toml");
        std::fs::write(&p, "[engine]\nbatch_rows = 100\nidle_timeout = '3s'\n").unwrap();
        let c = load(
            Some(&p),
            vec![
                ("WEIR__ENGINE__BATCH_ROWS".to_string(), "200".to_string()),
                ("WEIR__RUN__PROGRESS_INTERVAL".to_string(), "1s".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(c.engine.batch_rows, 200);
        assert_eq!(c.engine.idle_timeout, "3s");
        assert_eq!(c.run.progress_interval, "1s");
        assert_eq!(c.engine.retention_rows, 100_000);
    }

    #[test]
    fn query_limits_default_to_the_engine_defaults_and_can_be_set() {
        let c = load(None, std::iter::empty()).unwrap();
        let d = weir_engine::adhoc::QueryLimits::default();
        assert_eq!(c.engine.query_timeout, "10s");
        assert_eq!(
            (c.engine.max_query_bytes, c.engine.max_query_rows),
            (d.max_bytes, d.max_rows)
        );
        let c = load(
            None,
            vec![
                ("WEIR__ENGINE__QUERY_TIMEOUT".to_string(), "2s".to_string()),
                ("WEIR__ENGINE__MAX_QUERY_ROWS".to_string(), "50".to_string()),
                (
                    "WEIR__ENGINE__MAX_QUERY_BYTES".to_string(),
                    "1048576".to_string(),
                ),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(c.engine.query_timeout, "2s");
        assert_eq!(c.engine.max_query_rows, 50);
        assert_eq!(c.engine.max_query_bytes, 1 << 20);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = load(
            None,
            vec![("WEIR__ENGINE__BATCH_ROWZ".to_string(), "1".to_string())].into_iter(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("batch_rowz"), "{e:#}");
    }

    #[test]
    fn kafka_section_defaults_to_the_embedded_broker_with_two_feeds() {
        let c = load(None, std::iter::empty()).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, None);
        assert!(c.kafka.properties.is_empty());
        assert!(c.kafka.embedded.enabled);
        assert_eq!(c.kafka.embedded.partitions, 4);
        let feeds: Vec<(&str, &str, u64)> = c
            .kafka
            .embedded
            .feeds
            .iter()
            .map(|f| (f.topic.as_str(), f.kind.as_str(), f.rows_per_second))
            .collect();
        assert_eq!(
            feeds,
            vec![("downloads", "downloads", 2000), ("ticks", "ticks", 500)]
        );
    }

    #[test]
    fn kafka_section_parses_cluster_properties_and_feeds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weir.toml");
        std::fs::write(
            &p,
            r#"
[kafka]
"bootstrap.servers" = "broker-1:9092,broker-2:9092"

[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "PLAIN"
"linger.ms" = 5
"enable.ssl.certificate.verification" = false

[kafka.embedded]
partitions = 2

[[kafka.embedded.feed]]
topic = "clicks"
kind = "downloads"
rows_per_second = 10
"#,
        )
        .unwrap();
        let c = load(Some(&p), std::iter::empty()).unwrap();
        assert_eq!(
            c.kafka.bootstrap_servers.as_deref(),
            Some("broker-1:9092,broker-2:9092")
        );
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["linger.ms"], "5");
        assert_eq!(
            c.kafka.properties["enable.ssl.certificate.verification"],
            "false"
        );
        assert_eq!(c.kafka.embedded.partitions, 2);
        assert_eq!(
            c.kafka.embedded.feeds,
            vec![FeedConfig {
                topic: "clicks".into(),
                kind: "downloads".into(),
                rows_per_second: 10,
                seed: 42,
                max_out_of_orderness: "0s".into(),
            }]
        );
    }

    #[test]
    fn kafka_environment_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weir.toml");
        std::fs::write(
            &p,
            "[kafka]\nbootstrap_servers = 'file:9092'\n[kafka.properties]\n'sasl.username' = 'u'\n",
        )
        .unwrap();
        let vars = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
                .into_iter()
        };
        // The file's alias alone.
        let c = load(Some(&p), std::iter::empty()).unwrap();
        assert_eq!(c.kafka.bootstrap_servers.as_deref(), Some("file:9092"));
        let c = load(
            Some(&p),
            vars(&[
                ("WEIR__KAFKA__BOOTSTRAP_SERVERS", "env:9092"),
                ("WEIR__KAFKA__PROPERTIES__SASL_PASSWORD", "12345"),
                ("WEIR__KAFKA__EMBEDDED__ENABLED", "false"),
                ("WEIR__KAFKA__EMBEDDED__PARTITIONS", "8"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers.as_deref(), Some("env:9092"));
        assert_eq!(c.kafka.properties["sasl.username"], "u");
        // Kept a string although it looks like a number.
        assert_eq!(c.kafka.properties["sasl.password"], "12345");
        assert!(!c.kafka.embedded.enabled);
        assert_eq!(c.kafka.embedded.partitions, 8);

        let e = load(None, vars(&[("WEIR__KAFKA__EMBEDDED__ENABLD", "false")])).unwrap_err();
        assert!(format!("{e:#}").contains("enabld"), "{e:#}");
        let e = load(None, vars(&[("WEIR__KAFKA", "x")])).unwrap_err();
        assert!(format!("{e:#}").contains("WEIR__SECTION__KEY"), "{e:#}");
    }

    #[test]
    fn the_readme_defaults_are_the_defaults_and_feeds_can_be_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weir.toml");
        std::fs::write(
            &p,
            r#"
[kafka.embedded]
enabled = true
partitions = 4

[[kafka.embedded.feed]]
topic = "downloads"
kind = "downloads"
rows_per_second = 2000
seed = 7
max_out_of_orderness = "1s"

[[kafka.embedded.feed]]
topic = "ticks"
kind = "ticks"
rows_per_second = 500
seed = 11
"#,
        )
        .unwrap();
        let c = load(Some(&p), std::iter::empty()).unwrap();
        assert_eq!(c, Config::default());
        std::fs::write(&p, "[kafka.embedded]\nfeed = []\n").unwrap();
        let c = load(Some(&p), std::iter::empty()).unwrap();
        assert!(c.kafka.embedded.feeds.is_empty());
    }
}
