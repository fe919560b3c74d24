//! `pgcairn wal-receive`: stream WAL from a server over a physical replication slot
//! into the stanza's repositories, as it is written.
//!
//! Each completed segment becomes the same object archive-push writes (a push of
//! the same bytes by archive_command is a no-op); the segment being received is
//! stored as a streamed object, refreshed every `interval` (0: as soon as the
//! stream pauses), which recovery reads past the archive's last segment. Status
//! updates report as flushed only what is durable in every repository, so a
//! primary that names this receiver in synchronous_standby_names waits for the
//! repository (RPO 0), and the slot keeps on the server all WAL not yet durable.
//! Memory: the segment, per repository its compressed frames so far, and the object
//! being stored (a few segments at most). Connection trouble and storage outages
//! are retried with backoff; a lost slot, another cluster or a refused setting end
//! the service.

mod segment;

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Misconfig, Result};
use crate::pg::conninfo::ConnParams;
use crate::pg::lsn::Lsn;
use crate::pg::walstream::{valid_slot_name, Slot, StreamEvent, WalStream};
use crate::pg::ReplicationConnection;
use crate::repo::access::RepoAccess;
use crate::repo::Repository;
use segment::Segment;

/// `pgcairn wal-receive`.
#[derive(Debug, Clone)]
pub struct ReceiveRequest {
    /// The stanza's repositories: every one receives every segment.
    pub repos: Vec<RepoAccess>,
    /// `pg`: the server streamed from (a primary or a cascading standby).
    pub source: ConnParams,
    /// `wal-receive-slot`: the physical slot, created when missing.
    pub slot: String,
    /// `wal-receive-interval`: how often the received part of the current segment is stored.
    pub interval: Duration,
    /// zstd level for WAL (`compress-level-wal`).
    pub level: i32,
}

/// How often the server hears from us without being asked (its wal_sender_timeout is 60 s).
const STATUS_EVERY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Run until SIGINT or SIGTERM (then store what was received and return) or an error
/// that waiting cannot cure.
pub async fn wal_receive(req: &ReceiveRequest) -> Result<()> {
    check_slot_name(&req.slot)?;
    let mut repos = Vec::with_capacity(req.repos.len());
    for access in &req.repos {
        repos.push(access.open().await.map_err(|e| access.context_among(req.repos.len(), e))?);
    }
    let (tx, mut stop) = tokio::sync::watch::channel(None);
    tokio::spawn(async move { tx.send(Some(crate::ops::interrupted().await)) });
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut progress = false;
        match receive(req, &repos, &mut progress, &mut stop).await {
            Err(e) if retryable(&e) => {
                backoff = if progress { Duration::from_secs(1) } else { (backoff * 2).min(MAX_BACKOFF) };
                tracing::warn!("{e}; wal-receive reconnects in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return stopped(&stop),
                }
            }
            Err(e) => return Err(e),
            Ok(()) => return stopped(&stop),
        }
    }
}

type Stop = tokio::sync::watch::Receiver<Option<&'static str>>;

fn stopped(stop: &Stop) -> Result<()> {
    let signal = stop.borrow().unwrap_or("a signal");
    tracing::info!("wal-receive stopped by {signal}; what was received is stored");
    Ok(())
}

/// One connection: find where to start, then stream, following timeline switches.
async fn receive(req: &ReceiveRequest, repos: &[Repository], progress: &mut bool, stop: &mut Stop) -> Result<()> {
    let first = repos.first().ok_or_else(|| Error::Internal("wal-receive without a repository".into()))?;
    let seg_size = first.config().wal_segment_size;
    let mut conn = ReplicationConnection::connect(&req.source).await?;
    let id = conn.identity().await?;
    check_cluster(first, id.system_identifier, conn.target())?;
    let (mut timeline, restart) = slot_start(&mut conn, &req.slot).await?;
    let mut start = Lsn(restart.0 - restart.0 % seg_size as u64);
    loop {
        store_history(&mut conn, timeline, repos, req.level).await?;
        tracing::info!(
            "wal-receive streams timeline {timeline} from {start} out of {} (slot {})",
            conn.target(),
            req.slot
        );
        let target = conn.target().to_string();
        let started = WalStream::start(conn, &req.slot, timeline, start).await;
        let mut stream = started.map_err(|e| start_refused(e, &req.slot, &target))?;
        let mut seg = Segment::new(timeline, start.0 / seg_size as u64, seg_size);
        let followed = follow(&mut stream, &mut seg, req, repos, progress, stop).await;
        let Some((next, next_start)) = followed.map_err(|e| start_refused(e, &req.slot, &target))? else {
            return Ok(());
        };
        tracing::info!("timeline {timeline} ended at {next_start}; wal-receive follows timeline {next}");
        conn = stream.into_connection();
        (timeline, start) = (next, Lsn(next_start.0 - next_start.0 % seg_size as u64));
    }
}

fn check_cluster(repo: &Repository, system_identifier: u64, target: &str) -> Result<()> {
    let stanza = repo.config().system_identifier;
    if system_identifier == stanza {
        return Ok(());
    }
    Err(Error::misconfigured(
        Misconfig::Server,
        format!("{target} is database system {system_identifier}, the stanza's is {stanza}"),
        "point pg at a server of the stanza's cluster (its primary or one of its standbys)",
    ))
}

