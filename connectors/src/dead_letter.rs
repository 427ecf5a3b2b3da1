//! The dead-letter output: malformed records a source skipped, kept for a human to look at.
//!
//! Each source gets one append-only JSON-lines file, `<data_dir>/dead-letter/<source>.jsonl`,
//! one object per bad record:
//! `{"source", "raw", "reason", "position", "time"}`. The directory and file are created on
//! the first bad record, so a clean stream leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use weir_engine::{Result, WeirError};

/// Appends bad records to `<data_dir>/dead-letter/<source>.jsonl`.
#[derive(Debug)]
pub struct DeadLetterWriter {
    source: String,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
}

impl DeadLetterWriter {
    /// A writer for `source`. Does no I/O until the first record.
    pub fn new(data_dir: &Path, source: &str) -> Self {
        DeadLetterWriter {
            source: source.to_string(),
            path: data_dir
                .join("dead-letter")
                .join(format!("{}.jsonl", sanitize(source))),
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

    /// Append one bad record (buffered; call [`Self::flush`] after each chunk).
    pub fn write(&mut self, raw: &[u8], reason: &str, position: &str) -> Result<()> {
        let line = serde_json::json!({
            "source": self.source,
            "raw": String::from_utf8_lossy(raw),
            "reason": reason,
            "position": position,
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let mut bytes = serde_json::to_vec(&line)
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

fn io_error(path: &Path, e: std::io::Error) -> WeirError {
    WeirError::External(format!("dead-letter file {}: {e}", path.display()))
}

/// Keep a source name usable as a file name.
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
