//! archive-get's background fetcher: one process per prefetch spool (per recovering
//! cluster), started by the first archive-get that finds none, as this program with
//! that call's arguments and `PGCAIRN_ARCHIVE_FETCH=1`.
//!
//! * It opens the repository once and answers archive-get calls on a Unix socket in
//!   the spool (`.fetcher.sock`; the spool is 0700, so only the server's OS user
//!   reaches it). A call names one WAL file; the fetcher puts the authenticated file
//!   at `<spool>/<name>` and answers `ready` (the caller renames it into place: served
//!   by rename, never copied), or `absent`, or the error.
//! * After serving a segment it fetches the following ones (`archive-get-queue-max`
//!   worth) in the background, at most `PREFETCH_MEMORY` bytes of them in flight. A
//!   segment fetched ahead is served only by the fetcher that fetched it (a new one
//!   empties the spool); a prefetch that failed or found nothing is fetched again
//!   when it is asked for: only the requested file decides.
//! * One at a time (flock on `.fetcher.lock`, which holds its pid). It exits when
//!   recovery ends (neither recovery.signal nor standby.signal left), when the server
//!   stops (postmaster.pid gone or its process dead), when its socket is removed, or
//!   after `IDLE_EXIT` without a call, and empties the spool on the way out.
//! * Bounded whatever its callers do: `MAX_CONNECTIONS` calls at once, a request of
//!   at most `MAX_REQUEST` bytes read within `REQUEST_READ_TIMEOUT`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::get::{retry_transient, GetRequest};
use super::push_async::HelperCommand;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, Commit};
use crate::pg::wal::{segment_name, WalFile};
use crate::repo::set::{RepoSet, WalSource};

const FETCH_ENV: &str = "PGCAIRN_ARCHIVE_FETCH";
const SOCKET: &str = ".fetcher.sock";
const LOCK: &str = ".fetcher.lock";
const LOG: &str = ".fetcher.log";
const TMP: &str = ".tmp";
/// A fetcher with no call for this long exits (a standby streaming from its primary
/// calls restore_command only when streaming stops).
const IDLE_EXIT: Duration = Duration::from_secs(60);
const MAX_CONNECTIONS: usize = 16;
const MAX_REQUEST: u64 = 256;
const MAX_REPLY: u64 = 64 << 10;
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Segments fetched ahead and still in memory: a few 16 MiB segments, whatever the
/// queue size, so the fetcher stays well under 256 MiB.
const PREFETCH_MEMORY: u64 = 64 << 20;
/// How long a caller waits for a fetcher it started to listen.
const START_WAIT: Duration = Duration::from_secs(3);
/// The longest Unix socket path (sun_path holds 108 bytes).
const MAX_SOCKET_PATH: usize = 100;
/// The fetcher's log is started afresh when a new fetcher finds it larger.
const LOG_KEEP: u64 = 1 << 20;
/// How much nicer than the recovering server the fetcher runs (see `start`).
const FETCHER_NICE: libc::c_int = 10;

/// The fetcher's nice value: FETCHER_NICE above the caller's, which is the server's
/// (restore_command runs as its child). An absolute 10 would make the fetcher the
/// equal of a server that itself runs at nice 10, and take CPU from replay.
fn fetcher_nice() -> libc::c_int {
    // SAFETY: getpriority(2) on this process only reads its nice value.
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    own.saturating_add(FETCHER_NICE).clamp(0, 19)
}
/// The spool when run by PostgreSQL without `spool-path` (relative to the data directory).
pub(super) const DEFAULT_SPOOL: &str = "pg_wal/pgcairn-prefetch";
/// How long the fast path waits for an answer: the fetcher bounds its own work by
/// `archive-get-timeout`, which the fast path does not read.
const FAST_REPLY_TIMEOUT: Duration = Duration::from_secs(3600);
/// A caller waits for its answer this much longer than the fetcher's own deadline.
const REPLY_SLACK: Duration = Duration::from_secs(30);

/// Whether this process was started as the fetcher.
pub(super) fn is_fetcher() -> bool {
    std::env::var_os(FETCH_ENV).is_some()
}

/// The fetcher's answer to one call.
#[derive(Debug)]
pub(super) enum Reply {
    /// The file is at `<spool>/<name>`.
    Ready,
    /// Not in the archive.
    Absent,
    /// Anything else: the caller stops recovery.
    Failed(Error),
    /// The call's settings are not the fetcher's: the caller fetches the file itself.
    NotMine,
}

