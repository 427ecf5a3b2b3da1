#!/usr/bin/env bash
# A throwaway S3-compatible object store on loopback, for Weir's object storage tests. No
# Docker: s3s-fs (an S3 server over a local directory, from the s3s project) built from
# crates.io with `cargo install`, cached under $WEIR_TOOLS_DIR, serving path-style requests
# signed with AWS Signature V4 and a fixed test access key.
#
# Usage: scripts/s3.sh COMMAND [ARGS...]
#
#   install           cargo install s3s-fs (the pinned version, feature `binary`) into
#                     $WEIR_TOOLS_DIR/s3s-fs/<version> (skipped when already there; a few
#                     minutes the first time)
#   start             install if missing, start the server in the background on
#                     127.0.0.1:$WEIR_S3_PORT over an empty data directory, wait until it
#                     answers a signed ListBuckets, create the bucket `weir-test` through the
#                     S3 API and check that ListBuckets and HeadBucket show it. Already
#                     running: checks the same and exits 0.
#   stop              stop the server and remove its data; does nothing if not running
#   status            running or not (exit 0 or 3), endpoint, pid, data and log
#   env               `export WEIR_S3_ENDPOINT=... AWS_ACCESS_KEY_ID=...`, for
#                     eval "$(scripts/s3.sh env)": WEIR_S3_ENDPOINT, WEIR_S3_BUCKET,
#                     AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION=us-east-1,
#                     AWS_ALLOW_HTTP=true and AWS_ENDPOINT_URL (the same endpoint)
#   logs [N]          the last N (default 100) lines of the server log
#   curl PATH [ARGS...]
#                     curl on the endpoint with the test key (SigV4), e.g. `curl /` lists the
#                     buckets, `curl /weir-test/KEY` reads an object, `curl /weir-test/KEY -T
#                     FILE` writes one. No query strings: curl 7.88 signs them wrongly
#                     (SignatureDoesNotMatch)
#
# Environment (all optional):
#   WEIR_S3_PORT            TCP port on 127.0.0.1 (default 19000)
#   WEIR_S3_DIR             data, pid and log (default ${TMPDIR:-/tmp}/weir-s3/<port>); the
#                           data directory is emptied at every start and removed by stop
#   WEIR_TOOLS_DIR          where built tools are kept across runs (default
#                           $HOME/.cache/weir-tools); never inside CARGO_TARGET_DIR
#   WEIR_S3S_FS_VERSION     s3s-fs version (default 0.14.1, the newest whose rust-version
#                           the project's toolchain meets)
#   WEIR_S3_START_TIMEOUT   seconds to wait for the server to answer (default 30)
#
# The bucket is `weir-test`, the access key `weir-test-key`, the secret
# `weir-test-secret`, the region us-east-1: test values for a server that only listens on
# loopback.
set -euo pipefail

HOST=127.0.0.1
PORT=${WEIR_S3_PORT:-19000}
VERSION=${WEIR_S3S_FS_VERSION:-0.14.1}
TOOLS=${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}
TOOLS=${TOOLS%/}
INSTALL_ROOT="$TOOLS/s3s-fs/$VERSION"
BIN="$INSTALL_ROOT/bin/s3s-fs"
DIR=${WEIR_S3_DIR:-${TMPDIR:-/tmp}/weir-s3/$PORT}
DIR=${DIR%/}
START_TIMEOUT=${WEIR_S3_START_TIMEOUT:-30}

ENDPOINT="http://$HOST:$PORT"
BUCKET=weir-test
ACCESS_KEY=weir-test-key
SECRET_KEY=weir-test-secret
REGION=us-east-1

say() { printf 's3.sh: %s\n' "$*" >&2; }
die() {
    printf 's3.sh: error: %s\n' "$*" >&2
    exit 1
}

