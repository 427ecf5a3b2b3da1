#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints, and every test in the workspace.
# Usage: scripts/test.sh
#
# The build shares one target directory across runs and checkouts (override with
# CARGO_TARGET_DIR). Tests need no external service yet: the streaming core's tests run
# in process. (Kafka, Postgres and Chromium start here once the connectors that need
# them land.)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "installing rustfmt and clippy"
    rustup component add rustfmt clippy
fi

start=$(date +%s)
step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit tests, .slt suite in every mode, differential, Parquet read-back, CLI)"
cargo test --workspace

step "all checks passed in $(( $(date +%s) - start ))s"