/// Where the slot says streaming resumes (created, holding WAL from now, when missing).
async fn slot_start(conn: &mut ReplicationConnection, slot: &str) -> Result<(u32, Lsn)> {
    match conn.read_slot(slot).await? {
        Slot::Holds { restart, timeline } => Ok((timeline, restart)),
        Slot::Absent => {
            let Slot::Holds { restart, timeline } = conn.create_slot(slot).await? else {
                return Err(Error::Internal(format!(
                    "the replication slot {slot} holds no WAL right after its creation"
                )));
            };
            tracing::warn!(
                "created the physical replication slot {slot} on {}: it keeps WAL on that server until wal-receive has stored it; drop it when wal-receive is retired (SELECT pg_drop_replication_slot('{slot}'))",
                conn.target()
            );
            Ok((timeline, restart))
        }
        Slot::Lost => Err(slot_lost(slot, conn.target(), "wal_status lost")),
    }
}

/// The slot no longer holds the WAL wal-receive needs: going on would leave a gap.
fn slot_lost(slot: &str, target: &str, how: &str) -> Error {
    Error::misconfigured(
        Misconfig::Server,
        format!("the replication slot {slot} on {target} holds no WAL any more ({how}: max_slot_wal_keep_size was exceeded, or it was invalidated)"),
        format!("WAL written while wal-receive was away may be missing from the archive (check shows it); drop the slot (SELECT pg_drop_replication_slot('{slot}')) so wal-receive creates it again, and take a full backup if the archive has a gap"),
    )
}

/// START_REPLICATION on a slot whose WAL is gone: the server says the segment was
/// removed (58P01) or the slot was invalidated (55000).
fn start_refused(e: Error, slot: &str, target: &str) -> Error {
    match &e {
        Error::Server { code, message, .. } if code == "58P01" || code == "55000" => slot_lost(slot, target, message),
        _ => e,
    }
}

/// Archive the history file of `timeline` (as archive_command would; a no-op when it is there).
async fn store_history(
    conn: &mut ReplicationConnection,
    timeline: u32,
    repos: &[Repository],
    level: i32,
) -> Result<()> {
    if timeline == 1 {
        return Ok(());
    }
    let (name, content) = conn.timeline_history(timeline).await?;
    crate::pg::wal::validate_history(timeline, &content)
        .map_err(|reason| Error::WalRefused { name: name.clone(), reason })?;
    for repo in repos {
        repo.put_wal(timeline, &name, &content, level).await?;
    }
    Ok(())
}

/// Stream until the timeline ends (its successor and where it starts), a stop is
/// asked for (None), or an error.
async fn follow(
    stream: &mut WalStream,
    seg: &mut Segment,
    req: &ReceiveRequest,
    repos: &[Repository],
    progress: &mut bool,
    stop: &mut Stop,
) -> Result<Option<(u32, Lsn)>> {
    let mut status_due = Instant::now();
    let mut unstored_since: Option<Instant> = None;
    loop {
        let store_at = unstored_since.map(|t| t + req.interval);
        let durable = seg.durable();
        tokio::select! {
            biased;
            _ = stop.changed() => {
                seg.store_streamed(repos, req.level).await?;
                stream.status(seg.received(), seg.durable()).await?;
                return Ok(None);
            }
            event = stream.next() => match event? {
                StreamEvent::Data { start, data } => {
                    take(seg, start, &data, repos, req.level).await?;
                    unstored_since = unstored_since.or(Some(Instant::now())).filter(|_| seg.has_unstored());
                    if store_at.is_some_and(|t| Instant::now() >= t + req.interval.max(BUSY_STORE)) {
                        seg.store_streamed(repos, req.level).await?;
                        unstored_since = None;
                    }
                }
                StreamEvent::Keepalive { reply } => status_due = if reply { Instant::now() } else { status_due },
                StreamEvent::TimelineEnd { next, start } => {
                    // The COPY is over: no status for this timeline any more.
                    seg.store_streamed(repos, req.level).await?;
                    return Ok(Some((next, start)));
                }
            },
            _ = sleep_until_some(store_at) => {
                seg.store_streamed(repos, req.level).await?;
                unstored_since = None;
            }
            _ = tokio::time::sleep_until(status_due) => status_due = Instant::now(),
        }
        if seg.durable() != durable || Instant::now() >= status_due {
            *progress |= seg.durable() != durable;
            stream.status(seg.received(), seg.durable()).await?;
            status_due = Instant::now() + STATUS_EVERY;
        }
    }
}

/// A busy stream gives the store timer no pause: store at least this often anyway.
const BUSY_STORE: Duration = Duration::from_millis(200);

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Add received WAL to the segment, storing each segment it completes.
async fn take(seg: &mut Segment, start: Lsn, data: &[u8], repos: &[Repository], level: i32) -> Result<()> {
    let (mut at, mut rest) = (start, data);
    while !rest.is_empty() {
        let n = seg.append(at, rest)?;
        (at, rest) = (Lsn(at.0 + n as u64), &rest[n..]);
        if seg.is_full() {
            seg.store_complete(repos, level).await?;
            seg.next_segment();
        }
    }
    Ok(())
}

fn check_slot_name(slot: &str) -> Result<()> {
    if valid_slot_name(slot) {
        return Ok(());
    }
    Err(Error::setting(
        format!("wal-receive-slot {slot:?} is not a replication slot name"),
        "use lower-case letters, digits and underscores, at most 63 characters",
    ))
}

/// Connection trouble, a server shutting down, a storage outage: worth another try.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Server { code, .. } => code.starts_with("57") || code.starts_with("08") || code == "55006",
        Error::Protocol { .. } => true,
        e => e.is_transient(),
    }
}
