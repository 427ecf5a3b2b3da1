//! Runs every `tests/slt/*.slt` file as written, with one-row micro-batches, with a
//! checkpoint and a restart after every statement, and with four workers (batches through
//! stage 1's partial aggregates); the output must be the same.
//! `WEIR_SLT_COMPLETE=1` rewrites expected output instead (then review the diff).

use std::path::PathBuf;
use weir_tests::slt::{Mode, complete_file, run_file};

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    files
}

/// The suite runs on a thread with the stack `weir` gives its own threads, so a statement as
/// deep as the planner accepts plans here as it does there.
#[test]
fn slt_files_in_every_mode() {
    std::thread::Builder::new()
        .name("slt".into())
        .stack_size(weir_engine::sql::depth::STACK_SIZE)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_stack_size(weir_engine::sql::depth::STACK_SIZE)
                .build()
                .expect("runtime")
                .block_on(run_every_file())
        })
        .expect("thread")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

async fn run_every_file() {
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files found");
    let filter = std::env::var("WEIR_SLT").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if filter.as_ref().is_some_and(|x| !name.contains(x.as_str())) {
            continue;
        }
        if std::env::var("WEIR_SLT_COMPLETE").is_ok() {
            complete_file(f)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for mode in [
            Mode::AsWritten,
            Mode::OneRowBatches,
            Mode::CheckpointRestart,
            Mode::FourWorkers,
        ] {
            ran += 1;
            // A panic in one file is reported as that file's failure, not the suite's end.
            let path = f.clone();
            let result = tokio::spawn(async move { run_file(&path, mode).await })
                .await
                .unwrap_or_else(|e| Err(format!("panicked: {e}")));
            if let Err(e) = result {
                failures.push(format!("{name} [{mode:?}]:\n{e}"));
            }
        }
    }
    assert!(ran > 0, "the WEIR_SLT filter matched no file");
    assert!(
        failures.is_empty(),
        "{} of {ran} runs failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!("slt: {ran} file runs passed");
}
