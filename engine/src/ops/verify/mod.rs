//! `pgcairn verify`: read the repository and prove every retained backup restores —
//! short of restoring it. For each backup: summary and manifest authenticated and in
//! agreement, every block list part authenticated, every entry the same blob as the
//! index lists, every pack it needs read whole and every blob in it opened (AEAD,
//! zstd, chunk id recomputed, deltas against their bases), its own WAL present and
//! valid. For the archive: every WAL object authenticated and validated, continuity
//! per timeline with the point-in-time ranges each gap breaks, history files.
//!
//! `--set` checks one backup and what it needs; `--sample=F` reads a random share F
//! of the packs (and of the WAL beyond what backups need) for a cheap routine run.
//! The result is stored in the repository (§6.8) for `info` and monitoring.

mod packs;
mod wal;

use std::sync::Arc;

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::ops::wal_view::WalView;
use crate::progress::Progress;
use crate::repo::blocklist::{block_count, BlockListReader};
use crate::repo::format::{server_manifest_key, summary_key, FileKind, Manifest, Summary};
use crate::repo::index::IndexCatalog;
use crate::repo::results::ResultKind;
use crate::repo::Repository;
use packs::PackChecker;

/// Packs read and checked at once (each is read whole: ~16 MiB).
const PARALLEL_PACKS: usize = 4;

/// What to verify.
pub struct VerifyRequest {
    /// One backup (and what it needs) instead of the whole repository.
    pub set: Option<String>,
    /// Read only this share (0 < F ≤ 1) of the packs, chosen at random.
    pub sample: Option<f64>,
    /// Told how many pack bytes are read.
    pub progress: Arc<dyn Progress>,
}

/// A verify run's findings (stored as `result/verify/…`; `info` shows the last).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// When the run started (RFC 3339 UTC) and how long it took, in seconds.
    pub started: String,
    /// Seconds the run took.
    pub seconds: f64,
    /// True when nothing any backup or point-in-time recovery needs is damaged.
    pub ok: bool,
    /// `--set`, if one backup was verified.
    pub set: Option<String>,
    /// `--sample`, if only a share of the packs was read.
    pub sample: Option<f64>,
    /// Packs read and checked, and packs the index lists.
    pub packs_checked: u64,
    /// Packs the index objects list.
    pub packs_listed: u64,
    /// Blobs opened and checked.
    pub blobs_checked: u64,
    /// Bytes read from packs.
    pub pack_bytes: u64,
    /// WAL files read and validated, and their bytes.
    pub wal_files: u64,
    /// Bytes of WAL read (decompressed).
    pub wal_bytes: u64,
    /// Per backup, oldest first.
    pub backups: Vec<BackupVerdict>,
    /// Per timeline: what the archive holds without a gap.
    pub timelines: Vec<TimelineVerdict>,
    /// Damage that no backup needs (index objects, packs no backup names, WAL
    /// outside every backup's range): reported, not failing the run.
    pub warnings: Vec<String>,
    /// Why the result could not be stored in the repository (then info and
    /// monitoring do not show this run); None when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_recorded: Option<String>,
}

/// One backup's verdict.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupVerdict {
    /// The backup's label.
    pub label: String,
    /// `ok` or `damaged`.
    pub status: String,
    /// The first damage found: which file and block, which object, and why.
    pub damage: Option<Damage>,
    /// Blocks of the backup that cannot be restored.
    pub damaged_blocks: u64,
    /// Something that does not stop a restore: "index damaged, backup restorable"
    /// when blocks are in packs only a damaged index object lists, yet open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where a backup is damaged.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Damage {
    /// The file affected (relative to the data directory or tablespace), if a file is.
    pub file: Option<String>,
    /// The block of that file (in units of the stanza's block size), if one is.
    pub block: Option<u64>,
    /// The repository object at fault.
    pub object: String,
    /// What is wrong with it.
    pub detail: String,
}

/// One timeline of the archive.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TimelineVerdict {
    /// The timeline.
    pub timeline: u32,
    /// Runs of segments archived without a gap: (first, last).
    pub ranges: Vec<(String, String)>,
    /// Gaps between the runs, with what each breaks.
    pub gaps: Vec<WalGap>,
    /// What is wrong with the timeline's history file, if anything.
    pub history: Option<String>,
}

