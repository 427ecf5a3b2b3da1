//! Dead-letter files: records a source or a view could not use, kept for a human to look at.
//!
//! Each source or view gets one append-only JSON-lines file,
//! `<data_dir>/dead-letter/<name>.jsonl`, one object per record. The directory and file are
//! created on the first record, so a clean stream leaves nothing behind.
//!
//! - A source's malformed records ([`DeadLetterWriter::write`], through `'bad.records' =
//!   'dead-letter'`): `{"source", "raw", "reason", "position", "time"}`.
//! - A windowed view's late rows (`'late.policy' = 'dead-letter'`, see `docs/windows.md`):
//!   `{"view", "row", "window_start", "window_end", "watermark", "reason", "time"}`. The
//!   dataflow hands them over as an effect ([`LateRows`]); whoever drives it (the runtime,
//!   the test runner) writes them with [`LateRowFiles`].
//!
//! With `[dead_letter] upload = "s3://bucket/prefix"` the records are also shipped to an
//! object store ([`DeadLetterShipper`]): every interval, each file's complete lines written
//! since the last shipment go up as one object,
//! `<prefix>/<name>/<writer>-<from>-<to>.jsonl` (`from`/`to`: byte offsets in the local
//! file, `writer`: an id made once per data directory). The names are deterministic, so a
//! crash between an upload and recording it uploads the same bytes to the same key again,
//! and two machines never overwrite each other's. What was shipped is recorded in
//! `<data_dir>/dead-letter/.shipped.json`; the local files are kept.
//!
//! `time` is the wall-clock time the record was written (RFC 3339, UTC, milliseconds). A
//! row in a record (`row`) is written by [`crate::json::row_objects`], the encoding
//! `docs/json.md` describes.

use crate::dataflow::LateRows;
use crate::error::{Result, WeirError};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Appends records to `<data_dir>/dead-letter/<name>.jsonl`.
#[derive(Debug)]
pub struct DeadLetterWriter {
    name: String,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
}

/// Epoch milliseconds as RFC 3339 in UTC with milliseconds (`2024-05-01T10:00:00.000Z`),
/// as [`crate::json`] writes timestamps; the number itself out of chrono's range.
pub fn rfc3339_ms(ms: i64) -> String {
    crate::json::rfc3339_ms(ms).unwrap_or_else(|| ms.to_string())
}

/// The wall-clock time now, as [`rfc3339_ms`] writes it.
pub fn now_rfc3339() -> String {
    rfc3339_ms(crate::clock::wall_ms())
}

impl DeadLetterWriter {
    /// A writer for the source or view `name`. Does no I/O until the first record.
    pub fn new(data_dir: &Path, name: &str) -> Self {
        DeadLetterWriter {
            name: name.to_string(),
            path: data_dir
                .join("dead-letter")
                .join(format!("{}.jsonl", sanitize(name))),
            out: None,
            written: 0,
        }
    }

    /// The file this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many records this writer has written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append one bad record of a source (buffered; call [`Self::flush`] after each chunk).
    pub fn write(&mut self, raw: &[u8], reason: &str, position: &str) -> Result<()> {
        let line = serde_json::json!({
            "source": self.name,
            "raw": String::from_utf8_lossy(raw),
            "reason": reason,
            "position": position,
            "time": now_rfc3339(),
        });
        self.append(&line)
    }

    /// Append one JSON object as a line (buffered; call [`Self::flush`] after each chunk).
    pub fn append(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut bytes = serde_json::to_vec(record)
            .map_err(|e| WeirError::Internal(format!("encoding a dead letter: {e}")))?;
        bytes.push(b'\n');
        self.open()?;
        if let Some(out) = &mut self.out {
            out.write_all(&bytes).map_err(|e| io_error(&self.path, e))?;
        }
        self.written += 1;
        Ok(())
    }

    /// Make what was written so far reach the file.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.out {
            out.flush().map_err(|e| io_error(&self.path, e))?;
        }
        Ok(())
    }

    fn open(&mut self) -> Result<()> {
        match self.out {
            Some(_) => Ok(()),
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| io_error(&self.path, e))?;
                self.out = Some(BufWriter::new(file));
                Ok(())
            }
        }
    }
}

impl Drop for DeadLetterWriter {
    fn drop(&mut self) {
        if let Some(out) = &mut self.out
            && let Err(e) = out.flush()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "flushing dead letters failed");
        }
    }
}

/// The dead-letter files of views' late rows, one writer per view.
#[derive(Debug)]
pub struct LateRowFiles {
    data_dir: PathBuf,
    writers: HashMap<String, DeadLetterWriter>,
}

impl LateRowFiles {
    pub fn new(data_dir: &Path) -> Self {
        LateRowFiles {
            data_dir: data_dir.to_path_buf(),
            writers: HashMap::new(),
        }
    }

