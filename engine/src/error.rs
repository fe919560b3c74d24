//! Error policy.
//!
//! * The engine returns [`Error`], a typed enum; binaries turn it into text and an
//!   exit code and may wrap it in `anyhow`, the engine never does.
//! * Every message is lowercase, names the object it is about (stanza, backup label,
//!   file, repository key, server) and, where the operator can act, ends with a hint.
//!   Input the operator must fix is [`Error::Misconfigured`]: a [`Misconfig`] kind,
//!   the problem, and a hint, rendered one way (`<problem>; hint: <what to do>`).
//! * Errors are logged where they are handled (the binaries print them once), never
//!   where they are propagated.
//! * A bug is [`Error::Internal`], never a panic on outside input.
//! * Every error is either *transient* (retrying the same operation later may succeed:
//!   network faults, throttling, a server that is starting up) or *permanent* (retrying
//!   cannot help: wrong passphrase, corrupt object, bad configuration). Storage
//!   wrappers retry transient errors only; [`Error::is_transient`] tells which.
//! * Secrets never appear in messages: errors carry names and keys, never passphrases,
//!   passwords or key material.

use std::path::PathBuf;

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of storage failure happened; decides retry and the operator's hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The object does not exist.
    NotFound,
    /// A create-only write found an object under the key.
    AlreadyExists,
    /// Retrying later may succeed (network fault, throttling, server error).
    Transient,
    /// Retrying cannot help (permissions, a refused key, a bad request).
    Permanent,
}

/// Who holds the stanza lock (boxed in [`Error::Locked`] to keep `Error` small).
#[derive(Debug, Clone, thiserror::Error, serde::Serialize)]
#[error("stanza {stanza} is locked by {command}{} (pid {pid} on {host}, since {started}); nothing was done; hint: wait for it to finish, or check that process; a lock whose holder died is taken over automatically (same host: at once; another host: after 5 minutes without a heartbeat)", label.as_ref().map(|l| format!(" of backup {l}")).unwrap_or_default())]
pub struct LockedBy {
    /// The stanza.
    pub stanza: String,
    /// The holder's command.
    pub command: String,
    /// The holder's host.
    pub host: String,
    /// The holder's process id.
    pub pid: i32,
    /// The backup the holder is taking, once known.
    pub label: Option<String>,
    /// When the holder took the lock (RFC 3339).
    pub started: String,
}

/// What the operator has to fix when the input cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misconfig {
    /// A setting is missing, malformed or conflicts with another (flag, environment,
    /// config file, key or passphrase file).
    Setting,
    /// The PostgreSQL server is not set up for what was asked (archiving off, a
    /// standby, an unsupported version or connection option).
    Server,
    /// The server is not the cluster the stanza belongs to (system identifier or
    /// major version differ).
    WrongCluster,
    /// A configured limit was reached (the async archive queue is full).
    ResourceLimit,
    /// The request cannot work with this backup or input (e.g. a restore type that
    /// the chosen backup cannot satisfy, a WAL path that is not a file).
    Request,
}

