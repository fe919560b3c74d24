//! `pgcairn`: parse arguments, resolve the settings (pgcairn_cli::settings), call one
//! engine operation, map its error to a message and an exit code.

/// `println!` that returns an error instead of panicking when stdout is closed
/// (`pgcairn info | head -1`); main ends such a run quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

mod commands;
mod keys;
mod meta;
mod metrics;
mod output;
mod progress;
mod proof;
mod stanzas;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use pgcairn::Error;
use pgcairn::{NoProgress, Progress};
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::{args, resolve, Cmd, Flags, Resolved};

use commands::archive_get::{archive_get_failure, is_archive_get, stop_recovery_on_panic, ARCHIVE_GET_STOP_RECOVERY};
use commands::backup::backup;
use commands::check::{check, check_archive};
use commands::drill::drill;
use commands::expire::expire;
use commands::info::info_all;
use commands::restore::restore;
use commands::stanza::{stanza_create, stanza_delete};

/// The settings (flags, also PGCAIRN_<NAME> and config-file keys) are added to this
/// from the settings table: see docs/config.md.
#[derive(Parser, Debug)]
#[command(
    name = "pgcairn",
    version,
    about = "Physical backup and point-in-time restore for PostgreSQL",
    after_help = "Each setting is also PGCAIRN_<NAME> or a config-file key; `pgcairn COMMAND --help` lists a command's settings. \
                  The repository passphrase comes from PGCAIRN_REPO_PASSPHRASE or repo-passphrase-file, never a flag."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Initialise the stanza in the repository (connects to PostgreSQL to record its identity).
    StanzaCreate {
        /// Create an unencrypted repository (never the default).
        #[arg(long)]
        no_encryption: bool,
        /// Block size in bytes, a multiple of 8192 (default 32768).
        #[arg(long)]
        block_size: Option<u32>,
    },
    /// Take a backup over a replication connection.
    Backup {
        /// What to store: full, diff (changes since the newest full) or incr (since the newest backup).
        #[arg(long = "type", value_enum, default_value = "full")]
        backup_type: BackupType,
    },
    /// Restore a backup set into an empty directory (or --delta over a stopped one) and set up recovery.
    Restore {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        databases: DbArgs,
        /// Put tablespace OID into DIR instead of its original location (repeatable).
        #[arg(long = "tablespace-map", value_name = "OID=DIR")]
        tablespace_map: Vec<String>,
        /// A further recovery setting, written last (repeatable), e.g. primary_conninfo='host=primary user=replicator' with --type=standby.
        #[arg(long = "recovery-option", value_name = "KEY=VALUE")]
        recovery_option: Vec<String>,
        /// Restore over an existing, stopped data directory: only what differs is rewritten.
        #[arg(long)]
        delta: bool,
    },
    /// Show the repository, its backup sets and its WAL archive.
    Info {
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Every stanza the repository holds, each with its own config file section (json: an array).
        #[arg(long)]
        all_stanzas: bool,
    },
    /// Check that archiving works: settings, pg_stat_archiver, then a forced WAL switch reaching the repository.
    Check {
        /// Read-only, for polling each minute: pg_stat_archiver and the repository's newest WAL, no WAL switch; exits 0 ok, 1 warning, 2 critical (Nagios).
        #[arg(long)]
        archive_only: bool,
        /// Also create a restore point named pgcairn-check before the WAL switch.
        #[arg(long)]
        restore_point: bool,
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Archive one WAL file (archive_command = '/usr/local/bin/pgcairn-archive-push %p').
    ArchivePush {
        /// The WAL file (%p).
        path: PathBuf,
    },
    /// Fetch one WAL file (restore_command = 'pgcairn archive-get %f "%p"'); exit 1 if absent.
    ArchiveGet {
        /// The WAL file's name (%f).
        name: String,
        /// Where to write it (%p).
        destination: PathBuf,
    },
    /// Write the repository key to a file (mode 0600) for archive-push/archive-get.
    KeyFile {
        /// The key file to create (must not exist).
        #[arg(long)]
        output: PathBuf,
    },
    /// Remove the backups and WAL the retention policy no longer keeps (says what and why first).
    Expire {
        /// Expire this backup and the backups that depend on it (never the newest).
        #[arg(long)]
        set: Option<String>,
        /// Print the plan, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete the stanza: every backup and WAL file in it (needs --force).
    StanzaDelete {
        /// Really delete it.
        #[arg(long)]
        force: bool,
    },
    /// Read every object of the repository and check it: each backup restorable, the WAL archive continuous.
    Verify {
        /// Verify one backup and what it needs.
        #[arg(long)]
        set: Option<String>,
        /// Read only this share of the packs (0 < F <= 1), chosen at random: a cheap routine check.
        #[arg(long)]
        sample: Option<f64>,
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Copy backups and WAL from this repository (repo-number) into another of the stanza's, re-sealed under its keys: only what it lacks.
    Copy {
        /// The repository to copy into: 2 for repo2, …
        #[arg(long, value_name = "N")]
        to_repo: usize,
        /// Copy one backup (with the parents it needs and its WAL) instead of everything the destination lacks.
        #[arg(long)]
        set: Option<String>,
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Stream WAL from the server named by pg into every repository over a replication slot, until stopped (a service).
    WalReceive,
    /// Restore a backup into a temporary cluster, start it, run checks, remove it: prove it restores.
    Drill {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        databases: DbArgs,
        /// Keep the temporary directory afterwards (to look into a failure).
        #[arg(long = "drill-keep")]
        keep: bool,
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Write one database, or some of its tables, as a pg_dump file from a backup or a point in time (restored into a temporary cluster, then removed).
    Extract {
        #[command(flatten)]
        target: TargetArgs,
        /// The database to dump (name, or OID for a backup that has no names).
        #[arg(long = "db", value_name = "NAME")]
        db: String,
        /// Dump only matching tables (pg_dump --table pattern; repeatable), e.g. public.orders.
        #[arg(long = "table", value_name = "PATTERN")]
        table: Vec<String>,
        /// Dump only matching schemas (pg_dump --schema pattern; repeatable).
        #[arg(long = "schema", value_name = "PATTERN")]
        schema: Vec<String>,
        /// plain (SQL for psql) or custom (for pg_restore).
        #[arg(long = "dump-format", value_enum, default_value = "plain")]
        dump_format: DumpFormatArg,
        /// The new file to write (never overwritten), or - for standard output.
        #[arg(long = "dump-file", value_name = "FILE")]
        dump_file: String,
        /// text for people, json for scripts (on standard error when the dump goes to standard output).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the stanza's state in Prometheus' text format (or serve it with --listen).
    Metrics {
        /// Serve GET /metrics on this address (e.g. 127.0.0.1:9855) instead of printing once.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Every stanza the repository holds in one exposition, each with its own config file section.
        #[arg(long)]
        all_stanzas: bool,
    },
    /// Manage the repository's passphrases: add, list, remove (rotation without a new stanza).
    Key {
        #[command(subcommand)]
        action: keys::KeyAction,
    },
    /// Print pgcairn's version and the repository format it writes.
    Version,
    /// Print a shell completion script (e.g. `pgcairn completions bash > /etc/bash_completion.d/pgcairn`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page pgcairn(1), or write one page per command into --dir.
    Man {
        /// Write pgcairn.1 and pgcairn-COMMAND.1 into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// `--all-stanzas` (info, metrics).
    fn all_stanzas(&self) -> bool {
        matches!(self, Command::Info { all_stanzas: true, .. } | Command::Metrics { all_stanzas: true, .. })
    }

    /// The command as the settings see it; None for the ones that take no settings.
    fn cmd(&self) -> Option<Cmd> {
        Some(match self {
            Command::StanzaCreate { .. } => Cmd::StanzaCreate,
            Command::Backup { .. } => Cmd::Backup,
            Command::Restore { .. } => Cmd::Restore,
            Command::Info { .. } => Cmd::Info,
            Command::Check { .. } => Cmd::Check,
            Command::ArchivePush { .. } => Cmd::ArchivePush,
            Command::ArchiveGet { .. } => Cmd::ArchiveGet,
            Command::KeyFile { .. } => Cmd::KeyFile,
            Command::Expire { .. } => Cmd::Expire,
            Command::StanzaDelete { .. } => Cmd::StanzaDelete,
            Command::Verify { .. } => Cmd::Verify,
            Command::Copy { .. } => Cmd::Copy,
            Command::WalReceive => Cmd::WalReceive,
            Command::Drill { .. } => Cmd::Drill,
            Command::Extract { .. } => Cmd::Extract,
            Command::Metrics { .. } => Cmd::Metrics,
            Command::Key { .. } => Cmd::Key,
            Command::Version | Command::Completions { .. } | Command::Man { .. } => return None,
        })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BackupType {
    /// Every block stored anew: shares nothing with earlier backups.
    Full,
    /// Stores the blocks changed since the newest full backup.
    Diff,
    /// Stores the blocks changed since the newest backup of any type.
    Incr,
}

/// Which backup to restore and where recovery stops (restore and drill).
#[derive(clap::Args, Debug)]
struct TargetArgs {
    /// Backup label (default: the newest backup that can reach the target).
    #[arg(long)]
    set: Option<String>,
    /// Recovery target type.
    #[arg(long = "type", value_enum, default_value = "default")]
    target_type: TargetType,
    /// Target for --type=time (with a zone: '2026-11-30 18:00:00+00'), lsn (16/B374D848), name or xid.
    #[arg(long)]
    target: Option<String>,
    /// Stop just before the target instead of just after it (time, xid and lsn targets).
    #[arg(long = "target-exclusive")]
    target_exclusive: bool,
    /// What PostgreSQL does at the target: pause (its default), promote or shutdown.
    #[arg(long = "target-action")]
    target_action: Option<String>,
    /// recovery_target_timeline: latest (default), current, or a timeline number.
    #[arg(long = "target-timeline")]
    target_timeline: Option<String>,
}

/// Which databases to restore whole (restore and drill).
#[derive(clap::Args, Debug)]
struct DbArgs {
    /// Restore only this database (name or OID; repeatable) and the system ones: the others' files become zeros, to DROP after the start.
    #[arg(long = "db-include", value_name = "NAME")]
    db_include: Vec<String>,
    /// Restore every database but this one (name or OID; repeatable): its files become zeros, to DROP after the start.
    #[arg(long = "db-exclude", value_name = "NAME")]
    db_exclude: Vec<String>,
}

impl DbArgs {
    fn selection(&self) -> pgcairn::DbSelection {
        pgcairn::DbSelection { include: self.db_include.clone(), exclude: self.db_exclude.clone() }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum TargetType {
    /// Replay all archived WAL, then promote.
    Default,
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// Stop at a time (--target="2026-01-01 12:00:00+00"), at the first transaction end after it.
    Time,
    /// Stop at a WAL position (--target=0/3000028).
    Lsn,
    /// Stop at a restore point made with pg_create_restore_point (--target=NAME).
    Name,
    /// Stop at the end of a transaction (--target=XID, as txid_current() shows it).
    Xid,
    /// Write no recovery settings (backup sets that carry their WAL only).
    None,
    /// Start as a streaming standby (standby.signal): replay the archive, then follow the primary in --recovery-option primary_conninfo=….
    Standby,
}

/// pg_dump's output format, for extract.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub(crate) enum DumpFormatArg {
    /// SQL text, to replay with psql.
    Plain,
    /// pg_dump's custom archive, for pg_restore (compressed; choose objects when restoring).
    Custom,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub(crate) enum Output {
    Text,
    Json,
}

pub(crate) fn progress() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(progress::Bar::new())
    } else {
        Arc::new(NoProgress)
    }
}

async fn run(command: &Command, r: &Resolved, common: &Common) -> Result<ExitCode> {
    match command {
        Command::StanzaCreate { no_encryption, block_size } => {
            stanza_create(r, common, *no_encryption, *block_size).await?
        }
        Command::Backup { backup_type } => backup(r, common, *backup_type).await?,
        Command::Restore { target, databases, tablespace_map, recovery_option, delta } => {
            let selection = databases.selection();
            restore(r, common, target, selection, tablespace_map, recovery_option, *delta).await?
        }
        Command::Info { output, .. } => return commands::info::run(r, common, *output).await,
        Command::Check { archive_only: true, output, .. } => return check_archive(r, common, *output).await,
        Command::Check { restore_point, output, .. } => check(r, common, *restore_point, *output).await?,
        Command::Metrics { listen, .. } => {
            return metrics::run(metrics::Target::One(r.clone(), common.clone()), *listen).await
        }
        Command::Key { action } => keys::run(common, action).await?,
        Command::ArchivePush { path } => {
            let req = typed::push_request(r, common, &[Cmd::ArchivePush.name()])?;
            pgcairn::run_archive_push(&req, path).await?;
        }
        Command::ArchiveGet { name, destination } => {
            let req = typed::get_request(r, common)?;
            if !pgcairn::run_archive_get(&req, name, destination).await? {
                // Not an error: recovery asks past the end of the archive by design.
                return Ok(ExitCode::from(1));
            }
        }
        Command::Expire { set, dry_run, output } => return expire(r, common, set, *dry_run, *output).await,
        Command::StanzaDelete { force } => stanza_delete(r, common, *force).await?,
        Command::Verify { set, sample, output } => {
            return commands::verify::verify(r, common, set, *sample, *output == Output::Json).await
        }
        Command::Copy { to_repo, set, output } => {
            return commands::copy::copy(r, common, *to_repo, set.clone(), *output == Output::Json).await
        }
        Command::Drill { target, databases, keep, output } => {
            return drill(r, common, target, databases.selection(), *keep, *output).await
        }
        Command::Extract { target, db, table, schema, dump_format, dump_file, output } => {
            let what =
                commands::extract::What { db, tables: table, schemas: schema, format: *dump_format, file: dump_file };
            commands::extract::extract(r, common, target, what, *output).await?
        }
        Command::WalReceive => pgcairn::wal_receive(&typed::wal_receive_request(r, common)?).await?,
        Command::Version | Command::Completions { .. } | Command::Man { .. } => meta(command)?,
        Command::KeyFile { output } => keys::write_key_file(common, output).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// info and metrics with `--all-stanzas`.
async fn run_all_stanzas(command: &Command, all: stanzas::AllStanzas) -> Result<ExitCode> {
    match command {
        Command::Info { output, .. } => info_all(&all, *output).await,
        Command::Metrics { listen, .. } => metrics::run(metrics::Target::All(all), *listen).await,
        _ => Err(Error::Internal("--all-stanzas reached another command".into()).into()),
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Error>().map(Error::exit_code).unwrap_or(pgcairn::exit::CONFIG)
}

/// The derived commands plus the settings from the table; returns the command and
/// the settings given as flags.
fn parse_args() -> Result<(Command, Flags), clap::Error> {
    let matches = args::with_settings(Cli::command()).try_get_matches_from(help_help(std::env::args_os()))?;
    let cli = Cli::from_arg_matches(&matches)?;
    let sub = matches.subcommand().map_or(&matches, |(_, m)| m);
    let flags = cli.command.cmd().map(|cmd| args::given(cmd, sub)).unwrap_or_default();
    Ok((cli.command, flags))
}

/// `pgcairn help [COMMAND] --help` is `pgcairn help [COMMAND]`. Regression (issue 21,
/// item 16): clap's help subcommand refused `--help` ("unrecognized subcommand").
fn help_help(argv: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let argv: Vec<OsString> = argv.collect();
    if argv.get(1).is_some_and(|a| a == "help") {
        return argv.into_iter().filter(|a| a != "--help" && a != "-h").collect();
    }
    argv
}

/// The whole parser, settings included (what completions and man pages describe).
fn full_command() -> clap::Command {
    args::with_settings(Cli::command())
}

fn meta(command: &Command) -> Result<()> {
    match command {
        Command::Completions { shell } => meta::completions(*shell, full_command()),
        Command::Man { dir } => meta::man(full_command(), dir.as_deref()),
        _ => meta::version(),
    }
}

/// Whether the error is stdout closed under us (`pgcairn info | head -1`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// What a shell reports for a process that SIGPIPE ended (128 + 13), the convention
/// for a writer whose reader went away; nothing is printed.
const EXIT_BROKEN_PIPE: u8 = 141;

fn main() -> ExitCode {
    pgcairn::limit_malloc_retention();
    pgcairn::private_umask();
    let archive_get = is_archive_get();
    if archive_get {
        stop_recovery_on_panic();
        // A running WAL fetcher answers before any setting is read (issue 22: the
        // time PostgreSQL waits in restore_command is mostly process start).
        let argv: Vec<OsString> = std::env::args_os().collect();
        match pgcairn::archive_get_fast(&argv) {
            Some(Ok(true)) => return ExitCode::SUCCESS,
            Some(Ok(false)) => return ExitCode::from(1),
            Some(Err(e)) => return archive_get_failure(&e.into()),
            None => {}
        }
    }
    let (command, flags) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) if archive_get && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(ARCHIVE_GET_STOP_RECOVERY);
        }
        Err(e) => e.exit(),
    };
    match start(&command, flags) {
        Ok(code) => code,
        Err(e) if archive_get => archive_get_failure(&e),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(EXIT_BROKEN_PIPE),
        Err(e) => {
            eprintln!("pgcairn: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Resolve every setting the command uses (a bad one stops it here), then run it.
fn start(command: &Command, flags: Flags) -> Result<ExitCode> {
    let Some(cmd) = command.cmd() else {
        meta(command)?;
        return Ok(ExitCode::SUCCESS);
    };
    let resolved = if command.all_stanzas() {
        pgcairn_cli::settings::resolve_top_level(cmd, &flags, &pgcairn_cli::settings::process_env)?
    } else {
        resolve(cmd, &flags, &pgcairn_cli::settings::process_env)?
    };
    let common = Common::from(&resolved)?;
    pgcairn_cli::logging::init(&common.log())?;
    for line in pgcairn_cli::settings::table::unknown_env_vars(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!("{line}");
    }
    for line in resolved.describe() {
        tracing::debug!("setting {line}");
    }
    let rt = common.limits(None)?;
    if command.all_stanzas() {
        let all = stanzas::AllStanzas::new(cmd, flags, &resolved, common)?;
        return rt.block_on(run_all_stanzas(command, all));
    }
    rt.block_on(run(command, &resolved, &common))
}