/// Missing or damaged segments between two runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WalGap {
    /// First and last segment missing or damaged.
    pub first: String,
    /// Last segment missing or damaged.
    pub last: String,
    /// The recovery it makes impossible.
    pub breaks: String,
    /// It lies wholly before the newest backup that verified: only an old point-in-time
    /// window is broken (WAL thinned by retention-archive, or lost), nothing that
    /// restores needs it. A warning, not damage.
    #[serde(default)]
    pub earlier: bool,
}

/// Verify the repository (or one backup) and store the result in it.
pub async fn verify(repo: &Repository, req: &VerifyRequest) -> Result<VerifyReport> {
    let started = chrono::Utc::now();
    let clock = std::time::Instant::now();
    check_sample(req.sample)?;
    let labels = selected_labels(repo, req.set.as_deref()).await?;
    let checker = PackChecker::new(repo, IndexCatalog::load(repo).await?);
    let sampler = Sampler::new(req.sample);
    req.progress.begin("verify", None);
    let mut backups = Vec::new();
    let mut summaries = Vec::new();
    for label in &labels {
        let (verdict, summary) = verify_backup(&checker, &sampler, label, &req.progress).await?;
        backups.push(verdict);
        summaries.extend(summary);
    }
    let (walcheck, timelines) = verify_wal(repo, req, &sampler, &mut backups, &summaries).await?;
    let mut warnings = warnings_of(&checker, &walcheck, &timelines);
    if req.set.is_none() && req.sample.is_none() {
        warnings.extend(check_unreferenced(&checker).await?);
    }
    req.progress.finish();
    let ok = backups.iter().all(|b| b.damage.is_none())
        && timelines.iter().all(|t| t.gaps.iter().all(|g| g.earlier) && t.history.is_none());
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let mut report = VerifyReport {
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        seconds: clock.elapsed().as_secs_f64(),
        ok,
        set: req.set.clone(),
        sample: req.sample,
        packs_checked: checker.checked_count() as u64,
        // Regression (issue 21, item 10): "7 of 6 packs" when block lists named a
        // pack no readable index object listed.
        packs_listed: checker.known_count() as u64,
        blobs_checked: load(&checker.blobs),
        pack_bytes: load(&checker.bytes),
        wal_files: walcheck.files,
        wal_bytes: walcheck.bytes,
        backups,
        timelines,
        warnings,
        not_recorded: None,
    };
    // Regression (issue 21, item 16): verify exited 0 when it could not record its
    // result; the CLI now fails the run (monitoring would never see it).
    if let Err(e) = repo.put_result(ResultKind::Verify, &report).await {
        report.not_recorded = Some(e.to_string());
    }
    Ok(report)
}

/// The WAL archive: read what the backups need (and a sample of the rest), mark the
/// backups whose own WAL is damaged, and each timeline's runs and gaps, the gaps
/// before the newest verified backup as earlier ones.
async fn verify_wal(
    repo: &Repository,
    req: &VerifyRequest,
    sampler: &Sampler,
    backups: &mut [BackupVerdict],
    summaries: &[Summary],
) -> Result<(wal::WalCheck, Vec<TimelineVerdict>)> {
    let view = WalView::of(repo, &crate::repo::wal_archive::WalArchive::list(repo).await?).await?;
    let wal_names = wal_to_read(&view, summaries, sampler, req.set.is_some());
    let walcheck = wal::read_all(repo, wal_names).await?;
    note_wal_damage(backups, summaries, &view, &walcheck);
    let mut timelines = wal::timelines(&view, &walcheck, summaries);
    let good: Vec<&Summary> =
        summaries.iter().filter(|s| backups.iter().any(|b| b.label == s.label && b.damage.is_none())).collect();
    wal::mark_earlier_gaps(&mut timelines, &good, view.seg_size);
    Ok((walcheck, timelines))
}

