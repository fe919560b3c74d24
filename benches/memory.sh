#!/usr/bin/env bash
# Peak RSS of pgcairn's commands as the cluster grows: one throwaway PostgreSQL 15
# cluster, pgbench at each scale in SCALES, and at each: full backup, diff after a
# workload, restore into an empty directory, delta restore over that restore. The
# key file is used throughout so Argon2id's fixed 64 MiB does not hide the growth.
# Prints a markdown table and the growth per GiB between the two largest scales.
#
#   nice benches/memory.sh                        # SCALES="50 400": 0.8 and 6 GB, ~15 min
#   SCALES="50 1500" nice benches/memory.sh       # up to ~23 GB, needs ~60 GB in /var/tmp
#   BIN=/path/to/other/build nice benches/memory.sh   # measure another build's binaries
#
# Needs target/release/pgcairn (or BIN), PostgreSQL 15 from Debian and GNU time.
set -euo pipefail

SCALES=${SCALES:-50 400}
OUT=${OUT:-}
PGBIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
STANZA=mem

[ -x "$BIN/pgcairn" ] || { echo "missing $BIN/pgcairn: cargo build --release --locked" >&2; exit 1; }
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL 15 is not installed: apt-get install -y postgresql-15" >&2; exit 1; }
if [ ! -x /usr/bin/time ]; then
    [ "$(id -u)" = 0 ] || { echo "install GNU time first" >&2; exit 1; }
    apt-get install -y time >/dev/null
fi

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
W=$(mktemp -d /var/tmp/pgcairn-memory.XXXXXX)
chmod 755 "$W"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W"; fi
LOG=$W/log
cleanup() {
    rc=$?
    if [ "$rc" != 0 ] && [ -f "$LOG" ]; then
        echo "== FAILED (exit $rc); last lines of the log:" >&2
        tail -n 30 "$LOG" >&2
    fi
    [ -f "$W/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$W/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$W"
}
trap cleanup EXIT
say() { echo "== $*" >&2; }

mkdir "$W/bin"
cp "$BIN/pgcairn" "$W/bin/"
chmod 755 "$W/bin" "$W/bin/pgcairn"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CONN="host=$W port=$PORT user=postgres"
sql() { "$PGBIN/psql" -X -At -v ON_ERROR_STOP=1 -h "$W" -p "$PORT" -U postgres -c "$1" postgres; }

as_pg "$PGBIN/initdb" -D "$W/data" --data-checksums -A trust -U postgres >>"$LOG"
cat >>"$W/data/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W'
listen_addresses = ''
shared_buffers = 256MB
max_wal_size = 4GB
autovacuum = off
EOF
as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >>"$LOG"

PASS="benchmark passphrase: not a secret"
# The cluster does not archive: backups carry their WAL (archive-copy).
CAIRN=(env "PGCAIRN_REPO_PASSPHRASE=$PASS" "PGCAIRN_PG=$CONN" "PGCAIRN_ARCHIVE_COPY=true" "$W/bin/pgcairn" "--stanza=$STANZA")
# peak KEY CMD...: run as postgres, print and remember the peak RSS in MiB.
declare -A RSS
peak() {
    local key=$1
    shift
    echo "-- $key: $*" >>"$LOG"
    as_pg /usr/bin/time -f '%M %e' -o "$W/time.out" "$@" >>"$LOG" 2>&1
    read -r kib secs <"$W/time.out"
    RSS[$key]=$(echo "scale=1; $kib / 1024" | bc -l)
    printf '   %-22s %7.1f MiB  %6.1f s\n' "$key" "${RSS[$key]}" "$secs" >&2
}

declare -A SIZE
for s in $SCALES; do
    say "pgbench scale $s"
    "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -q -s "$s" postgres >>"$LOG" 2>&1
    SIZE[$s]=$(du -sb --exclude=pg_wal "$W/data" | cut -f1)
    repo=$W/repo-$s
    as_pg install -d -m 700 "$repo"
    as_pg "${CAIRN[@]}" "--repo=$repo" stanza-create >>"$LOG" 2>&1
    as_pg "${CAIRN[@]}" "--repo=$repo" key-file "--output=$repo.key" >>"$LOG" 2>&1
    K=("${CAIRN[@]}" "--repo=$repo" "--repo-key-file=$repo.key")
    peak "$s.full" "${K[@]}" backup --start-fast
    "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -n -c 2 -j 2 -t 5000 --random-seed=42 postgres >>"$LOG" 2>&1
    peak "$s.diff" "${K[@]}" backup --start-fast --type=diff
    as_pg install -d -m 700 "$W/restore"
    peak "$s.restore" "${K[@]}" restore "--pg-data=$W/restore" --type=none
    peak "$s.delta" "${K[@]}" restore "--pg-data=$W/restore" --type=none --delta
    rm -rf "$W/restore" "$repo" "$repo.key"
done

# Growth between the two largest scales: the smallest ones do not yet fill the fixed
# buffers (packs in flight, block list parts), so their difference is not growth.
first=$(echo $SCALES | awk '{print (NF > 1) ? $(NF - 1) : $1}')
last=$(echo $SCALES | awk '{print $NF}')
{
    echo "Peak RSS (MiB) of pgcairn $("$W/bin/pgcairn" --version 2>/dev/null | awk '{print $NF}') ($BIN), key file, $(nproc) cores."
    echo
    printf '| command |'
    for s in $SCALES; do printf ' scale %s (%.1f GiB) |' "$s" "$(echo "${SIZE[$s]} / 1073741824" | bc -l)"; done
    echo " growth per GiB from scale $first to $last |"
    printf '|---|'
    for _ in $SCALES; do printf -- '---|'; done
    echo '---|'
    for c in full diff restore delta; do
        printf '| %s |' "$c"
        for s in $SCALES; do printf ' %s |' "${RSS[$s.$c]}"; done
        if [ "$first" = "$last" ]; then echo ' n/a |'; continue; fi
        printf ' %.2f MiB |\n' "$(echo "(${RSS[$last.$c]} - ${RSS[$first.$c]}) / ((${SIZE[$last]} - ${SIZE[$first]}) / 1073741824)" | bc -l)"
    done
} | tee ${OUT:+"$OUT"}
