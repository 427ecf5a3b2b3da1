//! Durable files for sinks and checkpoints: [`sync_dir`], [`StagedFiles`] (the
//! stage-then-publish protocol that makes a sink's files exactly once across crashes) and
//! [`blocking`] (run file work off the async runtime's workers).
//!
//! # Staged files
//!
//! A sink in a checkpointed pipeline must not let anyone see rows a crash could take back,
//! and must not lose rows the restored checkpoint will not compute again. Files go through
//! these states:
//!
//! 1. written under a hidden name of the sink's choosing (an in-progress file);
//! 2. [`StagedFiles::stage`]: synced and renamed to its staged name (still hidden);
//! 3. [`StagedFiles::precommit`] (the checkpoint's pre-commit): the folders of the files
//!    staged since the last pre-commit are synced, and every staged file not committed yet
//!    is listed for the checkpoint;
//! 4. [`StagedFiles::commit`] (the checkpoint is complete): each file is published, that is
//!    renamed to its final name, or, for a file whose content was published some other way
//!    (a Kafka transaction), deleted;
//! 5. after a restart, [`StagedFiles::recover`] publishes the files the restored checkpoint
//!    listed that are still staged (the commit had not got to them) and deletes every other
//!    hidden file of the sink: rows after the checkpoint are computed again from the
//!    sources' replay.
//!
//! Publishing is idempotent (a file already in place counts as published), so a crash in
//! the middle of a commit or a recovery is recovered by the next start.

use crate::error::{Result, WeirError};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Make a directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing", dir, e))
}

/// An I/O error with what was being done to which path.
pub fn io_error(doing: &str, path: &Path, e: std::io::Error) -> WeirError {
    WeirError::external_source(format!("{doing} {}", path.display()), e)
}

/// A short id unlikely to repeat (the clock in nanoseconds and the process id), for names
/// a restarted process must not reuse.
pub fn unique_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}",
        (nanos as u64) ^ (u64::from(std::process::id()) << 40)
    )
}

/// Remove a file; one that is not there is fine.
pub fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing", path, e)),
    }
}

/// Run `f` on Tokio's blocking pool and wait for it, so blocking work (file I/O, a
/// synchronous client call) never holds an async worker. A panic in `f` is an internal
/// error naming `what`.
pub async fn run_blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WeirError::Internal(format!("{what}: {e}")))
}

/// Run `f` on `state` on a blocking thread, so file I/O (and anything else that blocks)
/// never holds an async worker. `state` is moved to the thread and back; if `f` panics it
/// is lost, and later calls fail with an internal error naming `what`.
pub async fn blocking<S, T>(
    state: &mut Option<S>,
    what: &str,
    f: impl FnOnce(&mut S) -> Result<T> + Send + 'static,
) -> Result<T>
where
    S: Send + 'static,
    T: Send + 'static,
{
    let mut s = state
        .take()
        .ok_or_else(|| WeirError::Internal(format!("{what} used after a failed task")))?;
    let (s, result) = run_blocking(&format!("{what} task"), move || {
        let result = f(&mut s);
        (s, result)
    })
    .await?;
    *state = Some(s);
    result
}

/// A staged file: synced under the hidden name `path`; committing moves it to `publish_to`,
/// or deletes it when that is `None` (its content is published by other means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub path: PathBuf,
    pub publish_to: Option<PathBuf>,
}

impl Staged {
    /// The checkpoint form of a list: `[[path, publish_to or null], ...]`.
    pub fn list_to_json(files: &[Staged]) -> serde_json::Value {
        serde_json::Value::Array(
            files
                .iter()
                .map(|s| {
                    serde_json::json!([
                        s.path.display().to_string(),
                        s.publish_to.as_ref().map(|p| p.display().to_string())
                    ])
                })
                .collect(),
        )
    }

