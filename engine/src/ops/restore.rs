//! Restore a backup set into an empty directory: ranged reads of the packs,
//! decrypt + decompress + verify on rayon, files written temp → fsync → rename,
//! tablespace links, modes. Never writes into a non-empty directory.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::crypto::Cipher;
use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::fsutil::{self, Commit, DurableFile};
use crate::progress::Progress;
use crate::repo::format::*;
use crate::repo::{blob, BlobLocation, ChunkIndex, Repository};

const PARALLEL_FILES: usize = 4;
const BLOCKS_AHEAD: usize = 8;
/// Ranged reads in flight per file, and the most one read fetches. A run is capped
/// in restored bytes too: compressed 30x, a 4 MiB read would be 120 MiB in memory.
const RUNS_AHEAD: usize = 4;
const MAX_RUN_BYTES: u64 = 4 << 20;
const MAX_RUN_RAW_BYTES: u64 = 2 << 20;

struct Run {
    /// Index of the run's first block in the file.
    first: usize,
    pack: Arc<str>,
    key_id: [u8; 16],
    start: u64,
    end: u64,
    /// Restored bytes of the run.
    raw: u64,
    /// (chunk id, stored length, raw length) in file order.
    blocks: Vec<(ChunkId, u32, u32)>,
}

pub struct RestoreRequest {
    pub target: PathBuf,
    /// Backup label; the newest when None.
    pub set: Option<String>,
    /// Tablespace OID → directory; unmapped tablespaces go to their original location.
    pub tablespace_map: HashMap<u32, PathBuf>,
    pub progress: Arc<dyn Progress>,
    pub recovery: Recovery,
}

/// Where recovery stops, as PostgreSQL's recovery_target* settings say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay the whole archive, then promote.
    EndOfArchive,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(String),
    Lsn(String),
    Name(String),
    Xid(String),
    /// Write no recovery settings (only for sets that carry their WAL).
    None,
}

#[derive(Debug, Clone)]
pub struct Recovery {
    pub target: RecoveryTarget,
    /// recovery_target_action: pause, promote or shutdown.
    pub action: Option<String>,
    /// recovery_target_timeline, e.g. latest, current or a number.
    pub timeline: Option<String>,
    /// The command PostgreSQL runs to fetch WAL: `pgcairn ... archive-get %f "%p"`.
    pub restore_command: String,
}

/// A value in postgresql.conf syntax.
fn guc_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Recovery settings appended to postgresql.auto.conf (where ALTER SYSTEM writes, and
/// which wins over postgresql.conf) plus recovery.signal.
fn write_recovery(target_dir: &Path, label: &str, r: &Recovery) -> Result<()> {
    let mut lines = vec![
        format!("\n# recovery settings written by pgcairn restore of backup {label}"),
        format!("restore_command = {}", guc_quote(&r.restore_command)),
    ];
    let (key, value) = match &r.target {
        RecoveryTarget::EndOfArchive | RecoveryTarget::None => (None, None),
        RecoveryTarget::Immediate => (Some("recovery_target"), Some("immediate")),
        RecoveryTarget::Time(t) => (Some("recovery_target_time"), Some(t.as_str())),
        RecoveryTarget::Lsn(t) => (Some("recovery_target_lsn"), Some(t.as_str())),
        RecoveryTarget::Name(t) => (Some("recovery_target_name"), Some(t.as_str())),
        RecoveryTarget::Xid(t) => (Some("recovery_target_xid"), Some(t.as_str())),
    };
    if let (Some(k), Some(v)) = (key, value) {
        lines.push(format!("{k} = {}", guc_quote(v)));
    }
    if let Some(a) = &r.action {
        lines.push(format!("recovery_target_action = {}", guc_quote(a)));
    }
    if let Some(t) = &r.timeline {
        lines.push(format!("recovery_target_timeline = {}", guc_quote(t)));
    }
    let auto = target_dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&lines.join("\n"));
    text.push('\n');
    let ctx = || format!("cannot write recovery settings into {}", auto.display());
    fsutil::write_file(&auto, text.as_bytes(), Commit::Replace).ctx(ctx)?;
    std::fs::set_permissions(&auto, std::fs::Permissions::from_mode(0o600)).ctx(ctx)?;
    let signal = target_dir.join("recovery.signal");
    fsutil::write_file(&signal, b"", Commit::Replace).ctx(|| format!("cannot write {}", signal.display()))?;
    std::fs::set_permissions(&signal, std::fs::Permissions::from_mode(0o600)).ctx(ctx)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub label: String,
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Refuse a target that holds anything, naming a running postmaster specifically.
fn check_empty_target(dir: &Path) -> Result<()> {
    let pid_file = dir.join("postmaster.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file) {
        if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill with signal 0 only checks that the process exists.
            if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
                return Err(Error::RestoreTarget {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "PostgreSQL (pid {pid}) is running in it: stop it and restore into an empty directory"
                    ),
                });
            }
        }
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::RestoreTarget {
                    path: dir.to_path_buf(),
                    reason: "is not empty: pgcairn restores only into an empty or new directory; move its contents away or choose another --pg-data".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot read restore target {}", dir.display()), e)),
    }
}