impl Reply {
    /// One line: `ready`, `absent`, or the error as tab-separated fields.
    fn line(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        match self {
            Reply::Ready => "ready\n".into(),
            Reply::Absent => "absent\n".into(),
            Reply::NotMine => "other\n".into(),
            Reply::Failed(Error::Corrupt { what, detail }) => format!("corrupt\t{}\t{}\n", clean(what), clean(detail)),
            Reply::Failed(Error::StorageUnavailable { what, seconds, last }) => {
                format!("unavailable\t{}\t{seconds}\t{}\n", clean(what), clean(last))
            }
            Reply::Failed(e) => format!("error\t{}\n", clean(&e.to_string())),
        }
    }

    /// The reply a line carries; None for a cut or unknown one.
    fn parse(line: &str) -> Option<Reply> {
        let line = line.strip_suffix('\n')?;
        let fields: Vec<&str> = line.split('\t').collect();
        let failed = |e: Error| Some(Reply::Failed(e));
        match fields.as_slice() {
            ["ready"] => Some(Reply::Ready),
            ["absent"] => Some(Reply::Absent),
            ["other"] => Some(Reply::NotMine),
            ["corrupt", what, detail] => failed(Error::Corrupt { what: what.to_string(), detail: detail.to_string() }),
            ["unavailable", what, seconds, last] => failed(Error::StorageUnavailable {
                what: what.to_string(),
                seconds: seconds.parse().ok()?,
                last: last.to_string(),
            }),
            ["error", message] => failed(Error::Fetcher(message.to_string())),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------ the caller

/// Ask the fetcher for `name`, starting one if none runs, and move what it fetched
/// to `dest`. None when no fetcher can be reached or it went away mid-call: the
/// caller then fetches the file itself.
pub(super) async fn ask(spool: &Path, req: &GetRequest, name: &str, dest: &Path) -> Option<Result<bool>> {
    let stream = connect_or_start(spool, &req.fetcher).await?;
    let call = format!("{name} {}\n", identity(&req.fetcher.args));
    let reply = tokio::time::timeout(req.timeout + REPLY_SLACK, exchange(stream, call)).await.ok()??;
    settle(reply, spool, name, dest)
}

/// What a reply means for the call: delivered, absent, failed, or (None) fetch it here.
fn settle(reply: Reply, spool: &Path, name: &str, dest: &Path) -> Option<Result<bool>> {
    match reply {
        Reply::Ready => take(&spool.join(name), dest),
        Reply::Absent => Some(Ok(false)),
        Reply::Failed(e) => Some(Err(e)),
        Reply::NotMine => None,
    }
}

/// archive-get's fast path, before any setting is read: run by PostgreSQL in a data
/// directory whose fetcher runs (default spool), ask it at once — the whole call is
/// a process start, one round trip and a rename. None when there is no such fetcher,
/// it does not answer, or it runs with other settings: the caller takes the normal
/// path. `argv` is the whole command line, NAME and DESTINATION last.
pub fn archive_get_fast(argv: &[OsString]) -> Option<Result<bool>> {
    if is_fetcher() || argv.len() < 3 || !Path::new("PG_VERSION").is_file() {
        return None;
    }
    let name = argv[argv.len() - 2].to_str().filter(|n| WalFile::parse(n).is_some())?;
    let dest = Path::new(&argv[argv.len() - 1]);
    let spool = Path::new(DEFAULT_SPOOL);
    let mut stream = std::os::unix::net::UnixStream::connect(spool.join(SOCKET)).ok()?;
    stream.set_read_timeout(Some(FAST_REPLY_TIMEOUT)).ok()?;
    stream.write_all(format!("{name} {}\n", identity(&argv[1..])).as_bytes()).ok()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(std::io::Read::take(stream, MAX_REPLY)), &mut line)
        .ok()?;
    settle(Reply::parse(&line)?, spool, name, dest)
}

/// What makes archive-get calls alike: their arguments (program, file name and
/// destination left out) and the PGCAIRN_* environment (only the names of secret
/// ones). A fetcher serves only calls like the one that started it, so a
/// restore_command changed mid-recovery never gets WAL fetched with other settings.
fn identity(args: &[OsString]) -> String {
    let mut h = blake3::Hasher::new();
    for a in &args[..args.len().saturating_sub(2)] {
        h.update(a.as_bytes());
        h.update(&[0]);
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k.to_str().is_some_and(|k| k.starts_with("PGCAIRN_") && k != FETCH_ENV))
        .collect();
    env.sort();
    for (k, v) in env {
        let secret = ["PASSPHRASE", "PASSWORD", "SECRET", "TOKEN"].iter().any(|s| k.to_string_lossy().contains(s));
        h.update(k.as_bytes());
        h.update(if secret { b"=?".as_slice() } else { v.as_bytes() });
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}

async fn connect_or_start(spool: &Path, fetcher: &HelperCommand) -> Option<UnixStream> {
    let socket = spool.join(SOCKET);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return None;
    }
    if let Ok(s) = UnixStream::connect(&socket).await {
        return Some(s);
    }
    if let Err(e) = start(spool, fetcher) {
        tracing::warn!("cannot start the background WAL fetcher: {e}");
        return None;
    }
    let deadline = Instant::now() + START_WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Ok(s) = UnixStream::connect(&socket).await {
            return Some(s);
        }
    }
    None
}

/// Start a detached fetcher unless one holds the lock (starting, running or leaving).
fn start(spool: &Path, fetcher: &HelperCommand) -> Result<()> {
    fsutil::create_dir_all_durable(spool).ctx(|| format!("cannot create {}", spool.display()))?;
    match try_lock(spool)? {
        None => return Ok(()),
        Some(lock) => drop(lock),
    }
    let log_path = spool.join(LOG);
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > LOG_KEEP) {
        let _ = std::fs::remove_file(&log_path);
    }
    let log = fsutil::private_file()
        .create(true)
        .append(true)
        .open(&log_path)
        .ctx(|| format!("cannot open {}", log_path.display()))?;
    let mut command = std::process::Command::new(&fetcher.program);
    let nice = fetcher_nice();
    // SAFETY: only close_range(2) and setpriority(2) run between fork and exec.
    // The fetcher must not keep the recovering server's descriptors (WAL files,
    // pipes) open: stdio is in place by then, everything above it goes. It runs at
    // a lower priority (inherited by all its threads): replay and the calls that
    // wait on it come first, the fetcher works ahead with what CPU is left.
    unsafe {
        command.pre_exec(move || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            Ok(())
        });
    }
    command
        .args(&fetcher.args)
        .env(FETCH_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().ctx(|| format!("cannot open {}", log_path.display()))?)
        .stderr(log)
        // Its own process group: signals meant for the recovering server's children
        // (and a killed caller) leave it be; it watches the server itself.
        .process_group(0)
        .spawn()
        .ctx(|| "cannot start the background WAL fetcher".into())?;
    Ok(())
}

