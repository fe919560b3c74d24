#!/usr/bin/env bash
# How does the block size affect dedup between two backups? Throwaway PostgreSQL 15
# cluster: pgbench -i → snapshot A → pgbench run → B → bulk append → C; then
# blocksize.py prints, per block size, what B adds to a repository holding A and what C
# adds to one holding B. Snapshots are taken on the stopped cluster (hashed, not copied).
#
#   nice benches/blocksize.sh
#   SCALE=15 PGBENCH="-n -c 2 -t 3000" APPEND_PCT=5 nice benches/blocksize.sh
#
# Runs as root (the server runs as `postgres`) or as an ordinary user. Takes ~20 s
# at scale 30 (~450 MB); needs ~1.5 GB in /var/tmp (data + WAL).
set -euo pipefail

SCALE=${SCALE:-30}
PGBENCH=${PGBENCH:--n -c 2 -t 3000 --random-seed=42}
APPEND_PCT=${APPEND_PCT:-5}
PGBIN=/usr/lib/postgresql/15/bin
HERE=$(cd "$(dirname "$0")" && pwd)

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
W=$(mktemp -d /var/tmp/pgcairn-blocksize.XXXXXX)
chmod 755 "$W"
if [ "$(id -u)" = 0 ]; then chown postgres "$W"; fi
cleanup() {
    if [ -f "$W/data/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$W/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$W"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$W/data" --data-checksums -A trust -U postgres >/dev/null
printf "port=%s\nunix_socket_directories='%s'\nlisten_addresses=''\nfsync=off\n" \
    "$PORT" "$W" >>"$W/data/postgresql.conf"

ctl() { as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w "$@" >/dev/null; }
sql() { "$PGBIN/psql" -X -At -v ON_ERROR_STOP=1 -h "$W" -p "$PORT" -U postgres -c "$1" postgres; }
bench() { "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres "$@" postgres; }
# CHECKPOINT, stop, hash the data directory into $W/$1.
snapshot() {
    sql CHECKPOINT >/dev/null
    ctl stop
    python3 "$HERE/blocksize.py" scan "$W/data" "$W/$1"
    echo "== snapshot $1 taken" >&2
}

echo "== pgbench -i -s $SCALE (port $PORT, $W)" >&2
ctl start
bench -i -s "$SCALE" -q 2>&1 | tail -1 >&2
snapshot A

echo "== pgbench $PGBENCH" >&2
ctl start
bench $PGBENCH 2>&1 | grep -E '^(number of transactions actually processed|tps)' >&2
snapshot B

# Bulk append: APPEND_PCT% more rows at the end of pgbench_accounts (aid keeps rising).
N=$((SCALE * 100000))
ADD=$((N * APPEND_PCT / 100))
echo "== append $ADD rows to pgbench_accounts" >&2
ctl start
sql "INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
     SELECT g, 1 + g % $SCALE, 0, '' FROM generate_series($((N + 1)), $((N + ADD))) g" >/dev/null
snapshot C

python3 "$HERE/blocksize.py" report "Random updates: pgbench $PGBENCH at scale $SCALE (B vs A)" "$W/A" "$W/B"
python3 "$HERE/blocksize.py" report "Bulk append: +$APPEND_PCT% rows ($ADD) to pgbench_accounts (C vs B)" "$W/B" "$W/C"
