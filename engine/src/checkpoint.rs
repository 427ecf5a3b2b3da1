//! Checkpoints on disk: what a pipeline needs to continue after a restart exactly where
//! a checkpoint left it.
//!
//! ```text
//! <dir>/                          (default <data_dir>/checkpoints)
//!   epoch-000000000042/           one directory per checkpoint
//!     view-0-region_health.arrow  a windowed view's open panes or sessions (Arrow IPC file)
//!     rows-0-region_health.arrow  a view's retained result rows (for queries and
//!                                 subscribers' since_seq)
//!     join-0-0-bids_people.arrow  a join view's stored rows of its left side
//!                                 (join-0-1-...: its right side); the index is rebuilt
//!   manifest-000000000042.json    written last, atomically: the checkpoint is complete
//! ```
//!
//! A checkpoint is complete only when its manifest exists: the state files are written and
//! synced first, then the manifest is written to a temporary file, synced, renamed into
//! place, and the directory synced. A crash at any point leaves either the previous
//! complete checkpoint or the new one; directories without a manifest are debris from a
//! crash and are removed. The newest `retain` complete checkpoints are kept.
//!
//! The manifest (JSON) lists, per object (by name, with the SQL that created it, so a
//! changed definition is not restored into): for sources the position, newest event time
//! and end flag of each partition and the watermark; for views the watermarks, the seq of
//! the last row emitted, the row-id counters and the state file; for sinks what their
//! pre-commit returned (files staged, transactions).

use crate::connector::SinkCheckpoint;
use crate::error::{Result, WeirError};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest format version; bumped when the layout changes incompatibly (2: window
/// state holds panes and sessions, keyed without the window columns).
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    pub epoch: u64,
    /// Wall-clock time the checkpoint was taken (epoch ms).
    pub taken_at_ms: i64,
    pub sources: BTreeMap<String, SourceState>,
    pub views: BTreeMap<String, ViewState>,
    pub sinks: BTreeMap<String, SinkState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceState {
    pub sql: String,
    pub partitions: Vec<PartitionCheckpoint>,
    pub watermark: i64,
    pub figures: Figures,
}

/// Counters carried across restarts, so totals do not start again from zero.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub bad_rows: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PartitionCheckpoint {
    /// Where the partition resumes (see `SourceEvent::Batch::position`); `None` if nothing
    /// from it was processed.
    pub position: Option<i64>,
    pub max_event: Option<i64>,
    pub ended: bool,
    /// Processing time the partition last delivered (for idle timeouts).
    pub last_active: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewState {
    pub sql: String,
    pub input_watermark: i64,
    pub watermark: i64,
    pub last_seq: u64,
    /// Rows emitted so far per row-id origin (see `RowIds`).
    pub row_counters: BTreeMap<u32, u64>,
    /// Windowed views: where windows closed through, and the file of open windows
    /// (relative to the checkpoint directory); `None` when no window was open.
    pub closed_through: Option<i64>,
    pub state_file: Option<String>,
    pub open_groups: u64,
    /// The retained rows' file and the seq of its first row.
    pub rows_file: Option<String>,
    pub rows_first_seq: u64,
    pub figures: Figures,
    /// Join views: the files of the rows each side holds (left, right; `None` for a side
    /// that holds none). Absent for other views.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join_files: Vec<Option<String>>,
    /// `EMIT EVERY` views: the processing-time interval (`now / interval`) of the last
    /// early emission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_period: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkState {
    pub sql: String,
    pub view: String,
    pub precommit: SinkCheckpoint,
}

/// A checkpoint being written: the manifest and the window state it refers to.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sources: BTreeMap<String, SourceState>,
    pub views: BTreeMap<String, ViewState>,
    /// View name -> open windows.
    pub state: BTreeMap<String, Vec<RecordBatch>>,
    /// View name -> retained rows (contiguous, from `rows_first_seq`).
    pub rows: BTreeMap<String, Vec<RecordBatch>>,
    /// Join view name -> the rows each side holds (left, right).
    pub joins: BTreeMap<String, [Vec<RecordBatch>; 2]>,
}

