//! A filesystem ("Hadoop-style") Iceberg catalog on a local directory, for the one-command
//! case: no catalog service, the table's metadata files are the catalog.
//!
//! ```text
//! <warehouse>/<namespace>/<table>/
//!   metadata/v1.metadata.json, v2.metadata.json, ...   one per commit
//!   metadata/version-hint.text                          the newest version number
//!   metadata/*.avro                                     manifest lists and manifests
//!   data/<partition>/*.parquet                          data files
//! ```
//!
//! A commit writes `v<N+1>.metadata.json` with an atomic create-if-absent (a hard link of a
//! synced temporary file: it fails if another commit got there first, which makes the
//! commit a retryable conflict), then updates the hint. Readers (pyiceberg's
//! `StaticTable`, Spark's Hadoop catalog, DuckDB's `iceberg_scan`) take the newest
//! `vN.metadata.json`. Safe for one writer per table on a local or POSIX-shared disk; on
//! object storage use the SQL catalog.

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct FsCatalog {
    warehouse: PathBuf,
    file_io: FileIO,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{what} {}", path.display())).with_source(e)
}

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::FeatureUnsupported,
        format!("the filesystem catalog does not {what}"),
    )
}

impl FsCatalog {
    pub fn new(warehouse: impl Into<PathBuf>) -> Self {
        FsCatalog {
            warehouse: warehouse.into(),
            file_io: FileIO::new_with_fs(),
        }
    }

    fn namespace_dir(&self, ns: &NamespaceIdent) -> PathBuf {
        ns.iter().fold(self.warehouse.clone(), |p, n| p.join(n))
    }

    fn table_dir(&self, t: &TableIdent) -> PathBuf {
        self.namespace_dir(t.namespace()).join(t.name())
    }

    /// The newest version number and its metadata file's path, or `None` if the table
    /// has none. Trusts the hint, then looks for newer files (a commit may have crashed
    /// between its metadata file and the hint).
    fn current_version(&self, t: &TableIdent) -> Result<Option<(u64, PathBuf)>> {
        let meta = self.table_dir(t).join("metadata");
        let hint = meta.join("version-hint.text");
        let mut version = match std::fs::read_to_string(&hint) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io("reading", &hint, e)),
        };
        while meta
            .join(format!("v{}.metadata.json", version + 1))
            .exists()
        {
            version += 1;
        }
        if version == 0 {
            return Ok(None);
        }
        Ok(Some((
            version,
            meta.join(format!("v{version}.metadata.json")),
        )))
    }

    fn table(&self, ident: TableIdent, metadata: TableMetadata, location: &Path) -> Result<Table> {
        Table::builder()
            .file_io(self.file_io.clone())
            .metadata(metadata)
            .metadata_location(location.display().to_string())
            .identifier(ident)
            .runtime(iceberg::Runtime::try_current()?)
            .build()
    }

    /// Publish `metadata` as version `version`; a conflict (the version exists) is a
    /// retryable error.
    fn publish(&self, t: &TableIdent, version: u64, metadata: &TableMetadata) -> Result<PathBuf> {
        let meta = self.table_dir(t).join("metadata");
        std::fs::create_dir_all(&meta).map_err(|e| io("creating", &meta, e))?;
        let path = meta.join(format!("v{version}.metadata.json"));
        let tmp = meta.join(format!(
            ".v{version}.{}.tmp",
            weir_engine::fsutil::unique_id()
        ));
        let json = serde_json::to_vec(metadata)?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()
        };
        write().map_err(|e| io("writing", &tmp, e))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::new(
                    ErrorKind::CatalogCommitConflicts,
                    format!("{} was committed by another writer", path.display()),
                )
                .with_retryable(true));
            }
            Err(e) => return Err(io("publishing", &path, e)),
        }
        // The hint only speeds up finding the newest version; a stale one is corrected
        // by looking for newer files.
        let hint_tmp = meta.join(format!(
            ".version-hint.{}.tmp",
            weir_engine::fsutil::unique_id()
        ));
        let hint = meta.join("version-hint.text");
        std::fs::write(&hint_tmp, version.to_string())
            .and_then(|_| std::fs::rename(&hint_tmp, &hint))
            .map_err(|e| io("writing", &hint, e))?;
        if let Ok(d) = std::fs::File::open(&meta) {
            let _ = d.sync_all();
        }
        Ok(path)
    }
}

