#!/usr/bin/env bash
# RPO: commits lost when the primary stops dead (issue 24). A PostgreSQL 15 primary
# archives into a pgcairn stanza configured as the README shows (a config file, a
# passphrase file, archive_timeout = 60). A client commits one row per transaction,
# each with its clock_timestamp(), for LOAD seconds; then `pg_ctl stop -m immediate`.
# The newest backup is restored to the latest point and started; what was lost is the
# last acknowledged commit's time minus the newest restored row's, and the count of
# acknowledged commits missing. REPEAT rounds of each mode:
#   archive   archive_command only;
#   async     plus `pgcairn wal-receive` (wal-receive-interval = 1, the default);
#   sync      plus wal-receive with wal-receive-interval = 0, named in
#             synchronous_standby_names (synchronous_commit = on).
# Also the commit latency of one pgbench client with each mode (LATENCY seconds).
#
#   nice benches/wal_receive.sh          # LOAD=6, REPEAT=3, LATENCY=10
#
# Needs: target/release/pgcairn and pgcairn-archive-push (cargo build --release
# --locked), PostgreSQL 15 from Debian. Runs as root (the servers run as `postgres`).
set -euo pipefail

LOAD=${LOAD:-6}
REPEAT=${REPEAT:-3}
LATENCY=${LATENCY:-10}
PGBIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
W=$(mktemp -d /var/tmp/pgcairn-rpo.XXXXXX)
chmod 755 "$W"
chown postgres: "$W"
LOG=$W/log
RECEIVER=
cleanup() {
    rc=$?
    [ "$rc" = 0 ] || tail -n 30 "$LOG" >&2 || true
    [ -n "$RECEIVER" ] && pkill -f "^$W/bin/pgcairn .*wal-receive" 2>/dev/null || true
    for d in primary restored; do
        [ -f "$W/$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$W/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
say() { echo "== $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
P1=$(free_port)
P2=$(free_port)
PG="host=$W port=$P1 user=postgres"
sql() { as_pg psql -h "$W" -p "$1" -U postgres -XAtqc "$2" postgres; }

mkdir "$W/bin" "$W/repo"
cp "$ROOT/target/release/pgcairn" "$ROOT/target/release/pgcairn-archive-push" "$W/bin/"
chmod 755 "$W/bin" "$W/bin/"*
chown postgres: "$W/repo"
printf '%s\n' "rpo benchmark passphrase" >"$W/pass"
cat >"$W/pgcairn.toml" <<EOF
stanza = "main"
repo = "$W/repo"
repo-passphrase-file = "$W/pass"
pg = "$PG application_name=pgcairn_receive"
EOF
chown postgres: "$W/pass" "$W/pgcairn.toml"
chmod 600 "$W/pass" "$W/pgcairn.toml"
CAIRN=("$W/bin/pgcairn" --config "$W/pgcairn.toml")

as_pg "$PGBIN/initdb" -D "$W/primary" >>"$LOG"
cat >>"$W/primary/postgresql.conf" <<EOF
port = $P1
unix_socket_directories = '$W'
listen_addresses = ''
wal_level = replica
max_wal_senders = 10
archive_mode = on
archive_command = '$W/bin/pgcairn-archive-push --config=$W/pgcairn.toml %p'
archive_timeout = 60
EOF
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >>"$LOG"
as_pg "${CAIRN[@]}" stanza-create >>"$LOG" 2>&1
sql "$P1" "CREATE TABLE ticks (at timestamptz)"
as_pg "${CAIRN[@]}" backup --start-fast >>"$LOG" 2>&1

start_receiver() { # INTERVAL
    as_pg "${CAIRN[@]}" wal-receive --log-level="${RECEIVE_LOG:-info}" --wal-receive-interval="$1" >>"$W/receive.log" 2>&1 &
    RECEIVER=$!
    until [ "$(sql "$P1" "SELECT count(*) FROM pg_replication_slots WHERE active")" = 1 ]; do sleep 0.1; done
}
stop_receiver() {
    [ -n "$RECEIVER" ] || return 0
    # runuser does not pass SIGTERM on: signal pgcairn itself.
    pkill -TERM -f "^$W/bin/pgcairn .*wal-receive" || true
    wait "$RECEIVER" || true
    RECEIVER=
}
set_sync() { # NAMES
    sql "$P1" "ALTER SYSTEM SET synchronous_standby_names = '$1'"
    sql "$P1" "SELECT pg_reload_conf()" >/dev/null
}
mode_on() { # MODE
    case $1 in
    archive) set_sync "" ;;
    async) set_sync "" && start_receiver 1 ;;
    sync) set_sync "pgcairn_receive" && start_receiver 0 ;;
    esac
}

