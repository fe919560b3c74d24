#!/usr/bin/env bash
# pgcairn vs pgBackRest (and pg_basebackup) on one throwaway PostgreSQL 15 cluster, in
# the same run. Two datasets of about the same size: pgbench (very compressible) and a
# table of random base64 text (barely compressible). Prints a markdown table.
#
#   nice benches/compare.sh                  # SCALE=50: ~770 MB per dataset, ~10 min
#   SCALE=350 nice benches/compare.sh        # ~5.3 GB per dataset, needs ~40 GB in /var/tmp
#   OUT=table.md REPEAT=3 nice benches/compare.sh
#   ONLY=pitr nice benches/compare.sh        # the point-in-time recovery rows alone
#   ONLY=push nice benches/compare.sh        # the archive-push rows alone (one and two repositories)
#   KEEP_LOGS=DIR ...                        # keep the recovering servers' logs there
#
# Knobs: SCALE (pgbench scale), REPEAT (runs per full backup / restore, order alternated),
# WORKLOAD (pgbench options of the fixed workload run before each diff/incr),
# SEGMENTS (WAL segments pushed per archive-push run), OUT (also write the table there).
# Needs: target/release/{pgcairn,pgcairn-archive-push} (cargo build --release --locked),
# PostgreSQL 15 from Debian; installs pgbackrest and time with apt-get if missing.
# Runs as root (servers and tools run as `postgres`) or as an ordinary user.
set -euo pipefail

SCALE=${SCALE:-50}
REPEAT=${REPEAT:-2}
WORKLOAD=${WORKLOAD:--n -c 2 -j 2 -t 5000 --random-seed=42}
SEGMENTS=${SEGMENTS:-32}
OUT=${OUT:-}
PGBIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STANZA=bench

for b in pgcairn pgcairn-archive-push; do
    [ -x "$ROOT/target/release/$b" ] || { echo "missing target/release/$b: cargo build --release --locked" >&2; exit 1; }
done
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL 15 is not installed: apt-get install -y postgresql-15" >&2; exit 1; }
if ! command -v pgbackrest >/dev/null || [ ! -x /usr/bin/time ]; then
    [ "$(id -u)" = 0 ] || { echo "install pgbackrest and time first" >&2; exit 1; }
    apt-get install -y pgbackrest time >/dev/null
fi

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
W=$(mktemp -d /var/tmp/pgcairn-compare.XXXXXX)
chmod 755 "$W"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W"; fi
LOG=$W/log  # every tool's output; its tail is shown on failure

# Stop every server we started, let an async drainer finish, remove everything.
cleanup() {
    rc=$?
    if [ "$rc" != 0 ] && [ -f "$LOG" ]; then
        echo "== FAILED (exit $rc); last lines of the log:" >&2
        tail -n 30 "$LOG" >&2
    fi
    for d in "$W"/data "$W"/restore-*; do
        if [ -f "$d/postmaster.pid" ]; then
            as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
        fi
    done
    for lock in "$W"/spool-*/"$STANZA"/drain.lock; do
        [ -e "$lock" ] && flock -w 120 "$lock" true || true
    done
    rm -rf "$W"
}
trap cleanup EXIT
say() { echo "== $*" >&2; }

