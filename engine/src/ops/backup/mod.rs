//! Backup (full, diff or incr; see `lineage`): stream BASE_BACKUP, cut files into
//! page-aligned blocks, hand them in batches to the workers (`worker`: hash, dedup,
//! compress — as deltas over the parent's blocks where they changed — and seal), pack
//! new blobs and upload packs on tokio, then write index, server manifest and — last —
//! the backup manifest.
//!
//! Memory is bounded: at most `IN_FLIGHT_BLOCKS` blocks are being processed, one
//! pack and one block list part are being filled, at most `PARALLEL_UPLOADS` packs
//! are uploading, and dedup looks at one part of the parent's block list and a
//! bounded cache of recent chunks. Only the file list grows (with the file count).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::StreamExt;

use crate::error::{Error, Misconfig, Result};
use crate::ops::archive;
use crate::ops::dedup::{ParentBlocks, RecentChunks};
use crate::ops::lineage::{self, BackupType};
use crate::ops::stanza::identify_stanza_cluster;
use crate::pg::archiving::ArchivingSettings;
use crate::pg::basebackup::{BackupEvent, BaseBackupOptions, BaseBackupStream};
use crate::pg::incremental::{self, Geometry};
use crate::pg::tar::{EntryKind, TarEntry, TarItem, TarReader};
use crate::pg::{wal, ConnParams, Lsn, ReplicationConnection};
use crate::progress::Progress;
use crate::repo::backup_writer::BackupWriter;
use crate::repo::blob;
use crate::repo::blocklist::{BlockLocation, DeltaBase};
use crate::repo::format::{
    BackupSource, ChunkId, Database, FileEntry, FileKind, Manifest, ReadMethod, Tablespace, FORMAT_VERSION,
};
use crate::repo::lock::StanzaLock;
use crate::repo::Repository;
use incremental_file::IncrementalFile;
pub(crate) use standby::check_primary;
use standby::{ArchivedBy, Standby};
use summaries::Plan;
use worker::{process_batch, BatchTask, BlockCtx, BlockDone, BlockPlace, Content, Outcome, PendingBlock};

mod databases;
mod incremental_file;
mod standby;
mod summaries;
mod worker;

/// Work handed to the workers and not yet back, in blocks (see `BATCH_BLOCKS`).
const IN_FLIGHT_BLOCKS: usize = 256;
/// Blocks per worker task (512 KiB at the default block size). A block of an
/// incremental file that the server says is unchanged costs next to nothing (no
/// read, no hash): it counts as 1/`UNCHANGED_PER_BLOCK` of a block, so the few
/// changed blocks of such files are read and sealed 16 at a time, not one.
const BATCH_BLOCKS: usize = 16;
const UNCHANGED_PER_BLOCK: usize = 64;
/// Recent chunks remembered for dedup within a backup, per generation (~100 B each).
const RECENT_CHUNKS: usize = 32 * 1024;

/// What `backup` takes: where the server is and how to back it up.
pub struct BackupRequest {
    /// The server to connect to (replication connection): a primary, or a streaming
    /// standby (see ops/backup/standby.rs).
    pub pg: ConnParams,
    /// `pg-primary`: the primary, when `pg` is a standby.
    pub primary: Option<ConnParams>,
    /// The type asked for; see [`BackupSummary::backup_type`] for what was taken.
    pub backup_type: BackupType,
    /// Ask for an immediate checkpoint instead of waiting for the next one.
    pub fast_checkpoint: bool,
    /// zstd level of data blocks.
    pub compress_level: i32,
    /// Where progress is reported.
    pub progress: Arc<dyn Progress>,
    /// Ask the server for a size estimate first (for an ETA).
    pub estimate_size: bool,
    /// With archiving on: wait until the backup's WAL is in the archive.
    pub archive_check: bool,
    /// Carry the WAL in the backup even when archiving is on (self-contained set).
    pub archive_copy: bool,
    /// How long to wait for that WAL.
    pub archive_timeout: std::time::Duration,
    /// Expire after a successful backup, under the same lock (`expire-auto`).
    pub expire: Option<crate::ops::expire::ExpireRequest>,
}

/// What a backup did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    /// The new backup's label.
    pub label: String,
    /// The type taken: a diff or incr without a usable parent becomes a full.
    pub backup_type: BackupType,
    /// The backup a diff or incr was compared with.
    pub parent: Option<String>,
    /// Bytes of regular files in the cluster.
    pub size: u64,
    /// Bytes of new pack data written (after dedup, deltas and compression).
    pub stored_new: u64,
    /// Regular files backed up.
    pub files: usize,
    /// Where the backup started in the WAL (its checkpoint's redo position).
    pub start_lsn: Lsn,
    /// Where it ended: recovery must replay at least to here.
    pub stop_lsn: Lsn,
    /// Wall-clock duration.
    pub seconds: f64,
    /// How it read the cluster: a diff or incr on PostgreSQL 17+ asks for the
    /// pages changed since its parent, and says why when it could not.
    pub read: Option<ReadMethod>,
    /// What the expire after the backup did, when one ran.
    pub expire: Option<crate::ops::expire::ExpireReport>,
    /// Why that expire failed (the backup itself succeeded).
    pub expire_error: Option<String>,
}

