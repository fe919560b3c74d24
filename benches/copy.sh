#!/usr/bin/env bash
# copy throughput between two local repositories against the restore path's, on the
# same full backup (issue 23: copy must move at least the restore path's MB/s).
# A PostgreSQL 15 cluster with pgbench at SCALE, one full backup into repository 1;
# then REPEAT times, page cache dropped before each command, order alternated:
#   copy    `pgcairn copy --to-repo=2` into a fresh repository 2 (read, open, check,
#           re-seal, write: the whole backup);
#   restore `pgcairn restore` of the same backup into an empty directory.
# Both configured as the README shows (a config file, passphrase files).
#
#   nice benches/copy.sh                 # SCALE=50, REPEAT=3
#
# Needs: target/release/pgcairn (cargo build --release --locked), PostgreSQL 15 from
# Debian. Runs as root (the server and the tools run as `postgres`).
set -euo pipefail

SCALE=${SCALE:-50}
REPEAT=${REPEAT:-3}
. "$(dirname "$0")/common.sh"
bench_setup copy data
PORT=$(free_port)

install_pgcairn
as_pg "$PGBIN/initdb" -D "$W/data" >>"$LOG"
printf "port = %s\nunix_socket_directories = '%s'\nlisten_addresses = ''\nwal_level = replica\nautovacuum = off\n" \
    "$PORT" "$W" >>"$W/data/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/pg.log" -w start >>"$LOG"
say "pgbench -i -s $SCALE"
as_pg /usr/bin/pgbench -h "$W" -p "$PORT" -i -s "$SCALE" -q postgres >>"$LOG" 2>&1

printf '%s\n' "copy benchmark passphrase one" >"$W/pass1"
printf '%s\n' "copy benchmark passphrase two" >"$W/pass2"
cat >"$W/pgcairn.toml" <<EOF
stanza = "main"
pg = "host=$W port=$PORT user=postgres"
repo = "$W/repo1"
repo-passphrase-file = "$W/pass1"
repo2 = "$W/repo2"
repo2-passphrase-file = "$W/pass2"
archive-copy = true
EOF
chown postgres: "$W/pass1" "$W/pass2" "$W/pgcairn.toml"
chmod 600 "$W/pass1" "$W/pass2" "$W/pgcairn.toml"
CAIRN=("$W/bin/pgcairn" --config "$W/pgcairn.toml")
as_pg "${CAIRN[@]}" stanza-create >>"$LOG" 2>&1
as_pg "${CAIRN[@]}" backup --start-fast >>"$LOG" 2>&1
SIZE=$(as_pg "${CAIRN[@]}" info --repo-number=1 --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][0]["size"])')
say "full backup of $((SIZE / 1048576)) MiB in repository 1"

declare -A T RSS
timed() { # KEY COMMAND...
    local key=$1
    shift
    sync
    echo 3 >/proc/sys/vm/drop_caches
    as_pg /usr/bin/time -f '%e %M' -o "$W/time.out" "$@" >>"$LOG" 2>&1
    read -r secs kib <"$W/time.out"
    T[$key]+="$secs "
    RSS[$key]+="$kib "
    printf '   %-8s %6.2f s %6.0f MiB RSS\n' "$key" "$secs" "$(echo "$kib / 1024" | bc -l)" >&2
}
run() { # TOOL
    case $1 in
    copy)
        rm -rf "$W/repo2"
        as_pg "${CAIRN[@]}" --repo-number=2 stanza-create >>"$LOG" 2>&1
        timed copy "${CAIRN[@]}" copy --to-repo=2 ;;
    restore)
        rm -rf "$W/restore"
        timed restore bash -c "'$W/bin/pgcairn' --config '$W/pgcairn.toml' restore --pg-data='$W/restore' --type=none && sync" ;;
    esac
}
for r in $(seq "$REPEAT"); do
    if ((r % 2)); then run copy; run restore; else run restore; run copy; fi
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
c=$(median "${T[copy]}")
s=$(median "${T[restore]}")
mbs() { awk -v b="$SIZE" -v t="$1" 'BEGIN {printf "%.0f MB/s", b / 1e6 / t}'; }
echo
echo "copy vs restore of one full backup ($((SIZE / 1048576)) MiB, pgbench scale $SCALE), medians of $REPEAT, $(nproc) cores"
echo
echo "| path | time | throughput | peak RSS |"
echo "|---|---|---|---|"
echo "| copy into a second local repository | ${c} s | $(mbs "$c") | $(($(median "${RSS[copy]}") / 1024)) MiB |"
echo "| restore into an empty directory (+ sync) | ${s} s | $(mbs "$s") | $(($(median "${RSS[restore]}") / 1024)) MiB |"
echo
echo "copy/restore time: $(awk -v a="$c" -v b="$s" 'BEGIN {printf "%.2f", a / b}') (target: ≤ 1.0, copy at least as fast)"
