#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints, every test in the workspace, and the
# dashboard's browser test (headless Chromium from Debian's packages, driven by
# playwright-core from npm).
# Usage: scripts/test.sh
#
# The build shares one target directory across runs and checkouts (override with
# CARGO_TARGET_DIR). The Kafka tests need a real broker: this script starts Apache Kafka
# (KRaft, single node, fetched through Maven by scripts/kafka.sh) with a PLAINTEXT and a
# SASL/PLAIN listener on loopback ports, points the tests at it through
# WEIR_KAFKA_BOOTSTRAP and WEIR_KAFKA_SASL_BOOTSTRAP. The Postgres sink tests need a real
# PostgreSQL: scripts/postgres.sh starts a throwaway cluster (Debian's package, installed
# with apt-get if missing) on 127.0.0.1:${WEIR_PG_PORT:-15432}, and the tests get its URL in
# WEIR_POSTGRES_URL. The object storage tests need a real S3-compatible store:
# scripts/s3.sh starts s3s-fs (built from crates.io with cargo install, cached under
# $HOME/.cache/weir-tools) on 127.0.0.1:${WEIR_S3_PORT:-19000} with a bucket `weir-test`, and
# the tests get its endpoint and test key in WEIR_S3_* and AWS_*. All are stopped on exit.
# The Iceberg tests read tables back with pyiceberg: scripts/pyiceberg.sh installs it from
# PyPI into a venv under $HOME/.cache/weir-tools (python3 with venv is needed).
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

install_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        step "installing ${missing[*]} (apt-get)"
        local sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}
# librdkafka is built from source by rdkafka-sys (TLS through the system OpenSSL); the
# broker needs Java 17 and Maven to fetch its jars.
if command -v dpkg >/dev/null 2>&1; then
    install_packages build-essential pkg-config libssl-dev zlib1g-dev
    command -v java >/dev/null 2>&1 || install_packages openjdk-17-jre-headless
    command -v mvn >/dev/null 2>&1 || install_packages maven
    # The dashboard's browser test drives Debian's Chromium.
    [[ -x /usr/bin/chromium ]] || install_packages chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node and npm are needed for the dashboard's browser test (tests/browser)" >&2
    exit 1
fi

start=$(date +%s)
step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "Python and shell syntax of the benchmark scripts (the Flink runner is not run in CI)"
python3 -c 'import ast, sys
for f in sys.argv[1:]:
    ast.parse(open(f).read(), f)' benches/nexmark/flink/*.py tests/lake/*.py
for f in scripts/*.sh benches/*.sh benches/nexmark/*.sh; do
    bash -n "$f"
done

step "building the tests"
cargo test --locked --workspace --no-run

stop_services() {
    bash scripts/kafka.sh stop >/dev/null 2>&1 || true
    bash scripts/postgres.sh stop >/dev/null 2>&1 || true
    bash scripts/s3.sh stop >/dev/null 2>&1 || true
}
trap stop_services EXIT

step "starting a real Kafka broker (scripts/kafka.sh start --sasl)"
bash scripts/kafka.sh start --sasl
export WEIR_KAFKA_BOOTSTRAP="127.0.0.1:${WEIR_KAFKA_PORT:-19092}"
export WEIR_KAFKA_SASL_BOOTSTRAP="127.0.0.1:${WEIR_KAFKA_SASL_PORT:-19093}"

step "starting a throwaway PostgreSQL (scripts/postgres.sh start)"
WEIR_POSTGRES_URL=$(bash scripts/postgres.sh start)
export WEIR_POSTGRES_URL
# The CA of the server's TLS certificate, for the TLS test.
eval "$(bash scripts/postgres.sh env)"

step "installing pyiceberg for the Iceberg tests (scripts/pyiceberg.sh install: PyPI, in a venv)"
if command -v dpkg >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    install_packages python3-venv
fi
bash scripts/pyiceberg.sh install

step "starting a throwaway S3-compatible store (scripts/s3.sh start: s3s-fs from crates.io)"
bash scripts/s3.sh start
eval "$(bash scripts/s3.sh env)"

step "cargo test (unit tests, .slt suite in every mode, differential, Parquet read-back, Kafka, Postgres, S3, CLI)"
cargo test --locked --workspace

step "dashboard in headless Chromium (tests/browser, playwright-core)"
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
WEIR_BIN="$CARGO_TARGET_DIR/debug/weir" node --test tests/browser/

step "all checks passed in $(( $(date +%s) - start ))s"
