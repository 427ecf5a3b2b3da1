#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for Weir's Postgres sink tests and benchmarks.
# No Docker: Debian's PostgreSQL package (installed with apt-get when initdb/pg_ctl are
# missing), a cluster of its own under $WEIR_PG_DIR, trust authentication on 127.0.0.1 only.
#
# Usage: scripts/postgres.sh COMMAND [ARGS...]
#
#   start [--fresh]   initdb the cluster if there is none (--fresh: wipe it first), start the
#                     server in the background, wait until pg_isready answers, create the
#                     database `weir`, and print its URL on stdout:
#                         postgres://weir@127.0.0.1:15432/weir
#                     (role `weir` is the cluster's superuser). Already running: prints the
#                     URL and exits 0.
#   stop              fast shutdown (open sessions are cut); does nothing if not running
#   status            running or not (exit 0 or 3), URL, pid, data and log
#   env               `export WEIR_POSTGRES_URL=... WEIR_POSTGRES_CA=...`, for
#                     eval "$(scripts/postgres.sh env)"
#   logs [N]          the last N (default 100) lines of the server log
#   psql [ARGS...]    psql on the `weir` database (the cluster's own psql)
#
# Environment (all optional):
#   WEIR_PG_DIR            cluster data, socket, log and config (default
#                          $HOME/.cache/weir-postgres)
#   WEIR_PG_PORT           TCP port on 127.0.0.1 (default 15432)
#   WEIR_PG_BIN            directory holding initdb, pg_ctl, postgres, pg_isready and psql
#                          (default: the newest /usr/lib/postgresql/*/bin, else PATH)
#   WEIR_PG_USER           OS user that runs initdb and the server when this script runs as
#                          root (PostgreSQL refuses to run as root; default: `postgres` if that
#                          user exists, else a system user `weir-pg` created for it)
#   WEIR_PG_START_TIMEOUT  seconds to wait for the server to accept connections (default 60)
#
# TLS: the server also takes TLS connections, with a certificate for 127.0.0.1 signed by a
# CA the script makes with openssl ($WEIR_PG_DIR/tls/ca.pem, printed by `env` as
# WEIR_POSTGRES_CA). Role `weir_tls` may connect over TLS only (hostssl), so a client that
# logs in as it proves it used TLS.
#
# As root, the data directory is owned by WEIR_PG_USER, and that user is given search (x)
# permission on parent directories it cannot cross (an ACL when setfacl exists, else o+x),
# since the default location is under /root.
set -euo pipefail

HOST=127.0.0.1
PORT=${WEIR_PG_PORT:-15432}
DIR=${WEIR_PG_DIR:-$HOME/.cache/weir-postgres}
DIR=${DIR%/}
START_TIMEOUT=${WEIR_PG_START_TIMEOUT:-60}
DATA="$DIR/data"
LOGFILE="$DIR/postgres.log"
MARKER="$DIR/.weir-postgres"
DB=weir
ROLE=weir
URL="postgres://$ROLE@$HOST:$PORT/$DB"
TLS="$DIR/tls"
TLS_ROLE=weir_tls

say() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
    printf 'postgres.sh: error: %s\n' "$*" >&2
    exit 1
}