/// Everything that can go wrong in the engine; see the module docs for the policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that cannot work: what is wrong, and what to do about it.
    #[error("{problem}; hint: {hint}")]
    Misconfigured {
        /// Which kind of input is at fault.
        kind: Misconfig,
        /// What is wrong, naming the setting, file or server.
        problem: String,
        /// What the operator should do.
        hint: String,
    },

    /// The stanza has no `config` object in the repository: stanza-create was not
    /// run, or the stanza name is mistyped (then `existing` lists the real ones).
    #[error("{}", not_initialised(location, stanza, existing))]
    RepoNotInitialised {
        /// The repository's location, as the `repo` setting names it.
        location: String,
        /// The stanza that was looked for.
        stanza: String,
        /// The stanzas the repository does hold, when they could be listed.
        existing: Vec<String>,
    },

    /// stanza-create found the stanza already created.
    #[error("repository {location} is already initialised for stanza {stanza}: nothing was changed")]
    RepoAlreadyInitialised {
        /// The repository's location, as the `repo` setting names it.
        location: String,
        /// The stanza that already exists.
        stanza: String,
    },

    /// The stanza was written in a format version this build cannot read.
    #[error("repository {location} has format version {found}, this pgcairn reads versions {oldest} to {supported}: use a pgcairn release that supports format {found}")]
    UnsupportedFormat {
        /// The repository's location, as the `repo` setting names it.
        location: String,
        /// The format version the repository's `config` records.
        found: u32,
        /// The newest format version this build reads (and the one it writes).
        supported: u32,
        /// The oldest format version this build reads.
        oldest: u32,
    },

    /// No key slot of the stanza opens with the given passphrase.
    #[error("wrong passphrase for repository {location}: no key slot opens with it; check PGCAIRN_REPO_PASSPHRASE or repo-passphrase-file")]
    WrongPassphrase {
        /// The repository's location, as the `repo` setting names it.
        location: String,
    },

    /// The stanza is encrypted and no passphrase was configured.
    #[error("repository {location} is encrypted and no passphrase was given: set PGCAIRN_REPO_PASSPHRASE or repo-passphrase-file")]
    PassphraseMissing {
        /// The repository's location, as the `repo` setting names it.
        location: String,
    },

    /// An object is missing, unreadable or fails authentication/verification.
    #[error("{what} is corrupt or missing: {detail}; the repository storage lost or altered data: restore from another backup set (`pgcairn info` lists them) and check the storage")]
    Corrupt {
        /// The object, naming backup, file or key (e.g. "backup <label> file <path> block <n>").
        what: String,
        /// What the check found.
        detail: String,
    },

    /// The repository's `config` does not authenticate under its own key.
    #[error("repository object {object} fails authentication: {detail}. Someone who can write the storage may have altered it (for instance to switch encryption off); nothing was read or written: put back the original config object, and check who can write the storage")]
    ConfigTampered {
        /// The storage key of the `config` object.
        object: String,
        /// Why authentication failed.
        detail: String,
    },

    /// A diff or incr could not read its parent's version of a changed block.
    #[error("{what} is corrupt or missing: {detail}; a diff or incr reads its parent's version of every changed block: take a full backup (--type=full) and check the repository storage")]
    ParentCorrupt {
        /// The parent's object, naming backup, file or block.
        what: String,
        /// What the check found.
        detail: String,
    },

    /// One storage request failed.
    #[error("storage {op} of {key} failed: {detail}")]
    Storage {
        /// The request: "put", "get", "list", "delete"...
        op: &'static str,
        /// The object key (or prefix) the request was for.
        key: String,
        /// Whether retrying can help, and whether the object was missing or present.
        kind: StorageErrorKind,
        /// The backend's own message.
        detail: String,
    },

    /// The PostgreSQL server could not be reached, or the connection broke.
    #[error("cannot connect to {target}: {detail}; check that PostgreSQL is running and the `pg` connection settings (host, port)")]
    Connect {
        /// The server, as "server <host>:<port> (user <user>)".
        target: String,
        /// The socket error, or the timeout.
        detail: String,
    },

    /// The server refused to authenticate the replication connection.
    #[error("{target} refused the replication connection: {detail}; {hint}")]
    AuthRejected {
        /// The server, as "server <host>:<port> (user <user>)".
        target: String,
        /// The server's message.
        detail: String,
        /// What to check (password, pg_hba.conf, replication privilege).
        hint: String,
    },

    /// An error reported by the PostgreSQL server.
    #[error("{target} reported: {message} (sqlstate {code}){}", hint.as_ref().map(|h| format!("; hint: {h}")).unwrap_or_default())]
    Server {
        /// The server, as "server <host>:<port> (user <user>)".
        target: String,
        /// The SQLSTATE code.
        code: String,
        /// The server's primary message.
        message: String,
        /// The server's hint, when it sent one.
        hint: Option<String>,
    },

    /// The server reported page checksum failures while streaming the base backup.
    #[error("data checksum verification failed on {target} in: {}; the cluster has corrupt pages: investigate with pg_amcheck / pg_checksums before relying on this cluster", files.join(", "))]
    ChecksumFailure {
        /// The server, as "server <host>:<port> (user <user>)".
        target: String,
        /// The files with failures, as the server named them.
        files: Vec<String>,
    },

    /// The server sent something the replication protocol does not allow here.
    #[error("protocol error talking to {target}: {detail}")]
    Protocol {
        /// The server, as "server <host>:<port> (user <user>)".
        target: String,
        /// What was unexpected.
        detail: String,
    },

    /// The restore's target directory cannot be restored into.
    #[error("restore target {}: {reason}", path.display())]
    RestoreTarget {
        /// The directory (or file in it) refused.
        path: PathBuf,
        /// Why, with what to do.
        reason: String,
    },

    /// The requested backup set is not in the stanza.
    #[error(
        "backup set {label} not found in stanza {stanza}: run `pgcairn --stanza={stanza} info` to list backup sets"
    )]
    BackupNotFound {
        /// The stanza searched.
        stanza: String,
        /// The backup label asked for.
        label: String,
    },

    /// The stanza has no backup set to restore or build on.
    #[error("no backup set in stanza {stanza}: take one with `pgcairn --stanza={stanza} backup`")]
    NoBackups {
        /// The stanza searched.
        stanza: String,
    },

    /// archive-push refused a WAL file before storing anything.
    #[error("{name} refused: {reason}; nothing was archived")]
    WalRefused {
        /// The WAL file's name.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A WAL file of that name is already archived with different content.
    #[error("{name} is already archived in {location} with different content; the archived copy was kept. Two clusters archiving into one stanza, or a restored cluster archiving into its origin's stanza, cause this: give each cluster its own stanza")]
    WalMismatch {
        /// The WAL file's name.
        name: String,
        /// The repository's location, as the `repo` setting names it.
        location: String,
    },

    /// A WAL file the operation waits for was not archived in time.
    #[error("{what} did not reach the repository of stanza {stanza} within {seconds}s; hint: SELECT * FROM pg_stat_archiver shows whether archive_command fails (the server log says why); `pgcairn --stanza={stanza} check` with the same settings tests archiving end to end; a slow repository needs a larger archive-timeout")]
    ArchiveTimeout {
        /// The WAL file waited for.
        what: String,
        /// The stanza whose repository it should reach.
        stanza: String,
        /// How long it was waited for, in seconds (`archive-timeout`).
        seconds: u64,
    },

    /// Storage kept failing transiently for the whole time allowed.
    #[error("{what}: the repository storage kept failing for {seconds}s; last error: {last}")]
    StorageUnavailable {
        /// What was being done.
        what: String,
        /// How long it was retried, in seconds.
        seconds: u64,
        /// The last transient error's message.
        last: String,
    },

    /// A local file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Another backup, expire or stanza-delete holds the stanza lock.
    #[error("{0}")]
    Locked(Box<LockedBy>),

    /// An error archive-get's background WAL fetcher met serving the call, as it
    /// reported it (its own log, `.fetcher.log` in the spool, has the details).
    #[error("{0}")]
    Fetcher(String),

    /// What failed in one repository of several (`repo2`…`repo4`): the others may
    /// have done their part.
    #[error("repository {number} ({location}): {source}")]
    InRepository {
        /// The repository's number (1 for `repo`, 2 for `repo2`, …).
        number: usize,
        /// Where it is, as configured.
        location: String,
        /// What went wrong there.
        source: Box<Error>,
    },

    /// A bug: an invariant of pgcairn's own code did not hold.
    #[error("internal error: {0}; this is a bug in pgcairn: please report it with the command and its log")]
    Internal(String),
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::InRepository { source, .. } => source.is_transient(),
            Error::Storage { kind, .. } => *kind == StorageErrorKind::Transient,
            Error::Connect { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// Input that cannot work, of the given kind.
    pub fn misconfigured(kind: Misconfig, problem: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Misconfigured { kind, problem: problem.into(), hint: hint.into() }
    }

    /// A setting that is missing, malformed or conflicting.
    pub fn setting(problem: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::misconfigured(Misconfig::Setting, problem, hint)
    }

    /// A local I/O failure with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// The process exit code for this error: one of [`EXIT_CODES`], the table
    /// docs/config.md shows (a test holds the two together). Never above 125:
    /// PostgreSQL treats archive_command codes above that as fatal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InRepository { source, .. } => source.exit_code(),
            Error::Misconfigured { .. } => exit::CONFIG,
            Error::RepoNotInitialised { .. }
            | Error::RepoAlreadyInitialised { .. }
            | Error::UnsupportedFormat { .. } => exit::REPO_STATE,
            Error::WrongPassphrase { .. } | Error::PassphraseMissing { .. } => exit::PASSPHRASE,
            Error::Connect { .. } | Error::AuthRejected { .. } => exit::CONNECT,
            Error::Server { .. } | Error::ChecksumFailure { .. } | Error::Protocol { .. } => exit::SERVER,
            Error::Corrupt { .. }
            | Error::ParentCorrupt { .. }
            | Error::ConfigTampered { .. }
            | Error::BackupNotFound { .. }
            | Error::NoBackups { .. } => exit::DAMAGED,
            Error::RestoreTarget { .. } => exit::RESTORE_TARGET,
            Error::Storage { .. } | Error::StorageUnavailable { .. } => exit::STORAGE,
            Error::WalRefused { .. } | Error::WalMismatch { .. } => exit::WAL_REFUSED,
            Error::ArchiveTimeout { .. } => exit::ARCHIVE_TIMEOUT,
            Error::Locked(_) => exit::LOCKED,
            Error::Io { .. } | Error::Fetcher(_) | Error::Internal(_) => exit::LOCAL,
        }
    }

    /// The storage failure's kind, if this is a storage error.
    pub fn storage_kind(&self) -> Option<StorageErrorKind> {
        match self {
            Error::InRepository { source, .. } => source.storage_kind(),
            Error::Storage { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Exit codes, one per kind of failure an operator acts on differently.
pub mod exit {
    /// A local I/O failure, or a bug (`Error::Io`, `Error::Internal`).
    pub const LOCAL: u8 = 1;
    /// The command line could not be parsed (the binaries' own; no `Error` maps to it).
    pub const USAGE: u8 = 2;
    /// Input the operator must fix (`Error::Misconfigured`).
    pub const CONFIG: u8 = 3;
    /// The stanza is not initialised, already initialised, or of an unsupported format.
    pub const REPO_STATE: u8 = 4;
    /// The repository passphrase is wrong or missing.
    pub const PASSPHRASE: u8 = 5;
    /// PostgreSQL could not be reached or refused the connection.
    pub const CONNECT: u8 = 6;
    /// PostgreSQL reported an error, a checksum failure or broke the protocol.
    pub const SERVER: u8 = 7;
    /// A backup set is missing, or an object it needs is missing or corrupt.
    pub const DAMAGED: u8 = 8;
    /// The restore target directory was refused.
    pub const RESTORE_TARGET: u8 = 9;
    /// The repository storage failed, or stayed unavailable.
    pub const STORAGE: u8 = 10;
    /// A WAL file was refused or conflicts with the archived copy.
    pub const WAL_REFUSED: u8 = 11;
    /// WAL did not reach the archive within `archive-timeout`.
    pub const ARCHIVE_TIMEOUT: u8 = 12;
    /// The stanza lock is held by another backup, expire or stanza-delete.
    pub const LOCKED: u8 = 13;
    /// `drill` ran and the drilled cluster failed to recover or a check failed (no `Error` maps to it).
    pub const DRILL_FAILED: u8 = 14;
    /// `archive-get` only, for every failure but "not in the archive" (1): above
    /// 125, so PostgreSQL stops recovery instead of ending it early.
    pub const STOP_RECOVERY: u8 = 200;
}

/// Every exit code of the general table with what it means, as docs/config.md
/// shows it (0 and archive-get's own statuses are documented separately).
pub const EXIT_CODES: &[(u8, &str)] = &[
    (exit::LOCAL, "local I/O or internal error"),
    (exit::USAGE, "command-line usage error"),
    (exit::CONFIG, "configuration error"),
    (exit::REPO_STATE, "repository not initialised, already initialised, or of an unsupported format version"),
    (exit::PASSPHRASE, "wrong or missing repository passphrase"),
    (exit::CONNECT, "cannot connect to PostgreSQL, or it refused the connection"),
    (exit::SERVER, "PostgreSQL reported an error during the backup"),
    (exit::DAMAGED, "a backup set is missing, or an object it needs is missing or corrupt"),
    (exit::RESTORE_TARGET, "restore target refused"),
    (exit::STORAGE, "storage error"),
    (exit::WAL_REFUSED, "WAL refused"),
    (exit::ARCHIVE_TIMEOUT, "WAL did not reach the archive within `archive-timeout`"),
    (exit::LOCKED, "the stanza is locked by another backup, expire or stanza-delete"),
    (exit::DRILL_FAILED, "a restore drill ran and failed"),
];

/// Adds a context line to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}

/// RepoNotInitialised's message: a mistyped stanza is told the real ones (issue 14:
/// it was told to create a new stanza).
fn not_initialised(location: &str, stanza: &str, existing: &[String]) -> String {
    // Regression (issue 21, item 13): a typo'd repository path was told to run
    // stanza-create. A local stanza lives in `<repo>/<stanza>`: say when <repo> is missing.
    let repo_dir = std::path::Path::new(location).parent().filter(|_| location.starts_with('/'));
    if let Some(dir) = repo_dir.filter(|d| !d.exists()) {
        return format!(
            "the repository directory {} does not exist; hint: check `repo` (--repo, PGCAIRN_REPO or the config file) for a typo; for a new repository, create it (install -d -m 0700 -o postgres -g postgres {}) and run stanza-create",
            dir.display(),
            dir.display()
        );
    }
    if existing.is_empty() {
        return format!("repository {location} holds no stanza {stanza}: run `pgcairn --stanza={stanza} stanza-create` first, or check the `repo` and `stanza` settings");
    }
    format!(
        "repository {location} holds no stanza {stanza}; it holds: {}; hint: check --stanza, PGCAIRN_STANZA or `stanza` in the config file (run stanza-create only to add a new stanza)",
        existing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/config.md's exit code table and [`EXIT_CODES`] say the same: every code
    /// in both, each documented meaning starting with the table's words.
    #[test]
    fn exit_code_table_matches_the_docs() {
        let docs = include_str!("../../docs/config.md");
        let section = docs.split("## Exit codes").nth(1).expect("docs/config.md has an Exit codes section");
        let rows: Vec<(u8, &str)> = section
            .lines()
            .skip_while(|l| !l.starts_with("| code"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let mut cells = l.trim_matches('|').split('|').map(str::trim);
                Some((cells.next()?.parse().ok()?, cells.next()?))
            })
            .filter(|(code, _)| *code != 0)
            .collect();
        assert_eq!(rows.len(), EXIT_CODES.len(), "{rows:?}");
        for ((code, meaning), (doc_code, doc_meaning)) in EXIT_CODES.iter().zip(&rows) {
            assert_eq!(code, doc_code);
            assert!(doc_meaning.starts_with(meaning), "code {code}: docs say {doc_meaning:?}, the table {meaning:?}");
        }
        assert!(EXIT_CODES.iter().all(|(code, _)| *code <= 125), "archive_command needs codes up to 125");
        assert!(docs.contains(&format!("| {} |", exit::STOP_RECOVERY)), "archive-get's stop status is documented");
    }
}
