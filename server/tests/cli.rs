//! The `weir` binary end to end: `run --until-done` on bounded sources, errors with
//! positions and exit codes, environment overrides, `--help`, and the demo queries on the
//! embedded Kafka broker.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    // The caller's WEIR__* settings (a Kafka cluster, say) must not leak into the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR__") {
            c.env_remove(k);
        }
    }
    // Any free port for the API, so tests running at once do not collide.
    c.env("WEIR__SERVER__LISTEN", "127.0.0.1:0");
    c
}

/// The repository's demo queries.
fn demo_queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

/// A `weir` process whose stdout and stderr are collected as it runs; killed if the test
/// fails before it ends.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let log = Arc::new(Mutex::new(String::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for pipe in [out, err] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut l = log.lock().expect("log");
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Running { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Wait until `done` holds, or fail with the log after `limit`.
    fn wait_until(&mut self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            if done(&self.log()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("weir exited ({status}) before {what}:\n{}", self.log());
            }
            if start.elapsed() > limit {
                panic!("no {what} after {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Ctrl-C, then wait for the exit; returns the status and everything logged.
    fn interrupt(&mut self) -> (ExitStatus, String) {
        let sent = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("weir did not stop within 60 s of SIGINT:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Let the readers take the last lines.
        std::thread::sleep(Duration::from_millis(300));
        (status, self.log())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The row count of the last progress or final line for `object` (`source downloads`):
/// `source downloads (kafka): 11.1k rows, ...` gives "11.1k".
fn last_rows<'a>(log: &'a str, object: &str) -> Option<&'a str> {
    let prefix = format!("{object} (");
    log.lines()
        .filter_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .filter_map(|rest| rest.split_once("): ").map(|(_, r)| r))
        .filter_map(|r| r.split_once(" rows").map(|(n, _)| n))
        .next_back()
}

/// Every file under `dir` whose name satisfies `keep`.
fn files_under(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p, keep));
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(keep) {
            out.push(p);
        }
    }
    out
}

const EMBEDDED_LINE: &str = "no [kafka] bootstrap.servers configured: started an embedded \
    Kafka-protocol broker at ";

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
        stderr.contains("bad.sql: statement 2 (line 4, column 5)"),
        "{stderr}"
    );
}

/// A SQL file whose statement nests past the depth limit stops `weir check` and
/// `weir run --until-done` with the limit, the file, statement, line and column, and exit
/// code 1 (not a crash); one level less plans, and runs to its end.
#[test]
fn too_deep_sql_fails_with_the_limit_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = jsonl(dir.path());
    // `SELECT region, speed + 1 + ... AS s FROM ev` with n `+ 1` is n + 4 levels deep.
    let sql = |n: usize| {
        format!(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, region TEXT, speed DOUBLE,\n\
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
             WITH (connector = 'file', path = '{input}', 'bad.records' = 'dead-letter');\n\
             CREATE MATERIALIZED VIEW fast AS SELECT region, speed{} AS s FROM ev;\n",
            " + 1".repeat(n)
        )
    };
    write(dir.path(), "deep.sql", &sql(497));
    write(dir.path(), "edge.sql", &sql(496));
    let ors: Vec<String> = (0..20_000).map(|i| format!("speed = {i}")).collect();
    write(
        dir.path(),
        "ors.sql",
        &format!(
            "{}CREATE MATERIALIZED VIEW many AS SELECT * FROM ev WHERE {};\n",
            sql(0),
            ors.join(" OR ")
        ),
    );
    let data = dir.path().join("state");
    let weir_on = |args: &[&str], file: &str| {
        let started = Instant::now();
        let out = weir()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .arg(dir.path().join(file))
            .output()
            .expect("run weir");
        (out, started.elapsed())
    };
    for args in [
        &["check"][..],
        &["run", "--until-done", "--progress-interval", "0s"][..],
    ] {
        let (out, _) = weir_on(args, "deep.sql");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "deep.sql: statement 2: the statement nests too deeply: more than 500 levels \
                 at line 4, column"
            ),
            "{args:?}: {stderr}"
        );
        let (out, took) = weir_on(args, "ors.sql");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("ors.sql: statement 3: the statement nests too deeply"),
            "{args:?}: {stderr}"
        );
        assert!(took < Duration::from_secs(30), "{args:?}: {took:?}");
        let (out, _) = weir_on(args, "edge.sql");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
    }
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

