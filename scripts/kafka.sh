#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft, broker + controller in one JVM) on loopback, for
# Weir's Kafka tests. No Docker: the broker's jars come from Maven Central through
# tests/kafka/pom.xml and run on the local Java (17 or newer).
#
# Usage: scripts/kafka.sh COMMAND [ARGS...]
#
#   fetch                     resolve the Kafka jars into $WEIR_CACHE_DIR/kafka/<version>/libs
#                             (skipped when already there)
#   start [--sasl] [--keep] [--prop KEY=VALUE]...
#                             start the broker in the background and wait until it answers.
#                             PLAINTEXT on 127.0.0.1:$WEIR_KAFKA_PORT; --sasl adds a
#                             SASL_PLAINTEXT listener (mechanism PLAIN) on $WEIR_KAFKA_SASL_PORT
#                             with users admin/admin-secret and weir/weir-secret. Storage starts
#                             empty unless --keep. --prop adds or overrides a broker setting.
#                             Already running: prints so and exits 0.
#   stop                      SIGTERM, wait, then SIGKILL; does nothing if not running
#   restart [--kill]          stop, then start again on the same storage, ports and settings.
#                             --kill: SIGKILL instead of a clean shutdown (a crash); the broker
#                             then waits out its old session (broker.session.timeout.ms, 9 s)
#                             before it serves again
#   status                    running or not (exit 0 or 3), listeners, pid, log
#   logs [N]                  the last N (default 100) lines of the broker log
#   topics ARGS...            kafka-topics.sh, e.g. topics --bootstrap-server 127.0.0.1:19092 --list
#   groups ARGS...            kafka-consumer-groups.sh, e.g. groups --bootstrap-server
#                             127.0.0.1:19092 --describe --group g1
#   api-versions ARGS...      kafka-broker-api-versions.sh
#   console-producer ARGS...  kafka-console-producer.sh
#   console-consumer ARGS...  kafka-console-consumer.sh
#   class CLASS ARGS...       any other main class on the Kafka classpath
#
# Environment (all optional):
#   WEIR_CACHE_DIR               jar cache root (default $HOME/.cache/weir)
#   WEIR_KAFKA_VERSION           Kafka version (default: kafka.version in tests/kafka/pom.xml)
#   WEIR_KAFKA_PORT              PLAINTEXT port (default 19092)
#   WEIR_KAFKA_SASL_PORT         SASL_PLAINTEXT port with --sasl (default 19093)
#   WEIR_KAFKA_CONTROLLER_PORT   KRaft controller port (default 19094)
#   WEIR_KAFKA_DIR               storage, config, pid and log (default
#                                ${TMPDIR:-/tmp}/weir-kafka/<port>)
#   WEIR_KAFKA_HEAP              broker heap flags (default "-Xms256m -Xmx512m")
#   WEIR_KAFKA_START_TIMEOUT     seconds to wait for the broker to answer (default 60)
#   WEIR_KAFKA_STOP_TIMEOUT      seconds between SIGTERM and SIGKILL (default 30)
#   WEIR_MAVEN_ARGS              extra arguments for mvn (e.g. -Dmaven.repo.local=DIR)
#   JAVA_HOME                    use $JAVA_HOME/bin/java instead of java from PATH
#
# With --sasl, $WEIR_KAFKA_DIR/client-sasl-weir.properties and client-sasl-admin.properties
# hold client settings for the tools' --command-config.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
POM="$ROOT/tests/kafka/pom.xml"

HOST=127.0.0.1
PORT=${WEIR_KAFKA_PORT:-19092}
SASL_PORT=${WEIR_KAFKA_SASL_PORT:-19093}
CONTROLLER_PORT=${WEIR_KAFKA_CONTROLLER_PORT:-19094}
DIR=${WEIR_KAFKA_DIR:-${TMPDIR:-/tmp}/weir-kafka/$PORT}
DIR=${DIR%/}
HEAP=${WEIR_KAFKA_HEAP:--Xms256m -Xmx512m}
START_TIMEOUT=${WEIR_KAFKA_START_TIMEOUT:-60}
STOP_TIMEOUT=${WEIR_KAFKA_STOP_TIMEOUT:-30}

