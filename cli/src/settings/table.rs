//! The settings table: the one place a setting is spelled. Clap's arguments, the
//! config-file keys, the environment variables, forwarding to child processes and
//! the help text all come from it; docs/config.md is tested against it.

use std::fmt;

/// The subcommands, as settings see them (`pgcairn-archive-push` is `ArchivePush`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cmd {
    /// `stanza-create`: initialise the stanza in the repository.
    StanzaCreate,
    /// `backup`: take a backup over a replication connection.
    Backup,
    /// `restore`: restore a backup set and set up recovery.
    Restore,
    /// `info`: show the repository, its backup sets and its WAL archive.
    Info,
    /// `check`: check that archiving works.
    Check,
    /// `archive-push`: archive one WAL file (archive_command).
    ArchivePush,
    /// `archive-get`: fetch one WAL file (restore_command).
    ArchiveGet,
    /// `key-file`: write the repository key to a file.
    KeyFile,
    /// `expire`: remove what the retention policy no longer keeps.
    Expire,
    /// `stanza-delete`: delete the stanza, every backup and WAL file in it.
    StanzaDelete,
    /// `verify`: read the repository and check every backup and the WAL archive.
    Verify,
    /// `drill`: restore a backup into a temporary cluster, start it, check it.
    Drill,
    /// `extract`: one database or table out of a backup, as a pg_dump file.
    Extract,
    /// `metrics`: the repository's state in Prometheus' text format.
    Metrics,
    /// `key`: add, list and remove passphrases.
    Key,
    /// `copy`: copy backups and WAL into another of the stanza's repositories.
    Copy,
    /// `wal-receive`: stream WAL into the repositories over a replication slot.
    WalReceive,
}

impl Cmd {
    /// Every subcommand, in help order.
    pub const ALL: [Cmd; 17] = [
        Cmd::StanzaCreate,
        Cmd::Backup,
        Cmd::Restore,
        Cmd::Info,
        Cmd::Check,
        Cmd::ArchivePush,
        Cmd::ArchiveGet,
        Cmd::KeyFile,
        Cmd::Expire,
        Cmd::StanzaDelete,
        Cmd::Verify,
        Cmd::Drill,
        Cmd::Extract,
        Cmd::Metrics,
        Cmd::Key,
        Cmd::Copy,
        Cmd::WalReceive,
    ];

