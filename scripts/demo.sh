#!/usr/bin/env bash
# Builds weir (release) and runs the demo pipelines in queries/ with embedded defaults:
# generators -> a real Kafka producer -> an embedded Kafka-protocol broker (no [kafka]
# cluster configured) -> kafka sources -> windowed views -> Parquet under ./data/lake and the
# alerts topic. Ctrl-C stops it.
# Extra arguments go to `weir run`, e.g. scripts/demo.sh --progress-interval 2s
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
cargo build --release -p weir-server --bin weir
exec "$CARGO_TARGET_DIR/release/weir" run queries/ "$@"
