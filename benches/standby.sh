#!/usr/bin/env bash
# What a backup costs the primary, taken on the primary and taken on a streaming
# standby (issue 24). A PostgreSQL 15 primary with pgbench at SCALE archives into a
# pgcairn stanza (configured as the README shows: a config file, a passphrase file);
# a streaming standby is a copy of it. REPEAT times, page cache dropped first, a full
# backup with `--start-fast`:
#   primary  `pgcairn backup` with pg = the primary;
#   standby  `pgcairn backup` with pg = the standby, pg-primary = the primary.
# For each: the bytes the primary's processes read (rchar of the postmaster, which
# includes its reaped children such as the backup's walsender, plus its live
# children), the same for the standby, and the time.
#
#   nice benches/standby.sh              # SCALE=50, REPEAT=3
#
# Needs: target/release/pgcairn and pgcairn-archive-push (cargo build --release
# --locked), PostgreSQL 15 from Debian. Runs as root (the servers run as `postgres`).
set -euo pipefail

SCALE=${SCALE:-50}
REPEAT=${REPEAT:-3}
. "$(dirname "$0")/common.sh"
bench_setup standby standby primary
P1=$(free_port)
P2=$(free_port)

mkdir "$W/bin" "$W/repo"
cp "$ROOT/target/release/pgcairn" "$ROOT/target/release/pgcairn-archive-push" "$W/bin/"
chmod 755 "$W/bin" "$W/bin/"*
chown postgres: "$W/repo"
printf '%s\n' "standby benchmark passphrase" >"$W/pass"
cat >"$W/pgcairn.toml" <<EOF
stanza = "main"
repo = "$W/repo"
repo-passphrase-file = "$W/pass"
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
autovacuum = off
EOF
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >>"$LOG"
as_pg "${CAIRN[@]}" stanza-create --pg="host=$W port=$P1 user=postgres" >>"$LOG" 2>&1
printf "archive_mode = on\narchive_command = '%s/bin/pgcairn-archive-push --config=%s/pgcairn.toml %%p'\n" "$W" "$W" \
    >>"$W/primary/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w restart >>"$LOG"
say "pgbench -i -s $SCALE"
as_pg /usr/bin/pgbench -h "$W" -p "$P1" -i -s "$SCALE" -q postgres >>"$LOG" 2>&1

say "a streaming standby (a copy of the stopped primary)"
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -w stop >>"$LOG"
cp -a "$W/primary" "$W/standby"
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >>"$LOG"
touch "$W/standby/standby.signal"
chown postgres: "$W/standby/standby.signal"
printf "port = %s\nprimary_conninfo = 'host=%s port=%s user=postgres'\n" "$P2" "$W" "$P1" >>"$W/standby/postgresql.auto.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/standby" -l "$W/standby.log" -w start >>"$LOG"
until [ "$(as_pg psql -h "$W" -p "$P1" -U postgres -XAtc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" postgres)" = 1 ]; do
    sleep 0.2
done

# Bytes read (rchar) by a server: its postmaster (with its reaped children) and the
# children alive now.
server_reads() { # DATADIR
    local pid total=0 r
    pid=$(head -1 "$1/postmaster.pid")
    for p in $pid $(pgrep -P "$pid"); do
        r=$(awk '/^rchar:/ {print $2}' "/proc/$p/io" 2>/dev/null || echo 0)
        total=$((total + r))
    done
    echo "$total"
}

declare -A T PRIMARY STANDBY
run() { # KEY PG_ARGS...
    local key=$1 p0 s0 p1 s1 secs
    shift
    sync
    echo 3 >/proc/sys/vm/drop_caches
    p0=$(server_reads "$W/primary")
    s0=$(server_reads "$W/standby")
    as_pg /usr/bin/time -f '%e' -o "$W/time.out" "${CAIRN[@]}" backup --start-fast "$@" >>"$LOG" 2>&1
    p1=$(server_reads "$W/primary")
    s1=$(server_reads "$W/standby")
    secs=$(cat "$W/time.out")
    T[$key]+="$secs "
    PRIMARY[$key]+="$((p1 - p0)) "
    STANDBY[$key]+="$((s1 - s0)) "
    printf '   %-8s %6.2f s, primary read %8.1f MiB, standby read %8.1f MiB\n' "$key" "$secs" \
        "$(echo "($p1 - $p0) / 1048576" | bc -l)" "$(echo "($s1 - $s0) / 1048576" | bc -l)" >&2
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mib() { echo "$1 / 1048576" | bc -l | xargs printf '%.1f'; }

for i in $(seq "$REPEAT"); do
    say "round $i"
    run primary --pg="host=$W port=$P1 user=postgres"
    run standby --pg="host=$W port=$P2 user=postgres" --pg-primary="host=$W port=$P1 user=postgres"
done

SIZE=$(as_pg "${CAIRN[@]}" info --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][0]["size"])')
echo
echo "full backup of a $(mib "$SIZE") MiB cluster (pgbench scale $SCALE), medians of $REPEAT:"
echo
echo "| backup taken on | time | bytes the primary read | bytes the standby read |"
echo "|---|---|---|---|"
for key in primary standby; do
    printf '| %s | %s s | %s MiB | %s MiB |\n' "$key" "$(echo "${T[$key]}" | median)" \
        "$(mib "$(echo "${PRIMARY[$key]}" | median)")" "$(mib "$(echo "${STANDBY[$key]}" | median)")"
done