# Private copies: the build tree may change under us, and `postgres` must read them.
mkdir "$W/bin"
cp "$ROOT"/target/release/{pgcairn,pgcairn-archive-push} "$W/bin/"
chmod 755 "$W/bin" "$W"/bin/*
as_pg install -d -m 700 "$W/br-log" "$W/br-lock" "$W/br-spool"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(port)
PORT2=$(port)
CONN="host=$W port=$PORT user=postgres"
sql() { "$PGBIN/psql" -X -At -v ON_ERROR_STOP=1 -h "$W" -p "$PORT" -U postgres -c "$1" postgres; }
bench() { "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres "$@" postgres >>"$LOG" 2>&1; }

# ---------------------------------------------------------------- the machine
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
# Sequential disk throughput of /var/tmp, 1 GiB, bypassing the page cache.
dd_rate() { dd "$@" bs=1M count=1024 2>&1 | sed -n 's/.*, \([0-9.,]* [GM]B\/s\)$/\1/p'; }
DISK="write $(dd_rate if=/dev/zero of="$W/dd" oflag=direct conv=fsync), read $(dd_rate if="$W/dd" of=/dev/null iflag=direct)"
rm -f "$W/dd"

# ---------------------------------------------------------------- the cluster
say "PostgreSQL 15 cluster in $W (port $PORT), pgbench scale $SCALE"
as_pg "$PGBIN/initdb" -D "$W/data" --data-checksums -A trust -U postgres >>"$LOG"
KEEP_MB=$((SEGMENTS * 16 * 2 > 2048 ? SEGMENTS * 16 * 2 : 2048))
cat >>"$W/data/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W'
listen_addresses = ''
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min  # no timed checkpoint in the middle of a measurement
autovacuum = off            # no background page changes between measurements
wal_keep_size = ${KEEP_MB}MB # keep the workload's WAL for the archive-push test
EOF
as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >>"$LOG"

# ---------------------------------------------------------------- the tools
PASS="benchmark passphrase: not a secret"
# The cluster does not archive: pgcairn backups carry their WAL, as pgBackRest with
# archive-check=n (backup refuses a non-archiving server otherwise).
CAIRN=(env "PGCAIRN_REPO_PASSPHRASE=$PASS" "PGCAIRN_ARCHIVE_COPY=true" "$W/bin/pgcairn" "--stanza=$STANZA")
# The passphrase file of the README's configuration (archive-push and PITR rows).
printf '%s\n' "$PASS" >"$W/passphrase"
chmod 600 "$W/passphrase"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W/passphrase"; fi
cat >"$W/pgbackrest.conf" <<EOF
[global]
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$PASS
repo1-retention-full=99
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-check=n
log-path=$W/br-log
lock-path=$W/br-lock
spool-path=$W/br-spool
log-level-console=warn
log-level-file=off

[$STANZA]
pg1-path=$W/data
pg1-socket-path=$W
pg1-port=$PORT
EOF
chmod 600 "$W/pgbackrest.conf"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W/pgbackrest.conf"; fi
BR=(pgbackrest "--config=$W/pgbackrest.conf" "--stanza=$STANZA")

# ---------------------------------------------------------------- measuring
declare -A R  # key -> space-separated values, one per run
add() { R[$1]="${R[$1]:-}$2 "; }
# timed KEY CMD...: run CMD as postgres; record wall seconds (KEY.t), user+system CPU
# seconds (KEY.cpu: the client's only, not the server's) and peak RSS in KiB (KEY.rss).
# Wall time suffers from anything else running; CPU time much less. GNU time reports
# the child's ru_maxrss, which on Linux is the largest single process among it and the
# children it waited for (pgBackRest's process-max workers included as a max, not a sum).
# Every timed command starts from the same state: dirty data written back and, as root,
# the page cache emptied. Otherwise whichever tool runs first after a large write pays
# for reclaiming the cache (measured: 7.1 s for a restore that takes 3.0 s with free
# memory), and the order of the tools decides the ratio.
timed() {
    local key=$1
    shift
    sync
    if [ "$(id -u)" = 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
    echo "-- $key: $*" >>"$LOG"
    as_pg /usr/bin/time -f '%e %M %U %S' -o "$W/time.out" "$@" >>"$LOG" 2>&1
    read -r secs kib user sys <"$W/time.out"
    LAST_SECS=$secs
    add "$key.t" "$secs"
    add "$key.rss" "$kib"
    add "$key.cpu" "$(echo "$user + $sys" | bc -l)"
    printf '   %-24s %7.2f s wall %7.2f s CPU %6.1f MiB RSS   (load %s)\n' "$key" "$secs" "$(echo "$user + $sys" | bc -l)" \
        "$(echo "$kib / 1024" | bc -l)" "$(cut -d' ' -f1 /proc/loadavg)" >&2
}
bytes() { du -sb "$1" | cut -f1; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
get() { median "${R[$1]:-}"; }
fresh_dir() { rm -rf "$1"; as_pg install -d -m 700 "$1"; }
# Alternate the order of runs: pgcairn first in odd runs, last in even ones.
order() { if (($1 % 2)); then echo "$2"; else tr ' ' '\n' <<<"$2" | tac | tr '\n' ' '; fi; }

run_full() { # TOOL DATASET
    local repo=$W/repo-$1-$2
    fresh_dir "$repo"
    sql CHECKPOINT >/dev/null
    case $1 in
    cairn)
        as_pg "${CAIRN[@]}" "--repo=$repo" stanza-create "--pg=$CONN" >>"$LOG" 2>&1
        timed "full.$2.cairn" "${CAIRN[@]}" "--repo=$repo" backup --start-fast "--pg=$CONN" ;;
    br)
        as_pg "${BR[@]}" "--repo1-path=$repo" stanza-create >>"$LOG" 2>&1
        timed "full.$2.br" "${BR[@]}" "--repo1-path=$repo" backup --type=full ;;
    pgbb)
        timed "full.$2.pgbb" "$PGBIN/pg_basebackup" -h "$W" -p "$PORT" -U postgres -D "$repo" \
            -Ft --compress=client-zstd:3 -X fetch -c fast ;;
    esac
    add "full.$2.$1.bytes" "$(bytes "$repo")"
}

run_restore() { # TOOL DATASET
    local dest=$W/restore-$1
    fresh_dir "$dest"
    case $1 in
    cairn) timed "restore.$2.cairn" "${CAIRN[@]}" "--repo=$W/repo-cairn-$2" restore "--pg-data=$dest" --type=none ;;
    br) timed "restore.$2.br" "${BR[@]}" "--repo1-path=$W/repo-br-$2" restore "--pg1-path=$dest" ;;
    esac
}

# Start the pgcairn restore, check it holds the data, stop it.
verify_cairn_restore() { # QUERY EXPECTED
    echo "port = $PORT2" >>"$W/restore-cairn/postgresql.auto.conf"
    as_pg "$PGBIN/pg_ctl" -D "$W/restore-cairn" -l "$W/restore.log" -w start >>"$LOG"
    local got
    got=$("$PGBIN/psql" -X -At -h "$W" -p "$PORT2" -U postgres -c "$1" postgres)
    as_pg "$PGBIN/pg_ctl" -D "$W/restore-cairn" -w stop >>"$LOG"
    [ "$got" = "$2" ] || { echo "restored cluster answered '$got', expected '$2'" >&2; exit 1; }
    say "pgcairn restore started and holds the data ($got)"
}

# Full backups (pg_basebackup too), restores into an empty directory, and delta
# restores over those unchanged restores, for the dataset now in the cluster.
measure_dataset() { # DATASET CHECK_QUERY
    local ds=$1 r t expected
    add "size.$ds" "$(du -sb --exclude=pg_wal "$W/data" | cut -f1)"
    expected=$(sql "$2")
    say "$ds: full backups ($REPEAT runs each, order alternated)"
    for r in $(seq "$REPEAT"); do
        for t in $(order "$r" "cairn br pgbb"); do run_full "$t" "$ds"; done
    done
    say "$ds: restores into an empty directory"
    for r in $(seq "$REPEAT"); do
        for t in $(order "$r" "cairn br"); do run_restore "$t" "$ds"; done
    done
    say "$ds: delta restores over the unchanged restores"
    # pgcairn twice: unlocking with the passphrase (Argon2id, ~0.2 s and 64 MiB by
    # design) and with a key file (as pgBackRest, whose cipher pass sits in its config).
    as_pg "${CAIRN[@]}" "--repo=$W/repo-cairn-$ds" key-file "--output=$W/key-$ds" >>"$LOG" 2>&1
    for r in $(seq "$REPEAT"); do
        for t in $(order "$r" "cairn cairn-key br"); do
            case $t in
            cairn) timed "delta.$ds.cairn" "${CAIRN[@]}" "--repo=$W/repo-cairn-$ds" restore --delta "--pg-data=$W/restore-cairn" --type=none ;;
            cairn-key) timed "delta.$ds.cairn-key" "${CAIRN[@]}" "--repo=$W/repo-cairn-$ds" "--repo-key-file=$W/key-$ds" \
                restore --delta "--pg-data=$W/restore-cairn" --type=none ;;
            br) timed "delta.$ds.br" "${BR[@]}" "--repo1-path=$W/repo-br-$ds" restore --delta "--pg1-path=$W/restore-br" ;;
            esac
        done
    done
    verify_cairn_restore "$2" "$expected"
    measure_verify "$ds"
    # Reference for restores: what the disk takes to copy the data directory and sync.
    fresh_dir "$W/floor"
    timed "floor.$ds" bash -c "tar -C '$W/data' --exclude=./pg_wal -cf - . | tar -C '$W/floor' -xf - && sync"
    rm -rf "$W/floor"
    rm -rf "$W/restore-cairn" "$W/restore-br" "$W/repo-pgbb-$ds"
}

# Archive the WAL of both tools' backups into their repositories (the cluster runs
# without archive_mode; pgBackRest's verify checks a backup only against its WAL),
# then verify each whole repository: one full backup and its WAL each.
measure_verify() { # DATASET
    local ds=$1 c b first current f
    sql "SELECT pg_switch_wal()" >/dev/null
    sql "CHECKPOINT" >/dev/null
    c=$(as_pg "${CAIRN[@]}" "--repo=$W/repo-cairn-$ds" info --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][0]["start_lsn"])')
    c=$(sql "SELECT pg_walfile_name('$c')")
    b=$(as_pg "${BR[@]}" "--repo1-path=$W/repo-br-$ds" info --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][0]["archive"]["start"])')
    first=$(printf '%s\n%s\n' "$c" "$b" | sort | head -1)
    current=$(sql "SELECT pg_walfile_name(pg_current_wal_lsn())")
    for f in $(ls "$W/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort); do
        if [[ "$f" < "$first" || ! "$f" < "$current" ]]; then continue; fi
        as_pg "$W/bin/pgcairn-archive-push" "--stanza=$STANZA" "--repo=$W/repo-cairn-$ds" "--repo-key-file=$W/key-$ds" \
            "$W/data/pg_wal/$f" >>"$LOG" 2>&1
        as_pg "${BR[@]}" "--repo1-path=$W/repo-br-$ds" archive-push "$W/data/pg_wal/$f" >>"$LOG" 2>&1
    done
    say "$ds: verify each whole repository (backup and its WAL)"
    for r in $(seq "$REPEAT"); do
        for t in $(order "$r" "cairn br"); do
            case $t in
            cairn) timed "verify.$ds.cairn" "${CAIRN[@]}" "--repo=$W/repo-cairn-$ds" "--repo-key-file=$W/key-$ds" verify ;;
            br) timed "verify.$ds.br" "${BR[@]}" "--repo1-path=$W/repo-br-$ds" verify ;;
            esac
        done
    done
}

WALS=()
if [ "${ONLY:-}" = push ]; then
    bench -i -s 5 -q
    START_WAL=$(sql "SELECT pg_walfile_name(pg_current_wal_lsn())")
fi
if [ -z "${ONLY:-}" ]; then
# ---------------------------------------------------------------- 1. pgbench dataset
say "pgbench -i -s $SCALE"
bench -i -s "$SCALE" -q
sql "VACUUM ANALYZE" >/dev/null
PGBENCH_SIZE=$(sql "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE relname LIKE 'pgbench_%' AND relkind = 'r'")
SUMQ="SELECT sum(abalance) || '/' || count(*) FROM pgbench_accounts"
measure_dataset pgbench "$SUMQ"

# ---------------------------------------------------------------- 2. after a workload
# Both tools: diff after workload 1, incr after workload 2 (on top of that diff).
START_WAL=$(sql "SELECT pg_walfile_name(pg_current_wal_lsn())")
step() { # KEY PGBACKREST_TYPE FIRST_TOOL
    local c0 b0 t
    c0=$(bytes "$W/repo-cairn-pgbench")
    b0=$(bytes "$W/repo-br-pgbench")
    say "workload: pgbench $WORKLOAD, then $2 backups"
    bench $WORKLOAD
    for t in $3; do
        sql CHECKPOINT >/dev/null
        case $t in
        cairn) timed "$1.cairn" "${CAIRN[@]}" "--repo=$W/repo-cairn-pgbench" backup --start-fast "--type=$2" "--pg=$CONN" ;;
        br) timed "$1.br" "${BR[@]}" "--repo1-path=$W/repo-br-pgbench" backup "--type=$2" ;;
        esac
    done
    add "$1.cairn.bytes" $(($(bytes "$W/repo-cairn-pgbench") - c0))
    add "$1.br.bytes" $(($(bytes "$W/repo-br-pgbench") - b0))
}
step diff diff "cairn br"
step incr incr "br cairn"
fi # ONLY (sections 1 and 2)

if [ "${ONLY:-}" != pitr ]; then

# ---------------------------------------------------------------- 3. archive-push
# The same SEGMENTS real segments (the workload's WAL, topped up with more pgbench if
# short) pushed one command per segment into fresh repositories.
segments() { # completed segments written since START_WAL
    local cur
    cur=$(sql "SELECT pg_walfile_name(pg_current_wal_lsn())")
    find "$W/data/pg_wal" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' -printf '%f\n' |
        sort | awk -v s="$START_WAL" -v e="$cur" '$0 >= s && $0 < e'
}
while [ "$(segments | wc -l)" -lt "$SEGMENTS" ]; do
    sql CHECKPOINT >/dev/null  # full-page images again: more WAL, as after any checkpoint
    bench -n -c 2 -j 2 -T 5
done
sql "SELECT pg_switch_wal()" >/dev/null
mkdir "$W/wal"
for s in $(segments | tail -n "$SEGMENTS"); do cp "$W/data/pg_wal/$s" "$W/wal/"; done
chmod -R a+rX "$W/wal"
WALS=("$W"/wal/*)
say "archive-push: ${#WALS[@]} segments, $(du -sh "$W/wal" | cut -f1) ($REPEAT runs each, order alternated)"
# A shell loop as postgres: the per-segment cost is the command's, as for archive_command.
# Arguments: N, the N words of the command, then the segment paths.
LOOP='n=$1; shift; cmd=("${@:1:n}"); shift "$n"; for f in "$@"; do "${cmd[@]}" "$f" || exit 1; done'
push_run() { # TOOL RUN
    local repo=$W/repo-push-$1-$2 spool=$W/spool-$2
    fresh_dir "$repo"
    case $1 in
    cairn | cairn-async)
        as_pg "${CAIRN[@]}" "--repo=$repo" stanza-create "--pg=$CONN" >>"$LOG" 2>&1
        as_pg "${CAIRN[@]}" "--repo=$repo" key-file "--output=$repo.key" >>"$LOG" 2>&1
        local cmd=("$W/bin/pgcairn-archive-push" "--stanza=$STANZA" "--repo=$repo" "--repo-key-file=$repo.key")
        if [ "$1" = cairn ]; then
            timed push.cairn bash -c "$LOOP" _ ${#cmd[@]} "${cmd[@]}" "${WALS[@]}"
        else
            fresh_dir "$spool"
            cmd+=(--archive-async=true "--spool-path=$spool")
            timed push.cairn-async bash -c "$LOOP" _ ${#cmd[@]} "${cmd[@]}" "${WALS[@]}"
            # Drained: queue empty and the drainer gone (it holds drain.lock while it runs).
            local t0 t1
            t0=$(date +%s.%N)
            until [ -z "$(ls "$spool/$STANZA/out")" ] && flock -n "$spool/$STANZA/drain.lock" true; do sleep 0.02; done
            t1=$(date +%s.%N)
            add push.cairn-drained.t "$(echo "$LAST_SECS + $t1 - $t0" | bc -l)"
            [ -z "$(ls "$spool/$STANZA/error")" ] || { echo "async push parked segments in $spool/$STANZA/error" >&2; exit 1; }
        fi
        local n
        n=$(find "$repo/$STANZA/wal" -type f | wc -l)
        [ "$n" = "${#WALS[@]}" ] || { echo "pgcairn repository holds $n WAL objects, not ${#WALS[@]}" >&2; exit 1; } ;;
    cairn-readme)
        # As the README's quick start sets it up: a config file naming a passphrase
        # file, nothing else. The operator's `pgcairn check` after stanza-create
        # unlocks once (the key cache, in /dev/shm as by default); here `info` does.
        local toml=$repo.toml
        printf 'stanza = "%s"\nrepo = "%s"\nrepo-passphrase-file = "%s"\n' "$STANZA" "$repo" "$W/passphrase" >"$toml"
        chmod 600 "$toml"
        if [ "$(id -u)" = 0 ]; then chown postgres: "$toml"; fi
        as_pg "$W/bin/pgcairn" "--config=$toml" stanza-create "--pg=$CONN" >>"$LOG" 2>&1
        as_pg "$W/bin/pgcairn" "--config=$toml" info >>"$LOG" 2>&1
        local cmd=("$W/bin/pgcairn-archive-push" "--config=$toml")
        timed push.cairn-readme bash -c "$LOOP" _ ${#cmd[@]} "${cmd[@]}" "${WALS[@]}"
        local n
        n=$(find "$repo/$STANZA/wal" -type f | wc -l)
        [ "$n" = "${#WALS[@]}" ] || { echo "pgcairn repository holds $n WAL objects, not ${#WALS[@]}" >&2; exit 1; }
        rm -f "$toml" ;;
    cairn2)
        # Two repositories, each with its own key file: every segment into both.
        local two=(env "PGCAIRN_REPO2_PASSPHRASE=$PASS" "${CAIRN[@]}" "--repo=$repo" "--repo2=$repo.2")
        fresh_dir "$repo.2"
        as_pg "${two[@]}" stanza-create "--pg=$CONN" >>"$LOG" 2>&1
        as_pg "${two[@]}" --repo-number=2 stanza-create "--pg=$CONN" >>"$LOG" 2>&1
        as_pg "${two[@]}" key-file "--output=$repo.key" >>"$LOG" 2>&1
        as_pg "${two[@]}" --repo-number=2 key-file "--output=$repo.2.key" >>"$LOG" 2>&1
        local cmd=("$W/bin/pgcairn-archive-push" "--stanza=$STANZA" "--repo=$repo" "--repo-key-file=$repo.key"
            "--repo2=$repo.2" "--repo2-key-file=$repo.2.key")
        timed push.cairn2 bash -c "$LOOP" _ ${#cmd[@]} "${cmd[@]}" "${WALS[@]}"
        local n r
        for r in "$repo" "$repo.2"; do
            n=$(find "$r/$STANZA/wal" -type f | wc -l)
            [ "$n" = "${#WALS[@]}" ] || { echo "pgcairn repository $r holds $n WAL objects, not ${#WALS[@]}" >&2; exit 1; }
        done
        rm -rf "$repo.2" "$repo.2.key" ;;
    br2)
        fresh_dir "$repo.2"
        local two=(env "PGBACKREST_REPO2_CIPHER_TYPE=aes-256-cbc" "PGBACKREST_REPO2_CIPHER_PASS=$PASS"
            "${BR[@]}" "--repo1-path=$repo" "--repo2-path=$repo.2")
        as_pg "${two[@]}" stanza-create >>"$LOG" 2>&1
        local cmd=("${two[@]}" archive-push)
        timed push.br2 bash -c "$LOOP" _ ${#cmd[@]} "${cmd[@]}" "${WALS[@]}"
        local n r
        for r in "$repo" "$repo.2"; do
            n=$(find "$r/archive/$STANZA" -name '0*-*' -type f | wc -l)
            [ "$n" = "${#WALS[@]}" ] || { echo "pgBackRest repository $r holds $n WAL files, not ${#WALS[@]}" >&2; exit 1; }
        done
        rm -rf "$repo.2" ;;
    br)
        as_pg "${BR[@]}" "--repo1-path=$repo" stanza-create >>"$LOG" 2>&1
        local cmd=("${BR[@]}" "--repo1-path=$repo" archive-push)
        timed push.br bash -c "$LOOP" _ ${#cmd[@]} "${cmd[@]}" "${WALS[@]}"
        local n
        n=$(find "$repo/archive/$STANZA" -name '0*-*' -type f | wc -l)
        [ "$n" = "${#WALS[@]}" ] || { echo "pgBackRest repository holds $n WAL files, not ${#WALS[@]}" >&2; exit 1; } ;;
    esac
    rm -rf "$repo" "$repo.key"
}
for r in $(seq "$REPEAT"); do
    for t in $(order "$r" "cairn br cairn-readme cairn-async cairn2 br2"); do push_run "$t" "$r"; done
done

fi # ONLY (section 3)

if [ -z "${ONLY:-}" ]; then
# ---------------------------------------------------------------- 4. random text dataset
say "random text dataset of about the same size"
sql "DROP TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history" >/dev/null
sql "CREATE EXTENSION pgcrypto" >/dev/null
sql "CREATE TABLE random_text (id int, t text)" >/dev/null
# 512 base64 characters per row (inline, no TOAST), ~14 rows per 8 KiB page.
sql "INSERT INTO random_text SELECT g, translate(encode(gen_random_bytes(384), 'base64'), E'\n', '')
     FROM generate_series(1, $((PGBENCH_SIZE / 585))) g" >/dev/null
sql "VACUUM FREEZE ANALYZE random_text" >/dev/null
rm -rf "$W"/repo-*-pgbench
measure_dataset random "SELECT count(*) || '/' || sum(length(t)) FROM random_text"

fi # ONLY (section 4)

if [ "${ONLY:-}" != push ]; then
# ---------------------------------------------------------------- 5. point-in-time recovery
# Restore a full backup, then replay at least PITR_SEGMENTS segments of WAL (bulk
# inserts, updates, pgbench) through restore_command until the server is promoted at
# the end of the archive. One archive_command feeds both tools: pgcairn configured as
# the README's quick start does (a config file with repo-passphrase-file), pgBackRest
# pushing synchronously. pgBackRest fetches with archive-async=y (its best), pgcairn
# with its defaults. Every restore_command runs in a wrapper that records the time
# spent in the tool (from just before it starts to its exit): the time PostgreSQL
# waits for WAL.
PITR_SEGMENTS=${PITR_SEGMENTS:-40}
say "point-in-time recovery: archiving into both tools, full backups, $PITR_SEGMENTS+ segments of WAL"
printf 'stanza = "%s"\nrepo = "%s"\nrepo-passphrase-file = "%s"\n' "$STANZA" "$W/repo-pitr-cairn" "$W/passphrase" >"$W/pgcairn.toml"
sed -e "s|^\[$STANZA\]|repo1-path=$W/repo-pitr-br\n\n[global:archive-get]\narchive-async=y\n\n[$STANZA]|" \
    "$W/pgbackrest.conf" >"$W/pgbackrest-pitr.conf"
chmod 600 "$W/pgcairn.toml" "$W/pgbackrest-pitr.conf"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W/pgcairn.toml" "$W/pgbackrest-pitr.conf"; fi
CAIRN_PITR=("$W/bin/pgcairn" --config "$W/pgcairn.toml")
BR_PITR=(pgbackrest "--config=$W/pgbackrest-pitr.conf" "--stanza=$STANZA")
# waited LOG COMMAND...: run a restore_command, append its start, end and status to LOG.
printf '%s\n' '#!/bin/bash' 'log=$1' 'shift' 's=$EPOCHREALTIME' '"$@"' 'rc=$?' \
    'echo "$s $EPOCHREALTIME $rc" >>"$log"' 'exit $rc' >"$W/bin/waited"
chmod 755 "$W/bin/waited"
fresh_dir "$W/repo-pitr-cairn"
fresh_dir "$W/repo-pitr-br"
{
    echo "archive_mode = on"
    echo "archive_command = '$W/bin/pgcairn-archive-push --config $W/pgcairn.toml %p && pgbackrest --config=$W/pgbackrest-pitr.conf --stanza=$STANZA archive-push %p'"
} >>"$W/data/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w restart >>"$LOG"
as_pg "${CAIRN_PITR[@]}" stanza-create "--pg=$CONN" >>"$LOG" 2>&1
as_pg "${BR_PITR[@]}" stanza-create >>"$LOG" 2>&1
as_pg "${CAIRN_PITR[@]}" backup --start-fast "--pg=$CONN" >>"$LOG" 2>&1
as_pg "${BR_PITR[@]}" backup --type=full >>"$LOG" 2>&1
PITR_START=$(sql "SELECT pg_current_wal_lsn()")
wal_since() { sql "SELECT (pg_wal_lsn_diff(pg_current_wal_lsn(), '$PITR_START') / 16777216)::int"; }
sql "CREATE TABLE pitr_bulk AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 1000000) g" >/dev/null
sql "UPDATE pitr_bulk SET h = md5(h) WHERE id % 4 = 0" >/dev/null
bench -i -s 5 --quiet
while [ "$(wal_since)" -lt "$PITR_SEGMENTS" ]; do
    sql CHECKPOINT >/dev/null
    bench -n -c 2 -j 2 -T 3
done
PITR_FP="SELECT (SELECT count(*) || '/' || max(h) FROM pitr_bulk) || '/' || (SELECT sum(abalance) FROM pgbench_accounts)"
PITR_EXPECTED=$(sql "$PITR_FP")
PITR_LAST=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
until [ "$(sql "SELECT coalesce(last_archived_wal, '') >= '$PITR_LAST' FROM pg_stat_archiver")" = t ]; do sleep 0.2; done
PITR_WAL=$(($(wal_since) + 1))
as_pg "$PGBIN/pg_ctl" -D "$W/data" -w stop >>"$LOG"
say "point-in-time recovery: $PITR_WAL segments to replay ($REPEAT runs each, order alternated)"
# pitr_run TOOL: restore (timed), then start the server and wait for its promotion.
pitr_run() {
    local dest=$W/restore-pitr waits=$W/waits-$1 t0 t1
    fresh_dir "$dest"
    case $1 in
    cairn) timed "pitr-restore.$1" "${CAIRN_PITR[@]}" restore "--pg-data=$dest" ;;
    br) timed "pitr-restore.$1" "${BR_PITR[@]}" restore "--pg1-path=$dest" ;;
    esac
    local restored=$LAST_SECS
    sed -i "s|^restore_command = '|restore_command = '$W/bin/waited $waits |" "$dest/postgresql.auto.conf"
    grep -q "^restore_command = '$W/bin/waited" "$dest/postgresql.auto.conf" || { echo "$1: no restore_command to wrap" >&2; exit 1; }
    printf 'port = %s\narchive_mode = off\n' "$PORT2" >>"$dest/postgresql.auto.conf"
    : >"$waits"
    chmod 666 "$waits"
    sync
    if [ "$(id -u)" = 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
    t0=$(date +%s.%N)
    as_pg "$PGBIN/pg_ctl" -D "$dest" -l "$W/pitr-$1.log" start >>"$LOG"
    # Promoted at the end of the archive: PostgreSQL removes recovery.signal. Meanwhile
    # the peak RSS of pgcairn's background WAL fetcher (pid in its lock file).
    local fetcher_kib=0 pid kib
    while [ -e "$dest/recovery.signal" ]; do
        sleep 0.005
        if grep -q "FATAL\|PANIC" "$W/pitr-$1.log"; then tail "$W/pitr-$1.log" >&2; exit 1; fi
        pid=$(cat "$dest/pg_wal/pgcairn-prefetch/.fetcher.lock" 2>/dev/null || true)
        kib=$(awk '/^VmHWM/ {print $2}' "/proc/${pid:-0}/status" 2>/dev/null || true)
        if [ -n "$kib" ] && ((kib > fetcher_kib)); then fetcher_kib=$kib; fi
    done
    if [ "$1" = cairn ]; then add pitr-fetcher.rss "$fetcher_kib"; fi
    t1=$(date +%s.%N)
    local replay waited calls got=""
    replay=$(echo "$t1 - $t0" | bc -l)
    waited=$(awk '{s += $2 - $1} END {printf "%.3f", s}' "$waits")
    calls=$(wc -l <"$waits")
    add "pitr-replay.$1" "$replay"
    add "pitr-wait.$1" "$waited"
    add "pitr-calls.$1" "$calls"
    add "pitr-total.$1" "$(echo "$restored + $replay" | bc -l)"
    printf '   %-24s %7.2f s replay, %6.2f s in %s restore_command calls\n' "pitr.$1" "$replay" "$waited" "$calls" >&2
    for _ in $(seq 100); do
        got=$("$PGBIN/psql" -X -At -h "$W" -p "$PORT2" -U postgres -c "$PITR_FP" postgres 2>/dev/null) && break
        sleep 0.1
    done
    as_pg "$PGBIN/pg_ctl" -D "$dest" -m fast -w stop >>"$LOG"
    if [ -n "${KEEP_LOGS:-}" ]; then cp "$W/pitr-$1.log" "$waits" "$dest/pg_wal/pgcairn-prefetch/.fetcher.log" "$KEEP_LOGS/" 2>/dev/null || true; fi
    [ "$got" = "$PITR_EXPECTED" ] || { echo "$1: recovered cluster answered '$got', expected '$PITR_EXPECTED'" >&2; exit 1; }
    rm -rf "$dest"
}
for r in $(seq "$REPEAT"); do
    for t in $(order "$r" "cairn br"); do pitr_run "$t"; done
done
fi # ONLY (section 5)

# ---------------------------------------------------------------- report
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
rss() { awk -v k="$1" 'BEGIN {printf "%.0f MiB", k / 1024}'; }
sec() { awk -v s="$1" 'BEGIN {printf "%.2f s", s}'; }
ms() { awk -v s="$1" -v n="${#WALS[@]}" 'BEGIN {printf "%.0f ms", 1000 * s / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
# row LABEL UNIT CAIRN_KEY BR_KEY [PGBB_KEY]: medians, formatted with UNIT (sec|mib|ms|rss)
row() {
    local c b p="" f=$2
    c=$(get "$3")
    b=$(get "$4")
    [ -n "${5:-}" ] && p=$($f "$(get "$5")")
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$($f "$c")" "$($f "$b")" "$(ratio "$c" "$b")" "$p"
    [ -z "${6:-}" ] || echo "$6 $(ratio "$c" "$b")" >>"$W/targets"
}
: >"$W/targets"
{
    echo "### pgcairn vs pgBackRest, SCALE=$SCALE, $(date -u +%Y-%m-%d)"
    echo
    echo "Medians of $REPEAT runs (diff and incr: one run each). pgcairn binaries built $(date -u -r "$ROOT/target/release/pgcairn" '+%Y-%m-%d %H:%M UTC')"
    echo "(tree at $REV when the run started),"
    echo "$(pgbackrest version), $("$PGBIN/postgres" --version | sed 's/postgres (PostgreSQL) /PostgreSQL /')."
    echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'),"
    echo "$(free -g | awk '/^Mem:/ {print $2}') GiB RAM, disk $(findmnt -no SOURCE,FSTYPE -T /var/tmp | tr -s ' ' ' ')"
    echo "($DISK); load average at the start $LOAD0, at the end $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Datasets: pgbench $(mib "$(get size.pgbench)"), random text $(mib "$(get size.random)") (data directory without pg_wal)."
    echo "Workload before diff and before incr: pgbench $WORKLOAD."
    echo
    echo "| measure | pgcairn | pgBackRest | pgcairn/pgBackRest | pg_basebackup (or reference) |"
    echo "|---|---|---|---|---|"
    if [ -z "${ONLY:-}" ]; then
    for ds in pgbench random; do
        row "full backup, $ds: time" sec "full.$ds.cairn.t" "full.$ds.br.t" "full.$ds.pgbb.t" "full-time-$ds"
        row "full backup, $ds: client CPU (user+sys)" sec "full.$ds.cairn.cpu" "full.$ds.br.cpu" "full.$ds.pgbb.cpu"
        row "full backup, $ds: stored" mib "full.$ds.cairn.bytes" "full.$ds.br.bytes" "full.$ds.pgbb.bytes"
        row "full backup, $ds: peak RSS" rss "full.$ds.cairn.rss" "full.$ds.br.rss"
    done
    row "diff after workload 1: time" sec diff.cairn.t diff.br.t
    row "diff after workload 1: new stored" mib diff.cairn.bytes diff.br.bytes "" diff-bytes
    row "incr after workload 2: time" sec incr.cairn.t incr.br.t
    row "incr after workload 2: new stored" mib incr.cairn.bytes incr.br.bytes "" incr-bytes
    row "diff: peak RSS" rss diff.cairn.rss diff.br.rss
    fi
    if [ "${ONLY:-}" != pitr ]; then
    row "archive-push, sync, per segment" ms push.cairn.t push.br.t "" push-sync
    row "archive-push, sync, CPU per segment" ms push.cairn.cpu push.br.cpu
    row "archive-push, pgcairn async vs pgBackRest sync, per segment (command returns)" ms push.cairn-async.t push.br.t
    row "archive-push, pgcairn async vs pgBackRest sync, per segment (all in repository)" ms push.cairn-drained.t push.br.t
    row "archive-push, sync: peak RSS" rss push.cairn.rss push.br.rss
    row "archive-push, sync, per segment, the README's configuration (passphrase file)" ms push.cairn-readme.t push.br.t "" push-sync-readme
    row "archive-push, sync, the README's configuration: peak RSS" rss push.cairn-readme.rss push.br.rss
    echo "push-readme-rss $(awk -v k="$(get push.cairn-readme.rss)" 'BEGIN {printf "%.1f", k / 1024}')" >>"$W/targets"
    row "archive-push, sync, two repositories, per segment" ms push.cairn2.t push.br2.t "" push-sync-two
    row "archive-push, sync, two repositories: peak RSS" rss push.cairn2.rss push.br2.rss
    fi
    if [ -z "${ONLY:-}" ]; then
    for ds in pgbench random; do
        row "restore to an empty directory, $ds: time (reference: tar copy + sync)" sec "restore.$ds.cairn.t" "restore.$ds.br.t" "floor.$ds.t" "restore-$ds"
        row "restore, $ds: CPU (user+sys)" sec "restore.$ds.cairn.cpu" "restore.$ds.br.cpu"
        row "restore, $ds: peak RSS" rss "restore.$ds.cairn.rss" "restore.$ds.br.rss"
        row "delta restore over an unchanged copy, $ds: time" sec "delta.$ds.cairn.t" "delta.$ds.br.t" "" "delta-$ds"
        row "delta restore over an unchanged copy, $ds, pgcairn with a key file: time" sec "delta.$ds.cairn-key.t" "delta.$ds.br.t" "" "delta-key-$ds"
        row "delta restore, $ds: CPU (user+sys)" sec "delta.$ds.cairn.cpu" "delta.$ds.br.cpu"
        row "verify whole repository, $ds: time (reference: pgcairn restore)" sec "verify.$ds.cairn.t" "verify.$ds.br.t" "restore.$ds.cairn.t" "verify-$ds"
        row "verify, $ds: CPU (user+sys)" sec "verify.$ds.cairn.cpu" "verify.$ds.br.cpu"
        row "verify, $ds: peak RSS" rss "verify.$ds.cairn.rss" "verify.$ds.br.rss"
        echo "verify-vs-restore-$ds $(ratio "$(get "verify.$ds.cairn.t")" "$(get "restore.$ds.cairn.t")")" >>"$W/targets"
    done
    fi
    if [ "${ONLY:-}" != push ]; then
    row "point-in-time recovery of $PITR_WAL segments: restore" sec pitr-restore.cairn.t pitr-restore.br.t
    row "point-in-time recovery: replay until promoted" sec pitr-replay.cairn pitr-replay.br
    row "point-in-time recovery: time in restore_command ($(get pitr-calls.cairn) / $(get pitr-calls.br) calls)" sec pitr-wait.cairn pitr-wait.br
    row "point-in-time recovery, end to end (restore + replay)" sec pitr-total.cairn pitr-total.br "" pitr-total
    row "point-in-time recovery: peak RSS of pgcairn's WAL fetcher / pgBackRest's restore" rss pitr-fetcher.rss pitr-restore.br.rss
    echo "pitr-wait-share $(ratio "$(get pitr-wait.cairn)" "$(get pitr-replay.cairn)")" >>"$W/targets"
    fi
    echo
    echo "Targets (pgcairn/pgBackRest, this run):"
    echo
    while read -r name value; do
        case $name in
        full-time-*) limit=0.5 what="full backup time (${name#full-time-})" ;;
        diff-bytes | incr-bytes) limit=0.1 what="${name%-bytes} stored bytes" ;;
        push-sync) limit=0.25 what="archive-push per segment (sync)" ;;
        push-sync-two) limit=0.25 what="archive-push per segment (sync, two repositories each)" ;;
        push-sync-readme) limit=0.25 what="archive-push per segment (sync, the README's configuration)" ;;
        push-readme-rss) limit=32 what="archive-push peak RSS in MiB (the README's configuration; not a ratio)" ;;
        restore-*) limit=0.5 what="restore time (${name#restore-})" ;;
        pitr-total) limit=0.5 what="point-in-time recovery, end to end" ;;
        pitr-wait-share) limit=0.05 what="pgcairn time in restore_command / its replay time (not a ratio to pgBackRest)" ;;
        delta-key-*) limit=0.5 what="delta restore time, key file (${name#delta-key-})" ;;
        delta-*) limit=0.5 what="delta restore time (${name#delta-})" ;;
        verify-vs-restore-*) limit=1.0 what="pgcairn verify time / pgcairn restore time, reading more (${name#verify-vs-restore-})" ;;
        verify-*) limit=0.5 what="verify time (${name#verify-})" ;;
        *) continue ;;
        esac
        awk -v v="$value" -v l="$limit" -v w="$what" 'BEGIN {printf "- %s: %s ≤ %s: %s\n", w, v, l, (v <= l) ? "met" : "NOT met"}'
    done <"$W/targets"
    
    maxrss=0
    for k in verify.pgbench.cairn.rss verify.random.cairn.rss full.pgbench.cairn.rss full.random.cairn.rss diff.cairn.rss incr.cairn.rss restore.pgbench.cairn.rss restore.random.cairn.rss delta.pgbench.cairn.rss delta.random.cairn.rss push.cairn.rss pitr-restore.cairn.rss pitr-fetcher.rss; do
        for v in ${R[$k]:-}; do
            if ((v > maxrss)); then maxrss=$v; fi
        done
    done
    awk -v k="$maxrss" 'BEGIN {printf "- pgcairn peak RSS ≤ 256 MiB: %.1f MiB at most in this run: %s\n", k / 1024, (k <= 262144) ? "met" : "NOT met"}'
} | tee ${OUT:+"$OUT"}
