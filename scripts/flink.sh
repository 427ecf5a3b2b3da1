#!/usr/bin/env bash
# Apache Flink SQL (PyFlink, local mini-cluster) for the Nexmark comparison with Weir.
# No Flink distribution and no Docker: pip's apache-flink in a venv of its own (it ships the
# Flink runtime jars and starts a mini-cluster inside one JVM), plus the Kafka SQL connector
# jar from Maven Central. See docs/nexmark.md ("Apache Flink SQL").
#
# Usage: scripts/flink.sh COMMAND [ARGS...]
#
#   install        create the venv and fetch the connector jar (skipped when already there
#                  with the same versions); prints what it does and how long it took
#   run ARGS...    benches/nexmark/flink/run.py ARGS... in the venv (installs first when
#                  needed), e.g.
#                    scripts/flink.sh run --query q5 --parallelism 2 --source kafka \
#                        --bootstrap 127.0.0.1:19092 --events 10000000
#                  prints one JSON line of results on stdout; progress goes to stderr
#   selftest DIR [ARGS...]
#                  every query (q0 q1 q2 q3 q4 q5 q7 q8, or $WEIR_FLINK_QUERIES) at parallelism
#                  1 and 2 with --print-results, each result checked row for row against
#                  benches/nexmark/flink/check.py's plain-Python reference over DIR's
#                  person.jsonl, auction.jsonl and bid.jsonl. ARGS go to run.py (default:
#                  --source files --dir DIR; pass e.g. --source kafka --topic-prefix P to read
#                  topics loaded with DIR's files). For small inputs (~100,000 events).
#   status         installed or not (exit 0 or 3), versions and paths
#   python ARGS... the venv's python (for debugging)
#
# Environment (all optional):
#   WEIR_FLINK_HOME         install root (default $HOME/.cache/weir-flink)
#   WEIR_FLINK_VERSION      apache-flink version from PyPI (default 2.2.1)
#   WEIR_FLINK_KAFKA_JAR    Maven coordinates of the Kafka SQL connector (default
#                           org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2, the one
#                           built for Flink 2.2; there is none for 2.3 yet)
#   WEIR_FLINK_PYTHON       python used to create the venv (default python3; 3.9 to 3.12)
#   WEIR_MAVEN_ARGS         extra arguments for mvn (e.g. -Dmaven.repo.local=DIR)
#   JAVA_HOME               the JVM for Flink (Java 11 or 17; default: java on PATH)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNNER="$ROOT/benches/nexmark/flink/run.py"

HOME_DIR=${WEIR_FLINK_HOME:-$HOME/.cache/weir-flink}
HOME_DIR=${HOME_DIR%/}
FLINK_VERSION=${WEIR_FLINK_VERSION:-2.2.1}
KAFKA_JAR_COORDS=${WEIR_FLINK_KAFKA_JAR:-org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2}
PYTHON=${WEIR_FLINK_PYTHON:-python3}

VENV="$HOME_DIR/venv"
JARS="$HOME_DIR/jars"
MARKER="$HOME_DIR/.installed"
WANT="apache-flink==$FLINK_VERSION $KAFKA_JAR_COORDS"

say() { printf 'flink.sh: %s\n' "$*" >&2; }
die() { printf 'flink.sh: error: %s\n' "$*" >&2; exit 1; }