/// Cuts the streamed files into blocks, hands them to the workers in batches, and
/// passes what they return to the repository's backup writer. Fed by BASE_BACKUP's
/// tar stream, or by `copy` with another repository's backup.
pub(super) struct Builder<'r> {
    block_size: usize,
    workers: Arc<BlockCtx>,
    writer: BackupWriter<'r>,
    parent: Option<ParentBlocks<'r>>,
    /// The current file's blocks in the parent's block list (first, count).
    parent_file: Option<(u64, u64)>,
    /// Blocks of the current file submitted so far.
    file_blocks: u64,
    in_flight: FuturesOrdered<BatchTask>,
    /// The cost of each batch in flight, in `in_flight`'s order, and their sum.
    in_flight_costs: VecDeque<usize>,
    in_flight_blocks: usize,
    /// Blocks waiting to be handed to a worker as one batch.
    pending: Vec<PendingBlock>,
    /// How many of them are work (not an incremental file's unchanged blocks).
    pending_work: usize,
    /// The current file's path, shared by its blocks' tasks.
    current_path: Arc<str>,
    files: Vec<FileEntry>,
    // current file
    tablespace: Option<u32>,
    current: Option<usize>,
    buf: BytesMut,
    crc: u32,
    capture_label: bool,
    backup_label: Vec<u8>,
    progress: Arc<dyn Progress>,
    /// The server's page geometry, when it sends changed relation files as
    /// `INCREMENTAL.*` entries (ops/backup/summaries.rs), and where the parent
    /// started: the backup_label must name it.
    geometry: Option<Geometry>,
    changes_since: Option<Lsn>,
    /// The current file, when it came as such an entry.
    incremental: Option<IncrementalFile>,
}

impl<'r> Builder<'r> {
    pub(super) fn new(
        repo: &'r Repository,
        label: &str,
        level: i32,
        parent: Option<ParentBlocks<'r>>,
        progress: Arc<dyn Progress>,
    ) -> Self {
        let block_size = repo.config().block_size as usize;
        let writer = BackupWriter::new(repo, label);
        let workers = BlockCtx {
            hasher: repo.chunk_hasher(),
            level,
            cipher: writer.cipher(),
            reader: repo.block_reader(crate::cpu::Cpu::global()),
            recent: Arc::new(Mutex::new(RecentChunks::new(RECENT_CHUNKS))),
            parent_label: parent.as_ref().map(|p| p.label().to_string()).unwrap_or_default(),
        };
        Builder {
            block_size,
            workers: Arc::new(workers),
            writer,
            parent,
            parent_file: None,
            file_blocks: 0,
            in_flight: FuturesOrdered::new(),
            in_flight_costs: VecDeque::new(),
            in_flight_blocks: 0,
            pending: Vec::with_capacity(BATCH_BLOCKS),
            pending_work: 0,
            current_path: Arc::from(""),
            files: Vec::new(),
            tablespace: None,
            current: None,
            buf: BytesMut::with_capacity(block_size),
            crc: 0,
            capture_label: false,
            backup_label: Vec::new(),
            progress,
            geometry: None,
            changes_since: None,
            incremental: None,
        }
    }

    async fn submit(&mut self, block: Bytes) -> Result<()> {
        self.submit_content(Content::Whole(block)).await
    }

    async fn submit_content(&mut self, content: Content) -> Result<()> {
        let at_parent = match (&self.parent, self.parent_file) {
            (Some(p), Some((first, count))) if self.file_blocks < count => p.block(first + self.file_blocks).await?,
            _ => None,
        };
        let place = BlockPlace { path: self.current_path.clone(), block: self.file_blocks };
        self.file_blocks += 1;
        self.pending_work += usize::from(worker::parent_as_is(&content, at_parent).is_none());
        self.pending.push(PendingBlock { content, at_parent, place });
        if self.pending_cost() >= BATCH_BLOCKS {
            self.spawn_batch().await?;
        }
        Ok(())
    }

    /// The pending batch's cost in blocks: its work, or its length at
    /// `UNCHANGED_PER_BLOCK` entries a block, whichever is more.
    fn pending_cost(&self) -> usize {
        self.pending_work.max(self.pending.len().div_ceil(UNCHANGED_PER_BLOCK))
    }

