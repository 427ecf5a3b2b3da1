//! The Iceberg sink's options (docs/lake.md has the table of them).

use iceberg::TableIdent;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_engine::fsutil::io_error;
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &[
    "catalog",
    "warehouse",
    "table",
    "catalog.uri",
    "catalog.name",
    "partition.by",
    "rollover.rows",
    "rollover.interval",
    "snapshots.retain",
    "storage.<object_store S3 key>",
];

/// Where the table's catalog is.
#[derive(Debug, Clone)]
pub enum CatalogConfig {
    /// Metadata files in the warehouse directory are the catalog.
    Filesystem { warehouse: PathBuf },
    /// An Iceberg SQL (JDBC) catalog in Postgres: the `iceberg_tables` table.
    Sql {
        uri: String,
        name: String,
        /// A directory, or an object-store URL (`s3://bucket/prefix`).
        warehouse: String,
    },
}

/// An object-store warehouse: the bucket's root URL and the `storage.*` options.
#[derive(Debug, Clone)]
pub struct WarehouseStore {
    pub root: String,
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct IcebergOptions {
    pub catalog: CatalogConfig,
    pub table: TableIdent,
    pub partition_by: String,
    pub rollover_rows: usize,
    pub rollover_interval: Duration,
    /// Keep the newest this many snapshots, expiring older ones (0: keep all).
    pub snapshots_retain: usize,
    /// Set when the warehouse is in an object store.
    pub store: Option<WarehouseStore>,
}

impl IcebergOptions {
    pub fn parse(options: &mut weir_engine::options::Options, data_dir: &Path) -> Result<Self> {
        let table = options.take("table").ok_or_else(|| {
            WeirError::user("the iceberg sink needs option 'table' ('namespace.table')")
        })?;
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(WeirError::user(format!(
                "option 'table' = '{table}': give it as 'namespace.table' (for example \
                 'lake.region_health')"
            )));
        }
        let table = TableIdent::from_strs(parts.iter().map(|p| p.trim()))
            .map_err(|e| WeirError::user(format!("option 'table' = '{table}': {e}")))?;
        let warehouse = options.take("warehouse");
        let storage = options.take_prefixed(weir_engine::remote::STORAGE_PREFIX);
        let kind = options.take_choice("catalog", &["filesystem", "sql"], "filesystem")?;
        let uri = options.take("catalog.uri");
        let name = options.take("catalog.name");
        let store = match warehouse.as_deref() {
            Some(url) if weir_engine::remote::is_url(url) => {
                if kind != "sql" {
                    return Err(WeirError::user(format!(
                        "warehouse = '{url}' is in an object store, where the filesystem catalog \
                         cannot commit atomically: use catalog = 'sql' (with 'catalog.uri')"
                    )));
                }
                // Checks the URL and the settings now, not at the first write.
                weir_engine::remote::Remote::new(url, &storage)?;
                let parsed = url::Url::parse(url)
                    .map_err(|e| WeirError::user(format!("warehouse '{url}': {e}")))?;
                Some(WarehouseStore {
                    root: format!(
                        "{}://{}",
                        parsed.scheme(),
                        parsed.host_str().unwrap_or_default()
                    ),
                    options: storage,
                })
            }
            _ if !storage.is_empty() => {
                return Err(WeirError::user(
                    "'storage.*' options are for a warehouse in an object store \
                     (s3://bucket/prefix)",
                ));
            }
            _ => None,
        };
        let warehouse = match (&store, warehouse) {
            (Some(_), Some(url)) => url.trim_end_matches('/').to_string(),
            (_, w) => {
                let dir = w.map_or_else(|| data_dir.join("warehouse"), PathBuf::from);
                std::path::absolute(&dir)
                    .map_err(|e| io_error("resolving", &dir, e))?
                    .display()
                    .to_string()
            }
        };
        let catalog = match kind.as_str() {
            "sql" => CatalogConfig::Sql {
                uri: uri.ok_or_else(|| {
                    WeirError::user(
                        "catalog = 'sql' needs option 'catalog.uri' (postgres://user:pass@host/db)",
                    )
                })?,
                name: name.unwrap_or_else(|| "weir".into()),
                warehouse,
            },
            _ => {
                if uri.is_some() || name.is_some() {
                    return Err(WeirError::user(
                        "options 'catalog.uri' and 'catalog.name' are for catalog = 'sql'",
                    ));
                }
                CatalogConfig::Filesystem {
                    warehouse: PathBuf::from(warehouse),
                }
            }
        };
        let rollover_rows = options
            .take_parse::<usize>("rollover.rows")?
            .unwrap_or(1_000_000);
        if rollover_rows == 0 {
            return Err(WeirError::user("option 'rollover.rows' must be at least 1"));
        }
        let rollover_interval = options
            .take_duration("rollover.interval")?
            .unwrap_or(Duration::from_secs(60));
        Ok(IcebergOptions {
            catalog,
            table,
            partition_by: options.take("partition.by").unwrap_or_default(),
            rollover_rows,
            rollover_interval,
            snapshots_retain: options
                .take_parse::<usize>("snapshots.retain")?
                .unwrap_or(0),
            store,
        })
    }
}
