#!/usr/bin/env bash
# What TLS costs a backup: full backups of one throwaway PostgreSQL 15 cluster (ssl = on,
# a certificate made here) over TCP, sslmode=disable vs sslmode=require with
# channel_binding=require, alternated, medians and the ratio. Prints a markdown table.
#
#   nice benches/tls.sh                # SCALE=50 (~770 MB)
#   SCALE=100 REPEAT=5 nice benches/tls.sh
#
# Needs: target/release/pgcairn, PostgreSQL 15 from Debian, openssl, time.
set -euo pipefail

SCALE=${SCALE:-50}
REPEAT=${REPEAT:-3}
PGBIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$ROOT/target/release/pgcairn" ] || { echo "missing target/release/pgcairn: cargo build --release --locked" >&2; exit 1; }
AS_PG=()
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); fi
W=$(mktemp -d /var/tmp/pgcairn-tls.XXXXXX)
chmod 755 "$W"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W"; fi
LOG=$W/log
cleanup() {
    [ -f "$W/data/postmaster.pid" ] && "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$W/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

cp "$ROOT/target/release/pgcairn" "$W/pgcairn"
chmod 755 "$W/pgcairn"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${AS_PG[@]}" "$PGBIN/initdb" -D "$W/data" -U postgres >>"$LOG" 2>&1
(
    cd "$W/data"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -keyout server.key -out server.crt >>"$LOG" 2>&1
    chmod 600 server.key
    if [ "$(id -u)" = 0 ]; then chown postgres: server.key server.crt; fi
)
cat >>"$W/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$W'
ssl = on
password_encryption = 'scram-sha-256'
EOF
printf 'local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n' >"$W/data/pg_hba.conf"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >>"$LOG"
"$PGBIN/psql" -X -q -h "$W" -p "$PORT" -U postgres -c "CREATE ROLE bench LOGIN REPLICATION PASSWORD 'bench-password'" postgres
"$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >>"$LOG" 2>&1
export PGPASSWORD=bench-password PGCAIRN_REPO_PASSPHRASE="tls benchmark passphrase" PGCAIRN_STANZA=main PGCAIRN_ARCHIVE_COPY=true PGCAIRN_EXPIRE_AUTO=false
PLAIN="host=127.0.0.1 port=$PORT user=bench sslmode=disable"
TLS="host=localhost port=$PORT user=bench sslmode=require channel_binding=require"
"$W/pgcairn" --repo="$W/repo" stanza-create --pg="$PLAIN" >>"$LOG"

# The server's CPU: its backends are the postmaster's children, reaped into its
# cutime + cstime (clock ticks) once each connection ends.
PMPID=$(head -1 "$W/data/postmaster.pid")
TICK=$(getconf CLK_TCK)
children() { pgrep -c -P "$PMPID" || true; }
BASELINE=$(children)
# The postmaster's CPU of reaped children, once the run's backends have been reaped
# (read too early, a backend still exiting would count in the next run).
server_ticks() {
    for _ in $(seq 100); do [ "$(children)" -le "$BASELINE" ] && break; sleep 0.05; done
    awk '{print $16 + $17}' "/proc/$PMPID/stat"
}
# run LABEL CMD... -> "wall client_cpu server_cpu" seconds
run() {
    local s0 t0=$EPOCHREALTIME
    s0=$(server_ticks)
    /usr/bin/time -f '%U %S' -o "$W/cpu" "$@" >>"$LOG" 2>&1
    awk -v a="$t0" -v b="$EPOCHREALTIME" -v c="$(cat "$W/cpu")" -v s0="$s0" -v s1="$(server_ticks)" -v hz="$TICK" \
        'BEGIN {split(c, x, " "); printf "%.3f %.2f %.2f\n", b - a, x[1] + x[2], (s1 - s0) / hz}'
}
# One full backup into a fresh repository each time (nothing deduplicated away).
backup() { rm -rf "$W/r" && cp -a "$W/repo" "$W/r" && run "$W/pgcairn" --repo="$W/r" backup --start-fast --pg="$1"; }
# The reference: pg_basebackup (libpq + OpenSSL) streaming the same cluster to /dev/null.
basebackup() { run sh -c "\"$PGBIN/pg_basebackup\" -d '$1' -D - -Ft -X none -c fast >/dev/null"; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
declare -A col
for _ in $(seq "$REPEAT"); do
    for what in backup basebackup; do
        read -r pw pc ps < <("$what" "$PLAIN")
        read -r tw tc ts < <("$what" "${TLS% channel_binding=require}$([ "$what" = backup ] && echo ' channel_binding=require')")
        col[$what-plain-wall]+="$pw " col[$what-plain-cpu]+="$pc " col[$what-plain-server]+="$ps "
        col[$what-tls-wall]+="$tw " col[$what-tls-cpu]+="$tc " col[$what-tls-server]+="$ts "
        col[$what-ratio]+="$(awk -v a="$tw" -v b="$pw" 'BEGIN {printf "%.3f", a / b}') "
    done
done
med() { tr ' ' '\n' <<<"${col[$1]}" | grep . | median; }
SIZE=$(du -sm "$W/data" | cut -f1)
echo "TLS cost of a full backup: SCALE=$SCALE (${SIZE} MB data directory), $REPEAT pairs alternated, medians, $(nproc) cores"
echo
echo "| client | connection | wall | MB/s | client CPU | server CPU |"
echo "|---|---|---|---|---|---|"
for what in backup basebackup; do
    name=$([ "$what" = backup ] && echo "pgcairn backup" || echo "pg_basebackup -Ft to /dev/null")
    for mode in plain tls; do
        label=$([ "$mode" = plain ] && echo "sslmode=disable" || echo "sslmode=require$([ "$what" = backup ] && echo ' + channel_binding=require')")
        w=$(med "$what-$mode-wall")
        printf '| %s | %s | %s s | %s | %s s | %s s |\n' "$name" "$label" "$w" \
            "$(awk -v s="$SIZE" -v t="$w" 'BEGIN {printf "%.0f", s / t}')" "$(med "$what-$mode-cpu")" "$(med "$what-$mode-server")"
    done
done
echo
echo "TLS / plain, pair by pair, median: pgcairn $(med backup-ratio), pg_basebackup $(med basebackup-ratio)"