    async fn spawn_batch(&mut self) -> Result<()> {
        while self.in_flight_blocks >= IN_FLIGHT_BLOCKS {
            self.complete_batch().await?;
        }
        if !self.pending.is_empty() {
            let cost = self.pending_cost();
            let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH_BLOCKS));
            self.pending_work = 0;
            self.in_flight_blocks += cost;
            self.in_flight_costs.push_back(cost);
            self.in_flight.push_back(BatchTask(tokio::spawn(process_batch(self.workers.clone(), batch))));
        }
        Ok(())
    }

    async fn complete_batch(&mut self) -> Result<()> {
        let Some(done) = self.in_flight.next().await else {
            return Ok(());
        };
        let done = done.map_err(|e| Error::Internal(format!("block task failed: {e}")))??;
        self.in_flight_blocks -= self.in_flight_costs.pop_front().unwrap_or_default();
        for block in done {
            self.complete_one(block).await?;
        }
        Ok(())
    }

    async fn complete_one(&mut self, done: BlockDone) -> Result<()> {
        self.progress.advance(done.raw_len as u64);
        let id = done.id;
        let stored = self.workers.recent.lock().unwrap_or_else(PoisonError::into_inner).location(&id);
        let loc = match (done.outcome, stored) {
            (Outcome::Parent(loc), _) => loc,
            (_, Some(loc)) => loc,
            (Outcome::New(sealed, base), None) => self.store(id, done.raw_len, &sealed, base).await?,
            // The earlier block it repeats is gone from the cache (or its worker lost
            // the race to this one): store it after all. Rare, so sealed right here.
            (Outcome::Repeat(block), None) => {
                let sealed = blob::seal_block(&self.workers.cipher, self.workers.level, &id, &block);
                self.store(id, done.raw_len, &sealed, None).await?
            }
        };
        self.writer.add_block(id, &loc).await
    }

    async fn store(
        &mut self,
        id: ChunkId,
        raw_len: u32,
        sealed: &[u8],
        base: Option<DeltaBase>,
    ) -> Result<BlockLocation> {
        let loc = self.writer.add_blob(id, raw_len, sealed, base).await?;
        self.workers.recent.lock().unwrap_or_else(PoisonError::into_inner).stored(id, loc);
        Ok(loc)
    }

    async fn tar_item(&mut self, item: TarItem) -> Result<()> {
        match item {
            TarItem::Entry(e) => self.start_entry(e)?,
            TarItem::Data(d) if self.incremental.is_some() => self.incremental_data(Some(d)).await?,
            TarItem::Data(d) => self.file_data(d).await?,
            TarItem::EntryEnd if self.incremental.is_some() => self.incremental_data(None).await?,
            TarItem::EntryEnd => {
                if self.capture_label {
                    self.submit_label().await?;
                }
                let file =
                    self.current.take().ok_or_else(|| Error::Internal("tar entry end without an entry".into()))?;
                if !self.buf.is_empty() {
                    let block = self.buf.split().freeze();
                    self.submit(block).await?;
                }
                if self.files[file].kind == FileKind::File {
                    self.files[file].crc32c = Some(self.crc);
                }
            }
        }
        Ok(())
    }

    /// The backup_label, held back until whole: an incremental backup's names its
    /// prior backup, and PostgreSQL refuses to start from such a label.
    async fn submit_label(&mut self) -> Result<()> {
        let file = self.current.ok_or_else(|| Error::Internal("backup_label without an entry".into()))?;
        if let Some(from) = incremental::incremental_from(&self.backup_label) {
            if from.parse::<Lsn>().ok() != self.changes_since {
                let detail = format!(
                    "backup_label says the changes are since {from}, but parent backup {} started at {}",
                    self.workers.parent_label,
                    self.changes_since.map(|l| l.to_string()).unwrap_or_else(|| "no such point".into())
                );
                return Err(Error::Protocol { target: "BASE_BACKUP".into(), detail });
            }
        }
        self.backup_label = incremental::combined_backup_label(&self.backup_label);
        self.files[file].size = self.backup_label.len() as u64;
        // Cut and checksummed like any file's bytes.
        (self.capture_label, self.crc) = (false, 0);
        self.file_data(Bytes::from(self.backup_label.clone())).await
    }

    /// The next bytes of an `INCREMENTAL.*` entry, or its end (None): the blocks
    /// of the whole file they complete go to the workers.
    async fn incremental_data(&mut self, data: Option<Bytes>) -> Result<()> {
        let Some(file) = self.incremental.as_mut() else {
            return Ok(());
        };
        let mut patches = Vec::new();
        let ended = data.is_none();
        let fed = match data {
            Some(d) => file.feed(d, &mut patches),
            None => file.finish(&mut patches),
        };
        let size = file.file_size();
        let path = self.current_path.clone();
        fed.map_err(|detail| Error::Protocol {
            target: "BASE_BACKUP".into(),
            detail: format!("incremental file for {path}: {detail}"),
        })?;
        for patch in patches {
            self.submit_content(Content::Patched(patch)).await?;
        }
        if ended {
            let current = self.current.take().ok_or_else(|| Error::Internal("entry end without an entry".into()))?;
            // The whole file's checksum is unknown: its unchanged blocks were not read.
            (self.files[current].size, self.files[current].crc32c) = (size.unwrap_or(0), None);
            self.incremental = None;
        }
        Ok(())
    }

    /// A new entry of the archive: its file entry, and where its blocks were in the parent.
    fn start_entry(&mut self, mut e: TarEntry) -> Result<()> {
        let kind = match e.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Dir => FileKind::Dir,
            EntryKind::Symlink => FileKind::Symlink,
        };
        self.capture_label = self.tablespace.is_none() && e.path == "backup_label";
        self.incremental = None;
        if let (Some(geometry), FileKind::File) = (self.geometry, kind) {
            if let Some(whole) = incremental::stands_for(&e.path) {
                self.incremental = Some(IncrementalFile::new(geometry, self.block_size));
                e.path = whole;
            }
        }
        self.parent_file = match (&self.parent, kind) {
            (Some(p), FileKind::File) => p.file(self.tablespace, &e.path),
            _ => None,
        };
        if self.incremental.is_some() && self.parent_file.is_none() {
            return Err(Error::ParentCorrupt {
                what: format!("parent backup {}", self.workers.parent_label),
                detail: format!("the server sent {} as changes since it, but it has no such file", e.path),
            });
        }
        self.file_blocks = 0;
        self.current_path = Arc::from(match self.tablespace {
            Some(oid) => format!("pg_tblspc/{oid}/{}", e.path),
            None => e.path.clone(),
        });
        self.files.push(FileEntry {
            path: e.path,
            tablespace: self.tablespace,
            kind,
            mode: e.mode,
            size: e.size,
            mtime: e.mtime,
            link: e.link,
            crc32c: (kind == FileKind::File).then_some(0),
        });
        self.current = Some(self.files.len() - 1);
        self.buf.clear();
        self.crc = 0;
        Ok(())
    }

    /// The current file's bytes, cut into blocks (a whole-block piece goes as it is).
    async fn file_data(&mut self, mut d: Bytes) -> Result<()> {
        debug_assert!(self.current.is_some(), "data follows an entry");
        self.crc = crc32c::crc32c_append(self.crc, &d);
        if self.capture_label {
            self.backup_label.extend_from_slice(&d);
            return Ok(());
        }
        if self.buf.is_empty() && d.len() == self.block_size {
            return self.submit(d).await;
        }
        while !d.is_empty() {
            let take = (self.block_size - self.buf.len()).min(d.len());
            self.buf.extend_from_slice(&d.split_to(take));
            if self.buf.len() == self.block_size {
                let block = self.buf.split().freeze();
                self.submit(block).await?;
            }
        }
        Ok(())
    }

    /// A file of tablespace `tablespace` (None: the data directory) begins.
    pub(super) async fn begin_file(&mut self, tablespace: Option<u32>, entry: TarEntry) -> Result<()> {
        self.tablespace = tablespace;
        self.tar_item(TarItem::Entry(entry)).await
    }

    /// The next bytes of the current file.
    pub(super) async fn file_bytes(&mut self, data: Bytes) -> Result<()> {
        self.tar_item(TarItem::Data(data)).await
    }

    /// The current file ends.
    pub(super) async fn end_file(&mut self) -> Result<()> {
        self.tar_item(TarItem::EntryEnd).await
    }

    /// Drain the pipeline (every object of the backup durable) and hand over the
    /// files built, for the caller to check before [`Builder::commit_files`].
    pub(super) async fn finish_files(&mut self) -> Result<Vec<FileEntry>> {
        self.finish().await?;
        Ok(std::mem::take(&mut self.files))
    }

    /// Make the finished backup visible with `manifest` and the server's
    /// `backup_manifest` (the writer's commit order).
    pub(super) async fn commit_files(self, server_manifest: &[u8], manifest: Manifest) -> Result<Manifest> {
        self.writer.commit(server_manifest, manifest).await
    }

    /// Drain the pipeline; then every blob, pack, index and block list part of the
    /// backup is durable.
    async fn finish(&mut self) -> Result<()> {
        self.spawn_batch().await?;
        while !self.in_flight.is_empty() {
            self.complete_batch().await?;
        }
        self.writer.finish_data().await
    }
}