installed() {
    [[ -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" && -x "$VENV/bin/python" ]]
}

check_java() {
    local java
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        java="$JAVA_HOME/bin/java"
    else
        java=$(command -v java) ||
            die "java not found: Flink needs Java 11 or 17 (Debian: apt-get install openjdk-17-jre-headless)"
    fi
    say "java: $("$java" -version 2>&1 | head -n 1)"
}

install() {
    if installed; then
        say "already installed in $HOME_DIR ($WANT)"
        return
    fi
    local start t
    start=$(date +%s)
    mkdir -p "$HOME_DIR"
    exec 8>"$HOME_DIR/.install.lock"
    flock -w 1800 8 || die "timed out waiting for another 'flink.sh install'"
    if installed; then
        say "already installed in $HOME_DIR ($WANT)"
        return
    fi
    rm -f "$MARKER"
    check_java
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set WEIR_FLINK_PYTHON)"
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found: the connector jar comes from Maven Central through Maven (Debian: apt-get install maven)"

    # 1. The venv with PyPI's apache-flink (about 600 MB with its dependencies).
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "[1/3] creating the venv $VENV with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV" || die "could not create the venv (python3-venv missing?)"
    fi
    say "[1/3] pip install apache-flink==$FLINK_VERSION (a few minutes the first time) ..."
    t=$(date +%s)
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2 ||
        die "pip could not upgrade itself in $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        "apache-flink==$FLINK_VERSION" >&2 ||
        die "pip install apache-flink==$FLINK_VERSION failed (is PyPI reachable? does that version exist for $("$VENV/bin/python" --version 2>&1)?)"
    local got
    got=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-flink"))') ||
        die "pyflink does not import in $VENV"
    [[ "$got" == "$FLINK_VERSION" ]] || die "the venv has apache-flink $got, not $FLINK_VERSION"
    say "[1/3] apache-flink $got installed in $(($(date +%s) - t))s"

    # 2. The Kafka SQL connector (a shaded jar with kafka-clients inside).
    say "[2/3] fetching $KAFKA_JAR_COORDS from Maven Central ..."
    t=$(date +%s)
    local tmp
    tmp=$(mktemp -d "$HOME_DIR/.jars.XXXXXX")
    # shellcheck disable=SC2086 # WEIR_MAVEN_ARGS is a list of arguments
    if ! mvn -B -q -Dstyle.color=never ${WEIR_MAVEN_ARGS:-} \
        org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
        -Dartifact="$KAFKA_JAR_COORDS" -DoutputDirectory="$tmp" >"$tmp/mvn.log" 2>&1; then
        cat "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn could not fetch $KAFKA_JAR_COORDS (is Maven Central reachable? is the version right?)"
    fi
    rm -f "$tmp/mvn.log"
    [[ -n "$(find "$tmp" -name '*.jar')" ]] || {
        rm -rf "$tmp"
        die "mvn finished but no jar was copied for $KAFKA_JAR_COORDS"
    }
    rm -rf "$JARS"
    mv "$tmp" "$JARS"
    say "[2/3] $(basename "$(find "$JARS" -name '*.jar' | head -n 1)") in $JARS ($(($(date +%s) - t))s)"

    # 3. A smoke test: a mini-cluster runs a tiny SQL job with the connector on the classpath.
    say "[3/3] smoke test: a local mini-cluster runs SELECT ... FROM (VALUES ...) ..."
    t=$(date +%s)
    "$VENV/bin/python" "$RUNNER" --smoke-test --jars-dir "$JARS" >&2 ||
        die "the smoke test failed: pyflink is installed but cannot run a job (see above)"
    say "[3/3] smoke test passed in $(($(date +%s) - t))s"

    echo "$WANT" >"$MARKER"
    exec 8>&-
    say "installed $WANT in $HOME_DIR in $(($(date +%s) - start))s"
}

selftest() {
    [[ $# -ge 1 ]] || die "selftest: name the directory of person.jsonl, auction.jsonl, bid.jsonl"
    local dir=$1 q p out failed=() passed=0
    shift
    [[ -d "$dir" ]] || die "selftest: $dir is not a directory"
    local args=("$@")
    ((${#args[@]} > 0)) || args=(--source files --dir "$dir")
    installed || install
    out=$(mktemp -d "${TMPDIR:-/tmp}/weir-flink-selftest.XXXXXX")
    for q in ${WEIR_FLINK_QUERIES:-q0 q1 q2 q3 q4 q5 q7 q8}; do
        for p in 1 2; do
            say "selftest: $q at parallelism $p ..."
            if "$VENV/bin/python" "$RUNNER" --jars-dir "$JARS" --query "$q" --parallelism "$p" \
                --print-results "$out/$q-p$p.jsonl" "${args[@]}" >"$out/$q-p$p.json" &&
                "$VENV/bin/python" "$ROOT/benches/nexmark/flink/check.py" --query "$q" \
                    --dir "$dir" --results "$out/$q-p$p.jsonl" >&2; then
                passed=$((passed + 1))
            else
                failed+=("$q/p$p")
            fi
        done
    done
    say "selftest: results in $out"
    echo "$passed passed, ${#failed[@]} failed"
    ((${#failed[@]} == 0)) || die "selftest failed: ${failed[*]}"
}

status() {
    if installed; then
        echo "installed: $WANT"
        echo "venv $VENV; jars $JARS"
    else
        echo "not installed ($WANT) in $HOME_DIR; run 'scripts/flink.sh install'"
        return 3
    fi
}

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        install) install ;;
        run)
            installed || install
            exec "$VENV/bin/python" "$RUNNER" --jars-dir "$JARS" "$@"
            ;;
        status) status ;;
        selftest) selftest "$@" ;;
        python)
            installed || die "not installed; run 'scripts/flink.sh install'"
            exec "$VENV/bin/python" "$@"
            ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) usage >&2; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
