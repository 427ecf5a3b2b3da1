//! Checkpoints on disk: what a pipeline needs to continue after a restart exactly where
//! a checkpoint left it.
//!
//! ```text
//! <dir>/                          (default <data_dir>/checkpoints)
//!   epoch-000000000042/           one directory per checkpoint
//!     node-3-0-region_health.arrow  part 0 of node 3's state (Arrow IPC file): a windowed
//!                                 view's open panes or sessions, a join's left side, ...
//!     rows-region_health.arrow    a view's retained result rows (for queries and
//!                                 subscribers' since_seq)
//!   manifest-000000000042.json    written last, atomically: the checkpoint is complete
//! ```
//!
//! With `dir` an object-store URL (`s3://bucket/prefix`, `crate::remote`) the same layout
//! is kept there, and the local directory (`<data_dir>/checkpoints`) is a working copy: a
//! checkpoint is written locally as below, then its state files are uploaded, then its
//! manifest (one PUT, which is atomic: the object appears whole or not at all). Only
//! manifests in the store count as complete, so a replacement machine pointed at the same
//! URL restores the newest one, downloading it first.
//!
//! A checkpoint is complete only when its manifest exists: the state files are written and
//! synced first, then the manifest is written to a temporary file, synced, renamed into
//! place, and the directory synced. A crash at any point leaves either the previous
//! complete checkpoint or the new one; directories without a manifest are debris from a
//! crash and are removed. The newest `retain` complete checkpoints are kept.
//!
//! The manifest (JSON) holds, per dataflow node (by name, with the SQL that created it, so
//! a changed definition is not restored into), what its operator's snapshot gave: small
//! fields as JSON (partitions and watermarks, where windows closed through) and the files
//! of its Arrow state; per view its [`Sequencer`] (seq numbers and row ids: persisted here
//! and nowhere else) and retained rows; per sink what its pre-commit returned (files
//! staged, transactions). Taking one is a loop over the nodes: see `Pipeline::snapshot`.

use crate::connector::SinkCheckpoint;
use crate::error::{Result, WeirError};
use crate::object::ObjectKind;
use crate::sequencer::Sequencer;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest format version; bumped when the layout changes incompatibly (2: window
/// state holds panes and sessions, keyed without the window columns; 3: one entry per
/// dataflow node with its operator's state, sequencers and retained rows apart).
pub const FORMAT_VERSION: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    pub epoch: u64,
    /// Wall-clock time the checkpoint was taken (epoch ms).
    pub taken_at_ms: i64,
    /// Sources and views, by name.
    pub nodes: BTreeMap<String, NodeCheckpoint>,
    /// Every view's numbering, including views dropped since (so a view created again
    /// under the name goes on numbering).
    pub sequencers: BTreeMap<String, Sequencer>,
    /// Every view's retained rows.
    pub rows: BTreeMap<String, RowsCheckpoint>,
    pub sinks: BTreeMap<String, SinkState>,
}

/// One dataflow node in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeCheckpoint {
    pub kind: NodeKind,
    /// The statement that created it: a node is restored only into the same definition.
    pub sql: String,
    /// The operator's small state (see `dataflow::NodeState::meta`).
    pub state: serde_json::Value,
    pub figures: Figures,
    /// The files of the operator's Arrow state, one per part (`None`: the part was empty),
    /// relative to the checkpoint directory.
    pub files: Vec<Option<String>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Source,
    View,
}

impl From<ObjectKind> for NodeKind {
    fn from(k: ObjectKind) -> Self {
        match k {
            ObjectKind::Source => NodeKind::Source,
            _ => NodeKind::View,
        }
    }
}

/// A view's retained rows in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowsCheckpoint {
    /// The seq of the first row in the file.
    pub first_seq: u64,
    pub file: Option<String>,
}

/// Counters carried across restarts, so totals do not start again from zero.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub bad_rows: u64,
}

impl Figures {
    pub fn of(s: &crate::stats::Stats) -> Self {
        use crate::stats::Stats;
        Figures {
            rows_in: Stats::get(&s.rows_in),
            rows_out: Stats::get(&s.rows_out),
            late_rows: Stats::get(&s.late_rows),
            bad_rows: Stats::get(&s.bad_rows),
        }
    }