    /// A list read back from a checkpoint (`None` if it is not in that form).
    pub fn list_from_json(v: &serde_json::Value) -> Option<Vec<Staged>> {
        v.as_array()?
            .iter()
            .map(|f| {
                Some(Staged {
                    path: PathBuf::from(f.get(0)?.as_str()?),
                    publish_to: match f.get(1) {
                        None | Some(serde_json::Value::Null) => None,
                        Some(p) => Some(PathBuf::from(p.as_str()?)),
                    },
                })
            })
            .collect()
    }

    /// Publish (idempotent: already done is fine), then sync the folder it changed.
    fn publish(&self) -> Result<()> {
        match &self.publish_to {
            Some(to) => {
                match std::fs::rename(&self.path, to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => {}
                    Err(e) => return Err(io_error("publishing", &self.path, e)),
                }
                match to.parent() {
                    Some(dir) => sync_dir(dir),
                    None => Ok(()),
                }
            }
            None => remove_file(&self.path),
        }
    }
}

/// What [`StagedFiles::recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Files of the restored checkpoint published now.
    pub published: Vec<Staged>,
    /// Hidden files removed (written after the checkpoint).
    pub removed: usize,
}

/// The staged files of one sink (see the module docs).
#[derive(Debug)]
pub struct StagedFiles {
    /// Where the sink's hidden files live (searched recursively at recovery).
    root: PathBuf,
    /// Whether a file name is one of the sink's hidden files (in-progress or staged).
    is_hidden: fn(&str) -> bool,
    /// Staged since the last pre-commit.
    staged: Vec<Staged>,
    /// Pre-committed per epoch, not committed yet.
    precommitted: BTreeMap<u64, Vec<Staged>>,
}