async fn exchange(stream: UnixStream, call: String) -> Option<Reply> {
    let (read, mut write) = stream.into_split();
    write.write_all(call.as_bytes()).await.ok()?;
    let mut line = String::new();
    BufReader::new(read).take(MAX_REPLY).read_line(&mut line).await.ok()?;
    Reply::parse(&line)
}

/// Move the fetched file into place; None (fetch it here) when it is gone. No
/// fsync: PostgreSQL reads the file at once and, after a crash, asks for it again.
fn take(from: &Path, dest: &Path) -> Option<Result<bool>> {
    match std::fs::rename(from, dest) {
        Ok(()) => Some(Ok(true)),
        // A spool-path on another file system than pg_wal: copied, durably.
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let copied = std::fs::read(from)
                .and_then(|data| fsutil::write_file(dest, &data, Commit::Replace))
                .ctx(|| format!("cannot copy {} to {}", from.display(), dest.display()));
            let _ = std::fs::remove_file(from);
            Some(copied.map(|()| true))
        }
        Err(e) => {
            tracing::warn!("the fetched {} cannot be moved to {}: {e}", from.display(), dest.display());
            None
        }
    }
}

/// An exclusive, non-blocking flock on the fetcher lock; None if someone holds it.
fn try_lock(spool: &Path) -> Result<Option<File>> {
    let path = spool.join(LOCK);
    fsutil::try_flock(&path).ctx(|| format!("cannot open {}", path.display()))
}

// ------------------------------------------------------------------ the fetcher