    pub fn apply(&self, s: &crate::stats::Stats) {
        use std::sync::atomic::Ordering::Relaxed;
        s.rows_in.store(self.rows_in, Relaxed);
        s.rows_out.store(self.rows_out, Relaxed);
        s.late_rows.store(self.late_rows, Relaxed);
        s.bad_rows.store(self.bad_rows, Relaxed);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkState {
    pub sql: String,
    pub view: String,
    pub precommit: SinkCheckpoint,
}

/// One node's part of a checkpoint being written.
#[derive(Debug)]
pub struct NodeSnapshot {
    pub name: String,
    pub kind: NodeKind,
    pub sql: String,
    pub state: serde_json::Value,
    pub figures: Figures,
    pub parts: Vec<Vec<RecordBatch>>,
}

/// A checkpoint being written.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeSnapshot>,
    pub sequencers: BTreeMap<String, Sequencer>,
    /// View name -> the seq of the first retained row, and the rows (contiguous).
    pub rows: BTreeMap<String, (u64, Vec<RecordBatch>)>,
}

/// A complete checkpoint read back.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl Restored {
    /// The Arrow state of node `name`, one list of batches per part.
    pub fn node_parts(&self, name: &str) -> Result<Vec<Vec<RecordBatch>>> {
        let Some(n) = self.manifest.nodes.get(name) else {
            return Ok(vec![]);
        };
        n.files.iter().map(|f| self.read(f.as_ref())).collect()
    }

    /// The retained rows saved for `view`.
    pub fn view_rows(&self, view: &str) -> Result<Vec<RecordBatch>> {
        let file = self.manifest.rows.get(view).and_then(|r| r.file.as_ref());
        self.read(file)
    }

    fn read(&self, file: Option<&String>) -> Result<Vec<RecordBatch>> {
        let Some(file) = file else {
            return Ok(vec![]);
        };
        let path = self.dir.join(file);
        let f = File::open(&path).map_err(|e| io_err("opening", &path, e))?;
        let reader = FileReader::try_new(f, None)?;
        Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
    }
}

