#!/usr/bin/env bash
# The Nexmark comparison of Weir with Apache Flink on this machine: for each query, Weir from
# its in-process generator, Weir from Kafka, Flink from Kafka at parallelism 1 and 2, and for
# the windowed queries Weir's window-close latency; then one Markdown table. See
# docs/nexmark.md ("Running the Nexmark queries") and BENCHMARKS.md.
#
# Usage: benches/nexmark/run.sh
#
# Environment (all optional):
#   NEXMARK_EVENTS        Nexmark events generated (default 10000000)
#   NEXMARK_EVENT_RATE    events per second of event time (default 100000)
#   NEXMARK_QUERIES       queries to run (default "q0 q1 q2 q3 q4 q5 q7 q8")
#   NEXMARK_PARTITIONS    Kafka partitions per topic (default 8)
#   NEXMARK_DATA          where the JSON-lines files go (default
#                         ${TMPDIR:-/tmp}/weir-nexmark-<events>-<rate>; kept and reused)
#   NEXMARK_OUT           results directory (default data/nexmark-results/<UTC timestamp>)
#   NEXMARK_LATENCY_RATE  events/s of the paced latency runs (default 100000)
#   NEXMARK_LATENCY_SECS  seconds measured per latency run, after 15 s warm-up (default 60)
#   NEXMARK_SKIP          any of: kafka flink latency (space separated) to leave those out
#   NEXMARK_KAFKA_PORT    port of the broker this script starts for itself with scripts/kafka.sh
#                         (default 19392; controller on the port + 2; storage kept between
#                         runs in ${TMPDIR:-/tmp}/weir-kafka/<port>). A broker of its own, so
#                         that tests restarting the shared broker on 19092 (with empty
#                         storage) cannot stop a run or delete its topics
#   NEXMARK_BOOTSTRAP     use this Kafka cluster instead (nothing is started)
#   NEXMARK_TIMEOUT       seconds after which one run is killed and recorded as failed
#                         (default 1800)
#   NEXMARK_BENCHMARKS    1 (default): write the table, the machine and the command into
#                         BENCHMARKS.md, between its nexmark-table markers; 0: leave it
#   CARGO_TARGET_DIR      where cargo builds (default $HOME/.cache/weir-target)
#
# Weir runs pinned to CPU 0 with one Tokio worker (`taskset -c 0 ... --threads 1`): one core
# for the sources, the pipeline and the sink. Flink's parallelism-1 runs are pinned to CPU 0
# by its runner, parallelism 2 may use every CPU. Kafka (a separate JVM) is not pinned and
# not counted, for either engine. Every run's JSON line is appended to
# $NEXMARK_OUT/results.jsonl; the table goes to $NEXMARK_OUT/table.md and stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

EVENTS=${NEXMARK_EVENTS:-10000000}
RATE=${NEXMARK_EVENT_RATE:-100000}
QUERIES=${NEXMARK_QUERIES:-q0 q1 q2 q3 q4 q5 q7 q8}
PARTITIONS=${NEXMARK_PARTITIONS:-8}
DATA=${NEXMARK_DATA:-${TMPDIR:-/tmp}/weir-nexmark-$EVENTS-$RATE}
OUT=${NEXMARK_OUT:-$ROOT/data/nexmark-results/$(date -u +%Y%m%dT%H%M%SZ)}
LATENCY_RATE=${NEXMARK_LATENCY_RATE:-100000}
LATENCY_SECS=${NEXMARK_LATENCY_SECS:-60}
SKIP=" ${NEXMARK_SKIP:-} "
TIMEOUT=${NEXMARK_TIMEOUT:-1800}
KAFKA_PORT=${NEXMARK_KAFKA_PORT:-19392}
BOOTSTRAP=${NEXMARK_BOOTSTRAP:-}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}
BENCH=$TARGET/release/weir-bench
# Topics named after the input, so a second run with the same events reuses them.
PREFIX="nexmark-$EVENTS-$RATE-"