case "$DIR" in
    /*) ;;
    *) DIR="$(pwd)/$DIR" DATA="$DIR/data" LOGFILE="$DIR/postgres.log" MARKER="$DIR/.weir-postgres" ;;
esac

# ---------------------------------------------------------------------------------------
# binaries

# The directory with the server binaries, or nothing.
find_bin() {
    if [[ -n "${WEIR_PG_BIN:-}" ]]; then
        [[ -x "$WEIR_PG_BIN/initdb" && -x "$WEIR_PG_BIN/pg_ctl" ]] ||
            die "WEIR_PG_BIN=$WEIR_PG_BIN has no initdb and pg_ctl"
        echo "$WEIR_PG_BIN"
        return
    fi
    local d best="" best_v=0 v
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] || continue
        v=$(basename "$(dirname "$d")")
        v=${v%%.*}
        [[ "$v" =~ ^[0-9]+$ ]] || continue
        if ((v > best_v)); then
            best_v=$v
            best=$d
        fi
    done
    if [[ -n "$best" ]]; then
        echo "$best"
        return
    fi
    local initdb
    if initdb=$(command -v initdb 2>/dev/null) && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$initdb")"
    fi
}

install_postgres() {
    command -v apt-get >/dev/null 2>&1 ||
        die "initdb and pg_ctl not found and there is no apt-get: install PostgreSQL, or set WEIR_PG_BIN"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed, and installing it needs root (no sudo)"
        sudo=(sudo)
    fi
    say "installing Debian's PostgreSQL (apt-get install postgresql) ..."
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >&2
}

BIN=""
ensure_bin() {
    [[ -n "$BIN" ]] && return
    BIN=$(find_bin)
    if [[ -z "$BIN" ]]; then
        install_postgres
        BIN=$(find_bin)
        [[ -n "$BIN" ]] || die "PostgreSQL was installed but initdb/pg_ctl are not under /usr/lib/postgresql/*/bin"
    fi
    local tool
    for tool in initdb pg_ctl postgres pg_isready psql; do
        [[ -x "$BIN/$tool" ]] || die "$BIN/$tool is missing (set WEIR_PG_BIN to a full PostgreSQL bin directory)"
    done
}

server_version() {
    "$BIN/postgres" --version | sed -n 's/.* \([0-9][0-9]*\)\(\.[0-9]*\)*.*/\1/p' | head -n 1
}

# ---------------------------------------------------------------------------------------
# the OS user that owns the cluster

RUN_USER=""
run_user() {
    if [[ -n "$RUN_USER" ]]; then
        echo "$RUN_USER"
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        id -un
        return
    fi
    local u=${WEIR_PG_USER:-}
    if [[ -z "$u" ]]; then
        if id -u postgres >/dev/null 2>&1; then u=postgres; else u=weir-pg; fi
    fi
    if ! id -u "$u" >/dev/null 2>&1; then
        say "creating system user $u to run PostgreSQL (it refuses to run as root)"
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$u" ||
            die "could not create user $u"
    fi
    [[ $(id -u "$u") -ne 0 ]] || die "WEIR_PG_USER must not be root"
    echo "$u"
}

# Run a command as the cluster's owner, from / (its cwd may be unreadable to that user).
as_owner() {
    local u
    u=$(run_user)
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u "$u" -- "$@")
    else
        (cd / && "$@")
    fi
}

# As root: let the owner cross every parent of $DIR (e.g. /root, which is 0700).
grant_search() {
    [[ $(id -u) -eq 0 ]] || return 0
    local u d parents=()
    u=$(run_user)
    d=$(dirname "$DIR")
    while [[ "$d" != / ]]; do
        parents=("$d" "${parents[@]+"${parents[@]}"}")
        d=$(dirname "$d")
    done
    for d in "${parents[@]+"${parents[@]}"}"; do
        if ! runuser -u "$u" -- test -x "$d" 2>/dev/null; then
            if command -v setfacl >/dev/null 2>&1 && setfacl -m "u:$u:x" "$d" 2>/dev/null; then
                say "gave $u search permission on $d (ACL)"
            else
                chmod o+x "$d"
                say "gave others search (not list) permission on $d, so that $u can reach $DIR"
            fi
        fi
    done
}

# ---------------------------------------------------------------------------------------
# the cluster

lock_dir() {
    mkdir -p "$(dirname "$DIR")"
    exec 9>"$DIR.lock"
    flock -w 300 9 || die "timed out waiting for another postgres.sh start/stop on $DIR"
}

# The postmaster's pid if it is running on $DATA, else nothing.
running_pid() {
    [[ -f "$DATA/postmaster.pid" ]] || return 0
    local pid
    pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    local state
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n "$state" && "$state" != Z ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q postgres || return 0
    echo "$pid"
}