    /// Append one line per late row to `<data_dir>/dead-letter/<view>.jsonl`, and flush.
    pub fn write(&mut self, late: &LateRows) -> Result<()> {
        let rows = crate::json::row_objects(&late.rows);
        let watermark = late.watermark.map(rfc3339_ms);
        let writer = self
            .writers
            .entry(late.view.clone())
            .or_insert_with(|| DeadLetterWriter::new(&self.data_dir, &late.view));
        for l in &late.late {
            let row = rows.get(l.row).cloned().unwrap_or(serde_json::Value::Null);
            let (start, end) = match l.window {
                Some((s, e)) => (Some(rfc3339_ms(s)), Some(rfc3339_ms(e))),
                None => (None, None),
            };
            writer.append(&serde_json::json!({
                "view": late.view,
                "row": row,
                "window_start": start,
                "window_end": end,
                "watermark": watermark,
                "reason": l.reason,
                "time": now_rfc3339(),
            }))?;
        }
        writer.flush()?;
        tracing::debug!(view = %late.view, late = late.late.len(), "late rows written to the dead-letter file");
        Ok(())
    }
}

fn io_error(path: &Path, e: std::io::Error) -> WeirError {
    WeirError::external_source(format!("dead-letter file {}", path.display()), e)
}

/// Keep a source or view name usable as a file name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The bytes of `path` from offset `from` to its end (none if it is shorter), without
/// reading what came before: the files only grow, and each shipment reads only what is new.
async fn read_from(path: &Path, from: u64) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error(path, e))?;
    f.seek(std::io::SeekFrom::Start(from))
        .await
        .map_err(|e| io_error(path, e))?;
    let mut new = Vec::new();
    f.read_to_end(&mut new)
        .await
        .map_err(|e| io_error(path, e))?;
    Ok(new)
}

/// What has been shipped of each dead-letter file (see the module docs).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Shipped {
    /// This data directory's id in object names.
    writer: String,
    /// File name -> bytes shipped.
    files: std::collections::BTreeMap<String, u64>,
}

/// Ships `<data_dir>/dead-letter/*.jsonl` to an object store.
#[derive(Debug)]
pub struct DeadLetterShipper {
    dir: PathBuf,
    remote: crate::remote::Remote,
    shipped: Shipped,
}

impl DeadLetterShipper {
    pub fn new(data_dir: &Path, remote: crate::remote::Remote) -> Result<Self> {
        let dir = data_dir.join("dead-letter");
        let state = dir.join(".shipped.json");
        let shipped = match std::fs::read(&state) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                WeirError::external(format!("{} is unreadable: {e}", state.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Shipped {
                writer: crate::fsutil::unique_id(),
                files: Default::default(),
            },
            Err(e) => return Err(io_error(&state, e)),
        };
        Ok(DeadLetterShipper {
            dir,
            remote,
            shipped,
        })
    }

    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// Upload every file's complete lines written since the last shipment; returns how
    /// many objects went up.
    pub async fn ship(&mut self) -> Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error(&self.dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".jsonl") && !n.starts_with('.'))
            .collect();
        names.sort();
        let mut uploaded = 0;
        for name in names {
            let path = self.dir.join(&name);
            let from = self.shipped.files.get(&name).copied().unwrap_or(0);
            let new = read_from(&path, from).await?;
            // Complete lines only: a line being written goes with the next shipment.
            let Some(last) = new.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let to = from + last as u64 + 1;
            let stem = name.trim_end_matches(".jsonl");
            let key = format!("{stem}/{}-{from:012}-{to:012}.jsonl", self.shipped.writer);
            self.remote.put_at(&key, new[..=last].to_vec()).await?;
            self.shipped.files.insert(name, to);
            self.save()?;
            uploaded += 1;
        }
        Ok(uploaded)
    }

    fn save(&self) -> Result<()> {
        let state = self.dir.join(".shipped.json");
        let tmp = self.dir.join(".shipped.json.tmp");
        let text = serde_json::to_vec(&self.shipped)
            .map_err(|e| WeirError::Internal(format!("dead-letter shipments: {e}")))?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &state))
            .map_err(|e| io_error(&state, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn appends_lines_and_creates_the_file_lazily() {
        let dir = std::env::temp_dir().join(format!(
            "weir-dead-letter-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        let mut w = DeadLetterWriter::new(&dir, "a/b");
        assert!(!w.path().exists());
        w.write(b"not json", "bad", "line 1").unwrap();
        w.append(&serde_json::json!({"view": "v", "row": {"x": 1}}))
            .unwrap();
        w.flush().unwrap();
        assert_eq!(w.written(), 2);
        let text = std::fs::read_to_string(dir.join("dead-letter/a_b.jsonl")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["source"], "a/b");
        assert_eq!(lines[0]["raw"], "not json");
        assert_eq!(lines[0]["position"], "line 1");
        assert_eq!(lines[1]["row"]["x"], 1);
    }

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339_ms(1_714_557_600_000), "2024-05-01T10:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