/// Serve calls until it is time to go (module comment); the spool is emptied after.
pub(super) async fn run(req: &GetRequest, spool: &Path) -> Result<()> {
    fsutil::create_dir_all_durable(spool).ctx(|| format!("cannot create {}", spool.display()))?;
    let Some(mut lock) = try_lock(spool)? else { return Ok(()) };
    lock.set_len(0)
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .ctx(|| "cannot write the fetcher lock".into())?;
    empty_spool(spool);
    let socket = spool.join(SOCKET);
    let listener = UnixListener::bind(&socket).ctx(|| format!("cannot listen on {}", socket.display()))?;
    // Like every file pgcairn creates, 0600 (bind leaves 0777 minus the umask).
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(fsutil::PRIVATE_FILE))
        .ctx(|| format!("cannot restrict {}", socket.display()))?;
    let watch = Watch::new(&socket)?;
    tracing::info!("background WAL fetcher {} started for {}", std::process::id(), spool.display());
    let deadline = Instant::now() + req.timeout;
    let set = Arc::new(RepoSet::new(req.repos.clone())?);
    let seg_size = || async { set.open_any().await.map(|repo| repo.config().wal_segment_size.max(1) as u64) };
    let opened = retry_transient(deadline, req.timeout, "opening the repository", seg_size).await;
    let outcome = match opened {
        Ok(seg_size) => {
            let segments = req.queue_max / seg_size;
            let mut fetcher = Fetcher::new(set.clone(), seg_size, spool, segments);
            let own_args: Vec<OsString> = std::env::args_os().skip(1).collect();
            (fetcher.identity, fetcher.timeout) = (identity(&own_args), req.timeout);
            serve(listener, Arc::new(fetcher), &watch).await;
            Ok(())
        }
        Err(e) => {
            refuse_waiting(&listener, &e).await;
            Err(e)
        }
    };
    // Regression (issue 22): a fetcher whose spool was removed (a delta restore over
    // the data directory) emptied it on its way out after a new fetcher had made it
    // again, deleting the new one's temp file mid-write: recovery stopped (exit 200)
    // on "cannot write pg_wal/pgcairn-prefetch/…". Only the spool's owner empties it.
    if watch.ours() {
        empty_spool(spool);
    }
    outcome
}

/// The repository cannot be opened: the calls already waiting get the error.
async fn refuse_waiting(listener: &UnixListener, e: &Error) {
    let line = Reply::Failed(Error::Fetcher(e.to_string())).line();
    while let Ok(Ok((mut stream, _))) = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
        let _ = stream.write_all(line.as_bytes()).await;
    }
}

/// Remove everything in the spool but the lock and the log.
fn empty_spool(spool: &Path) {
    for e in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name != LOCK && name != LOG {
            let _ = if e.path().is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
        }
    }
}

async fn serve(listener: UnixListener, fetcher: Arc<Fetcher>, watch: &Watch) {
    let calls = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let accept = async {
            let permit = calls.clone().acquire_owned().await;
            (listener.accept().await, permit)
        };
        tokio::select! {
            (accepted, permit) = accept => match accepted {
                Ok((stream, _)) => {
                    let fetcher = fetcher.clone();
                    tokio::spawn(async move {
                        fetcher.answer(stream).await;
                        drop(permit);
                    });
                }
                Err(e) => tracing::warn!("cannot accept a call: {e}"),
            },
            _ = tick.tick() => {
                if let Some(why) = watch.time_to_go(fetcher.idle()) {
                    tracing::info!("background WAL fetcher {} exits: {why}", std::process::id());
                    return;
                }
            }
        }
    }
}

/// What ends the fetcher (module comment).
struct Watch {
    socket: PathBuf,
    /// The socket file it bound: inode and change time (inode numbers are reused at once).
    socket_id: (u64, i64, i64),
    /// The postmaster whose recovery runs this fetcher, when started in a data directory.
    server: Option<i32>,
}

impl Watch {
    fn new(socket: &Path) -> Result<Self> {
        let socket_id = file_id(socket).ctx(|| format!("cannot stat {}", socket.display()))?;
        let server = std::fs::read_to_string("postmaster.pid")
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .filter(|_| Path::new("PG_VERSION").is_file());
        Ok(Self { socket: socket.to_path_buf(), socket_id, server })
    }

    /// Whether the spool is still this fetcher's: its socket is the one it bound.
    fn ours(&self) -> bool {
        file_id(&self.socket).ok() == Some(self.socket_id)
    }

    fn time_to_go(&self, idle: Duration) -> Option<String> {
        if !self.ours() {
            return Some(format!("its socket {} was removed", self.socket.display()));
        }
        if idle >= IDLE_EXIT {
            return Some(format!("no call for {} s", idle.as_secs()));
        }
        let pid = self.server?;
        if !Path::new("postmaster.pid").exists() || !fsutil::process_alive(pid) {
            return Some(format!("the server (pid {pid}) stopped"));
        }
        if !Path::new("recovery.signal").exists() && !Path::new("standby.signal").exists() {
            return Some("recovery ended".into());
        }
        None
    }
}

/// A file's identity: inode and change time.
fn file_id(path: &Path) -> std::io::Result<(u64, i64, i64)> {
    std::fs::metadata(path).map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// What a fetch ahead came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    Ready,
    Absent,
    Failed,
}

type Slot = Shared<BoxFuture<'static, Fetched>>;

