#!/usr/bin/env bash
# Build pgcairn (release) and run the main job end to end on a throwaway
# PostgreSQL 15 cluster: stanza-create, a full backup while pgbench writes, a diff
# backup after more writes, restore of the diff into an empty directory, start
# PostgreSQL on it and check the data, then a delta restore of the full over it.
# Runs as root (the server runs as `postgres`) or as an ordinary user.
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PGBIN/initdb" ]; then
    echo "PostgreSQL 15 is not installed: apt-get install -y postgresql-15" >&2
    exit 1
fi
cargo build --release --locked
PGCAIRN="$PWD/target/release/pgcairn"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
DEMO=$(mktemp -d /var/tmp/pgcairn-demo.XXXXXX)
chmod 755 "$DEMO"
[ "$(id -u)" = 0 ] && chown postgres "$DEMO"
cleanup() {
    for d in "$DEMO/data" "$DEMO/restored"; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$DEMO"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port)
echo "== throwaway cluster in $DEMO (port $P1)"
as_pg "$PGBIN/initdb" -D "$DEMO/data" --data-checksums -A trust -U postgres >/dev/null
printf "port=%s\nunix_socket_directories='%s'\nlisten_addresses=''\n" "$P1" "$DEMO" >>"$DEMO/data/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$DEMO/data" -l "$DEMO/server.log" -w start >/dev/null
psql() { "$PGBIN/psql" -X -At -h "$DEMO" -U postgres "$@" postgres; }
"$PGBIN/pgbench" -h "$DEMO" -p "$P1" -U postgres -i -s 10 -q postgres 2>&1 | tail -1

export PGCAIRN_REPO="$DEMO/repo" PGCAIRN_STANZA=demo PGCAIRN_PG="host=$DEMO port=$P1 user=postgres"
export PGCAIRN_REPO_PASSPHRASE="demo passphrase, use a long random one in production"
# This throwaway cluster does not archive WAL (archive_mode is off): backup refuses such a
# server unless archive-copy says each backup carries its own WAL (no point-in-time
# recovery then). A production cluster sets archive_command instead (README).
export PGCAIRN_ARCHIVE_COPY=true
# The repository directory belongs to the database's OS user, as in the quick start:
# what pgcairn writes into it as root is then that user's too.
as_pg mkdir -m 0700 "$DEMO/repo"
echo "== pgcairn stanza-create"
"$PGCAIRN" stanza-create
# restore_command (pgcairn archive-get) runs as the server's user, without our
# environment: it unlocks the repository with a key file it can read.
"$PGCAIRN" key-file --output="$DEMO/demo.key"
[ "$(id -u)" = 0 ] && chown postgres "$DEMO/demo.key"
export PGCAIRN_REPO_KEY_FILE="$DEMO/demo.key"
echo "== pgcairn backup (pgbench writing meanwhile)"
"$PGBIN/pgbench" -h "$DEMO" -p "$P1" -U postgres -n -c 2 -T 5 postgres >/dev/null 2>&1 &
sleep 1
FULL=$("$PGCAIRN" backup --start-fast | tail -n 1)
wait
echo "full backup $FULL done"
echo "== pgcairn backup --type=diff (after more pgbench)"
"$PGBIN/pgbench" -h "$DEMO" -p "$P1" -U postgres -n -c 2 -t 500 postgres >/dev/null 2>&1
"$PGCAIRN" backup --start-fast --type=diff
echo "== pgcairn info"
"$PGCAIRN" info
echo "== pgcairn restore (the newest backup: the diff) into $DEMO/restored"
"$PGCAIRN" restore --pg-data="$DEMO/restored"
# Everything pgcairn creates is private (0600/0700): the server's user must own the
# repository and key file to read WAL from it during recovery.
[ "$(id -u)" = 0 ] && chown -R postgres "$DEMO/restored" "$DEMO/repo" "$DEMO/demo.key"
printf "port=%s\n" "$P2" >>"$DEMO/restored/postgresql.auto.conf"
as_pg "$PGBIN/pg_ctl" -D "$DEMO/restored" -l "$DEMO/restored.log" -w start >/dev/null
verify() {
    consistent=$(psql -p "$P2" -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta),0) FROM pgbench_history)")
    rows=$(psql -p "$P2" -c "SELECT count(*) || ' accounts, ' || (SELECT count(*) FROM pgbench_history) || ' history rows' FROM pgbench_accounts")
    echo "== restored cluster is up: $rows, balances consistent with history: $consistent"
    [ "$consistent" = t ] || { echo "demo failed: restored data is inconsistent" >&2; exit 1; }
}
verify
as_pg "$PGBIN/pg_ctl" -D "$DEMO/restored" -w stop >/dev/null
echo "== pgcairn restore --delta --set=$FULL over it (only differing blocks are fetched)"
"$PGCAIRN" restore --delta --set="$FULL" --type=immediate --target-action=promote --pg-data="$DEMO/restored"
[ "$(id -u)" = 0 ] && chown -R postgres "$DEMO/restored"
printf "port=%s\n" "$P2" >>"$DEMO/restored/postgresql.auto.conf"
as_pg "$PGBIN/pg_ctl" -D "$DEMO/restored" -l "$DEMO/restored.log" -w start >/dev/null
until [ "$(psql -p "$P2" -c 'SELECT pg_is_in_recovery()')" = f ]; do sleep 0.2; done
verify
echo "== demo passed"
