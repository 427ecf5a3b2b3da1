//! What `weir run` keeps in its state directory (`<data_dir>/state/`) across restarts:
//!
//! - `statements.sql`: every CREATE and DROP applied over the API (POST /api/v1/sql,
//!   DELETE), appended in order and fsynced before the response is sent. At start-up, after
//!   the SQL files, the journal is replayed statement by statement; one that no longer
//!   applies (say a file now declares the same name) is logged and skipped.
//!
//! Views' row numbering (seqs) is not kept here: each view's sequencer lives in the
//! checkpoints (see the engine's `sequencer.rs`).
//!
//! With `[database] url` configured, the journal is the `weir.statements` table instead
//! (created by the migrations in migrations/ at start-up): statements survive the loss of
//! the local disk, and several restarts of a container share them.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use weir_engine::pipeline::Pipeline;

pub struct StateDir {
    dir: PathBuf,
    journal: Mutex<()>,
    db: Option<sqlx::PgPool>,
}

impl StateDir {
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("state");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        Ok(StateDir {
            dir,
            journal: Mutex::new(()),
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
