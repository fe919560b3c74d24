#!/usr/bin/env bash
# Incremental backups from WAL summaries (issue 25). A PostgreSQL 17 cluster
# (summarize_wal = on) with pgbench at SCALE, archiving through pgcairn-archive-push,
# configured as the README shows (config file, passphrase file). Page cache dropped
# before each timed backup; REPEAT times each:
#   full          backup --type=full;
#   incr          pgbench changes ~1% of the pages (SCALE × 16 transactions), then
#                 backup --type=incr: the server sends the changed pages only;
#   incr-whole    the same with summarize_wal = off: the whole cluster read and
#                 compared with the parent (what PostgreSQL 15 and 16 do).
# Prints each run, the bytes the server sent (info's read.streamed), the medians and
# the ratios to the full, and pgcairn's own CPU time per run. LOG_LEVEL=info logs each
# backup's steps; KEEP_LOG=FILE keeps the log; COLD=0 keeps the page cache.
#
#   nice benches/summaries.sh            # SCALE=50, REPEAT=3
#
# Needs: target/release/{pgcairn,pgcairn-archive-push} (cargo build --release
# --locked), PostgreSQL 17 (scripts/fetch-postgres.sh 17) with Debian's 15 for psql
# and pgbench, bc. Runs as root (the server runs as `postgres`).
set -euo pipefail

SCALE=${SCALE:-50}
REPEAT=${REPEAT:-3}
. "$(dirname "$0")/common.sh"
bench_setup summaries data
command -v bc >/dev/null || apt-get install -y -q bc >/dev/null
SERVER_BIN=${PG17_BIN:-/var/tmp/pgcairn-cache/pg17/native/bin}
[ -x "$SERVER_BIN/postgres" ] || { echo "no PostgreSQL 17 in $SERVER_BIN: scripts/fetch-postgres.sh 17" >&2; exit 1; }
PORT=$(free_port)

install_pgcairn
cp "$ROOT/target/release/pgcairn-archive-push" "$W/bin/"
chmod 755 "$W/bin/pgcairn-archive-push"
passphrase_file "summaries benchmark passphrase"
CONN="host=$W port=$PORT user=postgres"
printf 'stanza = "main"\nrepo = "%s"\nrepo-passphrase-file = "%s"\npg = "%s"\n' "$W/repo" "$W/pass" "$CONN" >"$W/pgcairn.toml"
chown postgres: "$W/pgcairn.toml"
chmod 600 "$W/pgcairn.toml"
cairn() { as_pg "$W/bin/pgcairn" --config "$W/pgcairn.toml" "$@"; }

as_pg "$SERVER_BIN/initdb" -D "$W/data" -U postgres >>"$LOG"
cat >>"$W/data/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W'
max_wal_size = 4GB
summarize_wal = on
archive_mode = on
archive_command = '$W/bin/pgcairn-archive-push --config $W/pgcairn.toml %p'
EOF
as_pg "$SERVER_BIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >>"$LOG"
psql() { as_pg "$PGBIN/psql" -X -q -At -h "$W" -p "$PORT" -U postgres "$@" postgres; }
# The stanza first: the archiver starts on pgbench's WAL at once.
cairn stanza-create >>"$LOG" 2>&1
say "pgbench -i -s $SCALE"
as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >>"$LOG" 2>&1

# timed NAME ARGS...: drop the page cache, run a backup, record its wall seconds and
# the bytes the server sent.
timed() {
    local name=$1 start end label streamed
    shift
    sync
    [ "${COLD:-1}" = 0 ] || echo 3 >/proc/sys/vm/drop_caches
    start=$(date +%s.%N)
    label=$(as_pg /usr/bin/time -a -o "$W/cpu" -f "$name %U %S" "$W/bin/pgcairn" --config "$W/pgcairn.toml" \
        backup --start-fast --log-level="${LOG_LEVEL:-warn}" "$@" 2>>"$LOG" | tail -n 1)
    end=$(date +%s.%N)
    streamed=$(cairn info --output=json | python3 -c "import json, sys
b = [b for b in json.load(sys.stdin)['backups'] if b['label'] == '$label'][0]
print(b['read']['streamed'], b['read']['method'])")
    echo "$name $(echo "$end - $start" | bc) $streamed" | tee -a "$W/results" >&2
}
changes() {
    as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -n -c 2 -t $((SCALE * 8)) postgres >>"$LOG" 2>&1
}
for i in $(seq 1 "$REPEAT"); do timed full --type=full; done
for i in $(seq 1 "$REPEAT"); do changes; timed incr --type=incr; done
psql -c "ALTER SYSTEM SET summarize_wal = off" -c "SELECT pg_reload_conf()" >/dev/null
for i in $(seq 1 "$REPEAT"); do changes; timed incr-whole --type=incr; done
[ -z "${KEEP_LOG:-}" ] || cp "$LOG" "$KEEP_LOG"
echo "pgcairn CPU seconds (user, system) per run:" && cat "$W/cpu"
grep -q '^incr .* wal-summaries$' "$W/results" || { echo "no incr used WAL summaries" >&2; exit 1; }

SIZE=$(du -sb "$W/data/base" | cut -f1)
echo "cluster: $((SIZE / 1048576)) MiB in base/ (pgbench scale $SCALE, PostgreSQL 17); medians of $REPEAT runs"
median() { grep "^$1 " "$W/results" | cut -d' ' -f"$2" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
F=$(median full 2) I=$(median incr 2) X=$(median incr-whole 2)
FB=$(median full 3) IB=$(median incr 3) XB=$(median incr-whole 3)
printf '%-11s %8s %12s\n' "" seconds "MiB sent"
for row in "full $F $FB" "incr $I $IB" "incr-whole $X $XB"; do
    set -- $row
    printf '%-11s %8.2f %12.1f\n' "$1" "$2" "$(echo "scale=1; $3 / 1048576" | bc)"
done
echo "incr / full: time $(echo "scale=3; $I / $F" | bc), bytes sent $(echo "scale=4; $IB / $FB" | bc)"
echo "incr-whole / full: time $(echo "scale=3; $X / $F" | bc), bytes sent $(echo "scale=4; $XB / $FB" | bc)"