/// What is wrong but breaks no restore: damaged index objects, damaged WAL files,
/// gaps before the newest verified backup.
fn warnings_of(checker: &PackChecker<'_>, walcheck: &wal::WalCheck, timelines: &[TimelineVerdict]) -> Vec<String> {
    let index = checker.index.damaged.iter().map(|(k, why)| format!("index object {k}: {why}"));
    let wal = walcheck.damaged.iter().map(|(name, why)| format!("WAL file {name}: {why}"));
    let gaps = timelines
        .iter()
        .flat_map(|t| &t.gaps)
        .filter(|g| g.earlier)
        .map(|g| format!("WAL gap {} - {} before the newest verified backup: {}", g.first, g.last, g.breaks));
    index.chain(wal).chain(gaps).collect()
}

fn check_sample(sample: Option<f64>) -> Result<()> {
    match sample {
        Some(f) if !(f > 0.0 && f <= 1.0) => Err(Error::misconfigured(
            crate::Misconfig::Request,
            format!("--sample={f} is not a share of the packs"),
            "give a fraction above 0 and at most 1, e.g. 0.05",
        )),
        _ => Ok(()),
    }
}

/// A backup whose own WAL (start to stop) is missing or damaged cannot become consistent.
fn note_wal_damage(backups: &mut [BackupVerdict], summaries: &[Summary], view: &WalView, walcheck: &wal::WalCheck) {
    for verdict in backups.iter_mut().filter(|v| v.damage.is_none()) {
        let Some(b) = summaries.iter().find(|s| s.label == verdict.label) else { continue };
        if let Some((object, detail)) = wal::backup_wal_problem(b, view, walcheck) {
            verdict.status = "damaged".into();
            verdict.damage = Some(Damage { file: None, block: None, object: format!("WAL {object}"), detail });
        }
    }
}

async fn selected_labels(repo: &Repository, set: Option<&str>) -> Result<Vec<String>> {
    let labels = repo.list_backups().await?;
    match set {
        None => Ok(labels),
        Some(s) if labels.iter().any(|l| l == s) => Ok(vec![s.to_string()]),
        Some(s) => Err(Error::BackupNotFound { label: s.to_string(), stanza: repo.config().stanza.clone() }),
    }
}

/// Chooses packs and WAL files for `--sample`: each with probability F, keyed by a
/// random seed per run so that successive runs read different shares.
struct Sampler {
    threshold: Option<u64>,
    seed: [u8; 32],
}

impl Sampler {
    fn new(fraction: Option<f64>) -> Self {
        let threshold = fraction.filter(|f| *f < 1.0).map(|f| (f * u64::MAX as f64) as u64);
        Sampler { threshold, seed: crate::crypto::random_bytes() }
    }

    fn takes(&self, id: &[u8]) -> bool {
        let Some(threshold) = self.threshold else { return true };
        let h = blake3::keyed_hash(&self.seed, id);
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(first) <= threshold
    }
}

/// One backup: its catalog objects, then its block list a part at a time, reading
/// the packs each part needs (once per run) before holding the part's entries
/// against the index and the damage found. Returns the verdict and the summary.
async fn verify_backup(
    checker: &PackChecker<'_>,
    sampler: &Sampler,
    label: &str,
    progress: &Arc<dyn Progress>,
) -> Result<(BackupVerdict, Option<Summary>)> {
    let repo = checker.repo;
    let damaged = |object: String, detail: String| BackupVerdict {
        label: label.to_string(),
        status: "damaged".into(),
        damage: Some(Damage { file: None, block: None, object, detail }),
        damaged_blocks: 0,
        note: None,
    };
    let (summary, manifest) = match load_catalog(repo, label).await? {
        Ok(pair) => pair,
        Err((object, detail)) => return Ok((damaged(object, detail), None)),
    };
    let mut walk = BlockWalk::new(&manifest);
    let reader = BlockListReader::new(repo, &manifest, 1);
    let per_part = manifest.blocks_per_part.max(1) as u64;
    let mut first_damage: Option<Damage> = None;
    let (mut damaged_blocks, mut unindexed) = (0u64, 0u64);
    for part in 0..manifest.blocks.div_ceil(per_part) {
        let first = part * per_part;
        let entries = match reader.range(first, per_part.min(manifest.blocks - first)).await {
            Ok(e) => e,
            Err(e @ Error::Corrupt { .. }) => {
                let object = crate::repo::blocklist::block_part_key(label, part as u32);
                return Ok((damaged(object, e.to_string()), Some(summary)));
            }
            Err(e) => return Err(e),
        };
        check_packs_of(checker, sampler, &entries, progress, part == 0).await?;
        for (n, (id, loc)) in entries.iter().enumerate() {
            let fault = block_fault(checker, id, loc, &mut unindexed).await?;
            if let Some((object, detail)) = fault {
                damaged_blocks += 1;
                if first_damage.is_none() {
                    let (file, block) = walk.locate(first + n as u64);
                    first_damage = Some(Damage { file, block, object, detail });
                }
            }
        }
    }
    let status = if first_damage.is_some() { "damaged" } else { "ok" };
    let note = (unindexed > 0 && first_damage.is_none()).then(|| {
        format!("index damaged, backup restorable: {unindexed} blocks are in packs no readable index object lists; each opened and matched its id")
    });
    let verdict =
        BackupVerdict { label: label.into(), status: status.into(), damage: first_damage, damaged_blocks, note };
    Ok((verdict, Some(summary)))
}