impl StagedFiles {
    /// `is_hidden` must match every in-progress and staged file name the sink uses under
    /// `root`, and nothing else there.
    pub fn new(root: impl Into<PathBuf>, is_hidden: fn(&str) -> bool) -> Self {
        StagedFiles {
            root: root.into(),
            is_hidden,
            staged: Vec::new(),
            precommitted: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sync `file` (written at `written`) and rename it to `staged.path`. Its folder is
    /// synced at the next pre-commit, once for all files staged there.
    pub fn stage(&mut self, file: File, written: &Path, staged: Staged) -> Result<()> {
        file.sync_all()
            .map_err(|e| io_error("syncing", written, e))?;
        drop(file);
        std::fs::rename(written, &staged.path).map_err(|e| io_error("renaming", written, e))?;
        self.staged.push(staged);
        Ok(())
    }

    /// The files staged since the last pre-commit.
    pub fn staged(&self) -> &[Staged] {
        &self.staged
    }

    /// Pre-commit `epoch`: make the files staged since the last pre-commit durable and
    /// file them under `epoch`. Returns every file not committed yet, in staging order
    /// (an earlier pre-commit whose checkpoint did not complete is covered by this one),
    /// for the checkpoint to record.
    pub fn precommit(&mut self, epoch: u64) -> Result<Vec<Staged>> {
        let files = std::mem::take(&mut self.staged);
        let dirs: std::collections::BTreeSet<&Path> =
            files.iter().filter_map(|s| s.path.parent()).collect();
        for dir in dirs {
            sync_dir(dir)?;
        }
        self.precommitted.entry(epoch).or_default().extend(files);
        Ok(self.precommitted.values().flatten().cloned().collect())
    }

    /// Whether `epoch` was pre-committed and not committed yet.
    pub fn is_precommitted(&self, epoch: u64) -> bool {
        self.precommitted.contains_key(&epoch)
    }

    /// Publish the files of every pre-committed epoch up to `epoch`; returns them.
    pub fn commit(&mut self, epoch: u64) -> Result<Vec<Staged>> {
        let later = self.precommitted.split_off(&(epoch + 1));
        let due = std::mem::replace(&mut self.precommitted, later);
        let mut done = Vec::new();
        for (_, files) in due {
            for f in files {
                f.publish()?;
                done.push(f);
            }
        }
        Ok(done)
    }

    /// Of the files a checkpoint listed, those still staged on disk: the checkpoint's
    /// commit had not got to them.
    pub fn still_staged(listed: &[Staged]) -> Vec<Staged> {
        listed.iter().filter(|s| s.path.exists()).cloned().collect()
    }

    /// After a restart: publish the files of `listed` (what the restored checkpoint
    /// recorded) that are still staged, and remove every other hidden file under the
    /// root. Forgets everything staged or pre-committed in this process.
    pub fn recover(&mut self, listed: &[Staged]) -> Result<Recovered> {
        let mut out = Recovered::default();
        for s in Self::still_staged(listed) {
            s.publish()?;
            out.published.push(s);
        }
        remove_hidden(&self.root, self.is_hidden, &mut out.removed)?;
        self.staged.clear();
        self.precommitted.clear();
        Ok(out)
    }
}

/// Remove every file under `dir` (recursively) whose name `is_hidden` matches.
fn remove_hidden(dir: &Path, is_hidden: fn(&str) -> bool, removed: &mut usize) -> Result<()> {
    for file in files_below(dir)? {
        if file
            .file_name()
            .is_some_and(|n| is_hidden(&n.to_string_lossy()))
        {
            remove_file(&dir.join(file))?;
            *removed += 1;
        }
    }
    Ok(())
}

/// Every file below `dir`, recursively, as paths relative to it, sorted; none when `dir`
/// does not exist.
pub fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => return Ok(()),
            Err(e) => return Err(io_error("listing", dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing", dir, e))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| io_error("listing", &path, e))?;
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn hidden(name: &str) -> bool {
        name.starts_with('.') && (name.ends_with(".writing") || name.ends_with(".staged"))
    }

    fn files(dir: &Path) -> Vec<String> {
        files_below(dir)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    /// Write `name` in `dir` as the sink would (`.name.writing`) and stage it.
    fn write_and_stage(files: &mut StagedFiles, dir: &Path, name: &str, publish: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let written = dir.join(format!(".{name}.writing"));
        let mut f = File::create(&written).unwrap();
        f.write_all(name.as_bytes()).unwrap();
        let staged = Staged {
            path: dir.join(format!(".{name}.staged")),
            publish_to: publish.then(|| dir.join(name)),
        };
        files.stage(f, &written, staged).unwrap();
    }

    #[test]
    fn files_are_published_only_when_their_checkpoint_commits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut s = StagedFiles::new(root, hidden);
        write_and_stage(&mut s, &root.join("dt=1"), "a", true);
        write_and_stage(&mut s, root, "b", true);
        assert_eq!(files(root), vec![".b.staged", "dt=1/.a.staged"]);
        let listed = s.precommit(1).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(s.is_precommitted(1));
        // Staged after the pre-commit of 1: belongs to 2.
        write_and_stage(&mut s, root, "c", true);
        let committed = s.commit(1).unwrap();
        assert_eq!(committed, listed);
        assert!(!s.is_precommitted(1));
        assert_eq!(files(root), vec![".c.staged", "b", "dt=1/a"]);
        assert_eq!(std::fs::read_to_string(root.join("dt=1/a")).unwrap(), "a");
        s.precommit(2).unwrap();
        s.commit(2).unwrap();
        assert_eq!(files(root), vec!["b", "c", "dt=1/a"]);
        // Nothing pre-committed: committing is a no-op.
        assert!(s.commit(3).unwrap().is_empty());
    }

    #[test]
    fn a_precommit_without_its_commit_is_covered_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut s = StagedFiles::new(root, hidden);
        write_and_stage(&mut s, root, "a", true);
        s.precommit(1).unwrap(); // its checkpoint fails: no commit(1)
        write_and_stage(&mut s, root, "b", true);
        let listed = s.precommit(2).unwrap();
        let names: Vec<String> = listed
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec![".a.staged", ".b.staged"]);
        assert_eq!(s.commit(2).unwrap().len(), 2);
        assert_eq!(files(root), vec!["a", "b"]);
    }

    #[test]
    fn files_without_a_target_are_deleted_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut s = StagedFiles::new(root, hidden);
        write_and_stage(&mut s, root, "spool", false);
        let listed = s.precommit(1).unwrap();
        assert_eq!(listed[0].publish_to, None);
        s.commit(1).unwrap();
        assert!(files(root).is_empty());
    }

