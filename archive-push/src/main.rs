//! `pgcairn-archive-push [--setting=value ...] %p`: PostgreSQL's archive_command.
//! Minimal start-up: no argument framework (a loop over the settings table), a
//! two-thread runtime, one call to the same engine function as `pgcairn archive-push`.
//! Exit 0 only once the segment is durable (or, with archive-async, durably queued);
//! exit codes stay below 126.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::{args, process_env, resolve, setting, Cmd, Flags, Setting, SETTINGS};

const USAGE: &str = "usage: pgcairn-archive-push [--SETTING=VALUE ...] WAL_PATH\n\
                     set it as archive_command = 'pgcairn-archive-push --stanza=NAME %p'";

enum Parsed {
    Push(Flags, PathBuf),
    Help,
}

/// The settings archive-push takes, one per line, from the table.
fn help() -> String {
    let lines: Vec<String> = SETTINGS
        .iter()
        .filter(|s| s.sources.flag && s.applies_to(Cmd::ArchivePush))
        .map(|s| format!("  --{}\n          {}", s.name, args::help(s)))
        .collect();
    format!("{USAGE}\n\nsettings (also PGCAIRN_* variables and config-file keys):\n{}", lines.join("\n"))
}

/// `--key=value` (a boolean also bare `--key`) for a setting archive-push takes.
fn flag(text: &str) -> Result<(&'static Setting, String), String> {
    let kv = &text[2..];
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    let s = match setting(key) {
        Some(s) if s.sources.flag && s.applies_to(Cmd::ArchivePush) => s,
        Some(s) if !s.sources.flag => return Err(format!("--{key} is not a flag: {}", s.help)),
        Some(_) => return Err(format!("--{key} is not an archive-push setting")),
        None => return Err(format!("unknown setting --{key}")),
    };
    match value {
        Some(v) => Ok((s, v.to_string())),
        None if s.kind == pgcairn_cli::settings::table::Kind::Bool => Ok((s, "true".into())),
        None => Err(format!("{text}: use --{key}=VALUE")),
    }
}

fn parse_args(args: impl Iterator<Item = OsString>) -> Result<Parsed, String> {
    let mut flags: Flags = Vec::new();
    let mut path = None;
    for arg in args {
        // A WAL path may be any bytes; settings must be UTF-8 (never a panic: a
        // panic's exit status 101 would still be within archive_command's contract,
        // but says nothing).
        if arg.as_encoded_bytes().starts_with(b"--") {
            let text = arg.to_str().ok_or_else(|| format!("{} is not valid UTF-8", arg.to_string_lossy()))?;
            if text == "--help" {
                return Ok(Parsed::Help);
            }
            let (s, v) = flag(text)?;
            if flags.iter().any(|(f, _)| f.name == s.name) {
                return Err(format!("--{} given twice", s.name));
            }
            flags.push((s, v));
        } else if path.replace(PathBuf::from(&arg)).is_some() {
            return Err("more than one WAL path given".into());
        }
    }
    Ok(Parsed::Push(flags, path.ok_or("no WAL path given")?))
}

fn push(flags: Flags, path: &std::path::Path) -> pgcairn::Result<()> {
    let resolved = resolve(Cmd::ArchivePush, &flags, &process_env)?;
    let common = Common::from(&resolved)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .with_env_filter(common.log_level)
        .init();
    for line in resolved.describe() {
        tracing::debug!("setting {line}");
    }
    let req = typed::push_request(&resolved, &common, &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| pgcairn::Error::io("cannot start the runtime", e))?;
    rt.block_on(pgcairn::run_archive_push(&req, path))
}

fn main() -> ExitCode {
    pgcairn::limit_malloc_retention();
    pgcairn::private_umask();
    let (flags, path) = match parse_args(std::env::args_os().skip(1)) {
        Ok(Parsed::Push(flags, path)) => (flags, path),
        Ok(Parsed::Help) => {
            println!("{}", help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pgcairn-archive-push: error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
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

    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(OsString::from))
    }

    /// Regression (issue 10, defect 6): a non-UTF-8 path argument panicked (exit 101)
    /// in std::env::args(). Paths are bytes; settings that are not UTF-8 are an error.
    #[test]
    fn non_utf8_arguments_never_panic() {
        let path = OsString::from_vec(b"/pg_wal/\xff\xfe000000010000000000000001".to_vec());
        let Ok(Parsed::Push(_, parsed)) = parse_args([OsString::from("--stanza=main"), path.clone()].into_iter())
        else {
            panic!("not parsed")
        };
        assert_eq!(parsed.as_os_str(), path);
        let bad_flag = OsString::from_vec(b"--repo=/r\xff".to_vec());
        let err = parse_args([bad_flag, path].into_iter()).err().unwrap();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }

    /// Only archive-push's settings, from the table; a boolean does not take the path
    /// for its value.
    #[test]
    fn takes_only_its_settings() {
        let Ok(Parsed::Push(flags, path)) = parse(&["--stanza=s", "--archive-async", "/wal/000000010000000000000001"])
        else {
            panic!("not parsed")
        };
        assert_eq!(path, PathBuf::from("/wal/000000010000000000000001"));
        assert!(flags.iter().any(|(s, v)| s.name == "archive-async" && v == "true"));
        let err = |args: &[&str]| parse(args).err().unwrap();
        assert!(err(&["--start-fast", "/w"]).contains("not an archive-push setting"));
        assert!(err(&["--repo-passphrase=x", "/w"]).contains("not a flag"));
        assert!(err(&["--nope=1", "/w"]).contains("unknown setting --nope"));
        assert!(err(&["--repo", "/w"]).contains("use --repo=VALUE"));
        assert!(err(&["--repo=/a", "--repo=/b", "/w"]).contains("given twice"));
        assert!(err(&["--repo=/a"]).contains("no WAL path"));
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        for s in SETTINGS.iter().filter(|s| s.applies_to(Cmd::ArchivePush) && s.sources.flag) {
            assert!(help().contains(&format!("--{}\n", s.name)), "{} missing from --help", s.name);
        }
    }
}