/// Write `batches` as one Arrow IPC file and sync it; returns its size.
fn write_ipc(path: &Path, batches: &[RecordBatch]) -> Result<u64> {
    let Some(first) = batches.first() else {
        return Ok(0);
    };
    let f = File::create(path).map_err(|e| io_err("creating", path, e))?;
    let mut w = FileWriter::try_new(f, &first.schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    let f = w.into_inner()?;
    f.sync_all().map_err(|e| io_err("syncing", path, e))?;
    Ok(f.metadata().map(|m| m.len()).unwrap_or(0))
}

/// Where checkpoints live.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    retain: usize,
    /// Where complete checkpoints live when that is an object store; `dir` is then a
    /// working copy.
    remote: Option<crate::remote::Remote>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> WeirError {
    WeirError::external(format!("checkpoint: {what} {}: {e}", path.display()))
}

fn manifest_name(epoch: u64) -> String {
    format!("manifest-{epoch:012}.json")
}

fn epoch_dir_name(epoch: u64) -> String {
    format!("epoch-{epoch:012}")
}

/// A file name for a node's state part or a view's rows: its position (unique) and its
/// name made safe.
fn state_file_name(kind: &str, index: usize, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    format!("{kind}-{index}-{safe}.arrow")
}

/// [`crate::fsutil::sync_dir`], its error saying it was a checkpoint's.
fn sync_dir(dir: &Path) -> Result<()> {
    crate::fsutil::sync_dir(dir).map_err(|e| e.context("checkpoint"))
}

impl CheckpointStore {
    pub fn new(dir: impl Into<PathBuf>, retain: usize) -> Self {
        CheckpointStore {
            dir: dir.into(),
            retain: retain.max(1),
            remote: None,
        }
    }

    /// Keep complete checkpoints in `remote`, with the local directory as a working copy.
    pub fn with_remote(mut self, remote: crate::remote::Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The local directory (the working copy when checkpoints live in an object store).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where checkpoints live, for messages: the URL or the directory.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => r.url().to_string(),
            None => self.dir.display().to_string(),
        }
    }

    /// Epochs with a complete manifest, oldest first: in the object store if there is
    /// one, else in the directory.
    fn complete_epochs(&self) -> Result<Vec<u64>> {
        match &self.remote {
            Some(r) => remote_epochs(r),
            None => self.local_epochs(),
        }
    }

    /// Epochs with a complete manifest in the local directory, oldest first.
    fn local_epochs(&self) -> Result<Vec<u64>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err("listing", &self.dir, e)),
        };
        let mut epochs: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_prefix("manifest-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<Restored>> {
        let Some(epoch) = self.complete_epochs()?.last().copied() else {
            return Ok(None);
        };
        if let Some(remote) = &self.remote
            && !self.local_epochs()?.contains(&epoch)
        {
            self.download(remote, epoch)?;
        }
        let path = self.dir.join(manifest_name(epoch));
        let text = std::fs::read_to_string(&path).map_err(|e| io_err("reading", &path, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            WeirError::external(format!(
                "checkpoint manifest {} is unreadable: {e}",
                path.display()
            ))
        })?;
        if manifest.version != FORMAT_VERSION {
            return Err(WeirError::user(format!(
                "checkpoint {} has format version {}, this build reads version {FORMAT_VERSION}; \
                 move the checkpoint directory away to start from scratch",
                path.display(),
                manifest.version
            )));
        }
        Ok(Some(Restored {
            dir: self.dir.join(epoch_dir_name(epoch)),
            manifest,
        }))
    }

    /// The epoch after the newest complete one.
    pub fn next_epoch(&self) -> Result<u64> {
        Ok(self.complete_epochs()?.last().map_or(1, |e| e + 1))
    }

    /// Write the state files and then publish the manifest. Blocking: run it off the
    /// async runtime. Returns the bytes of state written.
    pub fn write(
        &self,
        epoch: u64,
        snapshot: Snapshot,
        sinks: BTreeMap<String, SinkState>,
        taken_at_ms: i64,
    ) -> Result<u64> {
        let dir = self.dir.join(epoch_dir_name(epoch));
        // Debris of an earlier attempt at this epoch, if any; absent is the usual case.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let mut bytes = 0u64;
        let mut nodes = BTreeMap::new();
        for (index, n) in snapshot.nodes.into_iter().enumerate() {
            let mut files = Vec::with_capacity(n.parts.len());
            for (part, batches) in n.parts.iter().enumerate() {
                if batches.iter().all(|b| b.num_rows() == 0) {
                    files.push(None);
                    continue;
                }
                let file_name = state_file_name(&format!("node-{index}"), part, &n.name);
                bytes += write_ipc(&dir.join(&file_name), batches)?;
                files.push(Some(file_name));
            }
            nodes.insert(
                n.name,
                NodeCheckpoint {
                    kind: n.kind,
                    sql: n.sql,
                    state: n.state,
                    figures: n.figures,
                    files,
                },
            );
        }
        let mut rows = BTreeMap::new();
        for (index, (name, (first_seq, batches))) in snapshot.rows.into_iter().enumerate() {
            let file = if batches.iter().all(|b| b.num_rows() == 0) {
                None
            } else {
                let file_name = state_file_name("rows", index, &name);
                bytes += write_ipc(&dir.join(&file_name), &batches)?;
                Some(file_name)
            };
            rows.insert(name, RowsCheckpoint { first_seq, file });
        }
        sync_dir(&dir)?;
        let manifest = Manifest {
            version: FORMAT_VERSION,
            epoch,
            taken_at_ms,
            nodes,
            sequencers: snapshot.sequencers,
            rows,
            sinks,
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| WeirError::Internal(format!("checkpoint manifest: {e}")))?;
        let tmp = self.dir.join(format!(".{}.tmp", manifest_name(epoch)));
        let mut f = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("writing", &tmp, e))?;
        drop(f);
        let path = self.dir.join(manifest_name(epoch));
        std::fs::rename(&tmp, &path).map_err(|e| io_err("publishing", &path, e))?;
        sync_dir(&self.dir)?;
        let total = bytes + text.len() as u64;
        if let Some(remote) = &self.remote {
            self.upload(remote, epoch, text)?;
        }
        Ok(total)
    }

    /// Upload checkpoint `epoch` from the working copy: its state files, then its manifest
    /// (`text`), which makes it complete.
    fn upload(&self, remote: &crate::remote::Remote, epoch: u64, text: Vec<u8>) -> Result<()> {
        let dir_name = epoch_dir_name(epoch);
        let dir = self.dir.join(&dir_name);
        let files = crate::fsutil::files_below(&dir)?;
        crate::remote::block_on(async {
            for f in &files {
                let local = dir.join(f);
                let bytes = tokio::fs::read(&local)
                    .await
                    .map_err(|e| io_err("reading", &local, e))?;
                remote
                    .put_at(&format!("{dir_name}/{}", f.display()), bytes)
                    .await?;
            }
            remote.put_at(&manifest_name(epoch), text).await
        })
    }

    /// Download complete checkpoint `epoch` into the working copy (a restart on a machine
    /// that did not write it).
    fn download(&self, remote: &crate::remote::Remote, epoch: u64) -> Result<()> {
        let dir_name = epoch_dir_name(epoch);
        let dir = self.dir.join(&dir_name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let prefix = format!("{dir_name}/");
        let manifest = crate::remote::block_on(async {
            for (rel, _) in remote.list(&dir_name).await? {
                let Some(name) = rel.strip_prefix(&prefix) else {
                    continue;
                };
                if let Some(bytes) = remote.get(&rel).await? {
                    let path = dir.join(name);
                    tokio::fs::write(&path, bytes)
                        .await
                        .map_err(|e| io_err("writing", &path, e))?;
                }
            }
            remote.get(&manifest_name(epoch)).await
        })?
        .ok_or_else(|| {
            WeirError::external(format!(
                "checkpoint {epoch} went away from {} while being restored",
                remote.url()
            ))
        })?;
        let path = self.dir.join(manifest_name(epoch));
        std::fs::write(&path, manifest).map_err(|e| io_err("writing", &path, e))?;
        tracing::info!(epoch, url = %remote.url(), "downloaded checkpoint");
        Ok(())
    }

    /// Remove checkpoints beyond the newest `retain`, and debris: epoch directories
    /// without a manifest (a checkpoint that crashed half-way) and temporary files.
    pub fn prune(&self) -> Result<()> {
        if let Some(remote) = &self.remote {
            prune_remote(remote, self.retain, false)?;
        }
        let epochs = self.local_epochs()?;
        let keep: Vec<u64> = epochs.iter().rev().take(self.retain).copied().collect();
        let newest = keep.first().copied().unwrap_or(0);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            let remove = if let Some(n) = name
                .strip_prefix("manifest-")
                .and_then(|n| n.strip_suffix(".json"))
            {
                n.parse::<u64>().is_ok_and(|n| !keep.contains(&n))
            } else if let Some(n) = name.strip_prefix("epoch-") {
                // An epoch newer than the newest manifest may be being written right now.
                n.parse::<u64>()
                    .is_ok_and(|n| !keep.contains(&n) && n <= newest)
            } else {
                name.starts_with(".manifest-")
            };
            if remove {
                let r = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(e) = r {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove an old checkpoint");
                }
            }
        }
        Ok(())
    }

    /// Remove epoch directories that have no manifest (from a crash mid-checkpoint).
    pub fn remove_incomplete(&self) -> Result<()> {
        if let Some(remote) = &self.remote {
            prune_remote(remote, self.retain, true)?;
        }
        let epochs = self.local_epochs()?;
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            let incomplete = name
                .strip_prefix("epoch-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| !epochs.contains(&n))
                || name.starts_with(".manifest-");
            if incomplete {
                let p = e.path();
                let removed = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                // Debris left is only wasted space: the manifest decides what is restored.
                if let Err(e) = removed {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove an incomplete checkpoint");
                }
            }
        }
        Ok(())
    }
}