PIDFILE="$DIR/kafka.pid"
LOGFILE="$DIR/kafka.log"
CONFIG="$DIR/server.properties"
MARKER="$DIR/.weir-kafka"

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

kafka_version() {
    if [[ -n "${WEIR_KAFKA_VERSION:-}" ]]; then
        echo "$WEIR_KAFKA_VERSION"
        return
    fi
    [[ -f "$POM" ]] || die "missing $POM"
    local v
    v=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n 1)
    [[ -n "$v" ]] || die "no <kafka.version> in $POM"
    echo "$v"
}

VERSION=$(kafka_version)
CACHE="${WEIR_CACHE_DIR:-$HOME/.cache/weir}/kafka/$VERSION"
LIBS="$CACHE/libs"

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        command -v java
    else
        die "java not found: Kafka $VERSION needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)"
    fi
}

check_java() {
    local java spec
    java=$(java_bin)
    spec=$("$java" -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = //p')
    spec=${spec#1.}
    [[ "$spec" =~ ^[0-9]+$ ]] || die "could not tell the version of $java"
    if [[ "$VERSION" == 4.* || "$VERSION" == [5-9].* ]] && ((spec < 17)); then
        die "$java is Java $spec; the Kafka $VERSION broker needs Java 17 or newer (set JAVA_HOME)"
    fi
}

# ---------------------------------------------------------------------------------------
# fetch

fetch() {
    if [[ -f "$LIBS/.complete" ]]; then
        say "Kafka $VERSION is already in $LIBS"
        return
    fi
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found: the Kafka jars come from Maven Central through Maven (Debian: apt-get install maven)"
    mkdir -p "$CACHE"
    # One fetch at a time per version (tests may start in parallel).
    exec 8>"$CACHE/.fetch.lock"
    flock -w 600 8 || die "timed out waiting for another fetch of Kafka $VERSION"
    if [[ -f "$LIBS/.complete" ]]; then
        exec 8>&-
        say "Kafka $VERSION is already in $LIBS"
        return
    fi
    local tmp start
    tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
    start=$(date +%s)
    say "fetching Kafka $VERSION and its dependencies from Maven Central into $LIBS ..."
    # shellcheck disable=SC2086 # WEIR_MAVEN_ARGS is a list of arguments
    if ! mvn -B -q -Dstyle.color=never ${WEIR_MAVEN_ARGS:-} -f "$POM" \
        -Dkafka.version="$VERSION" \
        dependency:copy-dependencies -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
        cat "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn could not resolve org.apache.kafka:kafka_2.13:$VERSION (is Maven Central reachable? is the version right?)"
    fi
    [[ -f "$tmp/libs/kafka_2.13-$VERSION.jar" ]] || {
        rm -rf "$tmp"
        die "mvn finished but kafka_2.13-$VERSION.jar is not among the copied jars"
    }
    rm -rf "$LIBS"
    mv "$tmp/libs" "$LIBS"
    rm -rf "$tmp"
    touch "$LIBS/.complete"
    exec 8>&-
    say "fetched Kafka $VERSION: $(find "$LIBS" -name '*.jar' | wc -l) jars, $(du -sh "$LIBS" | cut -f1), in $(($(date +%s) - start))s"
}

ensure_fetched() {
    [[ -f "$LIBS/.complete" ]] || fetch
}

# The main class for a tool: the first candidate found in the Kafka jars (names moved
# between Kafka versions: kafka.admin.* in 3.x, org.apache.kafka.tools.* in 4.x).
main_class() {
    ensure_fetched
    local index="$CACHE/classes.txt" jar c
    if [[ ! -s "$index" ]]; then
        for jar in "$LIBS"/kafka*.jar; do
            if command -v unzip >/dev/null 2>&1; then unzip -Z1 "$jar"; else jar tf "$jar"; fi
        done | grep '\.class$' >"$index.tmp" || true
        mv "$index.tmp" "$index"
    fi
    for c in "$@"; do
        if grep -qxF "${c//.//}.class" "$index"; then
            echo "$c"
            return
        fi
    done
    die "none of these classes is in Kafka $VERSION: $*"
}

# ---------------------------------------------------------------------------------------
# running tools (short-lived JVMs: quick start, warnings only, on stderr)

tools_log_config() {
    local f="$CACHE/tools-log4j2.properties"
    if [[ ! -f "$f" ]]; then
        cat >"$f.tmp" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
        mv "$f.tmp" "$f"
    fi
    echo "$f"
}

run_class() {
    ensure_fetched
    local class=$1
    shift
    local java log_config
    java=$(java_bin)
    log_config=$(tools_log_config)
    exec "$java" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$log_config" -cp "$LIBS/*" "$class" "$@"
}

# ---------------------------------------------------------------------------------------
# the broker process

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# The broker's pid if it is running (a live, non-zombie java running kafka.Kafka with our
# config), else nothing.
running_pid() {
    [[ -f "$PIDFILE" ]] || return 0
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    alive "$pid" || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$CONFIG"; then
        echo "$pid"
    fi
}

# True while process $1 exists and is not a zombie.
alive() {
    local state
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [[ -n "$state" && "$state" != Z ]]
}

sasl_enabled() {
    [[ -f "$CONFIG" ]] && grep -q '^listeners=.*SASL_PLAINTEXT://' "$CONFIG"
}

listeners_text() {
    local s="PLAINTEXT $HOST:$PORT"
    if sasl_enabled; then
        s="$s, SASL_PLAINTEXT $HOST:$SASL_PORT (PLAIN: weir/weir-secret, admin/admin-secret)"
    fi
    echo "$s"
}

lock_dir() {
    mkdir -p "$DIR"
    exec 9>"$DIR.lock"
    flock -w 300 9 || die "timed out waiting for another kafka.sh start/stop on $DIR"
}

# Empty (or create) the state directory. Refuses a non-empty directory that this script did
# not create, so a mistaken WEIR_KAFKA_DIR never loses anything.
fresh_dir() {
    if [[ -d "$DIR" && ! -f "$MARKER" ]] && [[ -n "$(ls -A "$DIR")" ]]; then
        die "$DIR is not empty and was not made by kafka.sh; choose another WEIR_KAFKA_DIR"
    fi
    rm -rf "${DIR:?}/data" "$CONFIG" "$LOGFILE" "$PIDFILE" "$DIR/log4j2.properties" \
        "$DIR"/client-*.properties "$DIR/cluster.id" \
        "$DIR/format.log" "$DIR/ready-check.log"
    mkdir -p "$DIR/data"
    touch "$MARKER"
}

write_config() {
    local sasl=$1
    shift
    local listeners="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
    local advertised="PLAINTEXT://$HOST:$PORT"
    if [[ "$sasl" == 1 ]]; then
        listeners="$listeners,SASL_PLAINTEXT://$HOST:$SASL_PORT"
        advertised="$advertised,SASL_PLAINTEXT://$HOST:$SASL_PORT"
    fi
    {
        cat <<EOF
# Written by scripts/kafka.sh: a single-node KRaft cluster for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
log.dirs=$DIR/data

auto.create.topics.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A dead transactional producer's open transaction holds read_committed readers back
# until the broker aborts it; it looks for timed-out transactions this often (default
# 10 s). docs/cluster.md, "Failover".
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000

# a 2-core machine: few threads
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1
EOF
        if [[ "$sasl" == 1 ]]; then
            cat <<'EOF'

# SASL_PLAINTEXT with PLAIN: users admin/admin-secret and weir/weir-secret
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="admin-secret" user_admin="admin-secret" user_weir="weir-secret";
EOF
        fi
        if (($# > 0)); then
            printf '\n# --prop\n'
            printf '%s\n' "$@"
        fi
    } >"$CONFIG"

    cat >"$DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF

    if [[ "$sasl" == 1 ]]; then
        local user pass
        for user in weir admin; do
            pass="$user-secret"
            cat >"$DIR/client-sasl-$user.properties" <<EOF
bootstrap.servers=$HOST:$SASL_PORT
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$user" password="$pass";
EOF
        done
    fi
}

format_storage() {
    if [[ -f "$DIR/data/meta.properties" ]]; then
        return
    fi
    local cid java storage
    # A URL-safe base64 UUID, as Kafka's own tool makes them; one starting with '-' would be
    # read as an option by the storage tool, so the first character is drawn again.
    cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    while [[ $cid == -* ]]; do
        cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
    echo "$cid" >"$DIR/cluster.id"
    java=$(java_bin)
    storage=$(main_class kafka.tools.StorageTool org.apache.kafka.tools.StorageTool)
    say "formatting storage in $DIR/data (cluster id $cid)"
    if ! "$java" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$(tools_log_config)" -cp "$LIBS/*" \
        "$storage" format --ignore-formatted -t "$cid" -c "$CONFIG" >"$DIR/format.log" 2>&1; then
        cat "$DIR/format.log" >&2
        die "formatting the storage failed"
    fi
}

# Fails if a port the broker needs is taken. $1: 1 if the SASL listener is wanted.
check_ports_free() {
    local p
    local ports=("$PORT" "$CONTROLLER_PORT")
    if [[ "$1" == 1 ]]; then ports+=("$SASL_PORT"); fi
    for p in "${ports[@]}"; do
        if port_open "$p"; then
            die "port $HOST:$p is already in use by another process (see: ss -ltnp 'sport = :$p'); stop it or set WEIR_KAFKA_PORT / WEIR_KAFKA_SASL_PORT / WEIR_KAFKA_CONTROLLER_PORT"
        fi
    done
}

# Start the JVM on the existing config and storage, then wait until it answers.
launch() {
    local java pid start now elapsed last_report=0 topics
    java=$(java_bin)
    if sasl_enabled; then check_ports_free 1; else check_ports_free 0; fi
    rm -f "$DIR/ready-check.log"
    start=$(date +%s)
    printf '\n===== kafka.sh: starting Kafka %s at %s =====\n' "$VERSION" "$(date -u +%FT%TZ)" >>"$LOGFILE"
    # setsid: its own session, so a Ctrl-C in the calling terminal or test does not reach it;
    # fd 9 (our lock) and the caller's stdio are not inherited.
    # shellcheck disable=SC2086 # HEAP is a list of JVM flags
    setsid "$java" $HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
        -cp "$LIBS/*" kafka.Kafka "$CONFIG" </dev/null >>"$LOGFILE" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    say "started Kafka $VERSION (pid $pid, log $LOGFILE); waiting up to ${START_TIMEOUT}s for $HOST:$PORT"

    topics=$(main_class org.apache.kafka.tools.TopicCommand kafka.admin.TopicCommand)
    while true; do
        now=$(date +%s)
        elapsed=$((now - start))
        if ! alive "$pid"; then
            fail_start "the broker exited during startup"
        fi
        if ((elapsed >= START_TIMEOUT)); then
            fail_start "the broker did not answer within ${START_TIMEOUT}s"
        fi
        if port_open "$PORT" && { ! sasl_enabled || port_open "$SASL_PORT"; }; then
            # The port accepts connections: ask for metadata, the real test of readiness.
            if timeout $((START_TIMEOUT - elapsed + 5)) "$java" -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
                -Dlog4j2.configurationFile="$(tools_log_config)" -cp "$LIBS/*" "$topics" \
                --bootstrap-server "$HOST:$PORT" --list >"$DIR/ready-check.log" 2>&1; then
                break
            fi
        fi
        if ((elapsed - last_report >= 5)); then
            say "... still waiting (${elapsed}s)"
            last_report=$elapsed
        fi
        sleep 0.5
    done
    say "Kafka $VERSION is up in $(($(date +%s) - start))s: $(listeners_text); pid $pid; storage $DIR/data"
}

fail_start() {
    say "$1; the last lines of $LOGFILE:"
    tail -n 40 "$LOGFILE" >&2 || true
    if [[ -s "$DIR/ready-check.log" ]]; then
        say "the last readiness check said:"
        tail -n 10 "$DIR/ready-check.log" >&2 || true
    fi
    stop_process >/dev/null 2>&1 || true
    die "Kafka did not start"
}

# Stops the broker: SIGTERM, then SIGKILL after STOP_TIMEOUT. $1 = kill: SIGKILL at once.
stop_process() {
    local pid waited=0 how=${1:-term}
    pid=$(running_pid)
    if [[ -z "$pid" ]]; then
        rm -f "$PIDFILE"
        say "Kafka is not running ($DIR)"
        return 0
    fi
    if [[ "$how" == kill ]]; then
        say "killing Kafka (pid $pid) with SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    else
        say "stopping Kafka (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    while [[ -n "$(running_pid)" ]]; do
        if ((waited >= STOP_TIMEOUT * 5)); then
            say "Kafka did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            waited=0
            while [[ -n "$(running_pid)" ]] && ((waited < 50)); do
                sleep 0.2
                waited=$((waited + 1))
            done
            break
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    [[ -z "$(running_pid)" ]] || die "could not stop Kafka (pid $pid)"
    rm -f "$PIDFILE"
    say "stopped"
}

# ---------------------------------------------------------------------------------------
# commands

cmd_start() {
    local sasl=0 keep=0 props=()
    while (($# > 0)); do
        case "$1" in
            --sasl) sasl=1 ;;
            --keep) keep=1 ;;
            --prop)
                [[ $# -ge 2 && "$2" == *=* ]] || die "--prop needs KEY=VALUE"
                props+=("$2")
                shift
                ;;
            --prop=*) props+=("${1#--prop=}") ;;
            *) die "start: unknown argument '$1' (expected --sasl, --keep, --prop KEY=VALUE)" ;;
        esac
        shift
    done
    lock_dir
    local pid
    pid=$(running_pid)
    if [[ -n "$pid" ]]; then
        if [[ "$sasl" == 1 ]] && ! sasl_enabled; then
            die "Kafka is already running (pid $pid) without the SASL listener; run 'scripts/kafka.sh stop' first"
        fi
        say "Kafka is already running (pid $pid): $(listeners_text)"
        return 0
    fi
    ensure_fetched
    check_java
    check_ports_free "$sasl"
    if [[ "$keep" == 1 && -f "$DIR/data/meta.properties" ]]; then
        say "keeping the storage in $DIR/data"
        rm -f "$PIDFILE"
    else
        fresh_dir
    fi
    write_config "$sasl" "${props[@]+"${props[@]}"}"
    format_storage
    launch
}

cmd_restart() {
    local how=term
    case "${1:-}" in
        "") ;;
        --kill) how="kill" ;;
        *) die "restart: unknown argument '$1' (expected nothing or --kill)" ;;
    esac
    lock_dir
    [[ -f "$CONFIG" && -f "$DIR/data/meta.properties" ]] ||
        die "nothing to restart in $DIR: run 'scripts/kafka.sh start' first"
    stop_process "$how"
    ensure_fetched
    launch
}

cmd_stop() {
    lock_dir
    stop_process
}

cmd_status() {
    local pid
    pid=$(running_pid)
    if [[ -n "$pid" ]]; then
        echo "Kafka $VERSION is running: pid $pid; $(listeners_text)"
        echo "storage $DIR/data; log $LOGFILE"
        if sasl_enabled; then
            echo "SASL client settings: $DIR/client-sasl-weir.properties, $DIR/client-sasl-admin.properties"
        fi
    else
        echo "Kafka is not running ($DIR)"
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
        fetch) fetch ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop ;;
        restart) cmd_restart "$@" ;;
        status) cmd_status ;;
        logs)
            [[ -f "$LOGFILE" ]] || die "no log at $LOGFILE"
            tail -n "${1:-100}" "$LOGFILE"
            ;;
        topics) run_class "$(main_class org.apache.kafka.tools.TopicCommand kafka.admin.TopicCommand)" "$@" ;;
        groups)
            run_class "$(main_class org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
                kafka.admin.ConsumerGroupCommand)" "$@"
            ;;
        api-versions)
            run_class "$(main_class org.apache.kafka.tools.BrokerApiVersionsCommand \
                kafka.admin.BrokerApiVersionsCommand)" "$@"
            ;;
        console-producer)
            run_class "$(main_class org.apache.kafka.tools.ConsoleProducer kafka.tools.ConsoleProducer)" "$@"
            ;;
        console-consumer)
            run_class "$(main_class org.apache.kafka.tools.consumer.ConsoleConsumer \
                kafka.tools.ConsoleConsumer)" "$@"
            ;;
        class)
            [[ $# -ge 1 ]] || die "class: name a main class"
            run_class "$@"
            ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) usage >&2; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
