#!/usr/bin/env bash
# Point-in-time recovery from an S3 repository (s3s-fs) with added latency per request,
# pgcairn alone: pgBackRest speaks S3 only over TLS, which s3s-fs does not. Same scenario
# as compare.sh's section 5: a full backup, then PITR_SEGMENTS+ segments of WAL, restore,
# replay to the end of the archive until the server promotes; the time PostgreSQL waits
# in restore_command is summed by a wrapper. Each latency in LATENCIES (milliseconds,
# added by a small TCP proxy to every chunk a client sends, so to every request).
#
#   nice benches/pitr_s3.sh                       # LATENCIES="0 5 20", REPEAT=2
#
# Needs: target/release/{pgcairn,pgcairn-archive-push}, PostgreSQL 15 from Debian,
# s3s-fs (cargo install s3s-fs --version 0.14.1 --locked --features binary), python3.
# Runs as root (servers and tools run as `postgres`).
set -euo pipefail

LATENCIES=${LATENCIES:-0 5 20}
REPEAT=${REPEAT:-2}
PITR_SEGMENTS=${PITR_SEGMENTS:-40}
PGBIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S3S=$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")
[ -x "$S3S" ] || { echo "s3s-fs not found" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
W=$(mktemp -d /var/tmp/pgcairn-pitr-s3.XXXXXX)
chmod 755 "$W"
chown postgres: "$W"
LOG=$W/log
PIDS=()
cleanup() {
    rc=$?
    [ "$rc" = 0 ] || tail -n 30 "$LOG" >&2 || true
    for d in "$W"/data "$W"/restore; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT
say() { echo "== $*" >&2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

mkdir "$W/bin"
cp "$ROOT"/target/release/{pgcairn,pgcairn-archive-push} "$W/bin/"
chmod 755 "$W/bin" "$W"/bin/*

# s3s-fs and the latency proxy in front of it (the delay is read from a file, so it
# can change between runs without restarting anything).
S3PORT=$(port)
PROXYPORT=$(port)
mkdir -p "$W/s3/bench"
"$S3S" --host 127.0.0.1 --port "$S3PORT" --access-key bench --secret-key benchsecret "$W/s3" >>"$LOG" 2>&1 &
PIDS+=($!)
echo 0 >"$W/delay_ms"
cat >"$W/proxy.py" <<'EOF'
import asyncio, sys
listen, target, delay_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def delay():
    try:
        return float(open(delay_file).read()) / 1000
    except Exception:
        return 0.0
async def pipe(r, w, slow):
    try:
        while data := await r.read(1 << 16):
            if slow and (d := delay()) > 0:
                await asyncio.sleep(d)
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(cr, sw, True), pipe(sr, cw, False))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    await server.serve_forever()
asyncio.run(main())
EOF
python3 "$W/proxy.py" "$PROXYPORT" "$S3PORT" "$W/delay_ms" >>"$LOG" 2>&1 &
PIDS+=($!)
sleep 1

PGPORT=$(port)
PORT2=$(port)
CONN="host=$W port=$PGPORT user=postgres"
sql() { "$PGBIN/psql" -X -At -v ON_ERROR_STOP=1 -h "$W" -p "$PGPORT" -U postgres -c "$1" postgres; }
bench() { "$PGBIN/pgbench" -h "$W" -p "$PGPORT" -U postgres "$@" postgres >>"$LOG" 2>&1; }
printf 'benchmark passphrase\n' >"$W/passphrase"
printf '[default]\naws_access_key_id = bench\naws_secret_access_key = benchsecret\n' >"$W/s3.credentials"
printf '%s\n' "stanza = \"bench\"" "repo = \"s3://bench/pgcairn\"" "repo-s3-endpoint = \"http://127.0.0.1:$PROXYPORT\"" \
    "repo-s3-allow-http = true" "repo-s3-region = \"us-east-1\"" "repo-s3-credentials-file = \"$W/s3.credentials\"" \
    "repo-passphrase-file = \"$W/passphrase\"" >"$W/pgcairn.toml"
chmod 600 "$W/passphrase" "$W/s3.credentials" "$W/pgcairn.toml"
chown postgres: "$W/passphrase" "$W/s3.credentials" "$W/pgcairn.toml"
CAIRN=("$W/bin/pgcairn" --config "$W/pgcairn.toml")
printf '%s\n' '#!/bin/bash' 'log=$1' 'shift' 's=$EPOCHREALTIME' '"$@"' 'rc=$?' \
    'echo "$s $EPOCHREALTIME $rc" >>"$log"' 'exit $rc' >"$W/bin/waited"
chmod 755 "$W/bin/waited"

say "PostgreSQL 15 archiving to s3s-fs through the proxy; full backup; $PITR_SEGMENTS+ segments of WAL"
as_pg "$PGBIN/initdb" -D "$W/data" --data-checksums -A trust -U postgres >>"$LOG"
cat >>"$W/data/postgresql.conf" <<EOF
port = $PGPORT
unix_socket_directories = '$W'
listen_addresses = ''
shared_buffers = 256MB
max_wal_size = 4GB
archive_mode = on
archive_command = '$W/bin/pgcairn-archive-push --config $W/pgcairn.toml %p'
EOF
as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >>"$LOG"
as_pg "${CAIRN[@]}" stanza-create "--pg=$CONN" >>"$LOG" 2>&1
bench -i -s 20 --quiet
as_pg "${CAIRN[@]}" backup --start-fast "--pg=$CONN" >>"$LOG" 2>&1
START=$(sql "SELECT pg_current_wal_lsn()")
wal_since() { sql "SELECT (pg_wal_lsn_diff(pg_current_wal_lsn(), '$START') / 16777216)::int"; }
sql "CREATE TABLE pitr_bulk AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 1000000) g" >/dev/null
sql "UPDATE pitr_bulk SET h = md5(h) WHERE id % 4 = 0" >/dev/null
while [ "$(wal_since)" -lt "$PITR_SEGMENTS" ]; do
    sql CHECKPOINT >/dev/null
    bench -n -c 2 -j 2 -T 3
done
FP="SELECT (SELECT count(*) || '/' || max(h) FROM pitr_bulk) || '/' || (SELECT sum(abalance) FROM pgbench_accounts)"
EXPECTED=$(sql "$FP")
LAST=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
until [ "$(sql "SELECT coalesce(last_archived_wal, '') >= '$LAST' FROM pg_stat_archiver")" = t ]; do sleep 0.2; done
SEGS=$(($(wal_since) + 1))
as_pg "$PGBIN/pg_ctl" -D "$W/data" -w stop >>"$LOG"

echo "| added latency per request | restore | replay until promoted | time in restore_command (calls) | share of replay |"
echo "|---|---|---|---|---|"
for ms in $LATENCIES; do
    echo "$ms" >"$W/delay_ms"
    for r in $(seq "$REPEAT"); do
        dest=$W/restore
        rm -rf "$dest"
        as_pg install -d -m 700 "$dest"
        sync
        echo 3 >/proc/sys/vm/drop_caches
        t0=$(date +%s.%N)
        as_pg "${CAIRN[@]}" restore "--pg-data=$dest" >>"$LOG" 2>&1
        t1=$(date +%s.%N)
        sed -i "s|^restore_command = '|restore_command = '$W/bin/waited $W/waits |" "$dest/postgresql.auto.conf"
        printf 'port = %s\narchive_mode = off\n' "$PORT2" >>"$dest/postgresql.auto.conf"
        : >"$W/waits"
        chmod 666 "$W/waits"
        sync
        echo 3 >/proc/sys/vm/drop_caches
        t2=$(date +%s.%N)
        as_pg "$PGBIN/pg_ctl" -D "$dest" -l "$W/pitr.log" start >>"$LOG"
        while [ -e "$dest/recovery.signal" ]; do
            sleep 0.005
            if grep -q "FATAL\|PANIC" "$W/pitr.log"; then tail "$W/pitr.log" >&2; exit 1; fi
        done
        t3=$(date +%s.%N)
        got=""
        for _ in $(seq 100); do
            got=$("$PGBIN/psql" -X -At -h "$W" -p "$PORT2" -U postgres -c "$FP" postgres 2>/dev/null) && break
            sleep 0.1
        done
        as_pg "$PGBIN/pg_ctl" -D "$dest" -m fast -w stop >>"$LOG"
        [ "$got" = "$EXPECTED" ] || { echo "recovered cluster answered '$got', expected '$EXPECTED'" >&2; exit 1; }
        waited=$(awk '{s += $2 - $1} END {printf "%.2f", s}' "$W/waits")
        calls=$(wc -l <"$W/waits")
        awk -v ms="$ms" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v w="$waited" -v n="$calls" -v s="$SEGS" \
            'BEGIN {printf "| %s ms (%d segments) | %.2f s | %.2f s | %.2f s (%d) | %.0f%% |\n", ms, s, b - a, d - c, w, n, 100 * w / (d - c)}'
    done
done