    /// The subcommand's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Cmd::StanzaCreate => "stanza-create",
            Cmd::Backup => "backup",
            Cmd::Restore => "restore",
            Cmd::Info => "info",
            Cmd::Check => "check",
            Cmd::ArchivePush => "archive-push",
            Cmd::ArchiveGet => "archive-get",
            Cmd::KeyFile => "key-file",
            Cmd::Expire => "expire",
            Cmd::StanzaDelete => "stanza-delete",
            Cmd::Verify => "verify",
            Cmd::Drill => "drill",
            Cmd::Extract => "extract",
            Cmd::Metrics => "metrics",
            Cmd::Key => "key",
            Cmd::Copy => "copy",
            Cmd::WalReceive => "wal-receive",
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a value is parsed (once, at start-up; see `kind.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any text, taken as given.
    Text,
    /// Never printed, never forwarded.
    Secret,
    /// A file or directory path, not empty.
    Path,
    /// `true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0`; a bare flag means true.
    Bool,
    /// Bytes, with an optional KiB/MiB/GiB suffix.
    Size,
    /// A whole number of seconds.
    Seconds,
    /// A whole number, 1 or more.
    Count,
    /// A zstd level: 1 to 19, or -1 to -7.
    Zstd,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A stanza name (it becomes a directory or key prefix).
    Stanza,
    /// A repository location: a path, file:///path, or s3://, az://, gs:// with bucket and prefix.
    Repo,
}

/// Which commands take a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Locates the stanza and its repository: every command, also before the subcommand.
    Global,
    /// These commands only.
    Only(&'static [Cmd]),
}

/// Where a value may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// A command-line flag, `--name=value`.
    pub flag: bool,
    /// The environment variable `PGCAIRN_<NAME>`.
    pub env: bool,
    /// A key of the config file.
    pub file: bool,
}

const ANY: Sources = Sources { flag: true, env: true, file: true };

/// Whether a child pgcairn (restore_command, the async drainer) gets the value as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Never (secrets, settings the child does not use).
    Never,
    /// When it came from a flag or the environment; config-file values reach the
    /// child through the same config file.
    Given,
    /// Always (the stanza: the child must not guess it).
    Always,
}

/// One setting: its name, how it is parsed, where it may come from and who takes it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The flag's and the config-file key's name (`compress-level`).
    pub name: &'static str,
    /// How its value is parsed.
    pub kind: Kind,
    /// The value when none is given (parsed like any other; None: unset).
    pub default: Option<&'static str>,
    /// Which commands take it.
    pub scope: Scope,
    /// Where its value may come from.
    pub sources: Sources,
    /// Whether a child pgcairn gets it as a flag.
    pub forward: Forward,
    /// The setting's line in `--help`.
    pub help: &'static str,
}

impl Setting {
    /// Whether `cmd` takes this setting.
    pub fn applies_to(&self, cmd: Cmd) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::Only(cmds) => cmds.contains(&cmd),
        }
    }

    /// Whether every command takes it (it locates the stanza and its repository).
    pub fn is_global(&self) -> bool {
        self.scope == Scope::Global
    }

    /// Whether every repository has its own: the settings that find and unlock a
    /// repository (`repo`, `repo-passphrase*`, `repo-key-file`, `repo-s3-*`,
    /// `repo-azure-*`, `repo-gcs-*`) and its retention (`retention-*`).
    pub fn is_per_repo(&self) -> bool {
        let locates = self.is_global() && (self.name == "repo" || self.name.starts_with("repo-"));
        (locates && self.name != "repo-number") || self.name.starts_with("retention-")
    }

    /// The repository a derived setting belongs to (2 for `repo2-key-file`); None
    /// for the declared ones.
    pub fn repo_number(&self) -> Option<usize> {
        let rest = self.name.strip_prefix("repo")?;
        let digit = rest.chars().next()?.to_digit(10)? as usize;
        (2..=REPO_MAX).contains(&digit).then_some(digit)
    }

    /// This per-repository setting for repository `n` (2–4). Names and help are
    /// made once, at start-up, and live as long as the program.
    fn for_repo(&self, n: usize) -> Setting {
        let name: &'static str = Box::leak(repo_setting(self.name, n).into_boxed_str());
        let help: &'static str = Box::leak(format!("repository {n}: {}", self.help).into_boxed_str());
        // Repository 1's location is required; the others exist only when set.
        let default = if self.name == "repo" { None } else { self.default };
        Setting { name, help, default, ..*self }
    }

    /// `PGCAIRN_` + the name in upper case, `-` → `_`.
    pub fn env(&self) -> String {
        format!("PGCAIRN_{}", self.name.to_uppercase().replace('-', "_"))
    }
}

/// The setting called `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

use Cmd::*;
use Forward::{Always, Given, Never};

const GLOBAL: Scope = Scope::Global;
const WITH_PG: Scope = Scope::Only(&[StanzaCreate, Backup, Check, StanzaDelete, Metrics, WalReceive]);
/// The retention policy: expire applies it, backup too (expire-auto), info shows it.
const RETENTION: Scope = Scope::Only(&[Backup, Expire, Info]);

/// How many repositories a stanza may have: `repo`, then `repo2` … `repo4`.
pub const REPO_MAX: usize = 4;

/// Every setting: [`DECLARED`], then each per-repository setting again for
/// repositories 2 to [`REPO_MAX`] (`repo2`, `repo2-key-file`, `repo3-s3-endpoint` …):
/// declared once, derived here, so flags, keys, variables and docs cannot drift.
pub static SETTINGS: std::sync::LazyLock<Vec<Setting>> = std::sync::LazyLock::new(|| {
    let derived = (2..=REPO_MAX).flat_map(|n| DECLARED.iter().filter(|s| s.is_per_repo()).map(move |s| s.for_repo(n)));
    let declared = DECLARED.iter().copied();
    declared.chain(derived).collect()
});

/// The name of per-repository setting `base` for repository `n`: itself for 1;
/// for 2, `repo2-key-file` (from `repo-key-file`), `repo2-retention-full` (from
/// `retention-full`).
pub fn repo_setting(base: &str, n: usize) -> String {
    match (n, base.strip_prefix("repo")) {
        (1, _) => base.to_string(),
        (n, Some(rest)) => format!("repo{n}{rest}"),
        (n, None) => format!("repo{n}-{base}"),
    }
}

/// The settings as declared. Order: global ones first, then by command; help and
/// docs follow it.
const DECLARED: &[Setting] = &[
    Setting {
        name: "config",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: Sources { flag: true, env: true, file: false },
        forward: Given,
        help: "config file (TOML); /etc/pgcairn/pgcairn.toml when it exists",
    },
    Setting {
        name: "stanza",
        kind: Kind::Stanza,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Always,
        help: "the cluster's backup configuration: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
    },
    Setting {
        name: "repo",
        kind: Kind::Repo,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "repository: an absolute path, file:///path, s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or gs://BUCKET/PREFIX",
    },
    Setting {
        name: "repo-passphrase",
        kind: Kind::Secret,
        default: None,
        scope: GLOBAL,
        sources: Sources { flag: false, env: true, file: false },
        forward: Never,
        help: "repository passphrase: only from the environment, never a flag or the config file (or use repo-passphrase-file)",
    },
    Setting {
        name: "repo-passphrase-file",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "file holding the repository passphrase (mode 0600; trailing newline ignored)",
    },
    Setting {
        name: "repo-key-file",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "key file written by `pgcairn key-file`: unlocks without the passphrase's key derivation",
    },
    Setting {
        name: "key-cache",
        kind: Kind::Bool,
        default: Some("true"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "keep the key a passphrase unlocked in key-cache-path, so the next command skips the derivation",
    },
    Setting {
        name: "key-cache-path",
        kind: Kind::Path,
        default: Some("/dev/shm"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "memory-backed directory for the key cache (a pgcairn-<uid> directory, mode 0700, is made in it)",
    },
    Setting {
        name: "repo-s3-endpoint",
        kind: Kind::Text,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "S3 endpoint URL for non-AWS servers (default AWS_ENDPOINT_URL)",
    },
    Setting {
        name: "repo-s3-region",
        kind: Kind::Text,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "S3 region (default AWS_REGION, else us-east-1)",
    },
    Setting {
        name: "repo-s3-allow-http",
        kind: Kind::Bool,
        default: Some("false"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "allow a plain http:// S3 endpoint (trusted networks only; also AWS_ALLOW_HTTP=true)",
    },
    Setting {
        name: "repo-s3-credentials-file",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "file with the S3 access key (aws_access_key_id, aws_secret_access_key lines; mode 0640, readable by the PostgreSQL OS user): what the server's archive-push and archive-get use; default AWS_* variables",
    },
    Setting {
        name: "repo-s3-ca-file",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "PEM file of CA certificates to trust for the S3 endpoint besides the system's (private S3 servers)",
    },
    Setting {
        name: "repo-azure-account",
        kind: Kind::Text,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "Azure storage account of an az://CONTAINER/PREFIX repository (default AZURE_STORAGE_ACCOUNT_NAME under key type auto)",
    },
    Setting {
        name: "repo-azure-key-type",
        kind: Kind::Choice(&["shared", "sas", "auto"]),
        default: Some("shared"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "how to authenticate to Azure: shared (the account key), sas (a SAS token), auto (managed or workload identity)",
    },
    Setting {
        name: "repo-azure-key-file",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "file with the Azure account key (shared) or SAS token (sas); mode 0640 at most, readable by the PostgreSQL OS user",
    },
    Setting {
        name: "repo-azure-endpoint",
        kind: Kind::Text,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "Azure blob service URL for sovereign clouds, private endpoints and emulators (default https://ACCOUNT.blob.core.windows.net)",
    },
    Setting {
        name: "repo-azure-allow-http",
        kind: Kind::Bool,
        default: Some("false"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "allow a plain http:// Azure endpoint (emulators, trusted networks only)",
    },
    Setting {
        name: "repo-gcs-key-type",
        kind: Kind::Choice(&["auto", "service", "token"]),
        default: Some("auto"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "how to authenticate to GCS: auto (GOOGLE_APPLICATION_CREDENTIALS, else the metadata server), service (a service-account key), token (an access token)",
    },
    Setting {
        name: "repo-gcs-key",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "file with the GCS service-account key (JSON) or access token; mode 0640 at most, readable by the PostgreSQL OS user",
    },
    Setting {
        name: "repo-gcs-endpoint",
        kind: Kind::Text,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "GCS service URL for private endpoints and emulators (default https://storage.googleapis.com)",
    },
    Setting {
        name: "repo-gcs-allow-http",
        kind: Kind::Bool,
        default: Some("false"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "allow a plain http:// GCS endpoint (emulators, trusted networks only)",
    },
    Setting {
        name: "repo-number",
        kind: Kind::Count,
        default: Some("1"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "which repository the command works on: 1 (repo) to 4 (repo4); archive-push writes to all; unless this is given, archive-get reads all in order and info, check, expire, verify and metrics show all",
    },
    Setting {
        name: "log-level",
        kind: Kind::Choice(&["error", "warn", "info", "debug", "trace"]),
        default: Some("warn"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "what to log: error, warn, info (pgcairn's steps), debug or trace; RUST_LOG overrides",
    },
    Setting {
        name: "log-file",
        kind: Kind::Path,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "also log to this file (appended, created mode 0600) at log-level; stderr then shows warnings and errors only",
    },
    Setting {
        name: "log-format",
        kind: Kind::Choice(&["text", "json"]),
        default: Some("text"),
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "text for people, json (one object per line) for log shippers",
    },
    Setting {
        name: "pg",
        kind: Kind::Text,
        default: None,
        scope: WITH_PG,
        sources: ANY,
        forward: Never,
        help: "PostgreSQL connection string (libpq syntax or URI); PG* variables and ~/.pgpass apply",
    },
    Setting {
        name: "pg-primary",
        kind: Kind::Text,
        default: None,
        scope: Scope::Only(&[Backup, Check]),
        sources: ANY,
        forward: Never,
        help: "the primary's connection string when pg names a streaming standby: the backup reads the standby and asks the primary for a checkpoint, its archiving settings and a WAL switch",
    },
    Setting {
        name: "pg-data",
        kind: Kind::Path,
        default: None,
        scope: Scope::Only(&[Restore]),
        sources: ANY,
        forward: Never,
        help: "directory to restore into: empty or absent, or (with --delta) a stopped data directory",
    },
    Setting {
        name: "pg-bin",
        kind: Kind::Path,
        default: None,
        scope: Scope::Only(&[Drill, Extract]),
        sources: ANY,
        forward: Never,
        help: "PostgreSQL bin directory for drills and extracts (default: found for the backup's major version in /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin, PATH)",
    },
    Setting {
        name: "drill-path",
        kind: Kind::Path,
        default: None,
        scope: Scope::Only(&[Drill, Extract]),
        sources: ANY,
        forward: Never,
        help: "directory under which a drill or an extract makes its temporary cluster (default: the system temp directory, TMPDIR)",
    },
    Setting {
        name: "drill-sql",
        kind: Kind::Path,
        default: None,
        scope: Scope::Only(&[Drill]),
        sources: ANY,
        forward: Never,
        help: "SQL file run on the drilled cluster: every query in it must return true",
    },
    Setting {
        name: "drill-timeout",
        kind: Kind::Seconds,
        default: Some("3600"),
        scope: Scope::Only(&[Drill, Extract]),
        sources: ANY,
        forward: Never,
        help: "seconds a drill or an extract waits for recovery to end before it fails",
    },
    Setting {
        name: "retention-full",
        kind: Kind::Count,
        default: None,
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "full backups to keep: a count, or days with retention-full-type = time (unset: keep all)",
    },
    Setting {
        name: "retention-full-type",
        kind: Kind::Choice(&["count", "time"]),
        default: Some("count"),
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "count: the newest N fulls; time: the fulls needed to restore to any point of the last N days",
    },
    Setting {
        name: "retention-diff",
        kind: Kind::Count,
        default: None,
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "differential backups to keep, of the kept fulls (unset: all of them); an incr goes with its parent",
    },
    Setting {
        name: "retention-keep-daily",
        kind: Kind::Count,
        default: None,
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "also keep the newest backup of each of the last N days that have one",
    },
    Setting {
        name: "retention-keep-weekly",
        kind: Kind::Count,
        default: None,
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "also keep the newest backup of each of the last N ISO weeks that have one",
    },
    Setting {
        name: "retention-keep-monthly",
        kind: Kind::Count,
        default: None,
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "also keep the newest backup of each of the last N months that have one",
    },
    Setting {
        name: "retention-keep-yearly",
        kind: Kind::Count,
        default: None,
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "also keep the newest backup of each of the last N years that have one",
    },
    Setting {
        name: "retention-time-zone",
        kind: Kind::Text,
        default: Some("UTC"),
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "IANA time zone of the retention-keep-* calendar (e.g. Europe/Paris)",
    },
    Setting {
        name: "retention-archive",
        kind: Kind::Count,
        default: None,
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "keep point-in-time WAL from the Nth newest kept backup of retention-archive-type on (unset: from the oldest kept backup); older kept backups keep only the WAL they need",
    },
    Setting {
        name: "retention-archive-type",
        kind: Kind::Choice(&["full", "diff", "incr"]),
        default: Some("full"),
        scope: RETENTION,
        sources: ANY,
        forward: Never,
        help: "which backups retention-archive counts (diff counts fulls and diffs, incr all)",
    },
    Setting {
        name: "repo-gc-grace",
        kind: Kind::Seconds,
        default: Some("86400"),
        scope: Scope::Only(&[Backup, Expire]),
        sources: ANY,
        forward: Never,
        help: "seconds before expire collects what a killed backup left (it might still be running elsewhere)",
    },
    Setting {
        name: "expire-auto",
        kind: Kind::Bool,
        default: Some("true"),
        scope: Scope::Only(&[Backup]),
        sources: ANY,
        forward: Never,
        help: "expire by the retention policy after each successful backup, under the same lock",
    },
    Setting {
        name: "process-max",
        kind: Kind::Count,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "threads for compression, encryption and hashing (default: one per core)",
    },
    Setting {
        name: "bandwidth-max",
        kind: Kind::Size,
        default: None,
        scope: GLOBAL,
        sources: ANY,
        forward: Given,
        help: "bytes per second this command moves to and from its repositories, at most (e.g. 50MiB)",
    },
    Setting {
        name: "compress-level",
        kind: Kind::Zstd,
        default: Some("3"),
        scope: Scope::Only(&[Backup, Copy]),
        sources: ANY,
        forward: Never,
        help: "zstd level for new blocks",
    },
    Setting {
        name: "start-fast",
        kind: Kind::Bool,
        default: Some("false"),
        scope: Scope::Only(&[Backup]),
        sources: ANY,
        forward: Never,
        help: "request an immediate checkpoint instead of a spread one",
    },
    Setting {
        name: "archive-check",
        kind: Kind::Bool,
        default: Some("true"),
        scope: Scope::Only(&[Backup]),
        sources: ANY,
        forward: Never,
        help: "when the cluster archives, wait until the backup's WAL is in the repository",
    },
    Setting {
        name: "archive-copy",
        kind: Kind::Bool,
        default: Some("false"),
        scope: Scope::Only(&[Backup]),
        sources: ANY,
        forward: Never,
        help: "store the WAL inside the backup even when the cluster archives",
    },
    Setting {
        name: "archive-timeout",
        kind: Kind::Seconds,
        default: Some("60"),
        scope: Scope::Only(&[Backup, Check]),
        sources: ANY,
        forward: Never,
        help: "seconds to wait for WAL to reach the repository",
    },
    Setting {
        name: "archive-async",
        kind: Kind::Bool,
        default: Some("false"),
        scope: Scope::Only(&[ArchivePush, Check]),
        sources: ANY,
        forward: Given,
        help: "queue segments in spool-path and return; a background drainer uploads them",
    },
    Setting {
        name: "spool-path",
        kind: Kind::Path,
        default: None,
        scope: Scope::Only(&[Backup, Restore, Check, ArchivePush, ArchiveGet, Expire, StanzaDelete]),
        sources: ANY,
        forward: Given,
        help: "local directory for the async archive queue and archive-get's prefetch",
    },
    Setting {
        name: "compress-level-wal",
        kind: Kind::Zstd,
        default: Some("1"),
        scope: Scope::Only(&[ArchivePush, WalReceive]),
        sources: ANY,
        forward: Given,
        help: "zstd level for archived WAL",
    },
    Setting {
        name: "archive-push-queue-max",
        kind: Kind::Size,
        default: None,
        scope: Scope::Only(&[ArchivePush]),
        sources: ANY,
        forward: Never,
        help: "largest async archive queue, e.g. 1GiB (default unbounded)",
    },
    Setting {
        name: "archive-push-queue-full",
        kind: Kind::Choice(&["fail", "drop"]),
        default: Some("fail"),
        scope: Scope::Only(&[ArchivePush]),
        sources: ANY,
        forward: Never,
        help: "beyond archive-push-queue-max: fail (PostgreSQL retries) or drop (the segment is NOT archived)",
    },
    Setting {
        name: "archive-get-queue-max",
        kind: Kind::Size,
        default: Some("128MiB"),
        scope: Scope::Only(&[Restore, ArchiveGet]),
        sources: ANY,
        forward: Given,
        help: "how much WAL archive-get fetches ahead; 0 turns prefetch off",
    },
    Setting {
        name: "wal-receive-slot",
        kind: Kind::Text,
        default: None,
        scope: Scope::Only(&[WalReceive]),
        sources: ANY,
        forward: Never,
        help: "the physical replication slot wal-receive streams from, created when missing (default pgcairn_<stanza>)",
    },
    Setting {
        name: "wal-receive-interval",
        kind: Kind::Seconds,
        default: Some("1"),
        scope: Scope::Only(&[WalReceive]),
        sources: ANY,
        forward: Never,
        help: "seconds between stores of the segment being received (the RPO); 0 stores as soon as the stream pauses (synchronous replication)",
    },
    Setting {
        name: "archive-get-timeout",
        kind: Kind::Seconds,
        default: Some("60"),
        scope: Scope::Only(&[Restore, ArchiveGet]),
        sources: ANY,
        forward: Given,
        help: "seconds archive-get retries an unreachable repository before it stops recovery",
    },
];

/// The setting named most like `name` (a typo's intent), if one is close.
pub fn closest(name: &str, candidates: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    candidates
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Warnings for `PGCAIRN_*` variables in `vars` that name no setting: a mistyped one
/// would otherwise be ignored without a word (issue 21, item 13). `PGCAIRN_TEST_*`
/// belong to the test suite.
pub fn unknown_env_vars(vars: impl Iterator<Item = String>) -> Vec<String> {
    let known: Vec<String> = SETTINGS.iter().filter(|s| s.sources.env).map(|s| s.env()).collect();
    // PGCAIRN_ARCHIVE_DRAIN / _FETCH: set by archive-push for the drainer and by
    // archive-get for the WAL fetcher they start.
    let internal =
        |v: &str| v.starts_with("PGCAIRN_TEST_") || v == "PGCAIRN_ARCHIVE_DRAIN" || v == "PGCAIRN_ARCHIVE_FETCH";
    vars.filter(|v| v.starts_with("PGCAIRN_") && !internal(v) && !known.contains(v))
        .map(|v| {
            let names = SETTINGS.iter().filter(|s| s.sources.env).map(|s| s.name);
            let wanted = v.trim_start_matches("PGCAIRN_").to_ascii_lowercase().replace('_', "-");
            match closest(&wanted, names).and_then(setting) {
                Some(s) => format!("environment variable {v} names no setting and is ignored; did you mean {}?", s.env()),
                None => format!("environment variable {v} names no setting and is ignored (`pgcairn COMMAND --help` lists each setting's variable)"),
            }
        })
        .collect()
}
