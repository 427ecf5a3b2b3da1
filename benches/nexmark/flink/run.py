"""Run one Nexmark query on Apache Flink SQL (PyFlink, local mini-cluster) and print one JSON line.

Called through `scripts/flink.sh run ARGS...`, which runs it in the venv that
`scripts/flink.sh install` made and passes --jars-dir. See docs/nexmark.md ("Apache Flink SQL").

    run.py --query q5 --parallelism 2 --source kafka --bootstrap 127.0.0.1:19092
    run.py --query q5 --parallelism 1 --source files --dir /tmp/nexmark-100k \\
           --print-results /tmp/q5.jsonl

A throughput run (the default) inserts the query's rows into a `blackhole` sink, as the
published Nexmark suites do, and times the job: `seconds` runs from the first of its tasks
switching to RUNNING to the job switching to FINISHED (read from Flink's log of the run),
so it leaves out the JVM's start, planning, submission and task deployment;
`net_runtime_seconds` is Flink's JobExecutionResult.getNetRuntime (from submission).
`events` is the number of Nexmark events the query's inputs hold (the messages in its
input topics, or the lines of its input files): all the bids for q0/q1/q2/q5/q7,
persons + auctions for q3/q8, auctions + bids for q4.

--print-results FILE runs the query's SELECT into a collect sink instead (Table.to_pandas,
which folds an updating result's retractions into its final rows) and writes the final
rows to FILE as JSON lines in sorted order (TIMESTAMP as epoch milliseconds, DECIMAL as an exact number), for
cross-checking with Weir on a small input. Its timing is then not a throughput figure.

Progress and errors go to stderr; stdout carries only the JSON result line.
"""

from __future__ import annotations

import argparse
import decimal
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
QUERIES = ("q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8")
# The Nexmark tables each query reads (for counting its input events).
INPUTS = {
    "q0": ("bid",),
    "q1": ("bid",),
    "q2": ("bid",),
    "q3": ("person", "auction"),
    "q4": ("auction", "bid"),
    "q5": ("bid",),
    "q7": ("bid",),
    "q8": ("person", "auction"),
}
GATEWAY_CLASS = "org.apache.flink.client.python.PythonGatewayServer"


class RunError(Exception):
    """A failure with a message for the user (printed without a traceback)."""


def log(msg: str) -> None:
    print(f"run.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# arguments


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="flink.sh run",
        description="Run one Nexmark query on Flink SQL (local mini-cluster) and print one "
        "JSON line of results. See docs/nexmark.md, 'Apache Flink SQL'.",
    )
    p.add_argument("--query", choices=QUERIES, help="the Nexmark query")
    p.add_argument("--parallelism", type=int, choices=(1, 2), default=1)
    p.add_argument("--source", choices=("kafka", "files"), default="kafka")
    p.add_argument(
        "--bootstrap",
        default="127.0.0.1:19092",
        help="Kafka bootstrap servers (default: scripts/kafka.sh's 127.0.0.1:19092)",
    )
    p.add_argument(
        "--topic-prefix",
        default="nexmark-",
        help="topics are PREFIX{person,auction,bid} (default nexmark-)",
    )
    p.add_argument("--dir", help="with --source files: the directory of person.jsonl, "
                   "auction.jsonl and bid.jsonl")
    p.add_argument(
        "--events",
        type=int,
        help="the run's total generated events (reported as generated_events; the rate is "
        "computed from the events the query's inputs hold, counted before the run)",
    )
    p.add_argument(
        "--print-results",
        metavar="FILE",
        help="collect the query's final rows into FILE (JSON lines, sorted) instead of "
        "the blackhole sink",
    )
    p.add_argument(
        "--mini-batch",
        choices=("on", "off"),
        default="on",
        help="table.exec.mini-batch.* as the Flink Nexmark suite sets them (2 s, 50000 "
        "rows); default on",
    )
    p.add_argument(
        "--state-backend",
        choices=("hashmap", "rocksdb"),
        default="hashmap",
        help="state.backend.type (default hashmap: state on the JVM heap)",
    )
    p.add_argument(
        "--object-reuse",
        choices=("on", "off"),
        default="off",
        help="pipeline.object-reuse (default off, Flink's and the suite's default)",
    )
    p.add_argument(
        "--heap",
        help="JVM -Xmx for the mini-cluster's JVM, e.g. 8g (default: the JVM's own, a "
        "quarter of the machine's memory)",
    )
    p.add_argument(
        "--cpus",
        default="auto",
        help="CPUs the JVM may run on: auto (CPU 0 for parallelism 1, all for 2), all, "
        "or a list such as 0 or 0,1",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="cancel the job and fail after this many seconds (default 3600)",
    )
    p.add_argument("--jars-dir", help="directory of extra jars (the Kafka SQL connector)")
    p.add_argument(
        "--log-dir",
        help="directory of Flink's log of the run, flink-<query>-p<N>-<pid>.log, kept only "
        "when the run fails (default $WEIR_FLINK_HOME/log, $WEIR_FLINK_HOME defaulting to "
        "~/.cache/weir-flink)",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="run a tiny job and check its result, and plan a Kafka source (no broker "
        "needed); used by flink.sh install",
    )
    a = p.parse_args(argv)
    if not a.smoke_test:
        if a.query is None:
            p.error("--query is required")
        if a.source == "files":
            if not a.dir:
                p.error("--source files needs --dir DIR")
            if not Path(a.dir).is_dir():
                p.error(f"--dir {a.dir}: not a directory")
    return a