/// Take a backup of `req.pg` into `repo`: stream BASE_BACKUP, store its blocks, and
/// make the backup visible only once everything it needs is durable.
pub async fn backup(repo: &Repository, req: &BackupRequest) -> Result<BackupSummary> {
    // Under the stanza lock: one backup at a time, and never during expire.
    let lock = StanzaLock::acquire(repo, "backup").await?;
    let work = async {
        let mut result = take_backup(repo, req, &lock).await;
        if let (Ok(summary), Some(x)) = (&mut result, &req.expire) {
            if x.policy.is_set() {
                match crate::ops::expire::expire_locked(repo, x).await {
                    Ok(report) => summary.expire = Some(report),
                    Err(e) => summary.expire_error = Some(e.to_string()),
                }
            }
        }
        result
    };
    let result = tokio::select! {
        done = work => done,
        signal = crate::ops::interrupted() => Err(crate::ops::interrupted_error("backup", signal)),
    };
    lock.release_after(result).await
}

/// Whether the backup carries its WAL. A server that does not archive is refused
/// unless archive-copy says so (pgBackRest does the same): such a backup has no
/// point-in-time recovery. With archive-check, a failing or foreign archive_command
/// is refused before the cluster is streamed, not after archive-timeout.
async fn wal_goes_in_backup(
    repo: &Repository,
    req: &BackupRequest,
    conn: &mut ReplicationConnection,
    standby: Option<&Standby>,
) -> Result<bool> {
    let own = ArchivingSettings::read(conn).await?;
    let by = match standby {
        Some(s) => s.archived_by(own).await?,
        None => ArchivedBy { settings: own, server: req.pg.clone() },
    };
    let (archiving, target) = (by.settings, by.server.target());
    if !archiving.archives() {
        if !req.archive_copy {
            let problem = format!(
                "{target} does not archive WAL (archive_mode = {}, archive_command '{}'): a backup would have no point-in-time recovery",
                archiving.archive_mode, archiving.archive_command
            );
            let hint = "set archive_mode = on and archive_command = '/usr/local/bin/pgcairn-archive-push --stanza=NAME %p' (restart PostgreSQL), or pass --archive-copy to store the backup's WAL inside it (restores to its end only)";
            return Err(Error::misconfigured(Misconfig::Server, problem, hint));
        }
        tracing::info!("{target} does not archive: the backup carries its WAL (archive-copy)");
        return Ok(true);
    }
    if req.archive_check && !req.archive_copy {
        let stanza = &repo.config().stanza;
        let wanted = format!("/usr/local/bin/pgcairn-archive-push --stanza={stanza} %p");
        if let Some((problem, hint)) = archiving.problem(stanza, &wanted) {
            let hint = format!("{hint}; or pass --archive-copy to store the backup's WAL inside it");
            return Err(Error::misconfigured(Misconfig::Server, format!("{target}: {problem}"), hint));
        }
        crate::ops::check::refuse_failing_archiver(&by.server, &target).await?;
    }
    tracing::info!("{target} archives: the backup's WAL comes from the archive");
    Ok(req.archive_copy)
}