declare -A LOST=([archive]= [async]= [sync]=) MISSING=([archive]= [async]= [sync]=) TPS
# One round: commit for LOAD seconds, stop dead, restore to the latest point.
round() { # MODE
    local mode=$1 n=0 first="" last="" end restored_at count before
    mode_on "$mode"
    before=$(sql "$P1" "SELECT count(*) FROM ticks")
    end=$((SECONDS + LOAD))
    while [ "$SECONDS" -lt "$end" ]; do
        last=$(sql "$P1" "INSERT INTO ticks VALUES (clock_timestamp()) RETURNING at")
        first=${first:-$last}
        n=$((n + 1))
    done
    as_pg "$PGBIN/pg_ctl" -D "$W/primary" -m immediate stop >>"$LOG"
    stop_receiver
    rm -rf "$W/restored"
    as_pg "${CAIRN[@]}" restore --pg-data="$W/restored" >>"$LOG" 2>&1
    printf "port = %s\narchive_mode = off\n" "$P2" >>"$W/restored/postgresql.auto.conf"
    as_pg "$PGBIN/pg_ctl" -D "$W/restored" -l "$W/restored.log" -w -t 300 start >>"$LOG"
    until [ "$(sql "$P2" "SELECT pg_is_in_recovery()")" = f ]; do sleep 0.2; done
    restored_at=$(sql "$P2" "SELECT extract(epoch FROM '$last'::timestamptz - coalesce(max(at), '$first')) FROM ticks")
    count=$(sql "$P2" "SELECT count(*) FROM ticks")
    as_pg "$PGBIN/pg_ctl" -D "$W/restored" -m immediate stop >>"$LOG"
    LOST[$mode]+="$restored_at "
    MISSING[$mode]+="$((before + n - count)) "
    printf '   %-8s %4d commits, lost %6.3f s (%d commits)\n' "$mode" "$n" "$restored_at" "$((before + n - count))" >&2
    as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >>"$LOG"
}

latency() { # MODE
    local mode=$1 tps
    mode_on "$mode"
    echo "INSERT INTO ticks VALUES (clock_timestamp());" >"$W/tick.sql"
    chown postgres: "$W/tick.sql"
    tps=$(as_pg /usr/bin/pgbench -h "$W" -p "$P1" -n -c 1 -T "$LATENCY" -f "$W/tick.sql" postgres 2>>"$LOG" |
        awk '/^tps/ {print $3}')
    stop_receiver
    TPS[$mode]+="$tps "
    printf '   %-8s %s commits/s\n' "$mode" "$tps" >&2
}

for i in $(seq "$REPEAT"); do
    say "round $i"
    for mode in archive async sync; do round "$mode"; done
done
say "commit latency, one client"
for mode in archive async sync; do latency "$mode"; done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
maximum() { tr ' ' '\n' | grep -v '^$' | sort -g | tail -1; }
echo
echo "commits lost after pg_ctl stop -m immediate ($REPEAT rounds of $LOAD s of single-row commits; archive_timeout = 60):"
echo
echo "| mode | lost (median) | lost (worst) | acknowledged commits missing (worst) | commits/s, one client |"
echo "|---|---|---|---|---|"
for mode in archive async sync; do
    printf '| %s | %.3f s | %.3f s | %s | %.0f |\n' "$mode" "$(echo "${LOST[$mode]}" | median)" \
        "$(echo "${LOST[$mode]}" | maximum)" "$(echo "${MISSING[$mode]}" | maximum)" "$(echo "${TPS[$mode]}" | median)"
done
