#!/usr/bin/env bash
# Local development/test stack for cangrejo: a PostgreSQL 15 primary, a streaming replica made
# from it with pg_basebackup, and a Redis, all listening on 127.0.0.1 only.
#
#   stack.sh start | stop | status | env
#   stack.sh stop-primary | start-primary | stop-replica | start-replica | stop-redis | start-redis
#
# Environment:
#   STACK_DIR         where everything lives (default <repo>/.local/stack)
#   PG_PRIMARY_PORT, PG_REPLICA_PORT, REDIS_PORT
#                     ports; when unset, the ones recorded in $STACK_DIR/ports.env, else free
#                     loopback ports are picked (never 5432/6379) and recorded there
#   PG_EXTRA_OPTS     extra postgres server options, e.g. "-c fsync=off"
#   PG_STOP_MODE      pg_ctl stop mode for stop/stop-primary/stop-replica (default fast)
#   PG_BIN            PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   STACK_TIMEOUT     seconds to wait for a service to accept connections (default 60)
#
# start is idempotent (what runs is left alone, what is stopped is started); stop ends exactly
# what start started (found through pid files) and succeeds when nothing runs. status exits 0
# when all three run, 3 otherwise. env prints DATABASE_URL, DATABASE_REPLICA_URLS and REDIS_URL.
#
# DEVELOPMENT AND TEST ONLY: PostgreSQL trusts every local connection without a password.
set -euo pipefail

die() {
    echo "stack.sh: $*" >&2
    exit 1
}
note() { echo "stack.sh: $*"; }

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_DIR=${STACK_DIR:-$REPO_ROOT/.local/stack}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_EXTRA_OPTS=${PG_EXTRA_OPTS:-}
PG_STOP_MODE=${PG_STOP_MODE:-fast}
STACK_TIMEOUT=${STACK_TIMEOUT:-60}
PG_USER=postgres
DB_NAME=cangrejo
SLOT_NAME=cangrejo_replica

PG_DIR='' PRIMARY_DATA='' REPLICA_DATA='' PG_SOCKET_DIR='' REDIS_DIR='' REDIS_PID='' PORTS_FILE=''
PRIMARY_PORT='' REPLICA_PORT='' REDIS_PORT_=''

set_paths() { # [create]
    [[ ${1:-} == create ]] && mkdir -p "$STACK_DIR"
    [[ -d $STACK_DIR ]] && STACK_DIR=$(cd "$STACK_DIR" && pwd -P)
    PG_DIR=$STACK_DIR/pg
    PRIMARY_DATA=$PG_DIR/primary
    REPLICA_DATA=$PG_DIR/replica
    PG_SOCKET_DIR=$PG_DIR/run
    REDIS_DIR=$STACK_DIR/redis
    REDIS_PID=$REDIS_DIR/redis.pid
    PORTS_FILE=$STACK_DIR/ports.env
}

# Serialize concurrent invocations on the same stack directory.
take_lock() {
    exec 9>"$STACK_DIR/.lock"
    flock -w 300 9 || die "another stack.sh holds $STACK_DIR/.lock"
}

# Children never inherit the lock (fd 9): a daemon holding it would block every later call.
as_pg() { runuser -u "$PG_USER" -- "$@" 9>&-; }

# ---------------------------------------------------------------------------------------------
# ports

recorded_port() { # name -> value recorded in ports.env, or nothing
    [[ -f $PORTS_FILE ]] || return 0
    sed -n "s/^$1=\([0-9]\{1,5\}\)\$/\1/p" "$PORTS_FILE" | tail -n 1
}

python_bin() {
    if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3 || die "python3 is needed to pick free ports"; fi
}

# A port free on 127.0.0.1, below the kernel's ephemeral range so that outgoing connections do
# not take it later, and never a default port.
pick_port() { # excluded ports...
    "$(python_bin)" - "$@" <<'EOF'
import random, socket, sys
excluded = {int(p) for p in sys.argv[1:] if p} | {5432, 6379}
for _ in range(1000):
    port = random.randint(20000, 32000)
    if port in excluded:
        continue
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    sys.exit(0)
sys.exit("no free port found")
EOF
}

valid_port() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }

# Environment first, then ports.env; with "pick", free ports for what is still unknown.
resolve_ports() { # [pick]
    PRIMARY_PORT=${PG_PRIMARY_PORT:-$(recorded_port PG_PRIMARY_PORT)}
    REPLICA_PORT=${PG_REPLICA_PORT:-$(recorded_port PG_REPLICA_PORT)}
    REDIS_PORT_=${REDIS_PORT:-$(recorded_port REDIS_PORT)}
    [[ ${1:-} == pick ]] || return 0
    [[ -n $PRIMARY_PORT ]] || PRIMARY_PORT=$(pick_port "$REPLICA_PORT" "$REDIS_PORT_")
    [[ -n $REPLICA_PORT ]] || REPLICA_PORT=$(pick_port "$PRIMARY_PORT" "$REDIS_PORT_")
    [[ -n $REDIS_PORT_ ]] || REDIS_PORT_=$(pick_port "$PRIMARY_PORT" "$REPLICA_PORT")
    local p
    for p in "$PRIMARY_PORT" "$REPLICA_PORT" "$REDIS_PORT_"; do
        valid_port "$p" || die "invalid port '$p'"
    done
    [[ $PRIMARY_PORT != "$REPLICA_PORT" && $PRIMARY_PORT != "$REDIS_PORT_" &&
        $REPLICA_PORT != "$REDIS_PORT_" ]] ||
        die "ports must differ: primary $PRIMARY_PORT, replica $REPLICA_PORT, redis $REDIS_PORT_"
    local content
    content=$(printf '# Ports of this stack, chosen by deploy/local/stack.sh (delete the file to re-pick).\nPG_PRIMARY_PORT=%s\nPG_REPLICA_PORT=%s\nREDIS_PORT=%s\n' \
        "$PRIMARY_PORT" "$REPLICA_PORT" "$REDIS_PORT_")
    if [[ ! -f $PORTS_FILE || $(cat "$PORTS_FILE") != "$content" ]]; then
        printf '%s\n' "$content" >"$PORTS_FILE.tmp"
        mv "$PORTS_FILE.tmp" "$PORTS_FILE"
    fi
}

need_ports() {
    [[ -n $PRIMARY_PORT && -n $REPLICA_PORT && -n $REDIS_PORT_ ]] ||
        die "no ports recorded in $PORTS_FILE and not all of PG_PRIMARY_PORT, PG_REPLICA_PORT, REDIS_PORT set; run 'stack.sh start' first"
}

# ---------------------------------------------------------------------------------------------
# helpers

log_tail() { # file
    if [[ -f $1 ]]; then
        echo "---- last lines of $1 ----" >&2
        tail -n 40 "$1" >&2
        echo "----" >&2
    else
        echo "(no log file $1)" >&2
    fi
}

check_tools() {
    [[ -x $PG_BIN/pg_ctl ]] || die "PostgreSQL binaries not found in $PG_BIN (run deploy/local/deps.sh, or set PG_BIN)"
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        die "redis-server/redis-cli not found (run deploy/local/deps.sh)"
    fi
    id "$PG_USER" >/dev/null 2>&1 || die "OS user '$PG_USER' missing (install the postgresql package)"
    command -v runuser >/dev/null || die "runuser not found (util-linux)"
    [[ $EUID -eq 0 ]] || die "run as root (postgres binaries are run as the '$PG_USER' user via runuser)"
}

# The postgres user must be able to reach $PG_DIR: the stack dir may be a 0700 temp dir made by
# root, and its parents may be closed too. Grant traverse (o+x) only where it is missing.
ensure_pg_traversal() {
    chmod o+x "$STACK_DIR"
    as_pg test -x "$STACK_DIR" && return 0
    local d=$STACK_DIR parents=()
    while [[ $d != / ]]; do
        d=$(dirname "$d")
        parents=("$d" "${parents[@]}")
    done
    for d in "${parents[@]}"; do
        if ! as_pg test -x "$d"; then
            echo "stack.sh: granting traverse permission (o+x) on $d so that postgres can reach $STACK_DIR" >&2
            chmod o+x "$d"
        fi
    done
    as_pg test -x "$STACK_DIR" || die "the '$PG_USER' user cannot traverse $STACK_DIR"
}

