#!/usr/bin/env bash
# What monitoring costs: `info`, `metrics` and `check --archive-only` on a repository
# with a few backups of a throwaway PostgreSQL 15 cluster, and archive_command's
# per-segment cost (optionally A/B against another pgcairn-archive-push build).
# Prints a markdown table of medians (wall seconds, peak RSS).
#
#   nice benches/monitoring.sh
#   SCALE=50 REPEAT=9 OLD=/path/to/old/pgcairn-archive-push nice benches/monitoring.sh
#
# Needs: target/release/{pgcairn,pgcairn-archive-push}, PostgreSQL 15 from Debian, time.
set -euo pipefail

SCALE=${SCALE:-20}
REPEAT=${REPEAT:-7}
OLD=${OLD:-}
PGBIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for b in pgcairn pgcairn-archive-push; do
    [ -x "$ROOT/target/release/$b" ] || { echo "missing target/release/$b: cargo build --release --locked" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "install time (apt-get install -y time)" >&2; exit 1; }
AS_PG=()
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); fi
as_pg() { "${AS_PG[@]}" "$@"; }
W=$(mktemp -d /var/tmp/pgcairn-monitoring.XXXXXX)
chmod 755 "$W"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W"; fi
LOG=$W/log
cleanup() {
    [ -f "$W/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$W/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

mkdir "$W/bin"
cp "$ROOT"/target/release/{pgcairn,pgcairn-archive-push} "$W/bin/"
[ -n "$OLD" ] && cp "$OLD" "$W/bin/old-archive-push"
chmod 755 "$W/bin" "$W"/bin/*
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CONN="host=$W port=$PORT user=postgres"
as_pg install -d -m 700 "$W/repo" "$W/repo-old"
printf 'stanza = "main"\nrepo = "%s/repo"\nrepo-passphrase-file = "%s/pass"\npg = "%s"\n' "$W" "$W" "$CONN" >"$W/pgcairn.toml"
echo "monitoring benchmark passphrase" >"$W/pass"
chmod 600 "$W/pass"
chmod 644 "$W/pgcairn.toml"
if [ "$(id -u)" = 0 ]; then chown postgres: "$W/pass"; fi
pgc() { as_pg "$W/bin/pgcairn" --config="$W/pgcairn.toml" "$@"; }

as_pg "$PGBIN/initdb" -D "$W/data" -U postgres >>"$LOG" 2>&1
cat >>"$W/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$W'
archive_mode = on
archive_command = '$W/bin/pgcairn-archive-push --config $W/pgcairn.toml %p'
EOF
as_pg "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >>"$LOG"
pgc stanza-create >>"$LOG"
pgc key-file --output="$W/repo.key" >>"$LOG"
"$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >>"$LOG" 2>&1
pgc backup --start-fast >>"$LOG"
for t in incr diff incr; do
    "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -n -t 2000 postgres >>"$LOG" 2>&1
    pgc backup --type=$t --start-fast >>"$LOG"
done
SEGMENTS=$(find "$W/repo/main/wal" -type f | wc -l)

# median wall seconds (EPOCHREALTIME: /usr/bin/time has 10 ms steps) and peak RSS (MiB)
# of REPEAT runs of "$@" (output discarded)
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# BEFORE: a shell command run before each run, outside the timing.
measure() {
    local walls=() rss=()
    for _ in $(seq "$REPEAT"); do
        sh -c "${BEFORE:-true}"
        local t0=$EPOCHREALTIME
        /usr/bin/time -f '%M' -o "$W/t" "$@" >/dev/null 2>>"$LOG"
        local w
        w=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f", b - a}')
        read -r m <"$W/t"
        walls+=("$w")
        rss+=("$m")
    done
    printf '%s %s\n' "$(printf '%s\n' "${walls[@]}" | median)" "$(( $(printf '%s\n' "${rss[@]}" | median) / 1024 ))"
}
row() { # row LABEL COMMAND...
    local label=$1
    shift
    read -r wall rss < <(measure "$@")
    printf '| %s | %s s | %s MiB |\n' "$label" "$wall" "$rss"
}

# archive-push: the same segment into a copy of the repository, its object removed
# between runs (outside the timing: the push is create-only).
# A segment written by pgbench -i (full of table data), still in pg_wal.
SEG=$(ls "$W/data/pg_wal/archive_status" | grep -E '^[0-9A-F]{24}\.done$' | sort | head -n 1)
SEG=${SEG%.done}
cp -a "$W/repo" "$W/push"
push_row() { # push_row LABEL BINARY
    BEFORE="find '$W/push/main/wal' -name '$SEG*' -delete" row "$1" "$2" --repo="$W/push" --stanza=main \
        --repo-key-file="$W/repo.key" "$W/data/pg_wal/$SEG"
}

echo "monitoring costs: SCALE=$SCALE, 4 backups, $SEGMENTS archived WAL objects, $REPEAT runs each, medians, $(nproc) cores, rev $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
echo "| command | wall | peak RSS |"
echo "|---|---|---|"
row "info" "${AS_PG[@]}" "$W/bin/pgcairn" --config="$W/pgcairn.toml" info
row "info --output=json" "${AS_PG[@]}" "$W/bin/pgcairn" --config="$W/pgcairn.toml" info --output=json
row "metrics (repository and pg_stat_archiver)" "${AS_PG[@]}" "$W/bin/pgcairn" --config="$W/pgcairn.toml" metrics
row "check --archive-only (repository and pg_stat_archiver)" "${AS_PG[@]}" "$W/bin/pgcairn" --config="$W/pgcairn.toml" check --archive-only
KEYED=(env PGCAIRN_REPO_KEY_FILE="$W/repo.key" "$W/bin/pgcairn" --config="$W/pgcairn.toml")
row "metrics, repo-key-file (no key derivation)" "${AS_PG[@]}" "${KEYED[@]}" metrics
row "check --archive-only, repo-key-file" "${AS_PG[@]}" "${KEYED[@]}" check --archive-only
row "pgcairn-archive-push --version (start-up)" "$W/bin/pgcairn-archive-push" --version
push_row "archive-push of one 16 MiB segment, sync" "$W/bin/pgcairn-archive-push"
if [ -n "$OLD" ]; then
    push_row "the same with OLD" "$W/bin/old-archive-push"
fi

# metrics --listen under load (issue 21, item 6), with the passphrase file of the
# README's setup: 100 slowloris connections held open, then 200 parallel scrapes.
LPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$W/bin/pgcairn" --config="$W/pgcairn.toml" metrics --listen="127.0.0.1:$LPORT" 2>>"$LOG" &
LISTENER=$!
SERVER=""
for _ in $(seq 100); do
    SERVER=$(pgrep -f -n "metrics --listen=127.0.0.1:$LPORT" || true)
    curl -s -o /dev/null "http://127.0.0.1:$LPORT/metrics" && break
    sleep 0.1
done
python3 - "$LPORT" "$SERVER" <<'PY'
import socket, sys, threading, time, urllib.request
port, pid = int(sys.argv[1]), sys.argv[2]
def status(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024
slow = []
for _ in range(100):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\n")
    slow.append(s)
ok, times = [], []
def scrape():
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as r:
            ok.append(r.status == 200 and b"pgcairn_up" in r.read())
    except Exception:
        ok.append(False)
    times.append(time.monotonic() - t0)
t0 = time.monotonic()
threads = [threading.Thread(target=scrape) for _ in range(200)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.monotonic() - t0
closed = 0
for s in slow:
    s.settimeout(20)
    try:
        while s.recv(4096): pass
        closed += 1
    except OSError:
        pass
times.sort()
print(f"| metrics --listen, passphrase: 200 parallel scrapes beside 100 slowloris connections | {wall:.2f} s for all, median {times[100]:.3f} s, max {times[-1]:.3f} s; {sum(ok)}/200 answered; {closed}/100 slow clients dropped | RSS {status('VmRSS:')} MiB after, peak {status('VmHWM:')} MiB (the one key derivation) |")
PY
kill "$LISTENER" 2>/dev/null || true
pkill -f "metrics --listen=127.0.0.1:$LPORT" 2>/dev/null || true
