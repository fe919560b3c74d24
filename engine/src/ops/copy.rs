//! `pgcairn copy`: backups, and WAL, from one of a stanza's repositories into another,
//! re-sealed under the destination's keys (each repository has its own).
//!
//! - What the destination has is skipped: backups by label, WAL files by name. A diff
//!   or incr is copied after its parent and stored as a diff or incr over the
//!   destination's copy of that parent (unchanged blocks refer to the parent's, changed
//!   ones are deltas), so the destination holds about what the source does.
//! - Every block is read through the source's block reader (authenticated, chunk id
//!   checked) and every file's CRC-32C compared with the source manifest's before the
//!   copy is committed: a damaged source backup is not copied, and is named.
//! - The destination sees a backup only when it is whole: the backup writer's commit
//!   order (packs, indexes, block list, then the manifest). A copy killed half-way
//!   left an invisible label; the next copy discards it and copies that backup again.
//! - The WAL goes first, then the backups: a copied backup that relies on the archive
//!   finds its WAL there.
//! - Both stanza locks are held (the source's keeps expire from deleting what is read).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ops::backup::Builder;
use crate::ops::dedup::ParentBlocks;
use crate::pg::tar::{EntryKind, TarEntry};
use crate::progress::Progress;
use crate::repo::block_reader::{BlockFault, BlockReader, Wanted};
use crate::repo::blocklist::{block_count, BlockListReader};
use crate::repo::format::{server_manifest_key, FileEntry, FileKind, Manifest};
use crate::repo::lock::StanzaLock;
use crate::repo::wal_archive::WalArchive;
use crate::repo::Repository;

/// Ranged reads of the source in flight per file.
const RUNS_AHEAD: usize = 4;
/// Source block list parts kept in memory.
const PARTS_KEPT: usize = 2;

/// What to copy.
#[derive(Clone)]
pub struct CopyRequest {
    /// One backup (with the parents it needs and the WAL from its start to its
    /// end); None: every backup and the whole WAL archive the destination lacks.
    pub set: Option<String>,
    /// zstd level for the destination's new blocks and WAL.
    pub level: i32,
    /// Progress over the bytes of the backups copied.
    pub progress: Arc<dyn Progress>,
}

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// Backups copied, in order.
    pub copied: Vec<String>,
    /// Backups the destination already had.
    pub present: Vec<String>,
    /// WAL files copied.
    pub wal_copied: u64,
    /// WAL files the destination already had.
    pub wal_present: u64,
    /// Bytes of the copied backups' files.
    pub bytes: u64,
    /// Bytes the destination stored anew for them.
    pub stored_new: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Copy from `src` to `dst` (two repositories of one stanza) as `req` says.
pub async fn copy(src: &Repository, dst: &Repository, req: &CopyRequest) -> Result<CopyReport> {
    same_cluster(src, dst)?;
    let src_lock = StanzaLock::acquire(src, "copy").await?;
    let dst_lock = match StanzaLock::acquire(dst, "copy").await {
        Ok(lock) => lock,
        Err(e) => return src_lock.release_after(Err(e)).await,
    };
    let work = copy_locked(src, dst, req, &dst_lock);
    let result = tokio::select! {
        done = work => done,
        signal = crate::ops::interrupted() => Err(crate::ops::interrupted_error("copy", signal)),
    };
    let result = dst_lock.release_after(result).await;
    src_lock.release_after(result).await
}

fn same_cluster(src: &Repository, dst: &Repository) -> Result<()> {
    let (a, b) = (src.config(), dst.config());
    if a.system_identifier != b.system_identifier {
        return Err(Error::setting(
            format!(
                "the two repositories belong to different clusters (system identifier {} and {})",
                a.system_identifier, b.system_identifier
            ),
            "copy between repositories of one stanza only (repo-number and to-repo of the same config)",
        ));
    }
    Ok(())
}

async fn copy_locked(src: &Repository, dst: &Repository, req: &CopyRequest, lock: &StanzaLock) -> Result<CopyReport> {
    let started = Instant::now();
    let wanted = backups_to_copy(src, req).await?;
    let present_labels = dst.list_backups().await?;
    let mut report = CopyReport {
        copied: Vec::new(),
        present: Vec::new(),
        wal_copied: 0,
        wal_present: 0,
        bytes: 0,
        stored_new: 0,
        seconds: 0.0,
    };
    let manifests = load_all(src, &wanted).await?;
    copy_wal(src, dst, req, &manifests, &mut report).await?;
    for m in manifests {
        if present_labels.contains(&m.label) {
            report.present.push(m.label);
            continue;
        }
        lock.set_label(&m.label);
        let copied = copy_backup(src, dst, &m, req).await?;
        report.bytes += copied.size;
        report.stored_new += copied.stored_new;
        report.copied.push(m.label);
    }
    req.progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The labels to copy, parents first: all of the source's, or `req.set` and the
/// backups it depends on.
async fn backups_to_copy(src: &Repository, req: &CopyRequest) -> Result<Vec<String>> {
    let mut all = src.list_backups().await?;
    all.sort();
    let Some(set) = &req.set else { return Ok(all) };
    if !all.contains(set) {
        let stanza = src.config().stanza.clone();
        return Err(Error::BackupNotFound { label: set.clone(), stanza });
    }
    let mut chain = vec![set.clone()];
    while let Some(parent) = src.load_manifest(chain.last().map_or("", String::as_str)).await?.parent {
        chain.push(parent);
    }
    chain.reverse();
    Ok(chain)
}

async fn load_all(src: &Repository, labels: &[String]) -> Result<Vec<Manifest>> {
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        out.push(src.load_manifest(label).await?);
    }
    Ok(out)
}