case "$DIR" in
    /*) ;;
    *) DIR="$(pwd)/$DIR" ;;
esac
case "$TOOLS" in
    /*) ;;
    *) TOOLS="$(pwd)/$TOOLS" INSTALL_ROOT="$(pwd)/$INSTALL_ROOT" BIN="$(pwd)/$BIN" ;;
esac

DATA="$DIR/data"
PIDFILE="$DIR/s3s-fs.pid"
LOGFILE="$DIR/s3s-fs.log"
MARKER="$DIR/.weir-s3"

# ---------------------------------------------------------------------------------------
# installing

installed() {
    [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -qxF "s3s-fs $VERSION"
}

cmd_install() {
    if installed; then
        say "s3s-fs $VERSION is already in $INSTALL_ROOT"
        return
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: s3s-fs is built from crates.io with cargo (install Rust with rustup)"
    mkdir -p "$TOOLS/s3s-fs"
    # One install at a time per version (tests may start in parallel).
    exec 8>"$TOOLS/s3s-fs/.install-$VERSION.lock"
    flock -w 1200 8 || die "timed out waiting for another install of s3s-fs $VERSION"
    if installed; then
        exec 8>&-
        say "s3s-fs $VERSION is already in $INSTALL_ROOT"
        return
    fi
    local start log
    start=$(date +%s)
    log="$TOOLS/s3s-fs/install-$VERSION.log"
    say "building s3s-fs $VERSION from crates.io (cargo install --locked --features binary) into $INSTALL_ROOT; this takes a few minutes the first time (log: $log) ..."
    # From /, so that no project's .cargo/config.toml applies; without CARGO_TARGET_DIR, so
    # that the build goes to a temporary directory of cargo's own and not into a shared
    # target directory (test.sh exports one).
    if ! (cd / && env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR CARGO_TERM_COLOR=never \
        cargo install --locked "s3s-fs@$VERSION" --features binary --root "$INSTALL_ROOT" \
        >"$log" 2>&1); then
        tail -n 40 "$log" >&2
        die "cargo install s3s-fs@$VERSION failed (is crates.io reachable? does the toolchain meet its rust-version?)"
    fi
    installed || die "cargo install finished, but $BIN does not say it is s3s-fs $VERSION"
    exec 8>&-
    say "installed s3s-fs $VERSION in $(($(date +%s) - start))s: $BIN"
}

# ---------------------------------------------------------------------------------------
# talking S3: curl signs with SigV4 (curl 7.75 or newer)

# s3curl PATH [CURL ARGS...]: a signed request to the endpoint; prints the body.
s3curl() {
    local path=$1
    shift
    curl -sS --max-time 10 --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" "$ENDPOINT$path"
}

# The HTTP status of a signed request (000 when nothing answered).
s3status() {
    local path=$1
    shift
    s3curl "$path" -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true
}

check_curl() {
    command -v curl >/dev/null 2>&1 || die "curl is needed to check the server (Debian: apt-get install curl)"
    curl --help all 2>/dev/null | grep -q -- '--aws-sigv4' ||
        die "this curl cannot sign requests (--aws-sigv4 needs curl 7.75 or newer)"
}

# Create the bucket through the S3 API (CreateBucket) unless HeadBucket finds it, then
# check that ListBuckets lists it and that an unsigned request is refused.
ensure_bucket() {
    local code
    code=$(s3status "/$BUCKET" -I)
    if [[ "$code" != 200 ]]; then
        code=$(s3status "/$BUCKET" -X PUT)
        [[ "$code" == 200 ]] || die "CreateBucket $BUCKET answered HTTP $code"
        say "created bucket $BUCKET (CreateBucket)"
        code=$(s3status "/$BUCKET" -I)
        [[ "$code" == 200 ]] || die "HeadBucket $BUCKET answered HTTP $code after CreateBucket"
    fi
    s3curl / | grep -qF "<Name>$BUCKET</Name>" || die "ListBuckets does not list $BUCKET"
    code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$ENDPOINT/$BUCKET" 2>/dev/null || true)
    [[ "$code" == 403 ]] || die "an unsigned ListObjects answered HTTP $code, not 403: is authentication off?"
}

# ---------------------------------------------------------------------------------------
# the server process

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# True while process $1 exists and is not a zombie.
alive() {
    local state
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [[ -n "$state" && "$state" != Z ]]
}

# The server's pid if it is running (a live s3s-fs over our data directory), else nothing.
running_pid() {
    [[ -f "$PIDFILE" ]] || return 0
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    alive "$pid" || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- " $DATA "; then
        echo "$pid"
    fi
}

lock_dir() {
    mkdir -p "$(dirname "$DIR")"
    exec 9>"$DIR.lock"
    flock -w 300 9 || die "timed out waiting for another s3.sh start/stop on $DIR"
}

# Empty (or create) the state directory. Refuses a non-empty directory that this script did
# not create, so a mistaken WEIR_S3_DIR never loses anything.
fresh_dir() {
    if [[ -d "$DIR" && ! -f "$MARKER" ]] && [[ -n "$(ls -A "$DIR")" ]]; then
        die "$DIR is not empty and was not made by s3.sh; choose another WEIR_S3_DIR"
    fi
    rm -rf "${DATA:?}" "$PIDFILE" "$LOGFILE"
    mkdir -p "$DATA"
    touch "$MARKER"
}

fail_start() {
    say "$1; the last lines of $LOGFILE:"
    tail -n 40 "$LOGFILE" >&2 || true
    stop_process >/dev/null 2>&1 || true
    die "s3s-fs did not start"
}

launch() {
    local pid start elapsed last_report=0 code
    if port_open "$PORT"; then
        die "port $HOST:$PORT is already in use by another process (see: ss -ltnp 'sport = :$PORT'); stop it or set WEIR_S3_PORT"
    fi
    start=$(date +%s)
    # setsid: its own session, so a Ctrl-C in the calling terminal or test does not reach it;
    # fd 9 (our lock) and the caller's stdio are not inherited.
    RUST_LOG=${RUST_LOG:-info} setsid "$BIN" --host "$HOST" --port "$PORT" \
        --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" "$DATA" \
        </dev/null >>"$LOGFILE" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    say "started s3s-fs $VERSION (pid $pid, log $LOGFILE); waiting up to ${START_TIMEOUT}s for $ENDPOINT"
    while true; do
        elapsed=$(($(date +%s) - start))
        alive "$pid" || fail_start "s3s-fs exited during startup"
        ((elapsed < START_TIMEOUT)) || fail_start "s3s-fs did not answer within ${START_TIMEOUT}s"
        # The real test of readiness: a signed ListBuckets answered with 200.
        if port_open "$PORT"; then
            code=$(s3status /)
            [[ "$code" == 200 ]] && break
            [[ "$code" == 403 ]] && fail_start "s3s-fs refused the test key (HTTP 403)"
        fi
        if ((elapsed - last_report >= 5)); then
            say "... still waiting (${elapsed}s)"
            last_report=$elapsed
        fi
        sleep 0.2
    done
    ensure_bucket
    say "s3s-fs $VERSION is up in $(($(date +%s) - start))s on $ENDPOINT, bucket $BUCKET; pid $pid; data $DATA"
}

# Stops the server: SIGTERM, then SIGKILL after 10 s.
stop_process() {
    local pid waited=0
    pid=$(running_pid)
    if [[ -z "$pid" ]]; then
        rm -f "$PIDFILE"
        say "s3s-fs is not running ($DIR)"
        return 0
    fi
    say "stopping s3s-fs (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while [[ -n "$(running_pid)" ]]; do
        if ((waited >= 50)); then
            say "s3s-fs did not stop within 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    [[ -z "$(running_pid)" ]] || die "could not stop s3s-fs (pid $pid)"
    rm -f "$PIDFILE"
    say "stopped"
}

# ---------------------------------------------------------------------------------------
# commands

cmd_start() {
    (($# == 0)) || die "start: unknown argument '$1'"
    check_curl
    cmd_install
    lock_dir
    local pid
    pid=$(running_pid)
    if [[ -n "$pid" ]]; then
        [[ "$(s3status /)" == 200 ]] || die "s3s-fs (pid $pid) is running but does not answer on $ENDPOINT"
        ensure_bucket
        say "s3s-fs is already running (pid $pid) on $ENDPOINT, bucket $BUCKET"
        return 0
    fi
    fresh_dir
    launch
}

cmd_stop() {
    if [[ ! -f "$PIDFILE" && ! -d "$DATA" ]]; then
        say "s3s-fs is not running ($DIR)"
        return 0
    fi
    lock_dir
    stop_process
    if [[ -f "$MARKER" ]]; then
        rm -rf "${DATA:?}"
    fi
}

cmd_status() {
    local pid
    pid=$(running_pid)
    if [[ -n "$pid" ]]; then
        echo "s3s-fs $VERSION is running: pid $pid; $ENDPOINT, bucket $BUCKET"
        echo "data $DATA; log $LOGFILE"
    else
        echo "s3s-fs is not running ($DIR)"
        return 3
    fi
}

cmd_env() {
    echo "export WEIR_S3_ENDPOINT=$ENDPOINT WEIR_S3_BUCKET=$BUCKET" \
        "AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY" \
        "AWS_REGION=$REGION AWS_ALLOW_HTTP=true AWS_ENDPOINT_URL=$ENDPOINT"
}

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        install) cmd_install ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) cmd_env ;;
        logs)
            [[ -f "$LOGFILE" ]] || die "no log at $LOGFILE"
            tail -n "${1:-100}" "$LOGFILE"
            ;;
        curl)
            [[ $# -ge 1 ]] || die "curl: name a path, e.g. /$BUCKET"
            check_curl
            s3curl "$@"
            ;;
        -h | --help | help) usage ;;
        "")
            usage >&2
            exit 2
            ;;
        *)
            usage >&2
            die "unknown command '$cmd'"
            ;;
    esac
}

main "$@"
