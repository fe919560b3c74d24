# Shared set-up of the shell benchmarks (sourced, not run). After
#   . "$(dirname "$0")/common.sh"; bench_setup NAME DATADIR...
# the script runs as root and has:
#   $ROOT  the checkout;            $W    a fresh work directory (755, owned by postgres);
#   $LOG   $W/log;                  $PGBIN PostgreSQL 15's bin directory;
#   as_pg CMD...  CMD as postgres;  say TEXT  a progress line on stderr;
#   free_port     an unused TCP port;
#   install_pgcairn  copies target/release/pgcairn to $W/bin, readable by postgres;
#   passphrase_file TEXT  writes $W/pass (0600, postgres's);
#   start_cluster PORT  initdb $W/data, its socket in $W, started; sets $CONN.
# A script whose servers are another major sets SERVER_BIN (their bin directory).
# On exit the servers of $W/DATADIR... are stopped, $W is removed, and on failure
# the end of $LOG is printed.

PGBIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)

as_pg() { runuser -u postgres -- "$@"; }
say() { echo "== $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

bench_setup() {
    local name=$1
    shift
    [ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
    BENCH_SERVERS=("$@")
    W=$(mktemp -d "/var/tmp/pgcairn-$name.XXXXXX")
    chmod 755 "$W"
    chown postgres: "$W"
    LOG=$W/log
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local rc=$? d
    [ "$rc" = 0 ] || tail -n 30 "$LOG" >&2 || true
    for d in "${BENCH_SERVERS[@]}"; do
        [ -f "$W/$d/postmaster.pid" ] && as_pg "${SERVER_BIN:-$PGBIN}/pg_ctl" -D "$W/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$W"
}

install_pgcairn() {
    mkdir -p "$W/bin"
    cp "$ROOT/target/release/pgcairn" "$W/bin/"
    chmod 755 "$W/bin" "$W/bin/pgcairn"
}

passphrase_file() {
    printf '%s\n' "$1" >"$W/pass"
    chown postgres: "$W/pass"
    chmod 600 "$W/pass"
}

start_cluster() {
    as_pg "$PGBIN/initdb" -D "$W/data" >>"$LOG"
    printf "port = %s\nunix_socket_directories = '%s'\nmax_wal_size = 4GB\n" "$1" "$W" >>"$W/data/postgresql.conf"
    as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >>"$LOG"
    CONN="host=$W port=$1 user=postgres"
}