/// WAL the destination lacks: every file of the source's archive, or with `--set`
/// the segments from the oldest copied backup's start to the newest one's end.
async fn copy_wal(
    src: &Repository,
    dst: &Repository,
    req: &CopyRequest,
    manifests: &[Manifest],
    report: &mut CopyReport,
) -> Result<()> {
    let from = manifests.iter().filter_map(|m| m.wal_start.clone()).min();
    let to = manifests.iter().filter_map(|m| m.wal_stop.clone()).max();
    if req.set.is_some() && from.is_none() {
        return Ok(()); // the backups carry their WAL
    }
    // With --set: segments from..=to, and every history, .backup and .partial file.
    let wanted = |name: &str| match (&req.set, &from, &to) {
        (Some(_), Some(f), Some(t)) => name.len() != 24 || (name >= f.as_str() && name <= t.as_str()),
        _ => true,
    };
    let theirs = WalArchive::list(src).await?;
    let ours = WalArchive::list(dst).await?;
    let have: std::collections::HashSet<&str> = ours.names().collect();
    for name in theirs.names() {
        if !wanted(name) {
            continue;
        }
        if have.contains(name) {
            report.wal_present += 1;
            continue;
        }
        let Some(file) = crate::pg::wal::WalFile::parse(name) else { continue };
        let data = src.get_wal(file.timeline(), name).await?.ok_or_else(|| Error::Corrupt {
            what: format!("wal file {name}"),
            detail: "listed in the source repository, then not found".into(),
        })?;
        dst.put_wal(file.timeline(), name, &data, req.level).await?;
        report.wal_copied += 1;
    }
    Ok(())
}

/// One backup, re-sealed into `dst` under the same label.
async fn copy_backup(src: &Repository, dst: &Repository, m: &Manifest, req: &CopyRequest) -> Result<Manifest> {
    let label = &m.label;
    let discarded = dst.discard_unfinished(label).await?;
    if discarded > 0 {
        tracing::warn!("backup {label}: discarded {discarded} objects an interrupted copy left; copying it again");
    }
    let server_manifest = src.get_meta_bytes(&server_manifest_key(label)).await?;
    let parent = match &m.parent {
        Some(p) => Some(dst.load_manifest(p).await?),
        None => None,
    };
    tracing::info!("copying backup {label} ({} bytes)", m.size);
    dst.mark_backup_started(label).await?;
    let parent_blocks = parent.as_ref().map(|p| ParentBlocks::new(dst, p));
    let mut b = Builder::new(dst, label, req.level, parent_blocks, req.progress.clone());
    let reader = Arc::new(src.block_reader(crate::cpu::Cpu::global()));
    let list = BlockListReader::new(src, m, PARTS_KEPT);
    let mut next = 0u64;
    for f in &m.files {
        b.begin_file(f.tablespace, entry_of(f)).await?;
        if f.kind == FileKind::File {
            let count = block_count(f.size, m.block_size);
            let located = list.range(next, count).await?;
            next += count;
            feed_file(&reader, label, f, located, &mut b).await?;
        }
        b.end_file().await?;
    }
    let files = b.finish_files().await?;
    check_files(m, &files)?;
    let mut manifest = m.clone();
    manifest.block_size = dst.config().block_size;
    manifest.files = files;
    b.commit_files(&server_manifest, manifest).await
}

fn entry_of(f: &FileEntry) -> TarEntry {
    let kind = match f.kind {
        FileKind::File => EntryKind::File,
        FileKind::Dir => EntryKind::Dir,
        FileKind::Symlink => EntryKind::Symlink,
    };
    TarEntry { path: f.path.clone(), kind, mode: f.mode, size: f.size, mtime: f.mtime, link: f.link.clone() }
}

/// The file's blocks, read a few runs ahead, handed to the builder in order.
async fn feed_file(
    reader: &Arc<BlockReader>,
    label: &str,
    f: &FileEntry,
    located: Vec<(crate::repo::format::ChunkId, crate::repo::blocklist::BlockLocation)>,
    b: &mut Builder<'_>,
) -> Result<()> {
    let wanted = located.into_iter().enumerate().map(|(n, (id, loc))| -> Wanted { (n, id, loc) });
    let runs = futures::stream::iter(BlockReader::runs(wanted))
        .map(|run| {
            let reader = reader.clone();
            async move { reader.read_run(run).await }
        })
        .buffered(RUNS_AHEAD);
    futures::pin_mut!(runs);
    while let Some(run) = runs.next().await {
        let blocks = run.map_err(|fault| match fault {
            BlockFault::Damaged { n, detail } => {
                Error::Corrupt { what: format!("backup {label} file {} block {n}", f.path), detail }
            }
            BlockFault::Other(e) => e,
        })?;
        for (_, data) in blocks {
            b.file_bytes(data).await?;
        }
    }
    Ok(())
}

/// The copy's files are the source's, byte for byte (sizes and CRC-32C), checked
/// before the copy is made visible. A file rebuilt from WAL summaries has no CRC in
/// the source (its unchanged blocks were never read whole); the copy's is kept.
///
/// Regression (issue 25): a backup from WAL summaries could not be copied — its
/// rebuilt files have no CRC, the copy's have one, and the two were compared.
fn check_files(src: &Manifest, copy: &[FileEntry]) -> Result<()> {
    let crc_differs = |a: &FileEntry, b: &FileEntry| a.crc32c.is_some() && a.crc32c != b.crc32c;
    let differs = src.files.len() != copy.len()
        || src.files.iter().zip(copy).any(|(a, b)| a.path != b.path || a.size != b.size || crc_differs(a, b));
    if differs {
        return Err(Error::Corrupt {
            what: format!("backup {}", src.label),
            detail: "its copy's files differ from the source manifest's (size or CRC-32C); nothing was made visible"
                .into(),
        });
    }
    Ok(())
}
