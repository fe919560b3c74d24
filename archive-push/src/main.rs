//! `pgcairn-archive-push [SETTINGS] %p`: PostgreSQL's archive_command. The same
//! settings and flag syntax as `pgcairn archive-push` (one clap parser, built from the
//! settings table), a two-thread runtime, one call to the same engine function.
//! Exit 0 only once the segment is durable (or, with archive-async, durably queued);
//! exit codes stay below 126.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::{args, process_env, resolve, Cmd, Flags};

/// The settings given and the WAL path; Err is clap's (help and version included).
fn parse_args(argv: impl IntoIterator<Item = OsString>) -> Result<(Flags, PathBuf), clap::Error> {
    let matches = args::archive_push_command().try_get_matches_from(argv)?;
    let path = matches.get_one::<PathBuf>("wal").cloned().unwrap_or_default();
    Ok((args::given(Cmd::ArchivePush, &matches), path))
}

fn push(flags: Flags, path: &std::path::Path) -> pgcairn::Result<()> {
    let resolved = resolve(Cmd::ArchivePush, &flags, &process_env)?;
    let common = Common::from(&resolved)?;
    pgcairn_cli::logging::init(&common.log())?;
    for line in pgcairn_cli::settings::table::unknown_env_vars(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!("{line}");
    }
    for line in resolved.describe() {
        tracing::debug!("setting {line}");
    }
    let req = typed::push_request(&resolved, &common, &[])?;
    // Two workers: one segment per process (more threads only cost start-up).
    let rt = common.limits(Some(2)).map_err(|e| pgcairn::Error::io("cannot start the runtime", e))?;
    rt.block_on(pgcairn::run_archive_push(&req, path))
}

fn main() -> ExitCode {
    pgcairn::limit_malloc_retention();
    pgcairn::private_umask();
    let (flags, path) = match parse_args(std::env::args_os()) {
        Ok(parsed) => parsed,
        // --help and --version print and exit 0; a usage error exits 2 (< 126: PostgreSQL retries).
        Err(e) => e.exit(),
    };
    match push(flags, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgcairn-archive-push: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use clap::error::ErrorKind;
    use pgcairn_cli::settings::SETTINGS;

    use super::*;

    fn parse(args: &[&str]) -> Result<(Flags, PathBuf), clap::Error> {
        parse_args(std::iter::once("pgcairn-archive-push").chain(args.iter().copied()).map(OsString::from))
    }

    /// Regression (issue 10, defect 6): a non-UTF-8 path argument panicked (exit 101)
    /// in std::env::args(). Paths are bytes; settings that are not UTF-8 are an error.
    #[test]
    fn non_utf8_arguments_never_panic() {
        let path = OsString::from_vec(b"/pg_wal/\xff\xfe000000010000000000000001".to_vec());
        let argv = |extra: OsString| ["pgcairn-archive-push".into(), "--stanza=main".into(), extra, path.clone()];
        let (_, parsed) = parse_args(argv("--archive-async".into())).unwrap();
        assert_eq!(parsed.as_os_str(), path);
        let err = parse_args(argv(OsString::from_vec(b"--repo=/r\xff".to_vec()))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUtf8);
    }

    /// Regression (issue 14): `--config FILE --stanza main %p` failed every segment with
    /// exit 2 ("use --config=VALUE"), and --help/--version were refused. Both forms work
    /// now, as in `pgcairn`.
    #[test]
    fn space_and_equals_forms_help_and_version() {
        let (flags, path) =
            parse(&["--config", "/etc/p.toml", "--stanza", "main", "pg_wal/000000010000000000000001"]).unwrap();
        assert_eq!(path, PathBuf::from("pg_wal/000000010000000000000001"));
        let value = |name: &str| flags.iter().find(|(s, _)| s.name == name).map(|(_, v)| v.clone());
        assert_eq!(value("config").as_deref(), Some("/etc/p.toml"));
        assert_eq!(value("stanza").as_deref(), Some("main"));
        assert_eq!(parse(&["--help"]).unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert_eq!(parse(&["--version"]).unwrap_err().kind(), ErrorKind::DisplayVersion);
        let help = args::archive_push_command().render_long_help().to_string();
        // repo2-… to repo4-… are accepted and hidden (docs/config.md lists them).
        let listed = |s: &&pgcairn_cli::settings::Setting| s.repo_number().is_none();
        for s in SETTINGS.iter().filter(|s| s.applies_to(Cmd::ArchivePush) && s.sources.flag).filter(listed) {
            let shown = [" ", "["].iter().any(|end| help.contains(&format!("--{}{end}", s.name)));
            assert!(shown, "{} missing from --help", s.name);
        }
    }

    /// Only archive-push's settings; a boolean does not take the path for its value.
    #[test]
    fn takes_only_its_settings() {
        let (flags, path) = parse(&["--stanza=s", "--archive-async", "/wal/000000010000000000000001"]).unwrap();
        assert_eq!(path, PathBuf::from("/wal/000000010000000000000001"));
        assert!(flags.iter().any(|(s, v)| s.name == "archive-async" && v == "true"));
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["--start-fast", "/w"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--repo-passphrase=x", "/w"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--repo=/a", "--repo=/b", "/w"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["--repo=/a"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["/a", "/b"]), ErrorKind::UnknownArgument);
    }
}
