//! The dead-letter output: malformed records a source skipped, kept for a human to look at.
//!
//! Each source gets one append-only JSON-lines file, `<data_dir>/dead-letter/<source>.jsonl`,
//! one object per bad record: `{"source", "raw", "reason", "position", "time"}`. The
//! directory and file are created on the first bad record, so a clean stream leaves nothing
//! behind. The writer lives in the engine (windowed views write their late rows with it);
//! this is where the connectors find it.

pub use weir_engine::dead_letter::DeadLetterWriter;