say() { printf 'run.sh: %s\n' "$*" >&2; }
skip() { [[ "$SKIP" == *" $1 "* ]]; }
windowed() { [[ " q4 q5 q7 q8 " == *" $1 "* ]]; }

mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# The machine, for the report.
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
    echo "cpus: $(nproc)"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "events: $EVENTS at $RATE events/s of event time; Kafka partitions: $PARTITIONS"
} | tee "$OUT/machine.txt" >&2

say "building weir-bench (release)"
CARGO_TARGET_DIR=$TARGET cargo build --release -p weir-benches >&2

# A JSON line from a run, tagged with what ran, into the results file.
record() {
    local tag=$1 line=$2
    python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r["run"]=sys.argv[1]; print(json.dumps(r))' \
        "$tag" "$line" >>"$RESULTS"
}

# `run TAG COMMAND...`: run one benchmark, keep its JSON line; a failure is recorded too.
run() {
    local tag=$1
    shift
    say "$tag: $*"
    local line
    if line=$(timeout "$TIMEOUT" "$@" 2>"$OUT/$tag.log" | tail -n 1) && [[ "$line" == "{"* ]]; then
        record "$tag" "$line"
        say "$tag: $line"
    else
        record "$tag" "{\"error\": \"failed, see $tag.log\"}"
        say "$tag: FAILED (see $OUT/$tag.log)"
    fi
}

if ! skip kafka || ! skip flink; then
    if [[ -z "$BOOTSTRAP" ]]; then
        export WEIR_KAFKA_PORT=$KAFKA_PORT WEIR_KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 2))
        bash scripts/kafka.sh start --keep >&2
        # Stopped at the end (its topics stay on disk for the next run).
        trap 'bash scripts/kafka.sh stop >&2' EXIT
        BOOTSTRAP=127.0.0.1:$KAFKA_PORT
    fi
    if [[ ! -f "$DATA/.complete" ]]; then
        say "generating $EVENTS events into $DATA"
        "$BENCH" nexmark-gen --events "$EVENTS" --event-rate "$RATE" --partitions "$PARTITIONS" \
            --out "$DATA" >&2
        touch "$DATA/.complete"
    fi
    existing=$(bash scripts/kafka.sh topics --bootstrap-server "$BOOTSTRAP" --list 2>/dev/null)
    for t in person auction bid; do
        if grep -qx "$PREFIX$t" <<<"$existing"; then
            say "topic $PREFIX$t exists; reusing it"
        else
            "$BENCH" kafka-load --bootstrap "$BOOTSTRAP" --topic "$PREFIX$t" \
                --partitions "$PARTITIONS" --input "$DATA/$t.jsonl" >&2
        fi
    done
fi

for q in $QUERIES; do
    run "$q-weir-generator" taskset -c 0 "$BENCH" nexmark --query "$q" --events "$EVENTS" \
        --event-rate "$RATE" --threads 1
    if ! skip kafka; then
        run "$q-weir-kafka" taskset -c 0 "$BENCH" nexmark --query "$q" --source kafka \
            --bootstrap "$BOOTSTRAP" --topic-prefix "$PREFIX" --threads 1
    fi
    if ! skip flink; then
        for p in 1 2; do
            run "$q-flink-p$p" bash scripts/flink.sh run --query "$q" --parallelism "$p" \
                --source kafka --bootstrap "$BOOTSTRAP" --topic-prefix "$PREFIX" --events "$EVENTS"
        done
    fi
    if ! skip latency && windowed "$q"; then
        run "$q-weir-latency" taskset -c 0 "$BENCH" nexmark --query "$q" \
            --latency-rate "$LATENCY_RATE" --secs "$LATENCY_SECS" --threads 1
    fi
done

python3 - "$RESULTS" "$QUERIES" >"$OUT/table.md" <<'EOF'
import json, sys

runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r["run"]] = r

def get(q, kind, key):
    r = runs.get(f"{q}-{kind}")
    return None if r is None or "error" in r else r.get(key)

def num(v):
    return "-" if v is None else f"{v:,.0f}"

