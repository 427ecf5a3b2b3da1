//! The `weir` binary end to end: `run --until-done` on bounded sources, errors with
//! positions and exit codes, environment overrides, `--help`.

use std::path::Path;
use std::process::Command;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write");
}

fn jsonl(dir: &Path) -> String {
    let mut s = String::new();
    // 2024-05-01T00:00:00Z, one event every 10 s for 3 minutes, alternating regions.
    for i in 0..18i64 {
        let region = if i % 2 == 0 { "EU" } else { "US" };
        s.push_str(&format!(
            "{{\"ts\": {}, \"region\": \"{region}\", \"speed\": {}}}\n",
            1_714_521_600_000i64 + i * 10_000,
            i
        ));
    }
    s.push_str("this line is not json\n");
    let p = dir.join("in.jsonl");
    std::fs::write(&p, s).expect("write input");
    p.display().to_string()
}

fn pipeline_sql(input: &str, lake: &Path, bad: &str) -> String {
    format!(
        "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, region TEXT, speed DOUBLE,\n\
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
         WITH (connector = 'file', path = '{input}', 'bad.records' = '{bad}');\n\
         CREATE MATERIALIZED VIEW per_minute AS\n\
         SELECT window_start, region, count(*) AS n, sum(speed) AS total\n\
         FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, region;\n\
         CREATE SINK out FROM per_minute WITH (connector = 'parquet', path = '{}');\n",
        lake.display()
    )
}

#[test]
fn run_until_done_writes_every_window_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = jsonl(dir.path());
    let lake = dir.path().join("lake");
    let queries = dir.path().join("queries");
    std::fs::create_dir(&queries).expect("mkdir");
    write(
        &queries,
        "01.sql",
        &pipeline_sql(&input, &lake, "dead-letter"),
    );
    let data = dir.path().join("state");
    let out = weir()
        .args(["run", "--until-done", "--progress-interval", "0s"])
        .arg(&queries)
        .env("WEIR__ENGINE__DATA_DIR", &data)
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "weir failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("every source ended"), "{stdout}");
    // The malformed line went to the dead-letter file under the configured data dir.
    let dl =
        std::fs::read_to_string(data.join("dead-letter").join("ev.jsonl")).expect("dead letters");
    assert_eq!(dl.lines().count(), 1, "{dl}");
    assert!(dl.contains("this line is not json"), "{dl}");

    // Read the Parquet back and check every row.
    let files: Vec<_> = std::fs::read_dir(&lake)
        .expect("lake")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert!(!files.is_empty());
    let mut rows = Vec::new();
    for f in files {
        let file = std::fs::File::open(&f).expect("open");
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                file,
            )
            .expect("parquet")
            .build()
            .expect("reader");
        for b in reader {
            let b = b.expect("batch");
            let fmt = |c: usize, r: usize| {
                datafusion::arrow::util::display::array_value_to_string(b.column(c), r)
                    .expect("fmt")
            };
            for r in 0..b.num_rows() {
                rows.push(format!(
                    "{} {} {} {}",
                    fmt(0, r),
                    fmt(1, r),
                    fmt(2, r),
                    fmt(3, r)
                ));
            }
        }
    }
    rows.sort();
    // Minute 0: EU i=0,2,4 (sum 6), US 1,3,5 (9); minute 1: EU 6,8,10 (24), US 7,9,11 (27);
    // minute 2: EU 12,14,16 (42), US 13,15,17 (45).
    assert_eq!(
        rows,
        vec![
            "2024-05-01T00:00:00 EU 3 6.0",
            "2024-05-01T00:00:00 US 3 9.0",
            "2024-05-01T00:01:00 EU 3 24.0",
            "2024-05-01T00:01:00 US 3 27.0",
            "2024-05-01T00:02:00 EU 3 42.0",
            "2024-05-01T00:02:00 US 3 45.0",
        ]
    );
}

#[test]
fn bad_sql_names_file_statement_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "bad.sql",
        "CREATE SOURCE a (x TEXT) WITH (connector = 'generator', kind = 'ticks');\n\nCREATE SOURCE b (\n  y NOSUCHTYPE\n) WITH (connector = 'generator');\n",
    );
    let out = weir()
        .args(["run", "--progress-interval", "0s"])
        .arg(dir.path().join("bad.sql"))
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.sql: statement 2 (line 4, column 3)"),
        "{stderr}"
    );
}

#[test]
fn bad_record_with_fail_policy_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = jsonl(dir.path());
    let lake = dir.path().join("lake");
    write(dir.path(), "p.sql", &pipeline_sql(&input, &lake, "fail"));
    let out = weir()
        .args([
            "run",
            "--until-done",
            "--progress-interval",
            "0s",
            "--data-dir",
        ])
        .arg(dir.path().join("state"))
        .arg(dir.path().join("p.sql"))
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("bad record"), "{stderr}");
    assert!(
        stderr.contains("line 19"),
        "the position of the bad line: {stderr}"
    );
}

#[test]
fn unknown_config_key_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "weir.toml", "[engine]\nbatch_rowz = 5\n");
    write(dir.path(), "q.sql", "SHOW VIEWS;");
    let out = weir()
        .args(["check", "--config"])
        .arg(dir.path().join("weir.toml"))
        .arg(dir.path().join("q.sql"))
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("batch_rowz"), "{stderr}");
}

#[test]
fn help_documents_every_flag() {
    let out = weir().args(["run", "--help"]).output().expect("run weir");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--until-done",
        "--config",
        "--data-dir",
        "--progress-interval",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
