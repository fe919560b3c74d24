#!/usr/bin/env bash
# Resource limits (issue 26): are process-max and bandwidth-max honoured? A PostgreSQL 15
# cluster with pgbench at SCALE, a stanza configured as the README shows (a config
# file, a passphrase file; the cluster does not archive, so backups carry their WAL:
# archive-copy). REPEAT times each, page cache dropped first, into a fresh
# repository each time (no dedup between runs):
#   full backup, no limit;        full backup, process-max = 1;
#   full backup, bandwidth-max;   restore and verify, no limit, process-max = 1 and
#   bandwidth-max.
# For each: wall time, pgcairn's CPU (user+sys, /usr/bin/time) and so its cores in use
# (CPU / wall), and the bytes it stored or read per second of wall time.
#
#   nice benches/limits.sh           # SCALE=20, RANDOM_MB=300, REPEAT=3, BANDWIDTH=16MiB
#
# Needs: target/release/pgcairn (cargo build --release --locked), PostgreSQL 15 from
# Debian, /usr/bin/time. Runs as root (the server runs as `postgres`).
set -euo pipefail

SCALE=${SCALE:-20}
RANDOM_MB=${RANDOM_MB:-300}
REPEAT=${REPEAT:-3}
BANDWIDTH=${BANDWIDTH:-16MiB}
. "$(dirname "$0")/common.sh"
bench_setup limits data
[ -x /usr/bin/time ] || apt-get install -y -q time >/dev/null
PORT=$(free_port)

install_pgcairn
passphrase_file "limits benchmark passphrase"
start_cluster "$PORT"
say "pgbench -i -s $SCALE, and $RANDOM_MB MB of random base64 text (barely compressible: CPU-bound)"
as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >>"$LOG" 2>&1
as_pg "$PGBIN/psql" -X -q -h "$W" -p "$PORT" -U postgres -c "CREATE EXTENSION pgcrypto" \
    -c "CREATE TABLE random_text AS SELECT g AS id, translate(encode(gen_random_bytes(384), 'base64'), E'\n', '') AS t
        FROM generate_series(1, $((RANDOM_MB * 1000000 / 585))) g" postgres >>"$LOG" 2>&1

# cairn REPO ARGS...: pgcairn as postgres with a config for REPO.
cairn() {
    local repo=$1
    shift
    printf 'stanza = "main"\nrepo = "%s"\nrepo-passphrase-file = "%s"\npg = "%s"\narchive-copy = true\n' "$repo" "$W/pass" "$CONN" >"$repo.toml"
    chown postgres: "$repo.toml"
    chmod 600 "$repo.toml"
    as_pg "$W/bin/pgcairn" --config "$repo.toml" "$@"
}
# measure NAME REPO ARGS...: drop the page cache, run, print and keep wall, CPU, cores, MB/s.
measure() {
    local name=$1 repo=$2
    shift 2
    sync
    echo 3 >/proc/sys/vm/drop_caches
    /usr/bin/time -f '%e %U %S' -o "$W/t" runuser -u postgres -- "$W/bin/pgcairn" --config "$repo.toml" "$@" >>"$LOG" 2>&1
    read -r wall user sys <"$W/t"
    local bytes
    bytes=$(du -sb "$repo" | cut -f1)
    awk -v n="$name" -v w="$wall" -v u="$user" -v s="$sys" -v b="$bytes" 'BEGIN {
        printf "%s %.2f %.2f %.2f %.1f\n", n, w, u + s, (u + s) / w, b / w / 1048576 }' | tee -a "$W/results" >&2
}

fresh() {
    rm -rf "$1" "$1.toml"
    as_pg install -d -m 700 "$1"
    cairn "$1" stanza-create >>"$LOG" 2>&1
    cairn "$1" info >>"$LOG" 2>&1 # unlocks once: the key cache is warm, as after `check`
}
for r in $(seq "$REPEAT"); do
    say "run $r of $REPEAT"
    fresh "$W/repo-a"
    measure backup "$W/repo-a" backup --type=full --start-fast
    fresh "$W/repo-b"
    measure backup-process-max-1 "$W/repo-b" --process-max=1 backup --type=full --start-fast
    fresh "$W/repo-c"
    measure "backup-bandwidth-$BANDWIDTH" "$W/repo-c" "--bandwidth-max=$BANDWIDTH" backup --type=full --start-fast
    rm -rf "$W/restore"
    measure restore "$W/repo-a" restore "--pg-data=$W/restore" --type=none
    rm -rf "$W/restore"
    measure restore-process-max-1 "$W/repo-a" --process-max=1 restore "--pg-data=$W/restore" --type=none
    rm -rf "$W/restore"
    measure "restore-bandwidth-$BANDWIDTH" "$W/repo-a" "--bandwidth-max=$BANDWIDTH" restore "--pg-data=$W/restore" --type=none
    rm -rf "$W/restore"
    measure verify "$W/repo-a" verify
    measure verify-process-max-1 "$W/repo-a" --process-max=1 verify
    measure "verify-bandwidth-$BANDWIDTH" "$W/repo-a" "--bandwidth-max=$BANDWIDTH" verify
done

echo
echo "### Resource limits, SCALE=$SCALE, $(date -u '+%Y-%m-%d %H:%M UTC'), medians of $REPEAT"
echo
echo "$(nproc) cores; bandwidth-max = $BANDWIDTH; MB/s is the repository's bytes per second of wall time."
echo
echo "| run | wall | pgcairn CPU | cores in use | repository MiB/s |"
echo "|---|---|---|---|---|"
for n in $(cut -d' ' -f1 "$W/results" | awk '!seen[$0]++'); do
    med() { grep "^$n " "$W/results" | cut -d' ' -f"$1" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    printf '| %s | %s s | %s s | %s | %s |\n' "$n" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 5)"
done