fn escape_tablespace_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '\\' | '\n' | '\r') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Ctx {
    repo_storage: crate::storage::DynStorage,
    chunk_key: [u8; 32],
    ciphers: HashMap<[u8; 16], Cipher>,
    index: ChunkIndex,
    label: String,
    progress: Arc<dyn Progress>,
}

impl Ctx {
    /// Group a file's blocks into runs stored back to back in one pack, each
    /// fetched with one ranged read (a full backup writes a file's new blocks in order).
    fn runs(&self, blocks: &[ChunkId]) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for (n, id) in blocks.iter().enumerate() {
            let loc: &BlobLocation = &self.index[id]; // presence checked before restoring
            let end = loc.offset + loc.length as u64;
            match runs.last_mut() {
                Some(r)
                    if r.pack == loc.pack
                        && r.end == loc.offset
                        && end - r.start <= MAX_RUN_BYTES
                        && r.raw + loc.raw_length as u64 <= MAX_RUN_RAW_BYTES =>
                {
                    r.end = end;
                    r.raw += loc.raw_length as u64;
                    r.blocks.push((*id, loc.length, loc.raw_length));
                }
                _ => runs.push(Run {
                    first: n,
                    pack: loc.pack.clone(),
                    key_id: loc.key_id,
                    start: loc.offset,
                    end,
                    raw: loc.raw_length as u64,
                    blocks: vec![(*id, loc.length, loc.raw_length)],
                }),
            }
        }
        runs
    }

    async fn fetch_run(self: &Arc<Self>, path: &str, run: Run) -> Result<Vec<Bytes>> {
        let what = |n: usize| format!("backup {} file {path} block {n}", self.label);
        let key = pack_key(&run.pack);
        let bytes =
            self.repo_storage.get_range(&key, run.start..run.end).await.map_err(|e| match e.storage_kind() {
                Some(StorageErrorKind::NotFound) => {
                    Error::Corrupt { what: what(run.first), detail: format!("pack {key} is missing") }
                }
                Some(StorageErrorKind::Permanent) => {
                    Error::Corrupt { what: what(run.first), detail: format!("pack {key}: {e}") }
                }
                _ => e,
            })?;
        let ctx = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        rayon::spawn(move || {
            let cipher = &ctx.ciphers[&run.key_id];
            let mut out = Vec::with_capacity(run.blocks.len());
            let mut at = 0usize;
            for (i, (id, len, raw)) in run.blocks.iter().enumerate() {
                let sealed = &bytes[at..at + *len as usize];
                at += *len as usize;
                match blob::open_block(cipher, &ctx.chunk_key, id, sealed, *raw as usize) {
                    Ok(d) => out.push(Bytes::from(d)),
                    Err(e) => {
                        let _ = tx.send(Err((run.first + i, e)));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(out));
        });
        let blocks = rx
            .await
            .map_err(|_| Error::Other("block worker stopped".into()))?
            .map_err(|(n, e)| Error::Corrupt { what: what(n), detail: format!("{e} (pack {key})") })?;
        self.progress.advance(blocks.iter().map(|b| b.len() as u64).sum());
        Ok(blocks)
    }

    /// Restore one regular file: blocks fetched ahead in order, written by a
    /// blocking writer, committed durably, then size and CRC-32C checked.
    async fn restore_file(self: Arc<Self>, entry: FileEntry, dest: PathBuf) -> Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(BLOCKS_AHEAD);
        let dest2 = dest.clone();
        let mode = entry.mode;
        let writer = tokio::task::spawn_blocking(move || -> Result<(u64, u32)> {
            let ctx = || format!("cannot write {}", dest2.display());
            let mut f = DurableFile::create(&dest2).ctx(ctx)?;
            let (mut len, mut crc) = (0u64, 0u32);
            while let Some(block) = rx.blocking_recv() {
                f.file().write_all(&block).ctx(ctx)?;
                len += block.len() as u64;
                crc = crc32c::crc32c_append(crc, &block);
            }
            f.file().set_permissions(std::fs::Permissions::from_mode(mode)).ctx(ctx)?;
            f.commit(Commit::Replace).ctx(ctx)?;
            Ok((len, crc))
        });
        let path = entry.path.clone();
        let fetches =
            futures::stream::iter(self.runs(&entry.blocks)).map(|run| self.fetch_run(&path, run)).buffered(RUNS_AHEAD);
        futures::pin_mut!(fetches);
        let mut fetch_err = None;
        while let Some(r) = fetches.next().await {
            match r {
                Ok(blocks) => {
                    for b in blocks {
                        if tx.send(b).await.is_err() {
                            break; // writer failed; its error is reported below
                        }
                    }
                }
                Err(e) => {
                    fetch_err = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        if let Some(e) = fetch_err {
            // Let the writer drop its temp file; the fetch error is the one to report.
            let _ = writer.await;
            return Err(e);
        }
        let (len, crc) = writer.await.map_err(|e| Error::Other(format!("writer task failed: {e}")))??;
        if len != entry.size || entry.crc32c.is_some_and(|c| c != crc) {
            return Err(Error::Corrupt {
                what: format!("backup {} file {}", self.label, entry.path),
                detail: format!(
                    "restored {len} bytes with crc32c {crc:08x}, manifest says {} bytes, {:08x?}",
                    entry.size, entry.crc32c
                ),
            });
        }
        Ok(())
    }
}

pub async fn restore(repo: &Repository, req: &RestoreRequest) -> Result<RestoreSummary> {
    let started = std::time::Instant::now();
    let label = match &req.set {
        Some(l) => l.clone(),
        None => {
            repo.list_backups().await?.pop().ok_or_else(|| Error::NoBackups { stanza: repo.config().stanza.clone() })?
        }
    };
    let manifest = repo.load_manifest(&label).await?;
    if req.recovery.target == RecoveryTarget::None && !manifest.wal_included {
        return Err(Error::Config(format!(
            "backup {label} does not carry its WAL (it relies on the archive from {} to {}): --type=none cannot make it consistent; use --type=immediate",
            manifest.wal_start.as_deref().unwrap_or("?"),
            manifest.wal_stop.as_deref().unwrap_or("?")
        )));
    }

    // Where each tablespace goes; every target must be empty.
    let ts_dirs: HashMap<u32, PathBuf> = manifest
        .tablespaces
        .iter()
        .map(|t| (t.oid, req.tablespace_map.get(&t.oid).cloned().unwrap_or_else(|| PathBuf::from(&t.location))))
        .collect();
    check_empty_target(&req.target)?;
    for dir in ts_dirs.values() {
        check_empty_target(dir)?;
    }

    let index = repo.load_index().await?;
    for f in &manifest.files {
        for (n, id) in f.blocks.iter().enumerate() {
            if !index.contains_key(id) {
                return Err(Error::Corrupt {
                    what: format!("backup {label} file {} block {n}", f.path),
                    detail: format!("chunk {id} is in no index"),
                });
            }
        }
    }
    let ciphers = index.values().map(|l| l.key_id).collect::<std::collections::HashSet<_>>();
    let ciphers = ciphers.into_iter().map(|k| (k, repo.data_cipher(&k))).collect();
    let ctx = Arc::new(Ctx {
        repo_storage: repo.storage().clone(),
        chunk_key: *repo.chunk_key(),
        ciphers,
        index,
        label: label.clone(),
        progress: req.progress.clone(),
    });

    let dest_of = |f: &FileEntry| -> PathBuf {
        match f.tablespace {
            None => req.target.join(&f.path),
            Some(oid) => ts_dirs[&oid].join(&f.path),
        }
    };
    let mkdir = |d: &Path| fsutil::create_dir_all_durable(d).ctx(|| format!("cannot create directory {}", d.display()));
    mkdir(&req.target)?;
    std::fs::set_permissions(&req.target, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("cannot set mode of {}", req.target.display()))?;
    for dir in ts_dirs.values() {
        mkdir(dir)?;
    }
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::Dir) {
        mkdir(&dest_of(f))?;
    }
    // Parents of files whose directory entry the archive did not carry.
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::File) {
        if let Some(p) = dest_of(f).parent() {
            mkdir(p)?;
        }
    }

    req.progress.begin(&format!("restore {label}"), Some(manifest.size));
    let jobs: Vec<(FileEntry, PathBuf)> = manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File && !(f.tablespace.is_none() && f.path == "tablespace_map"))
        .map(|f| (f.clone(), dest_of(f)))
        .collect();
    let restored = futures::stream::iter(jobs.into_iter().map(|(f, d)| ctx.clone().restore_file(f, d)))
        .buffer_unordered(PARALLEL_FILES)
        .try_collect::<Vec<()>>()
        .await;
    if restored.is_err() {
        // The operator will retry into the same directory; say what stands in the way.
        tracing::error!(
            "restore of backup {label} into {} stopped part-way: remove that directory (and restored tablespace directories) before restoring again",
            req.target.display()
        );
    }
    restored?;
    req.progress.finish();

    // Tablespaces: a tablespace_map naming the (possibly remapped) locations, which
    // PostgreSQL turns into pg_tblspc links at startup, and the links themselves.
    if !ts_dirs.is_empty() {
        let mut map = String::new();
        let mut oids: Vec<_> = ts_dirs.keys().copied().collect();
        oids.sort();
        for oid in oids {
            let dir = &ts_dirs[&oid];
            map.push_str(&format!("{oid} {}\n", escape_tablespace_path(&dir.to_string_lossy())));
            let link = req.target.join("pg_tblspc").join(oid.to_string());
            mkdir(link.parent().unwrap())?;
            std::os::unix::fs::symlink(dir, &link)
                .ctx(|| format!("cannot create tablespace link {}", link.display()))?;
        }
        fsutil::write_file(&req.target.join("tablespace_map"), map.as_bytes(), Commit::CreateOnly)
            .ctx(|| "cannot write tablespace_map".to_string())?;
        std::fs::set_permissions(req.target.join("tablespace_map"), std::fs::Permissions::from_mode(0o600))
            .ctx(|| "cannot set mode of tablespace_map".to_string())?;
    }
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::Symlink) {
        let dest = dest_of(f);
        if dest.symlink_metadata().is_ok() {
            continue; // a tablespace link made above
        }
        let target = f.link.clone().unwrap_or_default();
        std::os::unix::fs::symlink(&target, &dest).ctx(|| format!("cannot create link {}", dest.display()))?;
    }
    // Directory modes last (a 0500 directory would block writes into it), then
    // fsync every directory so the new entries are durable.
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::Dir).rev() {
        let d = dest_of(f);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(f.mode))
            .ctx(|| format!("cannot set mode of {}", d.display()))?;
        fsutil::sync_dir(&d).ctx(|| format!("cannot fsync {}", d.display()))?;
    }
    if req.recovery.target != RecoveryTarget::None {
        write_recovery(&req.target, &label, &req.recovery)?;
    }
    fsutil::sync_dir(&req.target).ctx(|| format!("cannot fsync {}", req.target.display()))?;
    Ok(RestoreSummary {
        label,
        files: manifest.files.iter().filter(|f| f.kind == FileKind::File).count(),
        bytes: manifest.size,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_target() {
        let dir = tempfile::tempdir().unwrap();
        check_empty_target(dir.path()).unwrap();
        check_empty_target(&dir.path().join("new")).unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "17").unwrap();
        let err = check_empty_target(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }

    #[test]
    fn names_a_running_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).unwrap();
        let err = check_empty_target(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is running in it"), "{err}");
    }

    #[test]
    fn recovery_settings_are_appended_and_quoted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postgresql.auto.conf"), "work_mem = '4MB'\n").unwrap();
        let r = Recovery {
            target: RecoveryTarget::Name("before it's gone".into()),
            action: Some("promote".into()),
            timeline: None,
            restore_command: "pgcairn --stanza=main archive-get %f \"%p\"".into(),
        };
        write_recovery(dir.path(), "L", &r).unwrap();
        let text = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(text.starts_with("work_mem = '4MB'\n"), "{text}");
        assert!(text.contains("restore_command = 'pgcairn --stanza=main archive-get %f \"%p\"'"), "{text}");
        assert!(text.contains("recovery_target_name = 'before it''s gone'"), "{text}");
        assert!(text.contains("recovery_target_action = 'promote'"), "{text}");
        assert!(dir.path().join("recovery.signal").is_file());
    }

    #[test]
    fn escapes_tablespace_paths() {
        assert_eq!(escape_tablespace_path("/a b/c"), "/a b/c");
        assert_eq!(escape_tablespace_path("/a\\b\nc"), "/a\\\\b\\\nc");
    }
}