/// What is wrong with one block of a block list: (object at fault, why), or None.
/// A block in a pack (or over a delta base) that only a damaged index object could
/// list is opened on its own from the block list, and counted in `unindexed`.
async fn block_fault(
    checker: &PackChecker<'_>,
    id: &crate::repo::format::ChunkId,
    loc: &crate::repo::blocklist::BlockLocation,
    unindexed: &mut u64,
) -> Result<Option<(String, String)>> {
    let name = crate::repo::pack::PackReader::name(&loc.pack);
    let base_unindexed = loc.base.is_some_and(|b| checker.unindexed(&b.pack.id));
    let damage = match checker.matches_index(id, loc).await? {
        Some(_) if checker.unindexed(&loc.pack.id) => Some(String::new()),
        Some(why) => return Ok(Some((name, why))),
        None => checker.blob_damage(&loc.pack.id, loc.offset).or_else(|| {
            loc.base.and_then(|b| checker.blob_damage(&b.pack.id, b.offset).map(|w| format!("its delta base: {w}")))
        }),
    };
    match damage {
        // A base only a damaged index could list was never read by the pack checks.
        None if !base_unindexed => Ok(None),
        Some(why) if !checker.unindexed(&loc.pack.id) && !base_unindexed => Ok(Some((name, why))),
        _ => {
            *unindexed += 1;
            Ok(checker.open_unindexed(id, loc).await?.map(|why| (name, why)))
        }
    }
}

/// The summary and manifest, authenticated and in agreement, and PostgreSQL's own
/// backup_manifest present; or the object at fault and why.
async fn load_catalog(
    repo: &Repository,
    label: &str,
) -> Result<std::result::Result<(Summary, Manifest), (String, String)>> {
    let corrupt = |key: String, e: Error| match e {
        Error::Corrupt { detail, .. } => Ok(Err((key, detail))),
        e if e.storage_kind() == Some(crate::StorageErrorKind::NotFound) => Ok(Err((key, "missing".to_string()))),
        e => Err(e),
    };
    let summary = match repo.load_summary(label).await {
        Ok(s) => s,
        Err(e) => return corrupt(summary_key(label), e),
    };
    let manifest = match repo.load_manifest(label).await {
        Ok(m) => m,
        Err(e) => return corrupt(crate::repo::format::manifest_key(label), e),
    };
    if Summary::of(&manifest) != summary {
        return Ok(Err((summary_key(label), "it disagrees with the backup's manifest".into())));
    }
    if let Err(e) = repo.get_meta_bytes(&server_manifest_key(label)).await {
        return corrupt(server_manifest_key(label), e);
    }
    let blocks: u64 = manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File)
        .map(|f| block_count(f.size, manifest.block_size))
        .sum();
    if blocks != manifest.blocks {
        let detail = format!("its files have {blocks} blocks, its block list {}", manifest.blocks);
        return Ok(Err((crate::repo::format::manifest_key(label), detail)));
    }
    Ok(Ok((summary, manifest)))
}