async fn take_backup(repo: &Repository, req: &BackupRequest, lock: &StanzaLock) -> Result<BackupSummary> {
    let started = Instant::now();
    let start_time = chrono::Utc::now();
    let mut conn = ReplicationConnection::connect(&req.pg).await?;
    let sys = identify_stanza_cluster(&mut conn, repo.config()).await?;
    let pg_version = conn.server_version_num();
    let standby = Standby::detect(&mut conn, req, repo.config()).await?;
    let include_wal = wal_goes_in_backup(repo, req, &mut conn, standby.as_ref()).await?;
    let existing = repo.list_backups().await?;
    let lineage = lineage::choose(repo, req.backup_type, &existing, pg_version).await?;
    // Not only the visible backups: a killed one may have left block list parts
    // under a label of this very second (found by the kill -9 fault matrix).
    let label = lineage.new_label(&repo.labels_in_use().await?).await;
    lock.set_label(&label);
    let parent = lineage.parent.as_ref().map(|p| format!(" on {}", p.label)).unwrap_or_default();
    tracing::info!("backup {label}: {}{parent}", lineage.backup_type.as_str());
    repo.mark_backup_started(&label).await?;
    let parent_blocks = lineage.parent.as_ref().map(|p| ParentBlocks::new(repo, p));
    let mut b = Builder::new(repo, &label, req.compress_level, parent_blocks, req.progress.clone());
    if let Some(s) = &standby {
        s.catch_up(req).await?;
    }
    let plan = Plan::choose(repo, &mut conn, &lineage, sys.timeline).await?;
    let (mut streamed, read) = stream_as_planned(&mut conn, req, &label, include_wal, &mut b, plan, &lineage).await?;
    conn.close().await;
    b.finish().await?;
    req.progress.finish();
    tracing::info!("backup {label}: data durable in the repository after {:.1}s", started.elapsed().as_secs_f64());
    after_stream(repo, req, standby.as_ref(), &streamed, include_wal).await?;
    let source = BackupSource {
        role: if standby.is_some() { "standby" } else { "primary" }.into(),
        server: format!("{}:{}", req.pg.host, req.pg.port),
    };
    let (system_identifier, source) = (sys.system_identifier, Some(source));
    let databases = databases::list(&req.pg, &b.files).await;
    let head = ManifestHead { label, start_time, system_identifier, pg_version, include_wal, source, databases, read };
    let server_manifest = std::mem::take(&mut streamed.server_manifest);
    let manifest = head.manifest(repo, &lineage, streamed, std::mem::take(&mut b.files), &b.backup_label);
    // The writer's commit keeps the visibility rule: everything else durable, then
    // the server's manifest, the summary, then the manifest.
    let manifest = b.writer.commit(&server_manifest, manifest).await?;
    Ok(BackupSummary {
        label: manifest.label.clone(),
        backup_type: lineage.backup_type,
        parent: manifest.parent,
        size: manifest.size,
        stored_new: manifest.stored_new,
        files: manifest.files.iter().filter(|f| f.kind == FileKind::File).count(),
        start_lsn: manifest.start_lsn,
        stop_lsn: manifest.stop_lsn,
        read: manifest.read.clone(),
        seconds: started.elapsed().as_secs_f64(),
        expire: None,
        expire_error: None,
    })
}

