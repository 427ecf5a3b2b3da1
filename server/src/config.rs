//! `weir.toml`: every setting with its default, overridable by environment variables
//! `WEIR__SECTION__KEY` (for example `WEIR__ENGINE__DATA_DIR=/var/lib/weir`) and then by
//! command-line flags.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineSection,
    pub run: RunSection,
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
        let parts: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let [section, key] = parts.as_slice() else {
            bail!("environment variable {k} must look like WEIR__SECTION__KEY");
        };
        let entry = root
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = entry.as_table_mut() else {
            bail!("config section [{section}] is not a table");
        };
        table.insert(key.clone(), env_value(&v));
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
    fn unknown_keys_are_errors() {
        let e = load(
            None,
            vec![("WEIR__ENGINE__BATCH_ROWZ".to_string(), "1".to_string())].into_iter(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("batch_rowz"), "{e:#}");
    }
}