    /// The crash between the checkpoint's manifest and the commit: the restart publishes
    /// what the checkpoint listed and removes what was written after it.
    #[test]
    fn recovery_publishes_the_checkpoint_and_removes_later_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut before = StagedFiles::new(root, hidden);
        write_and_stage(&mut before, &root.join("dt=1"), "a", true);
        write_and_stage(&mut before, root, "spool", false);
        let listed = before.precommit(7).unwrap();
        let json = Staged::list_to_json(&listed);
        // After the pre-commit: one more staged file and one still being written.
        write_and_stage(&mut before, root, "late", true);
        std::fs::write(root.join(".open.writing"), b"x").unwrap();
        std::fs::write(root.join("unrelated.txt"), b"x").unwrap();
        drop(before); // the crash

        let listed = Staged::list_from_json(&json).unwrap();
        assert_eq!(StagedFiles::still_staged(&listed).len(), 2);
        let mut after = StagedFiles::new(root, hidden);
        let r = after.recover(&listed).unwrap();
        assert_eq!(r.published, listed);
        assert_eq!(r.removed, 2);
        assert_eq!(files(root), vec!["dt=1/a", "unrelated.txt"]);
        // Recovering again (a crash during the first recovery) changes nothing.
        let r = after.recover(&listed).unwrap();
        assert_eq!(r, Recovered::default());
        assert_eq!(files(root), vec!["dt=1/a", "unrelated.txt"]);
    }

    /// A crash after the commit had moved some files: the rest are published, the moved
    /// ones count as done.
    #[test]
    fn recovery_after_a_partial_commit_publishes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut s = StagedFiles::new(root, hidden);
        write_and_stage(&mut s, root, "a", true);
        write_and_stage(&mut s, root, "b", true);
        let listed = s.precommit(1).unwrap();
        listed[0].publish().unwrap();
        drop(s);
        let mut after = StagedFiles::new(root, hidden);
        let r = after.recover(&listed).unwrap();
        assert_eq!(r.published, vec![listed[1].clone()]);
        assert_eq!(files(root), vec!["a", "b"]);
        // Publishing a file that is already in place is fine.
        listed[0].publish().unwrap();
    }

    #[test]
    fn recovery_of_a_missing_root_and_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StagedFiles::new(dir.path().join("none"), hidden);
        assert_eq!(s.recover(&[]).unwrap(), Recovered::default());
        assert_eq!(Staged::list_from_json(&serde_json::json!({"x": 1})), None);
        assert_eq!(Staged::list_from_json(&serde_json::json!([[1]])), None);
        assert_eq!(
            Staged::list_from_json(&serde_json::json!([["/a"], ["/b", "/c"]])),
            Some(vec![
                Staged {
                    path: "/a".into(),
                    publish_to: None
                },
                Staged {
                    path: "/b".into(),
                    publish_to: Some("/c".into())
                }
            ])
        );
    }

    #[tokio::test]
    async fn blocking_moves_the_state_and_back() {
        let mut state = Some(vec![1]);
        let n = blocking(&mut state, "test", |v| {
            v.push(2);
            Ok(v.len())
        })
        .await
        .unwrap();
        assert_eq!((n, state.as_deref()), (2, Some(&[1, 2][..])));
        let e = blocking(&mut state, "test", |_| -> Result<()> {
            Err(WeirError::external("no"))
        })
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "no");
        assert!(state.is_some());
    }

    #[test]
    fn sync_dir_reports_the_path() {
        let e = sync_dir(Path::new("/nonexistent/weir")).unwrap_err();
        assert!(
            e.to_string().starts_with("syncing /nonexistent/weir: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