def parse_cpus(spec: str, parallelism: int) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    if spec == "all":
        return allowed
    if spec == "auto":
        return allowed[:1] if parallelism == 1 else allowed
    try:
        cpus = sorted({int(c) for c in spec.split(",") if c.strip()})
    except ValueError:
        raise RunError(f"--cpus {spec!r}: expected auto, all or a list of CPU numbers like 0,1")
    bad = [c for c in cpus if c not in allowed]
    if not cpus or bad:
        raise RunError(f"--cpus {spec!r}: this process may only use CPUs {allowed}")
    return cpus


# ---------------------------------------------------------------------------------------
# SQL files


def sql_statements(path: Path, subst: dict[str, str]) -> list[str]:
    """The statements of a SQL file: `--` comment lines dropped, ${NAME} substituted, split
    at `;` ending a line (the files here have no `;` inside literals)."""
    text = path.read_text()
    for k, v in subst.items():
        text = text.replace("${" + k + "}", v)
    left = re.findall(r"\$\{[A-Za-z_:]+\}", text)
    if left:
        raise RunError(f"{path}: no value for {', '.join(sorted(set(left)))}")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    stmts = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines))
    return [s.strip() for s in stmts if s.strip()]


def source_options(a: argparse.Namespace, kind: str, group_id: str) -> str:
    """The WITH options of the source table of one Nexmark kind (tables.sql's ${SOURCE:kind})."""
    if a.source == "kafka":
        opts = {
            "connector": "kafka",
            "topic": a.topic_prefix + kind,
            "properties.bootstrap.servers": a.bootstrap,
            "properties.group.id": group_id,
            "scan.startup.mode": "earliest-offset",
            "scan.bounded.mode": "latest-offset",
            "format": "json",
        }
    else:
        path = Path(a.dir).resolve() / f"{kind}.jsonl"
        opts = {"connector": "filesystem", "path": str(path), "format": "json"}
    return ", ".join("'{}' = '{}'".format(k, v.replace("'", "''")) for k, v in opts.items())


def table_statements(a: argparse.Namespace) -> list[str]:
    """tables.sql's statements for this run's source: the three source tables and views."""
    group_id = f"weir-flink-{uuid.uuid4().hex[:12]}"
    return sql_statements(
        HERE / "tables.sql",
        {f"SOURCE:{k}": source_options(a, k, group_id) for k in ("person", "auction", "bid")},
    )