/// A complete checkpoint read back.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl Restored {
    /// The open windows saved for `view`.
    pub fn view_state(&self, view: &str) -> Result<Vec<RecordBatch>> {
        let file = self
            .manifest
            .views
            .get(view)
            .and_then(|v| v.state_file.as_ref());
        self.read(file)
    }

    /// The retained rows saved for `view`.
    pub fn view_rows(&self, view: &str) -> Result<Vec<RecordBatch>> {
        let file = self
            .manifest
            .views
            .get(view)
            .and_then(|v| v.rows_file.as_ref());
        self.read(file)
    }

    /// The rows each side of join view `view` held (left, right).
    pub fn join_state(&self, view: &str) -> Result<[Vec<RecordBatch>; 2]> {
        let files = self
            .manifest
            .views
            .get(view)
            .map(|v| v.join_files.clone())
            .unwrap_or_default();
        let side = |i: usize| self.read(files.get(i).and_then(|f| f.as_ref()));
        Ok([side(0)?, side(1)?])
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

/// A file name for a view's state or rows: its position (unique) and its name made safe.
fn state_file_name(kind: &str, index: usize, view: &str) -> String {
    let safe: String = view
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
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Epochs with a complete manifest, oldest first.
    fn complete_epochs(&self) -> Result<Vec<u64>> {
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
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let mut views = snapshot.views;
        let mut bytes = 0u64;
        for (index, (name, batches)) in snapshot.state.iter().enumerate() {
            if batches.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            let file_name = state_file_name("view", index, name);
            bytes += write_ipc(&dir.join(&file_name), batches)?;
            if let Some(v) = views.get_mut(name) {
                v.state_file = Some(file_name);
            }
        }
        for (index, (name, batches)) in snapshot.rows.iter().enumerate() {
            if batches.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            let file_name = state_file_name("rows", index, name);
            bytes += write_ipc(&dir.join(&file_name), batches)?;
            if let Some(v) = views.get_mut(name) {
                v.rows_file = Some(file_name);
            }
        }
        for (index, (name, sides)) in snapshot.joins.iter().enumerate() {
            let mut files = Vec::with_capacity(2);
            for (side, batches) in sides.iter().enumerate() {
                if batches.iter().all(|b| b.num_rows() == 0) {
                    files.push(None);
                    continue;
                }
                let file_name = state_file_name(&format!("join-{index}"), side, name);
                bytes += write_ipc(&dir.join(&file_name), batches)?;
                files.push(Some(file_name));
            }
            if let Some(v) = views.get_mut(name) {
                v.join_files = files;
            }
        }
        sync_dir(&dir)?;
        let manifest = Manifest {
            version: FORMAT_VERSION,
            epoch,
            taken_at_ms,
            sources: snapshot.sources,
            views,
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
        Ok(bytes + text.len() as u64)
    }

    /// Remove checkpoints beyond the newest `retain`, and debris: epoch directories
    /// without a manifest (a checkpoint that crashed half-way) and temporary files.
    pub fn prune(&self) -> Result<()> {
        let epochs = self.complete_epochs()?;
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
        let epochs = self.complete_epochs()?;
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
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        Ok(())
    }
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
        let mut s = Snapshot::default();
        s.sources.insert(
            "src".into(),
            SourceState {
                sql: "CREATE SOURCE src ...".into(),
                partitions: vec![PartitionCheckpoint {
                    position: Some(42),
                    max_event: Some(1000),
                    ended: false,
                    last_active: 0,
                }],
                watermark: 900,
                figures: Figures::default(),
            },
        );
        s.views.insert(
            "v".into(),
            ViewState {
                sql: "CREATE MATERIALIZED VIEW v ...".into(),
                input_watermark: 900,
                watermark: 0,
                last_seq: 7,
                row_counters: BTreeMap::from([(3, 10)]),
                closed_through: Some(900),
                state_file: None,
                open_groups: groups as u64,
                rows_file: None,
                rows_first_seq: 0,
                figures: Figures::default(),
                join_files: vec![],
                emit_period: None,
            },
        );
        s.state.insert("v".into(), vec![batch.clone()]);
        // A join view whose right side holds nothing.
        s.views.insert("j".into(), s.views["v"].clone());
        s.joins
            .insert("j".into(), [vec![batch.slice(0, 2)], vec![]]);
        s
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
        assert_eq!(r.manifest.sources["src"].partitions[0].position, Some(42));
        let state = r.view_state("v").unwrap();
        assert_eq!(state.iter().map(|b| b.num_rows()).sum::<usize>(), 30);
        assert_eq!(
            r.manifest.views["j"].join_files,
            [Some("join-0-0-j.arrow".to_string()), None]
        );
        let [left, right] = r.join_state("j").unwrap();
        assert_eq!(left, [state[0].slice(0, 2)]);
        assert!(right.is_empty());
        assert!(r.join_state("v").unwrap().iter().all(|s| s.is_empty()));
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
