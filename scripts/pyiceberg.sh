#!/usr/bin/env bash
# pyiceberg (PyPI) in a venv of its own: the independent reader the Iceberg tests check
# Weir's tables with, and what docs/lake.md shows users.
#
# Usage: scripts/pyiceberg.sh COMMAND [ARGS...]
#
#   install        create the venv and pip install pyiceberg (skipped when already there
#                  with the same version); prints what it does and how long it took
#   read ARGS...   tests/lake/read_iceberg.py ARGS... in the venv (installs first when
#                  needed): one table's snapshots, schema, partition spec and rows as JSON
#                    scripts/pyiceberg.sh read --table-dir data/warehouse/lake/region_health
#                    scripts/pyiceberg.sh read --sql-uri postgresql+psycopg2://u:p@h/db \
#                        --catalog-name weir --table lake.region_health
#   status         installed or not (exit 0 or 3), version and path
#   python ARGS... the venv's python
#
# Environment (all optional):
#   WEIR_PYICEBERG_HOME     install root (default $HOME/.cache/weir-tools/pyiceberg)
#   WEIR_PYICEBERG_VERSION  pyiceberg version (default 0.12.0)
#   WEIR_PYICEBERG_PYTHON   python used to create the venv (default python3; 3.9 or newer)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
READER="$ROOT/tests/lake/read_iceberg.py"
HOME_DIR=${WEIR_PYICEBERG_HOME:-$HOME/.cache/weir-tools/pyiceberg}
HOME_DIR=${HOME_DIR%/}
VERSION=${WEIR_PYICEBERG_VERSION:-0.12.0}
PYTHON=${WEIR_PYICEBERG_PYTHON:-python3}
VENV="$HOME_DIR/venv"
MARKER="$HOME_DIR/.installed"
WANT="pyiceberg[pyarrow,sql-postgres]==$VERSION"

say() { printf 'pyiceberg.sh: %s\n' "$*" >&2; }
die() { printf 'pyiceberg.sh: error: %s\n' "$*" >&2; exit 1; }

installed() {
    [[ -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" && -x "$VENV/bin/python" ]]
}

install() {
    if installed; then
        say "already installed in $HOME_DIR ($WANT)"
        return
    fi
    local start
    start=$(date +%s)
    mkdir -p "$HOME_DIR"
    exec 8>"$HOME_DIR/.install.lock"
    flock -w 900 8 || die "timed out waiting for another 'pyiceberg.sh install'"
    if installed; then
        return
    fi
    rm -f "$MARKER"
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set WEIR_PYICEBERG_PYTHON)"
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating the venv $VENV with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV" || die "could not create the venv (python3-venv missing?)"
    fi
    say "pip install $WANT ..."
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$WANT" >&2 ||
        die "pip install $WANT failed (is PyPI reachable?)"
    "$VENV/bin/python" -c 'import pyiceberg, pyarrow, sqlalchemy, psycopg2' ||
        die "pyiceberg does not import in $VENV"
    echo "$WANT" >"$MARKER"
    exec 8>&-
    say "installed $WANT in $HOME_DIR in $(($(date +%s) - start))s"
}

cmd=${1:-}
shift || true
case "$cmd" in
install) install ;;
read)
    installed || install
    exec "$VENV/bin/python" "$READER" "$@"
    ;;
python)
    installed || install
    exec "$VENV/bin/python" "$@"
    ;;
status)
    if installed; then
        echo "installed: $(cat "$MARKER") in $VENV"
    else
        echo "not installed ($WANT; $VENV)"
        exit 3
    fi
    ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