/// Where WAL comes from (the opened repositories), the spool, and the segments
/// fetched ahead by name.
pub(super) struct Fetcher {
    source: Arc<dyn WalSource>,
    seg_size: u64,
    spool: PathBuf,
    /// Segments to keep fetched ahead of the last one served.
    ahead: u64,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Segments fetched ahead and not yet written to the spool (memory bound).
    in_flight: Arc<Semaphore>,
    last_call: Mutex<Instant>,
    /// Calls being served.
    serving: std::sync::atomic::AtomicUsize,
    /// The calls it serves (see [`identity`]); others are told `other`.
    identity: String,
    /// `archive-get-timeout` of its settings, which are the callers'.
    timeout: Duration,
    /// The last segment served (moved out of the spool to PostgreSQL).
    last_served: Mutex<Option<String>>,
}

impl Fetcher {
    pub(super) fn new(source: Arc<dyn WalSource>, seg_size: u64, spool: &Path, ahead: u64) -> Self {
        let in_flight = Arc::new(Semaphore::new((PREFETCH_MEMORY / seg_size).max(1) as usize));
        let (spool, slots, last_call) = (spool.to_path_buf(), Mutex::default(), Mutex::new(Instant::now()));
        let (serving, identity, timeout) = (Default::default(), String::new(), Duration::from_secs(60));
        let last_served = Mutex::default();
        Self { source, seg_size, spool, ahead, slots, in_flight, last_call, serving, identity, timeout, last_served }
    }

    /// Time since the last call ended; zero while one is served (riding out an
    /// outage is not idleness).
    fn idle(&self) -> Duration {
        if self.serving.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.last_call.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_call.lock() {
            *t = Instant::now();
        }
    }

    /// Read one call, serve it, answer. A caller that sends nothing useful in time
    /// is dropped.
    async fn answer(self: Arc<Self>, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read).take(MAX_REQUEST);
        if !matches!(tokio::time::timeout(REQUEST_READ_TIMEOUT, reader.read_line(&mut line)).await, Ok(Ok(_))) {
            return;
        }
        let Some((name, identity)) = parse_call(&line) else { return };
        if identity != self.identity {
            let _ = write.write_all(Reply::NotMine.line().as_bytes()).await;
            return;
        }
        let timeout = self.timeout;
        self.serving.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply = self.serve_call(&name, timeout).await;
        self.touch();
        self.serving.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let _ = write.write_all(reply.line().as_bytes()).await;
    }

    /// Put `name` in the spool: the copy fetched ahead if it came through, otherwise
    /// fetched now (riding out an outage up to `timeout`). Then fetch ahead.
    pub(super) async fn serve_call(self: &Arc<Self>, name: &str, timeout: Duration) -> Reply {
        let ahead = self.slots.lock().ok().and_then(|mut s| s.remove(name));
        let fetched = match ahead {
            Some(slot) => slot.await,
            None => Fetched::Failed,
        };
        let reply = if fetched == Fetched::Ready { Reply::Ready } else { self.fetch_now(name, timeout).await };
        match reply {
            Reply::Ready => self.fetch_ahead(name),
            Reply::Absent => self.end_of_archive(name),
            _ => {}
        }
        reply
    }

    /// `absent` follows the last segment served: the end of the archive. PostgreSQL
    /// then reads that last segment once more, to start its new timeline, and the
    /// copy it had left the spool when served: fetch it again now, not when asked
    /// (issue 22: that call was the slowest of a recovery, ~70 ms).
    fn end_of_archive(self: &Arc<Self>, absent: &str) {
        let Some(last) = self.last_served.lock().ok().and_then(|l| l.clone()) else { return };
        let seg_size = self.seg_size as u32;
        let after_last =
            WalFile::parse(&last).and_then(|f| Some(segment_name(f.timeline(), f.segno(seg_size)? + 1, seg_size)));
        if after_last.as_deref() != Some(absent) {
            return;
        }
        let Ok(mut slots) = self.slots.lock() else { return };
        if let std::collections::btree_map::Entry::Vacant(e) = slots.entry(last) {
            let slot = self.prefetch(e.key().clone());
            e.insert(slot);
        }
    }

    async fn fetch_now(&self, name: &str, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        let fetched = match retry_transient(deadline, timeout, name, || self.source.wal(name)).await {
            Ok(None) => retry_transient(deadline, timeout, name, || self.source.streamed(name)).await,
            other => other,
        };
        match fetched {
            Ok(None) => Reply::Absent,
            // The spool's trouble is not the archive's: the caller fetches it itself.
            Ok(Some(data)) => match self.spool_file(name, data).await {
                Ok(()) => Reply::Ready,
                Err(e) => {
                    tracing::warn!("{e}: the call fetches {name} itself");
                    Reply::NotMine
                }
            },
            Err(e) => Reply::Failed(e),
        }
    }

    /// Write a fetched file into the spool under its own name, whole but without
    /// fsync: only this process serves it, and after a crash the next fetcher
    /// empties the spool (an fsync per segment slowed replay; PostgreSQL does not
    /// fsync what restore_command delivers either).
    async fn spool_file(&self, name: &str, data: Vec<u8>) -> Result<()> {
        let (tmp, dest) = (self.spool.join(TMP), self.spool.join(name));
        tokio::task::spawn_blocking(move || {
            fsutil::write_file_volatile(&tmp, &dest, &data).ctx(|| format!("cannot write {}", dest.display()))
        })
        .await
        .map_err(|e| Error::Internal(format!("spool writer failed: {e}")))?
    }

    /// Forget what sorts before `served` (recovery is past it) and start fetching
    /// the segments after it that are not fetched or in flight yet.
    fn fetch_ahead(self: &Arc<Self>, served: &str) {
        let seg_size = self.seg_size as u32;
        let Some(file @ WalFile::Segment { timeline, .. }) = WalFile::parse(served) else { return };
        let Some(segno) = file.segno(seg_size) else { return };
        if let Ok(mut last) = self.last_served.lock() {
            *last = Some(served.to_string());
        }
        prune_spool(&self.spool, served);
        let Ok(mut slots) = self.slots.lock() else { return };
        slots.retain(|n, _| n.as_str() > served);
        for next in (1..=self.ahead).map(|i| segment_name(timeline, segno + i, seg_size)) {
            if let std::collections::btree_map::Entry::Vacant(e) = slots.entry(next) {
                let slot = self.prefetch(e.key().clone());
                e.insert(slot);
            }
        }
    }

    fn prefetch(self: &Arc<Self>, name: String) -> Slot {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let Ok(_permit) = me.in_flight.acquire().await else { return Fetched::Failed };
            match me.source.wal(&name).await {
                Ok(None) => Fetched::Absent,
                Ok(Some(data)) => match me.spool_file(&name, data).await {
                    Ok(()) => Fetched::Ready,
                    Err(e) => {
                        tracing::warn!("cannot keep {name} fetched ahead (it is fetched again when asked for): {e}");
                        Fetched::Failed
                    }
                },
                Err(e) => {
                    tracing::warn!("fetching {name} ahead failed (it is fetched again when asked for): {e}");
                    Fetched::Failed
                }
            }
        });
        async move { task.await.unwrap_or(Fetched::Failed) }.boxed().shared()
    }
}