/// After the stream: a standby still one (not promoted meanwhile); the backup's last
/// segment archived (switched first on a standby's primary) and, with archive-check,
/// every segment it needs found in the repository, unless it carries its WAL.
async fn after_stream(
    repo: &Repository,
    req: &BackupRequest,
    standby: Option<&Standby>,
    s: &Streamed,
    include_wal: bool,
) -> Result<()> {
    let seg_size = repo.config().wal_segment_size;
    if let Some(standby) = standby {
        standby.still_standby().await?;
        if !include_wal {
            standby.close_last_segment(s.stop_lsn, seg_size).await?;
        }
    }
    if !include_wal && req.archive_check {
        let (first, last) = s.wal_range(seg_size);
        archive::wait_for_segments(repo, s.timeline, first, last, req.archive_timeout).await?;
    }
    Ok(())
}

/// What a backup knows of itself before its files: the manifest's other fields.
struct ManifestHead {
    label: String,
    start_time: chrono::DateTime<chrono::Utc>,
    system_identifier: u64,
    pg_version: u32,
    include_wal: bool,
    source: Option<BackupSource>,
    databases: Vec<Database>,
    read: ReadMethod,
}

impl ManifestHead {
    /// The manifest, but for what only the writer fills in at commit (indexes, block
    /// counts, bytes stored).
    fn manifest(
        self,
        repo: &Repository,
        lineage: &lineage::Lineage,
        streamed: Streamed,
        files: Vec<FileEntry>,
        backup_label: &[u8],
    ) -> Manifest {
        let seg_size = repo.config().wal_segment_size;
        let (first, last) = streamed.wal_range(seg_size);
        let wal_name = |segno| (!self.include_wal).then(|| wal::segment_name(streamed.timeline, segno, seg_size));
        let rfc3339 = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Manifest {
            format_version: FORMAT_VERSION,
            label: self.label,
            backup_type: lineage.backup_type.as_str().into(),
            parent: lineage.parent.as_ref().map(|p| p.label.clone()),
            start_time: rfc3339(self.start_time),
            stop_time: rfc3339(chrono::Utc::now()),
            start_lsn: streamed.start_lsn,
            stop_lsn: streamed.stop_lsn,
            timeline: streamed.timeline,
            system_identifier: self.system_identifier,
            pg_version: self.pg_version,
            block_size: repo.config().block_size,
            wal_included: self.include_wal,
            wal_start: wal_name(first),
            wal_stop: wal_name(last),
            backup_label: String::from_utf8_lossy(backup_label).into_owned(),
            tablespaces: streamed.tablespaces,
            size: files.iter().filter(|f| f.kind == FileKind::File).map(|f| f.size).sum(),
            stored_new: 0,
            indexes: Vec::new(),
            files,
            blocks: 0,
            blocks_per_part: 0,
            source: self.source,
            databases: self.databases,
            read: Some(self.read),
        }
    }
}

/// What BASE_BACKUP told us besides the files (which went into the Builder).
struct Streamed {
    /// Bytes of archive the server sent.
    bytes: u64,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    timeline: u32,
    tablespaces: Vec<Tablespace>,
    server_manifest: Vec<u8>,
}

impl Streamed {
    /// The first and last WAL segment the backup needs to become consistent.
    fn wal_range(&self, seg_size: u32) -> (u64, u64) {
        (wal::segno_of(self.start_lsn.0, seg_size), wal::segno_of(self.stop_lsn.0.saturating_sub(1), seg_size))
    }
}

/// Run BASE_BACKUP as `plan` says: changed pages only, falling back to the whole
/// cluster when the server refuses before sending any file (its summaries do not
/// reach back to the parent: it has run a checkpoint, and runs another).
async fn stream_as_planned(
    conn: &mut ReplicationConnection,
    req: &BackupRequest,
    label: &str,
    include_wal: bool,
    b: &mut Builder<'_>,
    plan: Plan,
    lineage: &lineage::Lineage,
) -> Result<(Streamed, ReadMethod)> {
    let parent = lineage.parent.as_ref().map(|p| p.label.clone()).unwrap_or_default();
    let plan = plan.prepare(conn, &parent).await?;
    b.geometry = plan.geometry();
    b.changes_since = lineage.parent.as_ref().map(|p| p.start_lsn);
    let (streamed, plan) = match stream_base_backup(conn, req, label, include_wal, b).await {
        Ok(s) => (s, plan),
        Err(Error::Server { code, message, .. })
            if b.geometry.is_some() && b.files.is_empty() && summaries::summaries_refused(&code, &message) =>
        {
            let plan = summaries::whole(&parent, summaries::refused(&parent, &message));
            b.geometry = None;
            (stream_base_backup(conn, req, label, include_wal, b).await?, plan)
        }
        Err(e) => return Err(e),
    };
    let read = plan.read_method(streamed.bytes);
    Ok((streamed, read))
}

