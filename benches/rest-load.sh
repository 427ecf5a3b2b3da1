#!/usr/bin/env bash
# REST under load: p50/p99 of GET /api/v1/views/{name}/rows (limit=100) with 200 concurrent
# connections from wrk (Debian's package), against the release `weir` binary.
# Usage: benches/rest-load.sh [connections] [duration]
# The view is a per-region one-second tumbling aggregate over a bounded generator whose
# event time starts in the past, so all of its windows have closed and 16,000 rows are
# retained before the load starts.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${1:-200}
DURATION=${2:-30s}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
WEIR="$CARGO_TARGET_DIR/release/weir"
[[ -x $WEIR ]] || cargo build --release -p weir-server --bin weir
command -v wrk >/dev/null || { sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo; $sudo apt-get install -y -qq wrk; }

DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat >"$DIR/pipeline.sql" <<'SQL'
CREATE SOURCE dl (ts TIMESTAMP, region VARCHAR, status VARCHAR, speed_mbps DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '0',
        rows = '2000000', start = '2024-01-01T00:00:00Z');
CREATE MATERIALIZED VIEW health AS
  SELECT window_start, window_end, region, count(*) AS downloads,
         count(*) FILTER (WHERE status = 'failed') AS failures, avg(speed_mbps) AS avg_speed
  FROM TUMBLE(dl, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end, region;
SQL
PORT=${WEIR_BENCH_PORT:-18765}
"$WEIR" run --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" --progress-interval 0s \
    "$DIR/pipeline.sql" >"$DIR/weir.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do
    status=$(curl -s "http://127.0.0.1:$PORT/api/v1/sources/dl" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p' || true)
    [[ $status == finished ]] && break
    sleep 0.1
done
[[ $status == finished ]] || { cat "$DIR/weir.log"; echo "the source did not finish" >&2; exit 1; }
rows=$(curl -s "http://127.0.0.1:$PORT/api/v1/views/health" | sed -n 's/.*"last_seq":\([0-9]*\).*/\1/p')
echo "view health holds $rows rows; GET /api/v1/views/health/rows (100 rows, $(curl -s "http://127.0.0.1:$PORT/api/v1/views/health/rows" | wc -c) bytes)"
wrk --latency -t 2 -c "$CONNECTIONS" -d "$DURATION" "http://127.0.0.1:$PORT/api/v1/views/health/rows"
