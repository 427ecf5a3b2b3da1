//! What the Kafka source and sink share: cluster settings and client configuration.

use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use weir_engine::options::Options;
use weir_engine::{Result, WeirError};

/// Cluster-wide defaults from the server's `[kafka]` section, used by every Kafka source and
/// sink that does not set its own.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// `host:port,...`; `None` means no cluster is configured.
    pub bootstrap_servers: Option<String>,
    /// librdkafka properties for every client (`security.protocol`, `sasl.username`, ...).
    pub properties: BTreeMap<String, String>,
    /// Said after "no Kafka cluster" when a source or sink finds no `bootstrap.servers`
    /// (why the server has none, and what to do).
    pub no_cluster_hint: Option<String>,
}

/// The connection part of a source's or sink's options.
#[derive(Debug, Clone)]
pub struct Connection {
    pub bootstrap_servers: String,
    pub properties: BTreeMap<String, String>,
}

/// The prefix of pass-through librdkafka properties.
pub const PROPERTIES_PREFIX: &str = "properties.";

/// Take `bootstrap.servers` and every `properties.*` key, falling back to `settings`.
pub fn take_connection(
    options: &mut Options,
    settings: &KafkaSettings,
    what: &str,
) -> Result<Connection> {
    let bootstrap_servers = options
        .take("bootstrap.servers")
        .or_else(|| settings.bootstrap_servers.clone())
        .ok_or_else(|| {
            let hint = settings
                .no_cluster_hint
                .as_deref()
                .map(|h| format!("; note: {h}"))
                .unwrap_or_default();
            WeirError::user(format!(
                "{what}: no Kafka cluster: set 'bootstrap.servers' in the WITH clause or \
                 bootstrap.servers in the [kafka] section of the config{hint}"
            ))
        })?;
    if bootstrap_servers.trim().is_empty() {
        return Err(WeirError::user(format!(
            "{what}: 'bootstrap.servers' is empty"
        )));
    }
    let mut properties = settings.properties.clone();
    for (name, v) in options.take_prefixed(PROPERTIES_PREFIX) {
        if name.is_empty() {
            return Err(WeirError::user(format!(
                "{what}: 'properties.' needs a librdkafka property name after the dot"
            )));
        }
        properties.insert(name, v);
    }
    Ok(Connection {
        bootstrap_servers,
        properties,
    })
}

impl Connection {
    /// A client configuration: Weir's `defaults` first, then the user's properties (which
    /// win), then the bootstrap servers.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c
    }

    /// Check the properties librdkafka would reject, so a typo is reported against the
    /// statement instead of when the client starts.
    pub fn validate(&self, what: &str) -> Result<()> {
        self.client_config(&[])
            .create_native_config()
            .map(drop)
            .map_err(|e| WeirError::user(format!("{what}: invalid Kafka client settings: {e}")))
    }
}

/// An error from librdkafka while doing `what`, kept as the source.
pub fn kafka_error(what: &str, e: rdkafka::error::KafkaError) -> WeirError {
    WeirError::external_source(what, e)
}

/// Librdkafka error codes that mean another producer took over the transactional id.
pub fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}