/// Read (once per run) every pack the entries or their bases need, a few at a time.
async fn check_packs_of(
    checker: &PackChecker<'_>,
    sampler: &Sampler,
    entries: &[(crate::repo::format::ChunkId, crate::repo::blocklist::BlockLocation)],
    progress: &Arc<dyn Progress>,
    first_part: bool,
) -> Result<()> {
    let wanted = || entries.iter().flat_map(|(_, loc)| std::iter::once(loc.pack.id).chain(loc.base.map(|b| b.pack.id)));
    let mut fresh: Vec<[u8; 32]> = wanted().filter(|p| sampler.takes(p) && checker.take(p)).collect();
    // Regression (issue 21, item 10): --sample=0.0001 read no pack and recorded "ok".
    // A sample reads at least one pack of each backup.
    if first_part && !wanted().any(|p| sampler.takes(&p)) {
        fresh.extend(wanted().next().filter(|p| checker.take(p)));
    }
    let mut checks =
        futures::stream::iter(fresh.into_iter().map(|p| checker.check_pack(p))).buffer_unordered(PARALLEL_PACKS);
    let before = checker.bytes.load(std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = checks.next().await {
        done?;
    }
    progress.advance(checker.bytes.load(std::sync::atomic::Ordering::Relaxed) - before);
    Ok(())
}

/// Packs the index lists that no verified backup named: leftovers of interrupted
/// backups, which expire collects. Read too; damage there is a warning.
async fn check_unreferenced(checker: &PackChecker<'_>) -> Result<Vec<String>> {
    let rest: Vec<[u8; 32]> = checker.index.packs().copied().filter(|p| checker.take(p)).collect();
    let mut checks =
        futures::stream::iter(rest.iter().map(|p| checker.check_pack(*p))).buffer_unordered(PARALLEL_PACKS);
    while let Some(done) = checks.next().await {
        done?;
    }
    Ok(rest
        .iter()
        .filter_map(|p| checker.pack_damage(p).or_else(|| checker.any_blob_damage(p)))
        .map(|why| format!("a pack no backup needs is damaged: {why}"))
        .collect())
}

/// Which WAL files to read: every one (or, with `--set`, the backup's own range and
/// what follows it), each beyond what backups need only if sampled.
fn wal_to_read(view: &WalView, backups: &[Summary], sampler: &Sampler, one_set: bool) -> Vec<String> {
    let seg = view.seg_size;
    let needed = |name: &str| {
        let Some(file) = crate::pg::wal::WalFile::parse(name) else { return false };
        let Some(segno) = file.segno(seg) else { return true }; // history files
        backups.iter().any(|b| {
            let (from, to) =
                (crate::pg::wal::segno_of(b.start_lsn.0, seg), crate::pg::wal::segno_of(b.stop_lsn.0, seg));
            file.timeline() == b.timeline && (from..=to).contains(&segno)
        })
    };
    let after_oldest = |name: &str| {
        let segno = crate::pg::wal::WalFile::parse(name).and_then(|f| f.segno(seg));
        let oldest = backups.iter().map(|b| crate::pg::wal::segno_of(b.start_lsn.0, seg)).min();
        !one_set || matches!((segno, oldest), (Some(s), Some(o)) if s >= o)
    };
    view.files
        .iter()
        .filter(|name| needed(name) || (after_oldest(name) && sampler.takes(name.as_bytes())))
        .cloned()
        .collect()
}

/// Maps a block number of the block list to its file and block within the file.
struct BlockWalk<'m> {
    files: Vec<(&'m str, u64, u64)>,
}

impl<'m> BlockWalk<'m> {
    fn new(m: &'m Manifest) -> Self {
        let mut next = 0;
        let files = m
            .files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .map(|f| {
                let count = block_count(f.size, m.block_size);
                next += count;
                (f.path.as_str(), next - count, count)
            })
            .collect();
        BlockWalk { files }
    }

    fn locate(&mut self, n: u64) -> (Option<String>, Option<u64>) {
        let i = self.files.partition_point(|(_, first, count)| first + count <= n);
        match self.files.get(i) {
            Some((path, first, _)) => (Some(path.to_string()), Some(n - first)),
            None => (None, None),
        }
    }
}
