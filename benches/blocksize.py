#!/usr/bin/env python3
"""Block-size dedup model for pgcairn (driven by blocksize.sh; stdlib only).

  blocksize.py scan DATADIR OUT        hash every 8 KiB page of the files BASE_BACKUP sends
  blocksize.py report TITLE OLD NEW    markdown table: what NEW adds to a repository holding OLD

Files are cut at offset 0 into blocks of SIZE bytes, the last one short, as pgcairn does.
A block is identified by the concatenated blake2b digests of its 8 KiB pieces: equal
ids iff equal bytes, so one hashing pass over the data serves every block size.
"""
import hashlib
import os
import pickle
import sys

PAGE = 8192
SIZES = [PAGE << i for i in range(8)]  # 8K .. 1M
INDEX_ENTRY, MANIFEST_ENTRY = 80, 32  # bytes per unique block / per block of a backup
SEAL = 28  # AEAD nonce + tag per stored block
# What BASE_BACKUP leaves out (PostgreSQL's basebackup.c): these directories' contents...
SKIP_DIRS = {"pg_wal", "pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify",
             "pg_serial", "pg_snapshots", "pg_subtrans"}
# ...and these files (plus pgsql_tmp*).
SKIP_FILES = {"postmaster.pid", "postmaster.opts", "pg_internal.init", "backup_label",
              "tablespace_map"}


def scan(datadir):
    """{relative path: (size, [digest of each 8 KiB piece])}"""
    files = {}
    for root, dirs, names in os.walk(datadir):
        rel = os.path.relpath(root, datadir)
        dirs[:] = [d for d in dirs
                   if os.path.normpath(os.path.join(rel, d)) not in SKIP_DIRS
                   and not d.startswith("pgsql_tmp")]
        for name in names:
            if name in SKIP_FILES or name.startswith("pgsql_tmp"):
                continue
            size, digests = 0, []
            with open(os.path.join(root, name), "rb") as f:
                while chunk := f.read(1 << 20):  # a multiple of PAGE: pieces stay aligned
                    view = memoryview(chunk)
                    digests += [hashlib.blake2b(view[o:o + PAGE], digest_size=32).digest()
                                for o in range(0, len(chunk), PAGE)]
                    size += len(chunk)
            files[os.path.normpath(os.path.join(rel, name))] = (size, digests)
    return files


def blocks(files, size):
    """({block id: length}, number of blocks) with every file cut into blocks of size."""
    k, ids, total = size // PAGE, {}, 0
    for length, digests in files.values():
        for i in range(0, len(digests), k):
            ids[b"".join(digests[i:i + k])] = min(size, length - i * PAGE)
            total += 1
    return ids, total


def changed_bytes(old, new):
    """Bytes of 8 KiB pieces that differ from the same offset of the same file in old."""
    total = 0
    for path, (length, digests) in new.items():
        before = old.get(path, (0, []))[1]
        for i, digest in enumerate(digests):
            if i >= len(before) or before[i] != digest:
                total += min(PAGE, length - i * PAGE)
    return total


def mib(n):
    return f"{n / 2**20:,.1f} MiB"


def kib(n):
    return f"{n / 2**10:,.0f} KiB"


def report(title, old_path, new_path):
    with open(old_path, "rb") as f:
        old = pickle.load(f)
    with open(new_path, "rb") as f:
        new = pickle.load(f)
    db = sum(length for length, _ in new.values())
    print(f"### {title}\n")
    print(f"Database (files BASE_BACKUP sends): {mib(db)} in {len(new)} files; "
          f"pages rewritten in place or added: {mib(changed_bytes(old, new))}.\n")
    print("| block | new unique blocks | new bytes | % of DB | unique blocks (index entries) "
          "| blocks in backup | index + manifest | new bytes / 8K row | uploaded (data + seals "
          "+ new index + manifest) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    floor = None
    for size in SIZES:
        known, _ = blocks(old, size)
        ids, total = blocks(new, size)
        fresh = [length for bid, length in ids.items() if bid not in known]
        nbytes = sum(fresh)
        floor = nbytes if floor is None else floor
        label = f"{size >> 20}M" if size >= 1 << 20 else f"{size >> 10}K"
        ratio = f"{nbytes / floor:.2f}" if floor else "-"
        meta = len(ids) * INDEX_ENTRY + total * MANIFEST_ENTRY
        upload = nbytes + len(fresh) * (SEAL + INDEX_ENTRY) + total * MANIFEST_ENTRY
        print(f"| {label} | {len(fresh):,} | {mib(nbytes)} | {100 * nbytes / db:.2f}% "
              f"| {len(ids):,} | {total:,} | {kib(meta)} | {ratio} | {mib(upload)} |")
    print()


if __name__ == "__main__":
    if sys.argv[1:2] == ["scan"] and len(sys.argv) == 4:
        with open(sys.argv[3], "wb") as out:
            pickle.dump(scan(sys.argv[2]), out)
    elif sys.argv[1:2] == ["report"] and len(sys.argv) == 5:
        report(*sys.argv[2:])
    else:
        sys.exit(__doc__)