# The port the running server was started on (line 4 of postmaster.pid).
running_port() {
    sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

init_cluster() {
    local owner version
    owner=$(run_user)
    version=$(server_version)
    if [[ -f "$DATA/PG_VERSION" ]]; then
        if [[ "$(cat "$DATA/PG_VERSION")" == "$version" ]]; then
            return
        fi
        say "the cluster in $DATA is PostgreSQL $(cat "$DATA/PG_VERSION") and the server is $version: starting a new one"
    fi
    if [[ -d "$DIR" && ! -f "$MARKER" && -n "$(ls -A "$DIR")" ]]; then
        die "$DIR is not empty and was not made by postgres.sh; choose another WEIR_PG_DIR"
    fi
    rm -rf "${DATA:?}"
    mkdir -p "$DIR"
    touch "$MARKER"
    grant_search
    [[ $(id -u) -ne 0 ]] || chown "$owner:" "$DIR" "$MARKER"
    say "initdb: PostgreSQL $version cluster in $DATA (owner $owner, superuser $ROLE)"
    if ! as_owner "$BIN/initdb" -D "$DATA" -U "$ROLE" -E UTF8 --locale=C \
        --auth-local=trust --auth-host=trust >"$DIR/initdb.log" 2>&1; then
        cat "$DIR/initdb.log" >&2
        die "initdb failed"
    fi
    as_owner sh -c "printf '\n# scripts/postgres.sh\ninclude_if_exists = '\''weir.conf'\''\n' >> '$DATA/postgresql.conf'"
}

# A CA and a server certificate for 127.0.0.1 under $TLS (made once).
make_tls() {
    [[ -s "$TLS/server.key" && -s "$TLS/server.pem" && -s "$TLS/ca.pem" ]] && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl is needed for the server's TLS certificate"
    mkdir -p "$TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=weir test CA" \
        -keyout "$TLS/ca.key" -out "$TLS/ca.pem" >/dev/null 2>&1 || die "openssl: making the CA failed"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$TLS/server.key" -out "$TLS/server.csr" >/dev/null 2>&1 || die "openssl: the server key failed"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$TLS/ext.cnf"
    openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial \
        -days 3650 -extfile "$TLS/ext.cnf" -out "$TLS/server.pem" >/dev/null 2>&1 ||
        die "openssl: signing the server certificate failed"
    chmod 600 "$TLS/server.key"
    [[ $(id -u) -ne 0 ]] || chown -R "$(run_user):" "$TLS"
    chmod 644 "$TLS/ca.pem"
}

write_config() {
    make_tls
    # Trust on the socket and on 127.0.0.1 only: no ::1, no other address. The TLS role
    # only over TLS.
    as_owner tee "$DATA/pg_hba.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh at every start: a throwaway test cluster.
# TYPE     DATABASE  USER       ADDRESS       METHOD
local      all       all                      trust
hostssl    all       $TLS_ROLE  127.0.0.1/32  trust
hostnossl  all       $TLS_ROLE  127.0.0.1/32  reject
host       all       all        127.0.0.1/32  trust
EOF
    as_owner tee "$DATA/weir.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh at every start.
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 100
fsync = on
logging_collector = off
log_min_messages = warning
log_connections = off
ssl = on
ssl_cert_file = '$TLS/server.pem'
ssl_key_file = '$TLS/server.key'
EOF
}

fail_start() {
    say "$1; the last lines of $LOGFILE:"
    tail -n 40 "$LOGFILE" >&2 || true
    if [[ -s "$DIR/pg_ctl.out" ]]; then
        say "pg_ctl said:"
        cat "$DIR/pg_ctl.out" >&2 || true
    fi
    as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
    die "PostgreSQL did not start"
}

create_database() {
    local exists
    exists=$("$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'") || die "psql could not query the server"
    if [[ "$exists" != 1 ]]; then
        "$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres -c "CREATE DATABASE $DB" >&2 ||
            die "could not create database $DB"
        say "created database $DB"
    fi
    # The default search_path starts with "$user", and the role is named like Weir's own
    # schema: unqualified tables would land in schema weir once it exists.
    "$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres \
        -c "ALTER DATABASE $DB SET search_path TO public" >&2 ||
        die "could not set the search_path of database $DB"
    "$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres -c \
        "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$TLS_ROLE') THEN CREATE ROLE $TLS_ROLE LOGIN SUPERUSER; END IF; END \$\$" >&2 ||
        die "could not create role $TLS_ROLE"
}

cmd_start() {
    local fresh=0
    while (($# > 0)); do
        case "$1" in
            --fresh) fresh=1 ;;
            *) die "start: unknown argument '$1' (expected --fresh)" ;;
        esac
        shift
    done
    ensure_bin
    lock_dir
    local pid
    pid=$(running_pid)
    if [[ -n "$pid" && "$fresh" == 1 ]]; then
        stop_server
        pid=""
    fi
    if [[ -n "$pid" ]]; then
        local p
        p=$(running_port)
        [[ "$p" == "$PORT" ]] ||
            die "PostgreSQL is already running on $DATA (pid $pid) but on port $p; run 'scripts/postgres.sh stop' first"
        "$BIN/pg_isready" -q -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres -t 10 ||
            die "PostgreSQL (pid $pid) is running but does not answer on $HOST:$PORT"
        create_database
        say "PostgreSQL is already running (pid $pid)"
        echo "$URL"
        return 0
    fi
    if port_open "$PORT"; then
        die "port $HOST:$PORT is already in use by another process (see: ss -ltnp 'sport = :$PORT'); stop it or set WEIR_PG_PORT"
    fi
    if [[ "$fresh" == 1 && -f "$MARKER" ]]; then
        say "wiping the cluster in $DATA"
        rm -rf "${DATA:?}"
    fi
    init_cluster
    write_config
    [[ $(id -u) -ne 0 ]] || { touch "$LOGFILE" && chown "$(run_user):" "$LOGFILE"; }
    rm -f "$DATA/postmaster.pid"
    local start now
    start=$(date +%s)
    printf '\n===== postgres.sh: starting PostgreSQL at %s =====\n' "$(date -u +%FT%TZ)" >>"$LOGFILE"
    # setsid: its own session, so a Ctrl-C in the calling terminal does not reach it; the
    # lock (fd 9) and the caller's stdio are not inherited.
    if ! as_owner setsid -w "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -s start </dev/null >"$DIR/pg_ctl.out" 2>&1 9>&-; then
        fail_start "pg_ctl start failed"
    fi
    while ! "$BIN/pg_isready" -q -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres -t 2; do
        now=$(date +%s)
        if ((now - start >= START_TIMEOUT)); then
            fail_start "the server did not accept connections within ${START_TIMEOUT}s"
        fi
        if [[ ! -f "$DATA/postmaster.pid" ]] && ((now - start >= 5)); then
            fail_start "the server exited during startup"
        fi
        sleep 0.2
    done
    create_database
    say "PostgreSQL $(server_version) is up in $(($(date +%s) - start))s on $HOST:$PORT (pid $(running_pid), data $DATA, log $LOGFILE)"
    echo "$URL"
}

stop_server() {
    local pid
    pid=$(running_pid)
    if [[ -z "$pid" ]]; then
        say "PostgreSQL is not running ($DATA)"
        return 0
    fi
    say "stopping PostgreSQL (pid $pid)"
    if ! as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -s -t 30 stop; then
        say "fast shutdown did not finish in 30s; immediate shutdown"
        as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate -s -t 30 stop || true
    fi
    [[ -z "$(running_pid)" ]] || die "could not stop PostgreSQL (pid $pid)"
    say "stopped"
}

cmd_stop() {
    if [[ ! -f "$DATA/postmaster.pid" ]]; then
        say "PostgreSQL is not running ($DATA)"
        return 0
    fi
    ensure_bin
    lock_dir
    stop_server
}

cmd_status() {
    local pid
    pid=$(running_pid)
    if [[ -n "$pid" ]]; then
        echo "PostgreSQL is running: pid $pid; $URL"
        echo "data $DATA; log $LOGFILE"
    else
        echo "PostgreSQL is not running ($DATA)"
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
        start) cmd_start "$@" ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) echo "export WEIR_POSTGRES_URL=$URL WEIR_POSTGRES_CA=$TLS/ca.pem" ;;
        logs)
            [[ -f "$LOGFILE" ]] || die "no log at $LOGFILE"
            tail -n "${1:-100}" "$LOGFILE"
            ;;
        psql)
            ensure_bin
            exec "$BIN/psql" -X -h "$HOST" -p "$PORT" -U "$ROLE" -d "$DB" "$@"
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