impl FsCatalog {
    /// With `write.metadata.delete-after-commit.enabled`, remove the metadata files older
    /// than the newest `write.metadata.previous-versions-max` (default 100) before
    /// `version`. Best effort: a file left behind is only space.
    fn remove_old_versions(&self, t: &TableIdent, version: u64, metadata: &TableMetadata) {
        let props = metadata.properties();
        if props
            .get("write.metadata.delete-after-commit.enabled")
            .map(String::as_str)
            != Some("true")
        {
            return;
        }
        let keep = props
            .get("write.metadata.previous-versions-max")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(100);
        let meta = self.table_dir(t).join("metadata");
        let mut v = version.saturating_sub(keep + 1);
        while v > 0 {
            let old = meta.join(format!("v{v}.metadata.json"));
            match std::fs::remove_file(&old) {
                Ok(()) => v -= 1,
                // Removed by an earlier commit: so are the ones before it.
                Err(_) => break,
            }
        }
    }
}

#[async_trait]
impl Catalog for FsCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        let dir = parent.map_or_else(|| self.warehouse.clone(), |p| self.namespace_dir(p));
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("listing", &dir, e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() && !e.path().join("metadata").exists() {
                let mut parts: Vec<String> = parent
                    .map(|p| p.iter().cloned().collect())
                    .unwrap_or_default();
                parts.push(name);
                out.push(NamespaceIdent::from_vec(parts)?);
            }
        }
        Ok(out)
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        if !properties.is_empty() {
            return Err(unsupported("keep namespace properties"));
        }
        let dir = self.namespace_dir(namespace);
        std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
        Ok(Namespace::new(namespace.clone()))
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        if self.namespace_exists(namespace).await? {
            Ok(Namespace::new(namespace.clone()))
        } else {
            Err(Error::new(
                ErrorKind::NamespaceNotFound,
                format!("no namespace {}", namespace.join(".")),
            ))
        }
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        Ok(self.namespace_dir(namespace).is_dir())
    }

    async fn update_namespace(
        &self,
        _namespace: &NamespaceIdent,
        _properties: HashMap<String, String>,
    ) -> Result<()> {
        Err(unsupported("keep namespace properties"))
    }

    async fn drop_namespace(&self, _namespace: &NamespaceIdent) -> Result<()> {
        Err(unsupported("drop namespaces (remove the directory)"))
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        let dir = self.namespace_dir(namespace);
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("listing", &dir, e)),
        };
        for e in entries.flatten() {
            if e.path().join("metadata").is_dir() {
                out.push(TableIdent::new(
                    namespace.clone(),
                    e.file_name().to_string_lossy().to_string(),
                ));
            }
        }
        Ok(out)
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        mut creation: TableCreation,
    ) -> Result<Table> {
        let ident = TableIdent::new(namespace.clone(), creation.name.clone());
        if self.current_version(&ident)?.is_some() {
            return Err(Error::new(
                ErrorKind::TableAlreadyExists,
                format!("table {} exists", ident),
            ));
        }
        let dir = self.table_dir(&ident);
        creation.location = Some(dir.display().to_string());
        let metadata = TableMetadataBuilder::from_table_creation(creation)?
            .build()?
            .metadata;
        let path = self.publish(&ident, 1, &metadata)?;
        self.table(ident, metadata, &path)
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        let Some((_, path)) = self.current_version(table)? else {
            return Err(Error::new(
                ErrorKind::TableNotFound,
                format!("no table {table} in {}", self.warehouse.display()),
            ));
        };
        let metadata = TableMetadata::read_from(&self.file_io, path.display().to_string()).await?;
        self.table(table.clone(), metadata, &path)
    }

    async fn drop_table(&self, _table: &TableIdent) -> Result<()> {
        Err(unsupported("drop tables (remove the directory)"))
    }

    async fn purge_table(&self, _table: &TableIdent) -> Result<()> {
        Err(unsupported("purge tables (remove the directory)"))
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        Ok(self.current_version(table)?.is_some())
    }

    async fn rename_table(&self, _src: &TableIdent, _dest: &TableIdent) -> Result<()> {
        Err(unsupported("rename tables"))
    }

    async fn register_table(&self, _table: &TableIdent, _location: String) -> Result<Table> {
        Err(unsupported("register tables"))
    }

    async fn update_table(&self, mut commit: TableCommit) -> Result<Table> {
        let ident = commit.identifier().clone();
        let Some((version, path)) = self.current_version(&ident)? else {
            return Err(Error::new(
                ErrorKind::TableNotFound,
                format!("no table {ident} to commit to"),
            ));
        };
        let current = TableMetadata::read_from(&self.file_io, path.display().to_string()).await?;
        for r in commit.take_requirements() {
            r.check(Some(&current))?;
        }
        let mut builder = current.into_builder(Some(path.display().to_string()));
        for u in commit.take_updates() {
            builder = u.apply(builder)?;
        }
        let metadata = builder.build()?.metadata;
        let path = self.publish(&ident, version + 1, &metadata)?;
        self.remove_old_versions(&ident, version + 1, &metadata);
        self.table(ident, metadata, &path)
    }
}