/// Run BASE_BACKUP (INCREMENTAL when `b` takes incremental files) and feed its tar
/// streams to `b`, file by file.
async fn stream_base_backup(
    conn: &mut ReplicationConnection,
    req: &BackupRequest,
    label: &str,
    include_wal: bool,
    b: &mut Builder<'_>,
) -> Result<Streamed> {
    let opts = BaseBackupOptions {
        incremental: b.geometry.is_some(),
        label: format!("pgcairn {label}"),
        fast_checkpoint: req.fast_checkpoint,
        wal: include_wal,
        // Never let the server wait, unbounded, for its archiver: a backup that needs
        // the archive checks it itself (archive-check, with a timeout and a clear
        // message), and one that carries its WAL does not need it. Waiting hung an
        // --archive-copy backup forever while archive_command was failing.
        wait_for_archive: false,
        verify_checksums: true,
        progress: req.estimate_size,
    };
    let mut state = StreamState { target: conn.target().to_string(), ..StreamState::default() };
    let checkpoint = if req.fast_checkpoint { "an immediate" } else { "a spread (start-fast = false)" };
    tracing::info!("BASE_BACKUP sent: the server runs {checkpoint} checkpoint first");
    // Regression (issue 21, item 14): during a spread checkpoint the terminal stayed
    // blank for minutes. The bar says what the server is doing until data flows.
    let waiting = if req.fast_checkpoint {
        "waiting for the server's immediate checkpoint".to_string()
    } else {
        "waiting for the server's spread checkpoint (up to checkpoint_timeout × checkpoint_completion_target; --start-fast asks for an immediate one)".to_string()
    };
    req.progress.begin(&waiting, None);
    let mut stream = BaseBackupStream::start(conn, &opts).await?;
    loop {
        match stream.next().await? {
            BackupEvent::Done => break,
            event => state.apply(event, req, label, b).await?,
        }
    }
    state.finish(b)
}

/// The base backup stream between events: positions, tablespaces, the server's
/// manifest so far, and the tar reader of the current archive.
#[derive(Default)]
struct StreamState {
    target: String,
    start: Option<(Lsn, u32)>,
    stop: Option<Lsn>,
    tablespaces: Vec<Tablespace>,
    server_manifest: Vec<u8>,
    tar: TarReader,
    items: Vec<TarItem>,
    bytes: u64,
}

impl StreamState {
    fn tar_error(&self, detail: String) -> Error {
        Error::Protocol { target: self.target.clone(), detail: format!("BASE_BACKUP tar stream: {detail}") }
    }

    async fn apply(&mut self, event: BackupEvent, req: &BackupRequest, label: &str, b: &mut Builder<'_>) -> Result<()> {
        match event {
            BackupEvent::Start { lsn, timeline } => {
                tracing::info!("checkpoint done: backup starts at {lsn} on timeline {timeline}");
                self.start = Some((lsn, timeline))
            }
            BackupEvent::Tablespaces(list) => {
                req.progress.begin(&format!("backup {label}"), list.iter().map(|t| t.size).sum::<Option<u64>>());
                self.tablespaces =
                    list.into_iter().filter_map(|t| Some(Tablespace { oid: t.oid?, location: t.location? })).collect();
            }
            BackupEvent::ArchiveStart { name, location } => {
                std::mem::take(&mut self.tar).finish().map_err(|d| self.tar_error(d))?;
                b.tablespace = match location {
                    None => None,
                    Some(_) => Some(
                        name.trim_end_matches(".tar")
                            .parse()
                            .map_err(|_| self.tar_error(format!("archive name {name}")))?,
                    ),
                };
            }
            BackupEvent::ArchiveData(data) => {
                self.bytes += data.len() as u64;
                let items = &mut self.items;
                let fed = self.tar.feed(data, &mut |item| -> std::result::Result<(), String> {
                    items.push(item);
                    Ok(())
                });
                fed.map_err(|d| self.tar_error(d))?;
                for item in self.items.drain(..) {
                    b.tar_item(item).await?;
                }
            }
            BackupEvent::Progress | BackupEvent::Done => {}
            BackupEvent::ManifestData(d) => self.server_manifest.extend_from_slice(&d),
            BackupEvent::End { lsn } => {
                tracing::info!("stream ended: backup stops at {lsn}");
                self.stop = Some(lsn)
            }
        }
        Ok(())
    }

