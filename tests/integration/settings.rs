//! Settings at the edge (issue "Reshape the engine", item 2): each command takes only
//! its own settings, booleans never take the next word, every value the command uses
//! is checked at start-up whatever its source, log-level from every source works, and
//! no secret goes on a command line. No cluster needed: every run stops at start-up or
//! at the (absent) repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgcairn_cli::settings::{Cmd, SETTINGS};

use crate::archive::archive_push_bin;
use crate::cli::Pgcairn;
use crate::support::TestDir;

/// `pgcairn` with --stanza=main and a repository that does not exist (exit 4 once
/// the settings are fine).
fn pgcairn(dir: &TestDir) -> Pgcairn {
    Pgcairn::local(&dir.path().join("no-repo"))
}

fn run(mut c: Command) -> (i32, String) {
    c.env_remove("RUST_LOG");
    let o: Output = c.output().expect("run");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// pgcairn-archive-push with a clean environment plus `env`.
fn archive_push(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new(archive_push_bin());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGCAIRN_") && k != "PGCAIRN_KEY_CACHE_PATH") {
        c.env_remove(k);
    }
    c.env("PGCAIRN_CONFIG", "");
    c.args(args).envs(env.iter().copied());
    run(c)
}

fn write_config(dir: &TestDir, text: &str) -> PathBuf {
    let path = dir.path().join("pgcairn.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Regression: every subcommand accepted every setting, so this ran as `info` and
/// ignored all four. Now each is a usage error (2) on a command that does not use it.
#[test]
fn each_command_takes_only_its_own_settings() {
    let dir = TestDir::new("settings");
    let p = pgcairn(&dir);
    let bug = ["info", "--start-fast", "--pg-data=/nope", "--archive-push-queue-full=bogus", "--compress-level=banana"];
    let (code, err) = run(p.cmd(&bug));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unexpected argument '--start-fast'"), "{err}");
    for flag in &bug[1..] {
        let (code, err) = run(p.cmd(&["info", flag]));
        assert_eq!(code, 2, "info {flag}: {err}");
    }
    // `pgcairn CMD --help` shows exactly the settings CMD takes, with their help.
    for cmd in Cmd::ALL {
        let o = p.cmd(&[cmd.name(), "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        for s in SETTINGS.iter().filter(|s| s.sources.flag) {
            let shown = help.contains(&format!("--{} ", s.name)) || help.contains(&format!("--{}[", s.name));
            // repo2-… to repo4-…: accepted, not listed (docs/config.md has them).
            let listed = s.applies_to(cmd) && s.repo_number().is_none();
            assert_eq!(shown, listed, "{cmd} --help and --{}:\n{help}", s.name);
            assert!(!shown || help.contains(s.help), "{cmd} --help lacks the help of --{}", s.name);
        }
    }
}

/// Regression: `--start-fast` took an optional value, so in `pgcairn --stanza=x
/// --start-fast info` it swallowed `info` and pgcairn said it "requires a subcommand".
/// Now a boolean takes a value only with `=`: the next word stays what it is.
#[test]
fn booleans_do_not_swallow_the_next_word() {
    let dir = TestDir::new("settings");
    let p = pgcairn(&dir);
    let (code, err) = run(p.cmd(&["--start-fast", "info"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'--start-fast'") && !err.contains("requires a subcommand"), "{err}");
    // The WAL path after a bare --archive-async is the path: the run gets as far as
    // wanting a spool for the async queue.
    let wal = dir.path().join("000000010000000000000001");
    let wal = wal.to_str().unwrap();
    let (code, err) = run(p.cmd(&["archive-push", "--archive-async", wal]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("archive-async needs spool-path"), "{err}");
    let repo = format!("--repo={}", dir.path().join("no-repo").display());
    let (code, err) = archive_push(&["--stanza=main", &repo, "--archive-async", wal], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("archive-async needs spool-path"), "{err}");
}

/// Regression: values were parsed only when used, so a typo in
/// archive-push-queue-full surfaced only once the async queue was full (then every
/// archive_command failed). Now it stops the first run, exit 3, naming key and source,
/// before anything is queued; the same for every source and every command.
#[test]
fn bad_values_stop_the_command_at_start_up() {
    let dir = TestDir::new("settings");
    let spool = dir.path().join("spool");
    let wal = dir.path().join("000000010000000000000001");
    std::fs::write(&wal, b"not read").unwrap();
    let repo = format!("--repo={}", dir.path().join("no-repo").display());
    let spool_flag = format!("--spool-path={}", spool.display());
    let base = ["--stanza=main", repo.as_str(), "--archive-async=true", spool_flag.as_str()];
    let push = |extra: &[&str], env: &[(&str, &str)]| {
        let args: Vec<&str> =
            base.iter().copied().chain(extra.iter().copied()).chain([wal.to_str().unwrap()]).collect();
        archive_push(&args, env)
    };
    let (code, err) = push(&["--archive-push-queue-full=bogus"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--archive-push-queue-full=bogus") && err.contains("fail, drop"), "{err}");
    let (code, err) = push(&[], &[("PGCAIRN_ARCHIVE_PUSH_QUEUE_FULL", "bogus")]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("PGCAIRN_ARCHIVE_PUSH_QUEUE_FULL=bogus"), "{err}");
    let config = write_config(&dir, "[stanza.main]\narchive-push-queue-full = \"bogus\"\n");
    let (code, err) = push(&[&format!("--config={}", config.display())], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("in {} [stanza.main]", config.display())), "{err}");
    assert!(!spool.exists(), "a run with a bad setting queued something");

    // pgcairn too: backup checks its level before connecting (a connection failure
    // would be exit 6), archive-get keeps its contract (200: stop recovery).
    let p = pgcairn(&dir);
    let (code, err) = run(p.cmd(&["backup", "--compress-level=banana", "--pg=host=/nonexistent"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--compress-level=banana: is not a zstd level"), "{err}");
    let (code, err) = run(p.cmd(&["archive-get", "000000010000000000000001", "/tmp/x", "--archive-get-timeout=soon"]));
    assert_eq!(code, 200, "{err}");
    assert!(err.contains("--archive-get-timeout=soon"), "{err}");
}

/// A config file and environment shared by every command: what a command does not
/// use is ignored, not checked (`info` runs into the absent repository, exit 4). An
/// unknown key is still an error.
#[test]
fn other_commands_settings_are_ignored_from_env_and_file() {
    let dir = TestDir::new("settings");
    let config = write_config(&dir, "start-fast = \"maybe\"\narchive-push-queue-full = \"bogus\"\n");
    let p = pgcairn(&dir)
        .with_env("PGCAIRN_CONFIG", &config.display().to_string())
        .with_env("PGCAIRN_COMPRESS_LEVEL", "banana")
        .with_env("PGCAIRN_PG_DATA", "/nope");
    let (code, err) = run(p.cmd(&["info"]));
    assert_eq!(code, 4, "{err}");
    let (code, err) = run(p.cmd(&["backup"]));
    assert_eq!(code, 3, "backup uses compress-level: {err}");
    assert!(err.contains("PGCAIRN_COMPRESS_LEVEL=banana"), "{err}");
    write_config(&dir, "start-fats = true\n");
    let (code, err) = run(p.cmd(&["info"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unknown key start-fats"), "{err}");
}

/// Regression: `log-level` in the config file was accepted and ignored (only the flag
/// and PGCAIRN_LOG_LEVEL were read, and never checked). Now every source sets it, and
/// at debug pgcairn lists each setting and where it came from.
#[test]
fn log_level_from_every_source_takes_effect() {
    let dir = TestDir::new("settings");
    let p = pgcairn(&dir);
    let (_, quiet) = run(p.cmd(&["info"]));
    assert!(!quiet.contains("setting "), "{quiet}");
    let config = write_config(&dir, "log-level = \"debug\"\n");
    let (code, err) = run(p.cmd(&[&format!("--config={}", config.display()), "info"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("setting log-level = \"debug\" in {}", config.display())), "{err}");
    assert!(err.contains("setting PGCAIRN_REPO_PASSPHRASE=***"), "{err}");
    assert!(!err.contains(crate::cli::PASSPHRASE), "the passphrase was logged:\n{err}");
    let (_, err) = run(p.clone().with_env("PGCAIRN_LOG_LEVEL", "debug").cmd(&["info"]));
    assert!(err.contains("setting PGCAIRN_LOG_LEVEL=debug"), "{err}");
    let (code, err) = run(p.cmd(&["info", "--log-level=bogus"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--log-level=bogus: is not one of error, warn, info, debug, trace"), "{err}");
    write_config(&dir, "log-level = \"bogus\"\n");
    let (code, err) = run(p.cmd(&[&format!("--config={}", config.display()), "info"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("log-level = \"bogus\" in"), "{err}");
}

/// No secret on a command line or in the config file: the passphrase is no flag of
/// either binary, and a config-file key is refused.
#[test]
fn the_passphrase_is_never_a_flag_or_a_config_key() {
    let dir = TestDir::new("settings");
    let p = pgcairn(&dir);
    let (code, err) = run(p.cmd(&["info", "--repo-passphrase=x"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = archive_push(&["--stanza=main", "--repo-passphrase=x", "/w/000000010000000000000001"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unexpected argument '--repo-passphrase'"), "{err}");
    let config = write_config(&dir, "repo-passphrase = \"x\"\n");
    let (code, err) = run(p.cmd(&[&format!("--config={}", config.display()), "info"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("never read from the config file"), "{err}");
    assert!(Path::new(&config).exists());
}
