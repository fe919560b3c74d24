#!/usr/bin/env bash
# Extract one table vs restore the whole cluster (issue 25). A PostgreSQL 15 cluster
# (pg_dump of the backup's major is needed: Debian's 15 here) with pgbench at SCALE in
# database `big` and a 100,000-row table `orders` in database `shop`; one full backup
# (archive-copy) configured as the README shows (config file, passphrase file).
# REPEAT times each, in turns, page cache dropped before each:
#   restore       pgcairn restore of the whole cluster (--type=immediate), files only;
#   by hand       the same restore, then start it, recover, pg_dump the table, stop:
#                 what an operator does without extract;
#   extract       pgcairn extract --db=shop --table=public.orders (restore of what shop
#                 needs, recovery, pg_dump, cleanup).
# Prints each run and the medians; the dumps of "by hand" and "extract" must be equal.
#
#   nice benches/extract.sh          # SCALE=50, REPEAT=3
#
# Needs: target/release/pgcairn (cargo build --release --locked), PostgreSQL 15 from
# Debian, bc. Runs as root (the servers run as `postgres`).
set -euo pipefail

SCALE=${SCALE:-50}
REPEAT=${REPEAT:-3}
. "$(dirname "$0")/common.sh"
bench_setup extract data restored
command -v bc >/dev/null || apt-get install -y -q bc >/dev/null
PORT=$(free_port)

install_pgcairn
mkdir "$W/work"
chown postgres: "$W/work"
passphrase_file "extract benchmark passphrase"
start_cluster "$PORT"
psql() { as_pg "$PGBIN/psql" -X -q -h "$W" -p "$PORT" -U postgres "$@"; }
say "pgbench -i -s $SCALE in database big, 100,000 orders in database shop"
psql -c "CREATE DATABASE big" -c "CREATE DATABASE shop" postgres >>"$LOG"
as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s "$SCALE" -q big >>"$LOG" 2>&1
psql -c "CREATE TABLE orders (id int PRIMARY KEY, customer int, note text)" \
    -c "INSERT INTO orders SELECT g, g % 977, md5(g::text) FROM generate_series(1, 100000) g" shop >>"$LOG"

printf 'stanza = "main"\nrepo = "%s"\nrepo-passphrase-file = "%s"\npg = "%s"\narchive-copy = true\ndrill-path = "%s"\n' \
    "$W/repo" "$W/pass" "$CONN" "$W/work" >"$W/pgcairn.toml"
chown postgres: "$W/pgcairn.toml"
chmod 600 "$W/pgcairn.toml"
cairn() { as_pg "$W/bin/pgcairn" --config "$W/pgcairn.toml" "$@"; }
cairn stanza-create >>"$LOG" 2>&1
cairn backup --start-fast >>"$LOG" 2>&1
SIZE=$(du -sb "$W/data/base" | cut -f1)
say "$(grep '^full backup' "$LOG")"

# timed NAME FUNCTION: drop the page cache, run FUNCTION, record its wall seconds.
timed() {
    local name=$1 start end
    sync
    echo 3 >/proc/sys/vm/drop_caches
    start=$(date +%s.%N)
    "$2" >>"$LOG" 2>&1
    end=$(date +%s.%N)
    echo "$name $(echo "$end - $start" | bc)" | tee -a "$W/results" >&2
}
restore_only() {
    rm -rf "$W/restored"
    cairn restore --pg-data="$W/restored" --type=immediate --target-action=promote
}
by_hand() {
    restore_only
    local port
    port=$(free_port)
    printf "port = %s\nunix_socket_directories = '%s'\narchive_mode = off\n" "$port" "$W" >>"$W/restored/postgresql.auto.conf"
    as_pg "$PGBIN/pg_ctl" -D "$W/restored" -l "$W/restored.log" -w start
    until [ "$(as_pg "$PGBIN/psql" -X -At -h "$W" -p "$port" -U postgres -c 'SELECT pg_is_in_recovery()' postgres)" = f ]; do
        sleep 0.1
    done
    as_pg "$PGBIN/pg_dump" -h "$W" -p "$port" -U postgres --table=public.orders -f "$W/work/by-hand.sql" shop
    as_pg "$PGBIN/pg_ctl" -D "$W/restored" -m fast -w stop
}
extract() {
    rm -f "$W/work/extract.sql"
    cairn extract --db=shop --table=public.orders --type=immediate --pg-bin="$PGBIN" --dump-file="$W/work/extract.sql"
}
for i in $(seq 1 "$REPEAT"); do
    timed restore restore_only
    timed by-hand by_hand
    timed extract extract
    rm -rf "$W/restored"
done
# The same rows either way (the dumps differ only in comments and pg_dump's random
# \restrict key).
same() { grep -v -e '^--' -e '^\\restrict' -e '^\\unrestrict' "$1"; }
diff <(same "$W/work/by-hand.sql") <(same "$W/work/extract.sql") >/dev/null ||
    { echo "the two dumps differ" >&2; exit 1; }
grep -q 'COPY public.orders' "$W/work/extract.sql"

echo "databases: $((SIZE / 1048576)) MiB (pgbench scale $SCALE + shop); medians of $REPEAT runs, wall seconds"
median() { grep "^$1 " "$W/results" | cut -d' ' -f2 | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
R=$(median restore) H=$(median by-hand) E=$(median extract)
printf 'restore  %6.2f\nby-hand  %6.2f\nextract  %6.2f\n' "$R" "$H" "$E"
echo "extract / restore = $(echo "scale=2; $E / $R" | bc), extract / by hand = $(echo "scale=2; $E / $H" | bc)"