    fn finish(mut self, b: &Builder<'_>) -> Result<Streamed> {
        std::mem::take(&mut self.tar).finish().map_err(|d| self.tar_error(d))?;
        let protocol = |detail: &str| Error::Protocol { target: self.target.clone(), detail: detail.into() };
        let (Some((start_lsn, timeline)), Some(stop_lsn)) = (self.start, self.stop) else {
            return Err(protocol("BASE_BACKUP ended without start and stop positions"));
        };
        if b.backup_label.is_empty() || self.server_manifest.is_empty() {
            return Err(protocol("BASE_BACKUP sent no backup_label or no backup manifest"));
        }
        Ok(Streamed {
            bytes: self.bytes,
            start_lsn,
            stop_lsn,
            timeline,
            tablespaces: self.tablespaces,
            server_manifest: self.server_manifest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::tar::{EntryKind, TarEntry};
    use crate::progress::NoProgress;
    use crate::repo::blocklist::BLOCKS_PER_PART;
    use crate::repo::tests::test_repo;

    async fn write_file(b: &mut Builder<'_>, path: &str, blocks: &[Vec<u8>]) {
        let size = blocks.iter().map(Vec::len).sum::<usize>() as u64;
        let entry = TarEntry { path: path.into(), kind: EntryKind::File, mode: 0o600, size, mtime: 0, link: None };
        b.tar_item(TarItem::Entry(entry)).await.unwrap();
        for data in blocks {
            b.tar_item(TarItem::Data(Bytes::from(data.clone()))).await.unwrap();
        }
        b.tar_item(TarItem::EntryEnd).await.unwrap();
        b.finish().await.unwrap();
    }

    /// A diff reuses the parent's blob for unchanged blocks and stores a changed block
    /// as a small delta over the parent's version; block list and index agree on it.
    #[tokio::test(flavor = "multi_thread")]
    async fn diff_stores_changed_blocks_as_deltas() {
        let (_mem, repo) = test_repo(true).await;
        let bs = repo.config().block_size as usize;
        let old: Vec<Vec<u8>> = (0..8).map(|_| (0..bs).map(|_| rand::random::<u8>()).collect()).collect();
        let mut full = Builder::new(&repo, "F", 3, None, Arc::new(NoProgress));
        write_file(&mut full, "base/1/1", &old).await;
        let json = serde_json::json!({
            "format_version": FORMAT_VERSION, "label": "F", "backup_type": "full", "start_time": "", "stop_time": "",
            "start_lsn": "0/0", "stop_lsn": "0/0", "timeline": 1, "system_identifier": 1, "pg_version": 170000,
            "block_size": bs, "wal_included": true, "backup_label": "", "tablespaces": [], "size": 8 * bs,
            "stored_new": 0, "indexes": [], "blocks": 8, "blocks_per_part": BLOCKS_PER_PART,
            "files": [{"path": "base/1/1", "kind": "file", "mode": 384, "size": 8 * bs, "mtime": 0}],
        });
        let parent: Manifest = serde_json::from_value(json).unwrap();

        let mut new = old.clone();
        new[2][100..108].copy_from_slice(b"changed!");
        new[5][bs - 8..].copy_from_slice(b"changed!");
        let parent_blocks = ParentBlocks::new(&repo, &parent);
        let mut diff = Builder::new(&repo, "D", 3, Some(parent_blocks), Arc::new(NoProgress));
        write_file(&mut diff, "base/1/1", &new).await;
        assert!(diff.writer.stored_new() < 2 * 200, "two deltas stored {} bytes", diff.writer.stored_new());

        let (before, after) =
            (repo.load_block_part("F", 0).await.unwrap(), repo.load_block_part("D", 0).await.unwrap());
        let index = repo.load_index().await.unwrap();
        for (i, block) in new.iter().enumerate() {
            let ((old_id, old_loc), (id, loc)) = (before.get(i), after.get(i));
            assert_eq!(id, repo.chunk_hasher().id(block));
            assert_eq!(index[&id], loc, "block {i}: index and block list agree");
            if i == 2 || i == 5 {
                let base = loc.base.expect("a changed block is a delta");
                assert_eq!((base.id, base.pack, base.offset), (old_id, old_loc.pack, old_loc.offset));
            } else {
                assert_eq!((id, loc), (old_id, old_loc), "block {i}: the parent's blob reused");
            }
        }
    }

    /// Index objects are written during the backup, each naming only uploaded packs,
    /// and together they list every new block; repeated blocks are stored once; the
    /// block list locates every block where the index does.
    #[tokio::test(flavor = "multi_thread")]
    async fn indexes_are_written_as_packs_complete() {
        let (mem, repo) = test_repo(true).await;
        let mut b = Builder::new(&repo, "L", 1, None, Arc::new(NoProgress));
        b.writer.set_limits_for_tests(128 * 1024, 8);
        let block = repo.config().block_size as usize;
        let blocks: Vec<Vec<u8>> = (0..120).map(|_| (0..block).map(|_| rand::random::<u8>()).collect()).collect();
        let size = (blocks.len() * block * 2) as u64;
        let entry =
            TarEntry { path: "base/1/1".into(), kind: EntryKind::File, mode: 0o600, size, mtime: 0, link: None };
        b.tar_item(TarItem::Entry(entry)).await.unwrap();
        for data in blocks.iter().chain(blocks.iter()) {
            b.tar_item(TarItem::Data(Bytes::from(data.clone()))).await.unwrap();
        }
        b.tar_item(TarItem::EntryEnd).await.unwrap();
        b.finish().await.unwrap();

        let (indexes, entries, parts) = b.writer.counts_for_tests();
        assert!(indexes > 1, "one index per flush, got {indexes}");
        assert_eq!((entries, parts), (240, 1));
        let index = repo.load_index().await.unwrap();
        assert_eq!(index.len(), 120, "each distinct block stored once");
        let part = repo.load_block_part("L", 0).await.unwrap();
        assert_eq!(part.len(), 240);
        for i in 0..240 {
            let (id, loc) = part.get(i);
            assert_eq!(id, repo.chunk_hasher().id(&blocks[i % 120]));
            assert_eq!(index[&id], loc);
            let key = crate::repo::pack::PackReader::name(&loc.pack);
            assert!(crate::storage::Storage::get(&*mem, &key).await.is_ok(), "index names a pack that is not stored");
        }
    }
}