/// `[log] format = 'json'`: every line `weir run --until-done` logs is a JSON object with a
/// level and a message; the text log, written to a pipe, has no colour codes.
#[test]
fn logs_are_json_lines_or_plain_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = jsonl(dir.path());
    let sql = pipeline_sql(&input, &dir.path().join("lake"), "skip");
    write(dir.path(), "q.sql", &sql);
    let run = |format: &str| {
        let out = weir()
            .args(["run", "--until-done", "--data-dir"])
            .arg(dir.path().join(format!("data-{format}")))
            .arg(dir.path().join("q.sql"))
            .env("WEIR__LOG__FORMAT", format)
            .output()
            .expect("run weir");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let json = run("json");
    let lines: Vec<&str> = json.lines().collect();
    assert!(lines.len() >= 3, "{json}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("created materialized view per_minute")),
        "{json}"
    );
    let text = run("text");
    assert!(
        text.contains("created materialized view per_minute"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a piped log:\n{text}"
    );
    let bad = weir()
        .args(["check"])
        .arg(dir.path().join("q.sql"))
        .env("WEIR__LOG__FORMAT", "xml")
        .output()
        .expect("run weir");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("xml"), "{stderr}");
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

/// `weir run queries/` with nothing configured: the embedded broker starts, the generator
/// feeds fill `downloads` and `ticks`, the Kafka sources read them, and the 10-second
/// ticks windows close into Parquet.
#[cfg(unix)]
#[test]
fn demo_runs_on_the_embedded_kafka_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut weir_run = Running::spawn(
        weir()
            .args(["run", "--progress-interval", "500ms"])
            .arg(demo_queries())
            .current_dir(dir.path()),
    );
    let lake = dir.path().join("data").join("lake").join("symbol_stats");
    // A file (in progress) under the symbol_stats sink: a ticks window closed.
    let stats_written = || !files_under(&lake, &|_| true).is_empty();
    weir_run.wait_until("closed ticks window", Duration::from_secs(120), |log| {
        stats_written()
            && last_rows(log, "source downloads").is_some_and(|n| n != "0")
            && last_rows(log, "source ticks").is_some_and(|n| n != "0")
    });
    let (status, log) = weir_run.interrupt();
    assert!(status.success(), "weir failed:\n{log}");
    assert!(log.contains(EMBEDDED_LINE), "{log}");
    assert!(
        log.contains(
            "(rdkafka mock cluster) fed by generators: downloads (2000 rows/s), ticks \
             (500 rows/s); set [kafka] bootstrap.servers to use your cluster"
        ),
        "{log}"
    );
    // The sources are Kafka sources and received rows.
    for source in ["source downloads (kafka): ", "source ticks (kafka): "] {
        let line = log
            .lines()
            .rfind(|l| l.contains(&format!("final: {source}")))
            .unwrap_or_else(|| panic!("no final line for {source}:\n{log}"));
        assert!(!line.contains(&format!("{source}0 rows")), "{line}");
        assert!(line.contains("bad 0"), "{line}");
    }
    assert!(!log.contains("ERROR"), "{log}");

    // The closed windows were written as finished Parquet files at the stop.
    let files = files_under(&lake, &|n| {
        n.starts_with("part-") && n.ends_with(".parquet")
    });
    assert!(!files.is_empty(), "no Parquet under {}", lake.display());
    let mut rows = 0;
    for f in files {
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&f).expect("open"),
            )
            .expect("parquet")
            .build()
            .expect("reader");
        for b in reader {
            let b = b.expect("batch");
            let trades = b.column_by_name("trades").expect("trades column");
            for r in 0..b.num_rows() {
                let n = datafusion::arrow::util::display::array_value_to_string(trades, r)
                    .expect("fmt");
                assert_ne!(n, "0");
            }
            rows += b.num_rows();
        }
    }
    assert!(rows > 0);
}

/// A configured `[kafka] "bootstrap.servers"` parses and turns the embedded broker off.
#[cfg(unix)]
#[test]
fn configured_kafka_cluster_turns_the_embedded_broker_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "weir.toml",
        "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9\"\n\n[kafka.properties]\n\
         \"reconnect.backoff.ms\" = 1000\n",
    );
    let mut weir_run = Running::spawn(
        weir()
            .args(["run", "--progress-interval", "0s", "--config", "weir.toml"])
            .arg(demo_queries())
            .current_dir(dir.path()),
    );
    weir_run.wait_until("start", Duration::from_secs(60), |log| {
        log.contains("running; Ctrl-C stops")
    });
    let (status, log) = weir_run.interrupt();
    assert!(status.success(), "weir failed:\n{log}");
    assert!(
        log.contains(
            "Kafka cluster from [kafka] bootstrap.servers: 127.0.0.1:9 (the embedded broker \
             is off)"
        ),
        "{log}"
    );
    assert!(!log.contains("embedded Kafka-protocol broker"), "{log}");
}

/// `--until-done` never starts the embedded broker (its feeds never end), and says so.
#[test]
fn until_done_does_not_start_the_embedded_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = weir()
        .args(["run", "--until-done", "--progress-interval", "0s"])
        .arg(demo_queries())
        .current_dir(dir.path())
        .output()
        .expect("run weir");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        !stdout.contains("embedded Kafka-protocol broker"),
        "{stdout}"
    );
    assert!(stderr.contains("no Kafka cluster"), "{stderr}");
    assert!(
        stderr.contains("with --until-done the embedded Kafka broker is not started"),
        "{stderr}"
    );
}

/// `check` plans the Kafka demo without any broker.
#[test]
fn check_plans_the_kafka_demo_without_a_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = weir()
        .arg("check")
        .arg(demo_queries())
        .current_dir(dir.path())
        .output()
        .expect("run weir");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok: 15 objects"), "{stdout}");
    // The demo's updating view is planned as one.
    assert!(
        stdout.contains("updating aggregate by (device_type)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("embedded Kafka-protocol broker"),
        "{stdout}"
    );
}