/// `<WAL file name> <identity>`; only WAL file names (never a path).
fn parse_call(line: &str) -> Option<(String, String)> {
    let (name, identity) = line.trim_end().split_once(' ')?;
    WalFile::parse(name)?;
    (identity.len() == 64 && identity.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (name.to_string(), identity.to_string()))
}

/// Remove spooled segments that sort before `current`: recovery has moved past them.
fn prune_spool(spool: &Path, current: &str) {
    for e in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if WalFile::parse(&n).is_some() && n.as_str() < current {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{faulty_archive, segment};
    use super::*;
    use crate::repo::wal::wal_key;
    use crate::repo::Repository;
    use crate::storage::fault::Fault;

    /// Regression (issue 22): the fetcher was set to nice 10 outright, so under a server
    /// that itself runs at nice 10 (benches/compare.sh runs everything under `nice`) it
    /// competed with replay as an equal. It is now 10 nicer than its caller, at most 19.
    #[test]
    fn fetcher_runs_nicer_than_the_server() {
        // On Linux a nice value belongs to the thread: this one stands for the server.
        let seen = std::thread::spawn(|| {
            [5, 12]
                .map(|server| {
                    // SAFETY: raises this test thread's own nice value (needs no privilege).
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, server) };
                    fetcher_nice()
                })
                .to_vec()
        })
        .join()
        .expect("thread");
        assert_eq!(seen, vec![15, 19]);
    }

    fn name_of(repo: &Repository, segno: u64) -> String {
        segment_name(1, segno, repo.config().wal_segment_size)
    }

    /// A fetcher over segments 1..=4, fetching three ahead into `<dir>/spool`.
    async fn fetcher(dir: &Path) -> (Arc<crate::storage::fault::FaultStorage>, Arc<Fetcher>, Repository) {
        let (fault, repo) = faulty_archive(dir).await;
        let spool = dir.join("spool");
        std::fs::create_dir(&spool).unwrap();
        let seg_size = repo.config().wal_segment_size as u64;
        (fault, Arc::new(Fetcher::new(Arc::new(repo.clone()), seg_size, &spool, 3)), repo)
    }

    fn spooled(f: &Fetcher, name: &str) -> Option<Vec<u8>> {
        std::fs::read(f.spool.join(name)).ok()
    }

    /// The call returns as soon as the requested segment is in the spool; the
    /// following ones are still on their way from a slow store.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_requested_segment_is_served_while_the_next_are_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (fault, f, repo) = fetcher(dir.path()).await;
        let (seg1, seg2, seg3) = (name_of(&repo, 1), name_of(&repo, 2), name_of(&repo, 3));
        let slow = Duration::from_secs(3);
        fault.inject(Fault::SlowReads { prefix: wal_key(1, &seg3), delay: slow });
        assert!(matches!(f.serve_call(&seg1, Duration::from_secs(10)).await, Reply::Ready));
        assert_eq!(spooled(&f, &seg1).unwrap(), segment(&repo, 1, 1));
        // Segments 2..4 are now fetched ahead; 3 is slow. Segment 2 is served at once,
        // while 3 is still on its way.
        let started = Instant::now();
        assert!(matches!(f.serve_call(&seg2, Duration::from_secs(10)).await, Reply::Ready));
        assert!(started.elapsed() < Duration::from_secs(1), "segment 2 waited: {:?}", started.elapsed());
        assert!(spooled(&f, &seg3).is_none(), "segment 3 is still in flight");
        // Segment 3 (fetched ahead from the first call) is served without a new read:
        // with reads now slow for everything, the call still returns at once.
        fault.inject(Fault::SlowReads { prefix: String::new(), delay: Duration::from_secs(30) });
        tokio::time::sleep(slow + Duration::from_millis(500)).await;
        let started = Instant::now();
        assert!(matches!(f.serve_call(&seg3, Duration::from_secs(60)).await, Reply::Ready));
        assert!(started.elapsed() < Duration::from_secs(1), "served from the spool: {:?}", started.elapsed());
        assert_eq!(spooled(&f, &seg3).unwrap(), segment(&repo, 3, 3));
        assert!(spooled(&f, &seg1).is_none(), "segments recovery is past leave the spool");
    }

    /// Regression (issue 10, defect 2): with a later segment corrupt in the
    /// repository, fetching an earlier intact one failed because its prefetch failed,
    /// and any failure below 126 let PostgreSQL end recovery early. Only the requested
    /// segment decides, and damage is an error (stop), never "absent".
    #[tokio::test(flavor = "multi_thread")]
    async fn only_the_requested_segment_decides() {
        let dir = tempfile::tempdir().unwrap();
        let (fault, f, repo) = fetcher(dir.path()).await;
        let seg = |n| name_of(&repo, n);
        fault.inject(Fault::CorruptReads { prefix: wal_key(1, &seg(3)) });
        assert!(matches!(f.serve_call(&seg(1), Duration::from_secs(2)).await, Reply::Ready), "segment 1 is intact");
        assert!(matches!(f.serve_call(&seg(2), Duration::from_secs(2)).await, Reply::Ready));
        assert_eq!(spooled(&f, &seg(2)).unwrap(), segment(&repo, 2, 2));
        match f.serve_call(&seg(3), Duration::from_secs(2)).await {
            Reply::Failed(e @ Error::Corrupt { .. }) => assert!(e.to_string().contains(&seg(3)), "names it: {e}"),
            other => panic!("segment 3 is damaged, got {other:?}"),
        }
        // Healed: what failed ahead is fetched again when asked for.
        fault.heal_reads();
        assert!(matches!(f.serve_call(&seg(3), Duration::from_secs(2)).await, Reply::Ready));
        assert_eq!(spooled(&f, &seg(3)).unwrap(), segment(&repo, 3, 3));
        // Past the end of the archive: absent, and asked again, checked again.
        assert!(matches!(f.serve_call(&seg(9), Duration::from_secs(2)).await, Reply::Absent));
    }

    /// Issue 22: at the end of the archive PostgreSQL reads the last segment it
    /// replayed once more, which had left the spool when served: the slowest call of
    /// a recovery (~70 ms) fetched it again then. The "absent" answer for the next
    /// segment now fetches it again at once, and the repeated call is served from it.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_last_segment_is_fetched_again_at_the_end_of_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let (fault, f, repo) = fetcher(dir.path()).await;
        let seg = |n| name_of(&repo, n);
        assert!(matches!(f.serve_call(&seg(4), Duration::from_secs(2)).await, Reply::Ready));
        std::fs::remove_file(f.spool.join(seg(4))).unwrap(); // what PostgreSQL's rename does
        assert!(matches!(f.serve_call(&seg(5), Duration::from_secs(2)).await, Reply::Absent));
        let deadline = Instant::now() + Duration::from_secs(5);
        while spooled(&f, &seg(4)).is_none() {
            assert!(Instant::now() < deadline, "segment 4 was not fetched again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Served from the spool: with every read now slow, the call still returns at once.
        fault.inject(Fault::SlowReads { prefix: String::new(), delay: Duration::from_secs(30) });
        let started = Instant::now();
        assert!(matches!(f.serve_call(&seg(4), Duration::from_secs(60)).await, Reply::Ready));
        assert!(started.elapsed() < Duration::from_secs(1), "fetched when asked: {:?}", started.elapsed());
        assert_eq!(spooled(&f, &seg(4)).unwrap(), segment(&repo, 4, 4));
        // An absent segment that does not follow the last one served fetches nothing again.
        fault.heal_reads();
        std::fs::remove_file(f.spool.join(seg(4))).unwrap();
        assert!(matches!(f.serve_call(&seg(9), Duration::from_secs(2)).await, Reply::Absent));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(spooled(&f, &seg(4)).is_none(), "segment 9 does not follow segment 4");
    }

    /// A fetch ahead that found nothing does not make the segment absent for good:
    /// it is archived later (a standby waiting on the archive) and then served.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_segment_archived_after_its_fetch_ahead_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let (_fault, f, repo) = fetcher(dir.path()).await;
        assert!(matches!(f.serve_call(&name_of(&repo, 4), Duration::from_secs(2)).await, Reply::Ready));
        tokio::time::sleep(Duration::from_millis(300)).await; // 5..7 fetched ahead: absent
        let five = dir.path().join(name_of(&repo, 5));
        std::fs::write(&five, segment(&repo, 5, 5)).unwrap();
        super::super::archive_push(&repo, &five, 1).await.unwrap();
        assert!(matches!(f.serve_call(&name_of(&repo, 5), Duration::from_secs(2)).await, Reply::Ready));
        assert_eq!(spooled(&f, &name_of(&repo, 5)).unwrap(), segment(&repo, 5, 5));
    }

    /// The regression in `run`: a fetcher whose socket was replaced (its spool made
    /// again by another fetcher) no longer owns the spool, and so never empties it.
    #[tokio::test]
    async fn a_replaced_socket_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(SOCKET);
        let first = UnixListener::bind(&socket).unwrap();
        let watch = Watch::new(&socket).unwrap();
        assert!(watch.ours() && watch.time_to_go(Duration::ZERO).is_none());
        drop(first);
        std::fs::remove_file(&socket).unwrap();
        let _second = UnixListener::bind(&socket).unwrap();
        assert!(!watch.ours(), "another fetcher's socket");
        assert!(watch.time_to_go(Duration::ZERO).is_some_and(|why| why.contains("removed")));
    }

    #[test]
    fn replies_and_calls_survive_the_wire_and_refuse_garbage() {
        let corrupt = Reply::Failed(Error::Corrupt { what: "wal x".into(), detail: "bad\ttag\nhere".into() });
        match Reply::parse(&corrupt.line()) {
            Some(Reply::Failed(Error::Corrupt { what, detail })) => {
                assert_eq!((what.as_str(), detail.as_str()), ("wal x", "bad tag here"))
            }
            other => panic!("{other:?}"),
        }
        let down = Reply::Failed(Error::StorageUnavailable { what: "w".into(), seconds: 5, last: "503".into() });
        assert!(matches!(
            Reply::parse(&down.line()),
            Some(Reply::Failed(Error::StorageUnavailable { seconds: 5, .. }))
        ));
        assert!(matches!(Reply::parse("ready\n"), Some(Reply::Ready)));
        assert!(Reply::parse("ready").is_none(), "a cut line is no answer");
        assert!(Reply::parse("").is_none());
        let id = identity(&[]);
        assert!(parse_call(&format!("000000010000000000000003 {id}\n")).is_some());
        assert!(parse_call(&format!("../../etc/passwd {id}\n")).is_none(), "only WAL file names");
        assert!(parse_call("000000010000000000000003 60\n").is_none());
        assert!(matches!(Reply::parse(&Reply::NotMine.line()), Some(Reply::NotMine)));
        // Other settings, another identity; a file name or destination does not count.
        let call = |a: &[&str]| identity(&a.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(call(&["--stanza=a", "archive-get", "X", "Y"]), call(&["--stanza=a", "archive-get", "Z", "W"]));
        assert_ne!(call(&["--stanza=a", "archive-get", "X", "Y"]), call(&["--stanza=b", "archive-get", "X", "Y"]));
    }
}