def per_core(q, kind):
    # One pinned core: the wall-clock rate is the per-core rate.
    return get(q, kind, "events_per_sec")

print("| query | Weir gen ev/s (1 core) | Weir Kafka ev/s (1 core) | Flink p1 ev/s | Flink p2 ev/s "
      "| Flink per core | Weir Kafka / Flink | Weir p99 close latency | peak RSS Weir gen / Weir Kafka / Flink p1 / Flink p2 |")
print("|---|---|---|---|---|---|---|---|---|")
for q in sys.argv[2].split():
    wg, wk = per_core(q, "weir-generator"), per_core(q, "weir-kafka")
    f1, f2 = get(q, "flink-p1", "events_per_sec"), get(q, "flink-p2", "events_per_sec")
    fcore = max([v for v in (f1, f2 / 2 if f2 else None) if v] or [0]) or None
    ratio = f"{wk / fcore:.1f}x" if wk and fcore else "-"
    lat = get(q, "weir-latency", "p99_ms")
    lat = "-" if lat is None else f"{lat:,.0f} ms"
    mem = " / ".join(
        num(get(q, k, "peak_rss_mib"))
        for k in ("weir-generator", "weir-kafka", "flink-p1", "flink-p2")
    ) + " MiB"
    print(f"| {q} | {num(wg)} | {num(wk)} | {num(f1)} | {num(f2)} | {num(fcore)} | {ratio} | {lat} | {mem} |")
# Weir's two inputs hold the same events: their results must agree, with no late rows.
notes = []
for q in sys.argv[2].split():
    rows = {k: get(q, k, "result_rows") for k in ("weir-generator", "weir-kafka")}
    late = {k: get(q, k, "late_rows") for k in ("weir-generator", "weir-kafka", "weir-latency")}
    if None not in rows.values() and len(set(rows.values())) > 1:
        notes.append(f"{q}: {rows['weir-generator']:,} result rows from the generator, "
                     f"{rows['weir-kafka']:,} from Kafka")
    for k, n in late.items():
        if n:
            notes.append(f"{q}: {n:,} late rows in the {k} run")
    for k in ("weir-generator", "weir-kafka", "flink-p1", "flink-p2", "weir-latency"):
        if f"{q}-{k}" in runs and "error" in runs[f"{q}-{k}"]:
            notes.append(f"{q}: the {k} run failed")
if notes:
    print()
    for n in notes:
        print(f"- WARNING {n}")
EOF
cat "$OUT/machine.txt"
cat "$OUT/table.md"

if [[ "${NEXMARK_BENCHMARKS:-1}" == 1 ]]; then
    # Replace what is between the markers in BENCHMARKS.md with this run.
    python3 - "$ROOT/BENCHMARKS.md" "$OUT" "$EVENTS" "$RATE" "$QUERIES" <<'EOF'
import pathlib, sys
md, out, events, rate, queries = sys.argv[1:]
begin, end = "<!-- nexmark-table:begin -->", "<!-- nexmark-table:end -->"
text = pathlib.Path(md).read_text()
if begin not in text or end not in text:
    sys.exit(f"run.sh: {md} has no {begin} ... {end} markers; table left in {out}/table.md")
machine = pathlib.Path(out, "machine.txt").read_text().strip()
table = pathlib.Path(out, "table.md").read_text().strip()
rel = pathlib.Path(out).name
block = f"""{begin}
Written by `benches/nexmark/run.sh` (`NEXMARK_EVENTS={events} NEXMARK_EVENT_RATE={rate}
NEXMARK_QUERIES="{queries}"`); every run's JSON line is in
`data/nexmark-results/{rel}/results.jsonl` on the machine that ran it.

```text
{machine}
```

{table}
{end}"""
head, rest = text.split(begin, 1)
tail = rest.split(end, 1)[1]
pathlib.Path(md).write_text(head + block + tail)
print(f"run.sh: table written to {md}", file=sys.stderr)
EOF
fi
say "results: $RESULTS; table: $OUT/table.md"
