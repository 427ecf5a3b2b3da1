//! What `weir run` keeps in its state directory (`<data_dir>/state/`) across restarts:
//!
//! - `statements.sql`: every CREATE and DROP applied over the API (POST /api/v1/sql,
//!   DELETE), appended in order and fsynced before the response is sent. At start-up, after
//!   the SQL files, the journal is replayed statement by statement; one that no longer
//!   applies (say a file now declares the same name) is logged and skipped.
//! - `seq.json`: the last row sequence number of every view, so numbering continues after
//!   a restart. Written every second while it changes and at a clean stop.
//!
//! With `[database] url` configured, the journal is the `weir.statements` table instead
//! (created by the migrations in migrations/ at start-up): statements survive the loss of
//! the local disk, and several restarts of a container share them.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use weir_engine::pipeline::{Catalog, Pipeline};

pub struct StateDir {
    dir: PathBuf,
    journal: Mutex<()>,
    seqs: Mutex<BTreeMap<String, u64>>,
    db: Option<sqlx::PgPool>,
}

impl StateDir {
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("state");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let seqs = match std::fs::read(dir.join("seq.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", dir.join("seq.json").display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).context("reading seq.json"),
        };
        Ok(StateDir {
            dir,
            journal: Mutex::new(()),
            seqs: Mutex::new(seqs),
            db: None,
        })
    }

    /// Keep the journal in Weir's tables in this database (connects and migrates).
    pub async fn with_database(mut self, url: &str) -> Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect(url)
            .await
            .with_context(|| format!("connecting to the [database] url {}", redact(url)))?;
        weir_connectors::postgres::migrate(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.db = Some(pool);
        Ok(self)
    }

    /// Where the journal is, for messages.
    pub fn journal_location(&self) -> String {
        match &self.db {
            Some(_) => "table weir.statements".into(),
            None => self.journal_path().display().to_string(),
        }
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("statements.sql")
    }

    /// Append applied statements to the journal, durably.
    pub async fn record(&self, statements: &[String]) -> Result<()> {
        if statements.is_empty() {
            return Ok(());
        }
        if let Some(db) = &self.db {
            let mut tx = db.begin().await.context("journaling to weir.statements")?;
            for s in statements {
                sqlx::query("INSERT INTO weir.statements (sql) VALUES ($1)")
                    .bind(s.trim().trim_end_matches(';'))
                    .execute(&mut *tx)
                    .await
                    .context("journaling to weir.statements")?;
            }
            tx.commit().await.context("journaling to weir.statements")?;
            return Ok(());
        }
        let _g = self
            .journal
            .lock()
            .map_err(|_| anyhow::anyhow!("journal lock"))?;
        let path = self.journal_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = String::new();
        for s in statements {
            text.push_str(s.trim().trim_end_matches(';'));
            text.push_str(";\n");
        }
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Re-apply the journal to a pipeline loaded from the SQL files; returns how many
    /// statements applied.
    pub async fn replay(&self, pipeline: &mut Pipeline) -> Result<usize> {
        let texts: Vec<String> = match &self.db {
            Some(db) => sqlx::query_scalar("SELECT sql FROM weir.statements ORDER BY seq")
                .fetch_all(db)
                .await
                .context("reading weir.statements")?,
            None => {
                let path = self.journal_path();
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading {}", path.display()));
                    }
                };
                weir_engine::sql::parse_script(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                    .into_iter()
                    .map(|st| st.text)
                    .collect()
            }
        };
        let mut applied = 0;
        for (i, text) in texts.iter().enumerate() {
            match pipeline.execute(text).await {
                Ok(_) => applied += 1,
                Err(e) => tracing::warn!(
                    "{}: statement {} no longer applies, skipped: {e}",
                    self.journal_location(),
                    i + 1
                ),
            }
        }
        Ok(applied)
    }

    /// Continue every view's numbering where the last run left it.
    pub fn restore_seqs(&self, pipeline: &mut Pipeline) {
        if let Ok(seqs) = self.seqs.lock() {
            pipeline.resume_seqs(seqs.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }

    /// Save the views' last seqs if any changed (views dropped keep their entry, so a view
    /// created again under the same name does not reuse numbers).
    pub fn save_seqs(&self, catalog: &Catalog) -> Result<()> {
        let Ok(mut seqs) = self.seqs.lock() else {
            return Ok(());
        };
        let mut changed = false;
        for o in catalog.objects().iter() {
            if let Some(b) = &o.buffer {
                let seq = b.last_seq();
                if seqs.get(&o.name) != Some(&seq) && seq > 0 {
                    seqs.insert(o.name.clone(), seq);
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(());
        }
        let tmp = self.dir.join("seq.json.tmp");
        let bytes = serde_json::to_vec_pretty(&*seqs)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, self.dir.join("seq.json"))?;
        Ok(())
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://weir:s3cret@db:5432/weir"),
            "postgres://weir:***@db:5432/weir"
        );
        assert_eq!(
            super::redact("postgres://weir@127.0.0.1:15432/weir"),
            "postgres://weir@127.0.0.1:15432/weir"
        );
    }
}