def query_parts(query: str) -> tuple[str, str, str]:
    """(sink DDL, INSERT statement, its SELECT) of benches/nexmark/flink/<query>.sql."""
    path = HERE / f"{query}.sql"
    stmts = sql_statements(path, {})
    ddl = [s for s in stmts if re.match(r"CREATE\s+TABLE", s, re.I)]
    ins = [s for s in stmts if re.match(r"INSERT\s+INTO", s, re.I)]
    if len(ddl) != 1 or len(ins) != 1 or len(stmts) != 2:
        raise RunError(f"{path}: expected one CREATE TABLE (the blackhole sink) and one INSERT")
    m = re.match(r"INSERT\s+INTO\s+\w+\s+(SELECT\b.*)$", ins[0], re.I | re.S)
    if not m:
        raise RunError(f"{path}: the INSERT is not of the form INSERT INTO <sink> SELECT ...")
    return ddl[0], ins[0], m.group(1)


# ---------------------------------------------------------------------------------------
# counting the input events (outside the timed part)


def count_file_lines(path: Path) -> int:
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                break
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (0 if last == b"\n" else 1)


def topic_offsets(bootstrap: str, topics: list[str], time_spec: str) -> dict[str, int]:
    """Sum over partitions of each topic's offsets at time_spec (-1 latest, -2 earliest),
    through Kafka's GetOffsetShell (scripts/kafka.sh class ...)."""
    cmd = [
        "bash",
        str(ROOT / "scripts" / "kafka.sh"),
        "class",
        "org.apache.kafka.tools.GetOffsetShell",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        "^(" + "|".join(re.escape(t) for t in topics) + ")$",
        "--time",
        time_spec,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RunError(
            f"could not read the offsets of {', '.join(topics)} at {bootstrap}: "
            f"{r.stderr.strip() or r.stdout.strip()}"
        )
    sums: dict[str, int] = {}
    for line in r.stdout.splitlines():
        parts = line.strip().rsplit(":", 2)
        if len(parts) == 3 and parts[2].lstrip("-").isdigit():
            sums[parts[0]] = sums.get(parts[0], 0) + int(parts[2])
    return sums


def count_events(a: argparse.Namespace) -> tuple[int, dict[str, int]]:
    kinds = INPUTS[a.query]
    per: dict[str, int] = {}
    if a.source == "files":
        for k in kinds:
            f = Path(a.dir) / f"{k}.jsonl"
            if not f.is_file():
                raise RunError(f"{f} does not exist (--dir must hold person.jsonl, auction.jsonl, bid.jsonl)")
            per[k] = count_file_lines(f)
    else:
        topics = [a.topic_prefix + k for k in kinds]
        end = topic_offsets(a.bootstrap, topics, "-1")
        start = topic_offsets(a.bootstrap, topics, "-2")
        for k, t in zip(kinds, topics):
            if t not in end:
                raise RunError(f"topic {t} does not exist at {a.bootstrap}; load the Nexmark events first")
            per[k] = end[t] - start.get(t, 0)
    for k, n in per.items():
        if n == 0:
            where = f"{a.dir}/{k}.jsonl" if a.source == "files" else f"topic {a.topic_prefix}{k}"
            raise RunError(f"{where} is empty")
    return sum(per.values()), per


# ---------------------------------------------------------------------------------------
# Flink


def flink_env(a: argparse.Namespace, parallelism: int):
    """A streaming TableEnvironment on a local mini-cluster with this run's settings."""
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    conf = Configuration()
    settings = {
        "execution.runtime-mode": "streaming",
        "parallelism.default": str(parallelism),
        "table.local-time-zone": "UTC",
        "state.backend.type": getattr(a, "state_backend", "hashmap"),
        "pipeline.object-reuse": "true" if getattr(a, "object_reuse", "off") == "on" else "false",
        # as the Flink Nexmark suite's config.yaml
        "pipeline.auto-watermark-interval": "200 ms",
        "table.optimizer.distinct-agg.split.enabled": "true",
    }
    if getattr(a, "mini_batch", "on") == "on":
        settings.update(
            {
                "table.exec.mini-batch.enabled": "true",
                "table.exec.mini-batch.allow-latency": "2 s",
                "table.exec.mini-batch.size": "50000",
            }
        )
    if os.environ.get("WEIR_FLINK_RUN_TMP"):
        settings["io.tmp.dirs"] = os.environ["WEIR_FLINK_RUN_TMP"]
    jars = sorted(Path(a.jars_dir).glob("*.jar")) if a.jars_dir else []
    if a.jars_dir and not jars:
        raise RunError(f"--jars-dir {a.jars_dir} holds no jar; run 'scripts/flink.sh install'")
    if jars:
        settings["pipeline.jars"] = ";".join(j.resolve().as_uri() for j in jars)
    for k, v in settings.items():
        conf.set_string(k, v)
    env_settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    return TableEnvironment.create(env_settings), settings


LOG4J = """\
# Written by benches/nexmark/flink/run.py: Flink's log for one run (overwritten by the next).
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
appender.file.name = file
appender.file.type = File
appender.file.append = false
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{UNIX_MILLIS}} %-5p %c - %m%n
logger.kafka.name = org.apache.flink.kafka.shaded.org.apache.kafka
logger.kafka.level = WARN
logger.typeextractor.name = org.apache.flink.api.java.typeutils.TypeExtractor
logger.typeextractor.level = WARN
"""


def prepare_process(a: argparse.Namespace, cpus: list[int] | None) -> Path:
    """Environment for the JVM that PyFlink starts (it inherits our CPU affinity); returns
    the path of Flink's log for this run."""
    home = Path(os.environ.get("WEIR_FLINK_HOME", Path.home() / ".cache" / "weir-flink"))
    log_dir = Path(a.log_dir) if a.log_dir else home / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    # One log (and log4j config) per run: runs may overlap, and each parses its own log.
    name = f"flink-{getattr(a, 'query', None) or 'smoke'}-p{getattr(a, 'parallelism', 1)}-{os.getpid()}"
    log_file = log_dir / f"{name}.log"
    props = log_dir / f"{name}.log4j2.properties"
    props.write_text(LOG4J.format(path=log_file))
    os.environ["FLINK_LOG_DIR"] = str(log_dir)
    os.environ["LOG4J_PROPERTIES"] = str(props)
    os.environ["WEIR_FLINK_RUN_LOG"] = str(log_file)
    # Flink unpacks its planner (~45 MB) and keeps spill and RPC files under the JVM's temp
    # directory; a killed run would leave them in /tmp. Each run gets its own directory,
    # removed at the end; those of runs whose process is gone are removed here.
    tmp_root = home / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    for d in tmp_root.glob("run-*"):
        pid = d.name[len("run-"):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
    tmp = tmp_root / f"run-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    os.environ["WEIR_FLINK_RUN_TMP"] = str(tmp)
    jvm = os.environ.get("JVM_ARGS", "").split()
    jvm.append(f"-Djava.io.tmpdir={tmp}")
    if getattr(a, "heap", None):
        jvm.append(f"-Xmx{a.heap}")
    os.environ["JVM_ARGS"] = " ".join(jvm)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    return log_file


def running_seconds(log_file: Path, job_id: str) -> float:
    """From the first task of the job switching to RUNNING to the job switching to FINISHED,
    by the log lines of the TaskManager and the JobManager (millisecond timestamps of the
    same JVM; the log holds this run's one job)."""
    first_running = None
    finished = None
    for line in log_file.read_text(errors="replace").splitlines():
        ts, _, rest = line.partition(" ")
        if not ts.isdigit():
            continue
        if "switched from INITIALIZING to RUNNING" in rest:
            first_running = int(ts) if first_running is None else min(first_running, int(ts))
        elif f"({job_id}) switched from state RUNNING to FINISHED" in rest:
            finished = int(ts)
    if first_running is None or finished is None:
        raise RunError(
            f"{log_file} does not show when job {job_id} started running and finished "
            f"(first task RUNNING: {first_running}, job FINISHED: {finished})"
        )
    return (finished - first_running) / 1000.0


def gateway_pid() -> int | None:
    """The pid of the JVM PyFlink started (a child of this process)."""
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me and GATEWAY_CLASS.encode() in (d / "cmdline").read_bytes():
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def peak_rss_mib(pid: int | None) -> float | None:
    """VmHWM (the peak resident set size) of a process, in MiB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def json_value(v) -> str:
    """A result value as JSON text: DECIMAL exactly as a number, numpy scalars as numbers."""
    if isinstance(v, decimal.Decimal):
        return str(v)
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    return json.dumps(v)


def collect_rows(table) -> list[str]:
    """Run a query into a collect sink and return its final rows as sorted JSON lines.

    Table.to_pandas() collects the result in Arrow batches and folds an updating result's
    changelog (retractions remove rows) into its final state on the Java side."""
    import pandas as pd

    names = table.get_schema().get_field_names()
    pdf = table.to_pandas()
    if len(pdf.columns) != len(names):
        raise RunError(f"the result has columns {list(pdf.columns)}, expected {names}")
    columns = []
    for name in names:
        col = pdf[name]
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            if getattr(col.dt, "tz", None) is not None:
                col = col.dt.tz_convert("UTC").dt.tz_localize(None)
            millis = col.astype("datetime64[ms]").astype("int64")
            columns.append([None if pd.isna(t) else int(m) for t, m in zip(col, millis)])
        else:
            columns.append([None if _is_null(v) else v for v in col.tolist()])
    return sorted(
        "{" + ", ".join(f"{json.dumps(n)}: {json_value(c[i])}" for n, c in zip(names, columns)) + "}"
        for i in range(len(pdf))
    )


def _is_null(v) -> bool:
    try:
        return v is None or (isinstance(v, float) and v != v)
    except TypeError:
        return False


def run_blackhole(t_env, insert: str, timeout: float) -> tuple[str, float]:
    """Submit the INSERT, wait for the job to finish; its id and net runtime in seconds."""
    result = t_env.execute_sql(insert)
    client = result.get_job_client()
    if client is None:
        raise RunError("the INSERT did not start a job")
    job_id = str(client.get_job_id())
    log(f"job {job_id} submitted; waiting for it to finish")
    started = time.monotonic()
    try:
        result.wait(int(timeout * 1000))
    except Exception as e:  # py4j wraps the job's failure, or the wait's TimeoutException
        if time.monotonic() - started >= timeout:
            client.cancel()
            raise RunError(f"the job did not finish within {timeout:.0f}s (cancelled)")
        causes = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("Caused by:")]
        raise RunError(f"job {job_id} failed: " + ("; ".join(causes[-3:]) or str(e).splitlines()[0]))
    res = client.get_job_execution_result().result()
    return job_id, res.get_net_runtime() / 1000.0


def flink_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("apache-flink")


def run_query(a: argparse.Namespace, out) -> None:
    events, per_input = count_events(a)
    log(f"{a.query}: inputs {per_input} ({events} events)")
    cpus = parse_cpus(a.cpus, a.parallelism)
    log_file = prepare_process(a, cpus)
    loadavg = os.getloadavg()[0]
    t_env, _ = flink_env(a, a.parallelism)
    for stmt in table_statements(a):
        t_env.execute_sql(stmt)
    sink_ddl, insert, select = query_parts(a.query)

    wall_start = time.monotonic()
    result_rows = None
    net_runtime = None
    if a.print_results:
        rows = collect_rows(t_env.sql_query(select))
        wall = time.monotonic() - wall_start
        seconds = wall
        Path(a.print_results).write_text("".join(r + "\n" for r in rows))
        result_rows = len(rows)
        log(f"wrote {result_rows} result rows to {a.print_results}")
    else:
        t_env.execute_sql(sink_ddl)
        job_id, net_runtime = run_blackhole(t_env, insert, a.timeout)
        wall = time.monotonic() - wall_start
        seconds = running_seconds(log_file, job_id)
    rss = peak_rss_mib(gateway_pid())
    eps = events / seconds if seconds > 0 else None
    record = {
        "engine": "flink",
        "query": a.query,
        "parallelism": a.parallelism,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_sec": round(eps) if eps else None,
        "events_per_sec_per_core": round(eps / len(cpus)) if eps else None,
        "peak_rss_mib": round(rss, 1) if rss is not None else None,
        "source": a.source,
        "input_events": per_input,
        "generated_events": a.events,
        "cpus": len(cpus),
        "timed": "collect: query, job and result transfer" if a.print_results
        else "first task RUNNING to job FINISHED",
        "net_runtime_seconds": round(net_runtime, 3) if net_runtime is not None else None,
        "wall_seconds": round(wall, 3),
        "loadavg_1m_before": round(loadavg, 2),
        "sink": "collect" if a.print_results else "blackhole",
        "result_rows": result_rows,
        "flink_version": flink_version(),
        "mini_batch": a.mini_batch,
        "state_backend": a.state_backend,
        "object_reuse": a.object_reuse,
        "heap": a.heap,
    }
    out.write(json.dumps(record) + "\n")
    out.flush()


def smoke_test(a: argparse.Namespace, out) -> None:
    """A tiny streaming job whose result is checked, then a planned (not run) Kafka source:
    pyflink, the JVM and the connector jar all work."""
    prepare_process(a, None)
    t_env, _ = flink_env(a, 1)
    rows = collect_rows(
        t_env.sql_query(
            "SELECT k, COUNT(*) AS n, SUM(x) AS s FROM (VALUES ('a', 1), ('b', 2), ('a', 3)) "
            "AS t(k, x) GROUP BY k"
        )
    )
    want = ['{"k": "a", "n": 2, "s": 4}', '{"k": "b", "n": 1, "s": 2}']
    if rows != want:
        raise RunError(f"smoke test: got {rows}, expected {want}")
    log(f"smoke test: a streaming GROUP BY gave {rows}")
    if a.jars_dir:
        kafka = argparse.Namespace(source="kafka", topic_prefix="smoke-", bootstrap="127.0.0.1:1")
        for stmt in table_statements(kafka):
            t_env.execute_sql(stmt)
        # Planning looks up the 'kafka' table factory: without the connector jar it fails
        # with "Could not find any factory for identifier 'kafka'".
        plan = t_env.explain_sql("SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0")
        if "TableSourceScan(table=[[default_catalog, default_database, bid_src" not in plan:
            raise RunError(f"smoke test: unexpected plan for a query over the Kafka source:\n{plan}")
        log("smoke test: a query over the Kafka source tables plans with the connector jar")
    out.write(json.dumps({"smoke_test": "ok", "flink_version": flink_version()}) + "\n")


def finish_log(ok: bool) -> None:
    """Remove this run's temp directory; delete its Flink log after a success, keep it after
    a failure and say where."""
    tmp = os.environ.get("WEIR_FLINK_RUN_TMP")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    path = os.environ.get("WEIR_FLINK_RUN_LOG")
    if not path:
        return
    log_file = Path(path)
    props = log_file.with_name(log_file.name[: -len(".log")] + ".log4j2.properties")
    if ok:
        log_file.unlink(missing_ok=True)
        props.unlink(missing_ok=True)
    elif log_file.is_file():
        log(f"Flink's log of this run: {log_file}")


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    # PyFlink's JVM inherits stdout: point fd 1 at stderr so only our JSON line reaches stdout.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        if a.smoke_test:
            smoke_test(a, out)
        else:
            run_query(a, out)
        finish_log(True)
        return 0
    except RunError as e:
        log(f"error: {e}")
    except Exception as e:  # a Flink/py4j failure: its message
        log(f"error: {type(e).__name__}: {e}")
    finish_log(False)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