/// The epochs of the manifests in `remote`, oldest first.
fn remote_epochs(remote: &crate::remote::Remote) -> Result<Vec<u64>> {
    Ok(manifest_epochs(&crate::remote::block_on(remote.list(""))?))
}

/// The epochs of the manifests among `listed` (a remote listing), oldest first.
fn manifest_epochs(listed: &[(String, u64)]) -> Vec<u64> {
    let mut epochs: Vec<u64> = listed
        .iter()
        .filter_map(|(rel, _)| {
            rel.strip_prefix("manifest-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

/// Remove from `remote` the complete checkpoints beyond the newest `retain` (manifest
/// first, so none is ever half there) and the files of checkpoints that never completed:
/// older than the newest complete one, or, at a restart (`restarting`), any.
fn prune_remote(remote: &crate::remote::Remote, retain: usize, restarting: bool) -> Result<()> {
    crate::remote::block_on(async {
        let listed = remote.list("").await?;
        let complete = manifest_epochs(&listed);
        let keep: Vec<u64> = complete.iter().rev().take(retain).copied().collect();
        let newest = keep.first().copied().unwrap_or(0);
        for e in complete.iter().filter(|e| !keep.contains(e)) {
            remote.delete(&manifest_name(*e)).await?;
        }
        for (rel, _) in &listed {
            let epoch = rel
                .strip_prefix("epoch-")
                .and_then(|r| r.split('/').next())
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(e) = epoch
                && !keep.contains(&e)
                && (restarting || e <= newest)
            {
                remote.delete(rel).await?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn snapshot(groups: i64) -> Snapshot {
        let schema = Arc::new(Schema::new(vec![Field::new("g", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..groups))],
        )
        .unwrap();
        let node = |name: &str, kind, parts| NodeSnapshot {
            name: name.into(),
            kind,
            sql: format!("CREATE ... {name}"),
            state: serde_json::json!({"watermark": 900}),
            figures: Figures::default(),
            parts,
        };
        Snapshot {
            nodes: vec![
                node("src", NodeKind::Source, vec![]),
                node("v", NodeKind::View, vec![vec![batch.clone()]]),
                // A join view whose right side holds nothing.
                node("j", NodeKind::View, vec![vec![batch.slice(0, 2)], vec![]]),
            ],
            sequencers: BTreeMap::from([("v".to_string(), Sequencer::default())]),
            rows: BTreeMap::from([("v".to_string(), (5, vec![batch.slice(0, 1)]))]),
        }
    }

    #[test]
    fn write_read_prune() {
        let dir = tempfile_dir();
        let store = CheckpointStore::new(&dir, 2);
        assert!(store.latest().unwrap().is_none());
        assert_eq!(store.next_epoch().unwrap(), 1);
        for epoch in 1..=3 {
            store
                .write(epoch, snapshot(epoch as i64 * 10), BTreeMap::new(), 5)
                .unwrap();
            store.prune().unwrap();
        }
        // A checkpoint that crashed before its manifest.
        std::fs::create_dir_all(dir.join("epoch-000000000004")).unwrap();
        let r = store.latest().unwrap().unwrap();
        assert_eq!(r.manifest.epoch, 3);
        assert_eq!(r.manifest.nodes["src"].state["watermark"], 900);
        assert_eq!(r.manifest.nodes["src"].kind, NodeKind::Source);
        let state = r.node_parts("v").unwrap();
        assert_eq!(state.len(), 1);
        assert_eq!(state[0].iter().map(|b| b.num_rows()).sum::<usize>(), 30);
        assert_eq!(
            r.manifest.nodes["j"].files,
            [Some("node-2-0-j.arrow".to_string()), None]
        );
        let join = r.node_parts("j").unwrap();
        assert_eq!(join[0], [state[0][0].slice(0, 2)]);
        assert!(join[1].is_empty());
        assert!(r.node_parts("src").unwrap().is_empty());
        assert_eq!(r.manifest.rows["v"].first_seq, 5);
        assert_eq!(r.view_rows("v").unwrap()[0].num_rows(), 1);
        assert!(r.view_rows("j").unwrap().is_empty());
        assert_eq!(store.next_epoch().unwrap(), 4);
        store.remove_incomplete().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "epoch-000000000002",
                "epoch-000000000003",
                "manifest-000000000002.json",
                "manifest-000000000003.json"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "weir-ckpt-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