prepare_dirs() {
    ensure_pg_traversal
    mkdir -p "$PG_DIR" "$REDIS_DIR"
    chown "$PG_USER:" "$PG_DIR"
    chmod 0700 "$PG_DIR" "$REDIS_DIR"
    if [[ ! -d $PG_SOCKET_DIR ]]; then
        mkdir -p "$PG_SOCKET_DIR"
        chown "$PG_USER:" "$PG_SOCKET_DIR"
        chmod 0700 "$PG_SOCKET_DIR"
    fi
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_running() { # datadir
    [[ -f $1/postmaster.pid ]] && as_pg "$PG_BIN/pg_ctl" status -D "$1" >/dev/null 2>&1
}

pg_pid() { # datadir
    [[ -f $1/postmaster.pid ]] && head -n 1 "$1/postmaster.pid"
}

pg_ready() { # port
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U "$PG_USER" -d postgres -t 2
}

psql_primary() { # psql args...
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$PG_USER" "$@"
}

wait_pg_ready() { # name port logfile
    local deadline=$((SECONDS + STACK_TIMEOUT))
    until pg_ready "$2"; do
        if ((SECONDS >= deadline)); then
            log_tail "$3"
            die "$1 PostgreSQL does not accept connections on 127.0.0.1:$2 after ${STACK_TIMEOUT}s"
        fi
        sleep 0.2
    done
}

# Settings that depend on the current ports and paths, rewritten before every start
# (postgresql.conf includes this file).
write_stack_conf() { # datadir port
    local sockets=$PG_SOCKET_DIR
    # A Unix socket path is limited to 107 bytes; with a deep STACK_DIR use TCP only.
    ((${#sockets} + 16 <= 107)) || sockets=
    cat >"$1/stack.conf" <<EOF
# Written by deploy/local/stack.sh before each start.
port = $2
unix_socket_directories = '$sockets'
EOF
    chown "$PG_USER:" "$1/stack.conf"
}

init_primary() {
    local sync_opt=()
    [[ $PG_EXTRA_OPTS == *fsync=off* ]] && sync_opt=(--no-sync)
    note "initdb primary in $PRIMARY_DATA"
    rm -rf "$PRIMARY_DATA.tmp"
    if ! as_pg "$PG_BIN/initdb" -D "$PRIMARY_DATA.tmp" -U "$PG_USER" --auth=trust -E UTF8 \
        --no-locale "${sync_opt[@]}" >"$PG_DIR/initdb.log" 2>&1; then
        log_tail "$PG_DIR/initdb.log"
        die "initdb failed"
    fi
    cat >>"$PRIMARY_DATA.tmp/postgresql.conf" <<'EOF'

# ---- cangrejo local stack (deploy/local/stack.sh): development and test only ----
listen_addresses = '127.0.0.1'
max_connections = 300
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
hot_standby = on
hot_standby_feedback = on
wal_retrieve_retry_interval = 1s  # a replica finds a restarted primary quickly
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
include_if_exists = 'stack.conf'
EOF
    cat >"$PRIMARY_DATA.tmp/pg_hba.conf" <<'EOF'
# DEVELOPMENT AND TEST ONLY: trust, no password, for every user and database, from loopback
# and from the Unix socket (which lives inside the stack directory). Never use in production.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
EOF
    chown "$PG_USER:" "$PRIMARY_DATA.tmp/postgresql.conf" "$PRIMARY_DATA.tmp/pg_hba.conf"
    mv "$PRIMARY_DATA.tmp" "$PRIMARY_DATA"
}

pg_start() { # name datadir port
    local name=$1 data=$2 port=$3 log=$PG_DIR/$1.log
    write_stack_conf "$data" "$port"
    if ! as_pg "$PG_BIN/pg_ctl" start -D "$data" -l "$log" -w -t "$STACK_TIMEOUT" \
        -o "$PG_EXTRA_OPTS" >/dev/null 2>"$PG_DIR/$name.pg_ctl.err"; then
        cat "$PG_DIR/$name.pg_ctl.err" >&2
        log_tail "$log"
        die "could not start the $name PostgreSQL (port $port, data $data)"
    fi
    wait_pg_ready "$name" "$port" "$log"
    note "$name PostgreSQL started on 127.0.0.1:$port (pid $(pg_pid "$data"))"
}

pg_stop() { # name datadir
    local name=$1 data=$2
    pg_running "$data" || return 0
    if ! as_pg "$PG_BIN/pg_ctl" stop -D "$data" -m "$PG_STOP_MODE" -w -t "$STACK_TIMEOUT" >/dev/null 2>"$PG_DIR/$name.pg_ctl.err"; then
        cat "$PG_DIR/$name.pg_ctl.err" >&2
        log_tail "$PG_DIR/$name.log"
        die "could not stop the $name PostgreSQL"
    fi
    note "$name PostgreSQL stopped"
}

ensure_database() {
    local exists
    exists=$(psql_primary -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")
    [[ $exists == 1 ]] || psql_primary -d postgres -c "CREATE DATABASE $DB_NAME" >/dev/null
}

start_primary() {
    prepare_dirs
    [[ -f $PRIMARY_DATA/PG_VERSION ]] || init_primary
    if pg_running "$PRIMARY_DATA"; then
        wait_pg_ready primary "$PRIMARY_PORT" "$PG_DIR/primary.log"
        note "primary PostgreSQL already running on 127.0.0.1:$PRIMARY_PORT (pid $(pg_pid "$PRIMARY_DATA"))"
    else
        pg_start primary "$PRIMARY_DATA" "$PRIMARY_PORT"
    fi
    ensure_database
}

system_id() { # datadir
    as_pg "$PG_BIN/pg_controldata" -D "$1" 2>/dev/null | sed -n 's/^Database system identifier: *//p'
}

create_replica() {
    note "pg_basebackup replica into $REPLICA_DATA"
    rm -rf "$REPLICA_DATA.tmp"
    # A slot left by an earlier replica of this primary would make -C fail.
    psql_primary -d postgres -tAc \
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT_NAME' AND NOT active" >/dev/null
    if ! as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$PG_USER" \
        -D "$REPLICA_DATA.tmp" -R -X stream -C -S "$SLOT_NAME" --checkpoint=fast \
        >"$PG_DIR/basebackup.log" 2>&1; then
        log_tail "$PG_DIR/basebackup.log"
        die "pg_basebackup failed"
    fi
    chmod 0700 "$REPLICA_DATA.tmp"
    mv "$REPLICA_DATA.tmp" "$REPLICA_DATA"
}

start_replica() {
    prepare_dirs
    if pg_running "$REPLICA_DATA"; then
        wait_pg_ready replica "$REPLICA_PORT" "$PG_DIR/replica.log"
        note "replica PostgreSQL already running on 127.0.0.1:$REPLICA_PORT (pid $(pg_pid "$REPLICA_DATA"))"
        return 0
    fi
    if [[ -f $REPLICA_DATA/PG_VERSION && -f $PRIMARY_DATA/PG_VERSION ]]; then
        # A replica of an earlier, since re-created primary cannot follow this one.
        if [[ $(system_id "$REPLICA_DATA") != "$(system_id "$PRIMARY_DATA")" ]]; then
            note "replica belongs to another primary; re-creating it"
            rm -rf "$REPLICA_DATA"
        fi
    fi
    if [[ ! -f $REPLICA_DATA/PG_VERSION ]]; then
        pg_running "$PRIMARY_DATA" || die "the primary is not running; making the replica needs it (stack.sh start-primary)"
        create_replica
    fi
    # pg_basebackup -R recorded the primary's port at backup time; follow the current one.
    sed -i "/^primary_conninfo/s/port=[0-9]*/port=$PRIMARY_PORT/" "$REPLICA_DATA/postgresql.auto.conf"
    pg_start replica "$REPLICA_DATA" "$REPLICA_PORT"
}

# ---------------------------------------------------------------------------------------------
# Redis

alive() { # pid: a live process; a zombie (exited, not yet reaped) counts as gone
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

redis_pid() { # the pid of the redis-server this stack started, if it runs
    [[ -f $REDIS_PID ]] || return 1
    local pid
    pid=$(head -n 1 "$REDIS_PID" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    # Guard against a recycled pid: it must be a redis-server.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis-server || return 1
    echo "$pid"
}

redis_ping() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT_" ping 2>/dev/null) == PONG ]]; }

start_redis() {
    prepare_dirs
    local log=$REDIS_DIR/redis.log
    local state="already running"
    if ! redis_pid >/dev/null; then
        state=started
        rm -f "$REDIS_PID"
        if ! redis-server --bind 127.0.0.1 --port "$REDIS_PORT_" --daemonize yes \
            --pidfile "$REDIS_PID" --dir "$REDIS_DIR" --save '' --appendonly no \
            --logfile "$log" >"$REDIS_DIR/start.err" 2>&1 9>&-; then
            cat "$REDIS_DIR/start.err" >&2
            log_tail "$log"
            die "could not start redis-server on 127.0.0.1:$REDIS_PORT_"
        fi
    fi
    local t0=$SECONDS
    until redis_ping; do
        # Give the daemonized child a moment to write its pid file before judging it dead.
        if ((SECONDS - t0 >= STACK_TIMEOUT)) ||
            { ((SECONDS - t0 >= 3)) && ! redis_pid >/dev/null; }; then
            log_tail "$log"
            die "Redis does not answer PING on 127.0.0.1:$REDIS_PORT_"
        fi
        sleep 0.1
    done
    note "Redis $state on 127.0.0.1:$REDIS_PORT_ (pid $(redis_pid || echo '?'))"
}

stop_redis() {
    local pid
    pid=$(redis_pid) || {
        rm -f "$REDIS_PID"
        return 0
    }
    kill -TERM "$pid"
    local deadline=$((SECONDS + STACK_TIMEOUT))
    while alive "$pid"; do
        if ((SECONDS >= deadline + 10)); then
            die "redis-server $pid does not exit, even after SIGKILL"
        elif ((SECONDS >= deadline)); then
            echo "stack.sh: redis-server $pid ignores SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    rm -f "$REDIS_PID"
    note "Redis stopped"
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_status() {
    local all=0 pid
    if pg_running "$PRIMARY_DATA"; then
        echo "primary  running  127.0.0.1:${PRIMARY_PORT:-?}  pid $(pg_pid "$PRIMARY_DATA")  data $PRIMARY_DATA"
    else
        echo "primary  stopped"
        all=3
    fi
    if pg_running "$REPLICA_DATA"; then
        echo "replica  running  127.0.0.1:${REPLICA_PORT:-?}  pid $(pg_pid "$REPLICA_DATA")  data $REPLICA_DATA"
    else
        echo "replica  stopped"
        all=3
    fi
    if pid=$(redis_pid); then
        echo "redis    running  127.0.0.1:${REDIS_PORT_:-?}  pid $pid  dir $REDIS_DIR"
    else
        echo "redis    stopped"
        all=3
    fi
    return $all
}

cmd_env() {
    need_ports
    echo "DATABASE_URL=postgresql://postgres@127.0.0.1:$PRIMARY_PORT/$DB_NAME"
    echo "DATABASE_REPLICA_URLS=postgresql://postgres@127.0.0.1:$REPLICA_PORT/$DB_NAME"
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT_/0"
}

usage() {
    sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
    local cmd=${1:-}
    case "$cmd" in
    -h | --help | help | "")
        usage
        [[ -n $cmd ]] || exit 2
        exit 0
        ;;
    esac
    [[ $# -eq 1 ]] || die "one command expected, got: $*"
    case "$cmd" in
    start | start-primary | start-replica | start-redis)
        set_paths create
        check_tools
        take_lock
        resolve_ports pick
        case "$cmd" in
        start)
            start_primary
            start_replica
            start_redis
            ;;
        start-primary) start_primary ;;
        start-replica) start_replica ;;
        start-redis) start_redis ;;
        esac
        ;;
    stop | stop-primary | stop-replica | stop-redis)
        set_paths
        [[ -d $STACK_DIR ]] || exit 0 # nothing was ever started here
        check_tools
        take_lock
        case "$cmd" in
        stop)
            pg_stop replica "$REPLICA_DATA"
            pg_stop primary "$PRIMARY_DATA"
            stop_redis
            ;;
        stop-primary) pg_stop primary "$PRIMARY_DATA" ;;
        stop-replica) pg_stop replica "$REPLICA_DATA" ;;
        stop-redis) stop_redis ;;
        esac
        ;;
    status)
        set_paths
        check_tools
        resolve_ports
        cmd_status
        ;;
    env)
        set_paths
        resolve_ports
        cmd_env
        ;;
    *)
        usage >&2
        die "unknown command '$cmd'"
        ;;
    esac
}

main "$@"
