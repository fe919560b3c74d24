//! The table against itself, docs/config.md and clap; resolution's precedence and errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::Place;
use super::kind::parse;
use super::table::{Forward, Kind, Scope};
use super::typed::{self, Common};
use super::*;

/// The environment a test gives; PGCAIRN_CONFIG is empty (no config file) unless
/// given. Regression (issue 21, item 17): `bad_values_name_their_source` read the
/// machine's /etc/pgcairn/pgcairn.toml where the quick start had been followed.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let mut map: BTreeMap<String, String> = BTreeMap::from([("PGCAIRN_CONFIG".into(), String::new())]);
    map.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    move |k| map.get(k).cloned()
}

/// An empty PGCAIRN_CONFIG reads no file, even where the default one exists.
#[test]
fn an_empty_config_variable_reads_no_file() {
    let r = run(Cmd::Info, BASE, &[]).unwrap();
    assert!(r.config_file().is_none());
    let (_d, config) = with_config("log-level = \"loud\"\n");
    assert!(run(Cmd::Info, BASE, &[("PGCAIRN_CONFIG", &config)]).is_err(), "a named file is still read");
}

fn flags(pairs: &[(&str, &str)]) -> Vec<(&'static Setting, String)> {
    pairs.iter().map(|(k, v)| (setting(k).unwrap(), v.to_string())).collect()
}

fn run(cmd: Cmd, f: &[(&str, &str)], env: &[(&str, &str)]) -> pgcairn::Result<Resolved> {
    resolve(cmd, &flags(f), &env_of(env))
}

const BASE: &[(&str, &str)] = &[("stanza", "main"), ("repo", "/r")];

/// A config file in a temporary directory, named by `--config`.
fn with_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcairn.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn table_is_consistent() {
    let mut names = BTreeSet::new();
    for s in SETTINGS.iter() {
        assert!(names.insert(s.name), "{} twice", s.name);
        assert!(s.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{}", s.name);
        assert!(!s.help.trim().is_empty(), "{} has no help", s.name);
        if let Some(d) = s.default {
            assert!(parse(s.kind, d).is_ok(), "default of {} does not parse: {d}", s.name);
        }
        if let Scope::Only(cmds) = s.scope {
            assert!(!cmds.is_empty(), "{} applies to nothing", s.name);
        }
        if s.kind == Kind::Secret {
            assert!(!s.sources.flag && !s.sources.file && s.forward == Forward::Never, "{} leaks", s.name);
        }
        // restore writes restore_command (archive-get): it must have what it forwards.
        if s.forward != Forward::Never && s.applies_to(Cmd::ArchiveGet) {
            assert!(s.applies_to(Cmd::Restore), "restore cannot forward {}", s.name);
        }
    }
    for name in ["config", "stanza", "repo", "repo-passphrase", "log-level"] {
        assert!(setting(name).is_some_and(Setting::is_global), "{name} must be global");
    }
}

/// One row of docs/config.md's Keys table: key → (used by, default).
fn documented() -> BTreeMap<String, (BTreeSet<String>, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).unwrap();
    let keys = text.split("## Keys").nth(1).expect("a Keys section");
    keys.lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let key = cells[1].trim_matches('`').to_string();
            let used_by = cells[2].split(',').map(|c| c.trim().to_string()).collect();
            (key, (used_by, cells[3].trim_matches('`').to_string()))
        })
        .collect()
}

#[test]
fn docs_table_matches_the_settings_table() {
    let docs = documented();
    // repo2-… to repo4-… are documented once, as a pattern (docs/config.md, "Several
    // repositories"); each is its declared setting under another name.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).unwrap();
    assert!(
        text.contains("## Several repositories") && text.contains("`repo2`"),
        "docs/config.md: several repositories"
    );
    for s in SETTINGS.iter().filter(|s| s.repo_number().is_none()) {
        let (used_by, default) = docs.get(s.name).unwrap_or_else(|| panic!("{} is not in docs/config.md", s.name));
        let want: BTreeSet<String> = match s.scope {
            Scope::Global => ["all".to_string()].into(),
            Scope::Only(cmds) => cmds.iter().map(|c| c.name().to_string()).collect(),
        };
        assert_eq!(used_by, &want, "docs/config.md: used by of {}", s.name);
        assert_eq!(default, s.default.unwrap_or("—"), "docs/config.md: default of {}", s.name);
    }
    for key in docs.keys() {
        let derived = setting(key).is_some_and(|s| s.repo_number().is_some());
        assert!(setting(key).is_some() && !derived, "docs/config.md documents {key}, which is no declared setting");
    }
}

#[test]
fn precedence_flag_env_stanza_table_top_default() {
    let (_d, config) = with_config(
        "repo = \"/top\"\narchive-timeout = 5\ncompress-level = 4\n\
         [stanza.main]\nrepo = \"/table\"\narchive-timeout = 6\n",
    );
    let env = [("PGCAIRN_CONFIG", config.as_str()), ("PGCAIRN_STANZA", "main"), ("PGCAIRN_ARCHIVE_TIMEOUT", "7")];
    let r = run(Cmd::Backup, &[("archive-timeout", "8")], &env).unwrap();
    assert_eq!(r.get::<Duration>("archive-timeout").unwrap(), Duration::from_secs(8));
    let r = run(Cmd::Backup, &[], &env).unwrap();
    assert_eq!(r.get::<Duration>("archive-timeout").unwrap(), Duration::from_secs(7));
    assert_eq!(r.entry_of("archive-timeout").unwrap().source, Source::Env);
    let r = run(Cmd::Backup, &[], &env[..2]).unwrap();
    assert_eq!(r.get::<Duration>("archive-timeout").unwrap(), Duration::from_secs(6));
    assert_eq!(
        r.entry_of("repo").unwrap().source,
        Source::File { path: PathBuf::from(&config), place: Place::Stanza("main".into()) }
    );
    assert_eq!(r.get::<i32>("compress-level").unwrap(), 4, "top level");
    assert!(!r.get::<bool>("start-fast").unwrap(), "default");
    assert_eq!(r.entry_of("start-fast").unwrap().source, Source::Default);
    let other = run(Cmd::Backup, &[("stanza", "other")], &env[..2]).unwrap();
    assert_eq!(other.get::<pgcairn::RepoLocation>("repo").unwrap(), parse_repo("/top"));
}

/// `--all-stanzas`: the top level only (each stanza is resolved again on its own);
/// the environment's stanza is not used, a --stanza flag is refused.
#[test]
fn top_level_resolution_for_all_stanzas() {
    let (_d, config) = with_config("repo = \"/top\"\n[stanza.main]\nrepo = \"/table\"\nlog-level = \"debug\"\n");
    let env = [("PGCAIRN_CONFIG", config.as_str()), ("PGCAIRN_STANZA", "main")];
    let r = super::resolve_top_level(Cmd::Info, &[], &env_of(&env)).unwrap();
    assert_eq!(r.get::<pgcairn::RepoLocation>("repo").unwrap(), parse_repo("/top"));
    assert!(r.opt::<String>("stanza").unwrap().is_none());
    assert_eq!(r.get::<&str>("log-level").unwrap(), "warn", "not [stanza.main]'s");
    let e = super::resolve_top_level(Cmd::Metrics, &flags(&[("stanza", "main")]), &env_of(&env)).unwrap_err();
    assert!(e.to_string().contains("--all-stanzas and --stanza"), "{e}");
}

fn parse_repo(s: &str) -> pgcairn::RepoLocation {
    pgcairn::RepoLocation::parse(s).unwrap()
}

/// Regression (issue "Reshape the engine", item 2): values were parsed only when used,
/// so a typo in archive-push-queue-full surfaced only once the queue filled. Now every
/// value the command uses is parsed at start-up, and the error names key and source.
#[test]
fn bad_values_name_their_source() {
    let err = |f: &[(&str, &str)], env: &[(&str, &str)]| run(Cmd::ArchivePush, f, env).unwrap_err().to_string();
    let e = err(&[("stanza", "main"), ("repo", "/r"), ("archive-push-queue-full", "bogus")], &[]);
    assert!(e.contains("--archive-push-queue-full=bogus") && e.contains("fail, drop"), "{e}");
    let e = err(BASE, &[("PGCAIRN_ARCHIVE_PUSH_QUEUE_FULL", "bogus")]);
    assert!(e.contains("PGCAIRN_ARCHIVE_PUSH_QUEUE_FULL=bogus"), "{e}");
    let (_d, config) = with_config("[stanza.main]\narchive-push-queue-max = \"lots\"\n");
    let e = err(&[("stanza", "main"), ("repo", "/r"), ("config", &config)], &[]);
    assert!(e.contains(&format!("archive-push-queue-max = \"lots\" in {config} [stanza.main]")), "{e}");
    let (_d, config) = with_config("log-level = \"loud\"\n");
    let e = err(&[("stanza", "main"), ("repo", "/r"), ("config", &config)], &[]);
    assert!(e.contains(&format!("log-level = \"loud\" in {config}:")), "{e}");
    let e = err(&[("stanza", "../x"), ("repo", "/r")], &[]);
    assert!(e.contains("stanza name"), "{e}");
    let e = err(&[("repo", "/r")], &[]);
    assert!(e.contains("no stanza given"), "{e}");
    let e = Common::from(&run(Cmd::Info, &[("stanza", "main")], &[]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("repo is not set") && e.contains("PGCAIRN_REPO"), "{e}");
    let e = err(BASE, &[("PGCAIRN_REPO_PASSPHRASE", "secret words"), ("PGCAIRN_COMPRESS_LEVEL_WAL", "x")]);
    assert!(!e.contains("secret words"), "{e}");
}

/// A shared config file and environment hold settings for every command: those the
/// command does not use are not even parsed.
#[test]
fn settings_of_other_commands_are_ignored_from_env_and_file() {
    let (_d, config) = with_config("compress-level = \"banana\"\n[stanza.main]\nstart-fast = \"maybe\"\n");
    let env = [("PGCAIRN_CONFIG", config.as_str()), ("PGCAIRN_ARCHIVE_PUSH_QUEUE_FULL", "bogus")];
    let r = run(Cmd::Info, BASE, &env).unwrap();
    assert!(r.entry_of("compress-level").is_none() && r.entry_of("archive-push-queue-full").is_none());
    assert!(run(Cmd::Backup, BASE, &env).unwrap_err().to_string().contains("compress-level = \"banana\""));
    // Flags are the parser's business, but resolve refuses them too.
    assert!(run(Cmd::Info, &[("stanza", "main"), ("start-fast", "true")], &[]).is_err());
}

#[test]
fn empty_env_values_are_unset() {
    let r = run(Cmd::Backup, BASE, &[("PGCAIRN_COMPRESS_LEVEL", "")]).unwrap();
    assert_eq!(r.get::<i32>("compress-level").unwrap(), 3);
}

/// Forwarded: the stanza always; others the table marks, when given by flag or
/// environment (config-file values reach the child through --config).
#[test]
fn forwarded_flags_come_from_the_table() {
    let (_d, config) = with_config("spool-path = \"/from-file\"\n");
    let f = [("stanza", "main"), ("repo", "/r"), ("config", config.as_str()), ("pg-data", "/d")];
    let env = [("PGCAIRN_ARCHIVE_GET_TIMEOUT", "9"), ("PGCAIRN_REPO_PASSPHRASE", "pw")];
    let r = run(Cmd::Restore, &f, &env).unwrap();
    let want =
        [format!("--config={config}"), "--stanza=main".into(), "--repo=/r".into(), "--archive-get-timeout=9".into()];
    assert_eq!(typed::Restore::from(&r).unwrap().forwarded, want);
    let (_d, config) = with_config("stanza = \"main\"\nrepo = \"/r\"\n");
    let env = [("PGCAIRN_CONFIG", config.as_str())];
    let f = [("archive-async", "true"), ("spool-path", "/s"), ("archive-push-queue-max", "1")];
    let r = run(Cmd::ArchivePush, &f, &env).unwrap();
    let want =
        [format!("--config={config}"), "--stanza=main".into(), "--archive-async=true".into(), "--spool-path=/s".into()];
    assert_eq!(r.forwarded(Cmd::ArchivePush), want);
}

/// The retention settings become a policy; a count of 0, a word that is no count
/// and an unknown time zone are refused at start-up, naming the setting.
#[test]
fn retention_settings_are_checked_at_start_up() {
    let gfs = [("PGCAIRN_RETENTION_KEEP_DAILY", "7"), ("PGCAIRN_RETENTION_KEEP_WEEKLY", "4")];
    let p = typed::retention(&run(Cmd::Expire, BASE, &gfs).unwrap()).unwrap();
    assert_eq!((p.keep_daily, p.keep_weekly, p.keep_monthly, p.time_zone.as_str()), (Some(7), Some(4), None, "UTC"));
    assert!(p.is_set());
    for (key, value) in
        [("PGCAIRN_RETENTION_FULL", "0"), ("PGCAIRN_RETENTION_FULL", "two"), ("PGCAIRN_RETENTION_FULL_TYPE", "age")]
    {
        let err = run(Cmd::Expire, BASE, &[(key, value)]).unwrap_err().to_string();
        assert!(err.contains(&format!("{key}={value}")), "{err}");
    }
    let bad_zone =
        run(Cmd::Expire, BASE, &[("PGCAIRN_RETENTION_FULL", "2"), ("PGCAIRN_RETENTION_TIME_ZONE", "Moon/Base")]);
    let err = typed::retention(&bad_zone.unwrap()).unwrap_err().to_string();
    assert!(err.contains("Moon/Base"), "{err}");
    assert!(
        run(Cmd::Restore, BASE, &[]).is_ok() && setting("retention-full").is_some_and(|s| !s.applies_to(Cmd::Restore))
    );
}

/// Every command's typed settings build from the table (no setting read that the
/// command does not resolve, none read as the wrong type).
#[test]
fn every_command_builds_its_typed_settings() {
    let env = [("PGCAIRN_REPO_PASSPHRASE", "pw")];
    for cmd in Cmd::ALL {
        let r = run(cmd, BASE, &env).unwrap();
        let common = Common::from(&r).unwrap();
        assert_eq!((common.stanza.as_str(), common.log_level), ("main", "warn"));
        match cmd {
            Cmd::StanzaCreate => drop(typed::StanzaCreate::from(&r).unwrap()),
            Cmd::Backup => drop(typed::Backup::from(&r).unwrap()),
            Cmd::Restore => drop(typed::Restore::from(&r).unwrap()),
            Cmd::Check => drop(typed::Check::from(&r).unwrap()),
            Cmd::ArchivePush => drop(typed::push_request(&r, &common, &[]).unwrap()),
            Cmd::ArchiveGet => drop(typed::get_request(&r, &common).unwrap()),
            Cmd::Expire => drop(typed::retention(&r).unwrap()),
            Cmd::StanzaDelete => drop(typed::StanzaDelete::from(&r).unwrap()),
            Cmd::Drill => assert_eq!(typed::Drill::from(&r).unwrap().timeout, Duration::from_secs(3600)),
            Cmd::Extract => assert_eq!(typed::Extract::from(&r).unwrap().timeout, Duration::from_secs(3600)),
            Cmd::Metrics => drop(typed::optional_pg(&r).unwrap()),
            Cmd::Copy => assert_eq!(r.get::<i32>("compress-level").unwrap(), 3),
            Cmd::WalReceive => {
                let req = typed::wal_receive_request(&r, &common).unwrap();
                assert_eq!((req.slot.as_str(), req.interval), ("pgcairn_main", Duration::from_secs(1)));
            }
            Cmd::Info | Cmd::KeyFile | Cmd::Verify | Cmd::Key => {}
        }
    }
    let b = typed::Backup::from(&run(Cmd::Backup, BASE, &[]).unwrap()).unwrap();
    assert_eq!((b.compress_level, b.start_fast, b.archive_check, b.archive_copy), (3, false, true, false));
    let g = typed::get_request(
        &run(Cmd::ArchiveGet, BASE, &[]).unwrap(),
        &Common::from(&run(Cmd::ArchiveGet, BASE, &[]).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!((g.queue_max, g.timeout), (128 << 20, Duration::from_secs(60)));
}

#[test]
fn async_push_needs_a_spool_and_forwards_to_its_drainer() {
    let r = run(Cmd::ArchivePush, &[("stanza", "main"), ("repo", "/r"), ("archive-async", "on")], &[]).unwrap();
    let common = Common::from(&r).unwrap();
    assert!(typed::push_request(&r, &common, &[]).unwrap_err().to_string().contains("needs spool-path"));
    let f = [("stanza", "main"), ("repo", "/r"), ("archive-async", "yes"), ("spool-path", "/s")];
    let r = run(Cmd::ArchivePush, &f, &[("PGCAIRN_ARCHIVE_PUSH_QUEUE_FULL", "drop")]).unwrap();
    let req = typed::push_request(&r, &common, &["archive-push"]).unwrap();
    let q = req.queue.unwrap();
    assert_eq!((q.spool_path.as_path(), q.max, q.full), (Path::new("/s"), None, pgcairn::QueueFull::Drop));
    let args: Vec<String> = q.drainer.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    assert_eq!(args, ["archive-push", "--stanza=main", "--repo=/r", "--archive-async=yes", "--spool-path=/s"]);
}

/// The passphrase is never a flag nor a config key, and never printed.
#[test]
fn passphrase_only_from_the_environment_or_its_file() {
    let r = run(Cmd::Info, BASE, &[("PGCAIRN_REPO_PASSPHRASE", "pw")]).unwrap();
    assert!(Common::from(&r).unwrap().passphrase().unwrap().is_some());
    assert!(r.describe().iter().any(|l| l == "PGCAIRN_REPO_PASSPHRASE=***"), "{:?}", r.describe());
    assert!(!format!("{r:?}").contains("pw\""), "{r:?}");
    let (_d, config) = with_config("repo-passphrase = \"pw\"\n");
    let e = run(Cmd::Info, &[("stanza", "main"), ("config", &config)], &[]).unwrap_err().to_string();
    assert!(e.contains("never read from the config file"), "{e}");
}

mod clap_args {
    use clap::{Arg, Command};

    use super::super::args::{given, with_settings};
    use super::*;

    /// A stand-in for `pgcairn`'s derived commands, each with one positional.
    fn root() -> Command {
        let subs = Cmd::ALL.map(|c| Command::new(c.name()).arg(Arg::new("positional").num_args(0..=2)));
        with_settings(Command::new("pgcairn").subcommands(subs).subcommand_required(true))
    }

    /// The command, the settings given (name, text) and the positionals.
    type Parsed = (Cmd, Vec<(String, String)>, Vec<String>);

    fn parse(argv: &[&str]) -> Result<Parsed, clap::Error> {
        let m = root().try_get_matches_from(std::iter::once("pgcairn").chain(argv.iter().copied()))?;
        let (name, sub) = m.subcommand().unwrap();
        let cmd = Cmd::ALL.into_iter().find(|c| c.name() == name).unwrap();
        let flags = given(cmd, sub).into_iter().map(|(s, v)| (s.name.to_string(), v)).collect();
        let pos = sub.get_many::<String>("positional").map(|v| v.cloned().collect()).unwrap_or_default();
        Ok((cmd, flags, pos))
    }

    #[test]
    fn builds() {
        root().debug_assert();
    }

    /// Regression: every subcommand accepted every setting (`info --start-fast
    /// --pg-data=/nope --archive-push-queue-full=bogus --compress-level=banana` ran).
    #[test]
    fn each_command_takes_only_its_settings() {
        for cmd in Cmd::ALL {
            for s in SETTINGS.iter().filter(|s| s.sources.flag) {
                let flag = format!("--{}=1", s.name);
                let r = parse(&[cmd.name(), &flag]);
                assert_eq!(r.is_ok(), s.applies_to(cmd), "{cmd} {flag}: {r:?}");
            }
            assert!(parse(&[cmd.name(), "--repo-passphrase=x"]).is_err(), "the passphrase is never a flag");
        }
    }

    /// Regression: optional-value booleans swallowed the next word
    /// (`pgcairn --stanza=x --start-fast info` failed with "requires a subcommand").
    #[test]
    fn booleans_take_a_value_only_with_equals() {
        let (cmd, flags, pos) = parse(&["--stanza=x", "archive-push", "--archive-async", "/wal/1"]).unwrap();
        assert_eq!(cmd, Cmd::ArchivePush);
        assert_eq!(pos, ["/wal/1"]);
        assert!(flags.contains(&("archive-async".into(), "true".into())), "{flags:?}");
        let (_, flags, _) = parse(&["backup", "--start-fast=off"]).unwrap();
        assert_eq!(flags, [("start-fast".to_string(), "off".to_string())]);
        let e = parse(&["--stanza=x", "--start-fast", "info"]).unwrap_err().to_string();
        assert!(e.contains("--start-fast") && !e.contains("requires a subcommand"), "{e}");
    }

    /// Global settings before or after the subcommand; a negative zstd level as a value.
    #[test]
    fn globals_anywhere() {
        let (_, before, _) = parse(&["--repo=/r", "--log-level=debug", "info"]).unwrap();
        let (_, after, _) = parse(&["info", "--repo=/r", "--log-level=debug"]).unwrap();
        assert_eq!(before, after);
        assert_eq!(before.len(), 2);
        let (_, flags, _) = parse(&["archive-push", "--compress-level-wal", "-3", "/w"]).unwrap();
        assert_eq!(flags, [("compress-level-wal".to_string(), "-3".to_string())]);
    }

    /// `pgcairn CMD --help` lists exactly its settings, each with help text.
    #[test]
    fn help_lists_exactly_the_commands_settings() {
        let mut root = root();
        root.build(); // propagates the global settings into the subcommands
        for cmd in Cmd::ALL {
            let help = root.find_subcommand_mut(cmd.name()).unwrap().render_long_help().to_string();
            for s in SETTINGS.iter().filter(|s| s.sources.flag) {
                let shown = help.contains(&format!("--{} ", s.name)) || help.contains(&format!("--{}[", s.name));
                // repo2-… to repo4-… are accepted but hidden (docs/config.md has them).
                let listed = s.applies_to(cmd) && s.repo_number().is_none();
                assert_eq!(shown, listed, "{cmd} --help and --{}:\n{help}", s.name);
                if shown {
                    assert!(help.contains(s.help), "{cmd} --help lacks the help of --{}", s.name);
                }
            }
        }
    }
}

/// Regression (issue 21, item 13): a mistyped PGCAIRN_* variable was ignored silently.
#[test]
fn unknown_environment_variables_are_named_with_a_guess() {
    let vars = [
        "PGCAIRN_REPO",
        "PGCAIRN_RETENTION_FUL",
        "PGCAIRN_TEST_KEEP",
        "PGCAIRN_ARCHIVE_DRAIN",
        "PGCAIRN_ARCHIVE_FETCH",
        "PGCAIRN_ZZZ",
        "HOME",
    ];
    let warnings = table::unknown_env_vars(vars.iter().map(|v| v.to_string()));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("PGCAIRN_RETENTION_FUL") && warnings[0].contains("did you mean PGCAIRN_RETENTION_FULL?")
    );
    assert!(warnings[1].contains("PGCAIRN_ZZZ names no setting"), "{warnings:?}");
}

/// Repositories 2–4 have every per-repository setting under their own name, from a
/// flag, the environment or the config file; `repo-number` picks the one a command
/// works on, archive-push and archive-get get all of them, and a number with no
/// repository is refused naming the setting to add.
#[test]
fn several_repositories_resolve_each_with_its_own_settings() {
    let (_d, config) = with_config(
        "repo = \"/one\"\nrepo-key-file = \"/k1\"\nretention-full = 2\nrepo2 = \"s3://b/two\"\nrepo2-s3-region = \"eu-west-1\"\n\
         repo2-retention-full = 7\nrepo4 = \"/four\"\n",
    );
    let env = [("PGCAIRN_CONFIG", config.as_str()), ("PGCAIRN_STANZA", "main"), ("PGCAIRN_REPO4_KEY_FILE", "/k4")];
    let r = run(Cmd::Info, &[("repo2-key-file", "/k2")], &env).unwrap();
    let common = Common::from(&r).unwrap();
    let numbers: Vec<usize> = common.repos.iter().map(|s| s.number).collect();
    assert_eq!(numbers, [1, 2, 4]);
    assert_eq!(common.selected.number, 1);
    let keys: Vec<Option<PathBuf>> = common.repos.iter().map(|s| s.key_file.clone()).collect();
    assert_eq!(keys, [Some("/k1".into()), Some("/k2".into()), Some("/k4".into())]);
    assert_eq!(common.repos[1].cloud.s3.region.as_deref(), Some("eu-west-1"));
    assert_eq!(common.repos[0].cloud.s3.region, None, "repository 1 does not take repository 2's region");
    assert_eq!(common.all_access().unwrap().len(), 3);
    // Each repository its own retention: repository 1's does not apply to 2.
    assert_eq!(typed::retention_of(&r, 1).unwrap().full, Some(2));
    assert_eq!(typed::retention_of(&r, 2).unwrap().full, Some(7));
    assert_eq!(typed::retention_of(&r, 4).unwrap().full, None);

    // info, check, expire, verify and metrics: every repository, each selected in turn.
    let each: Vec<usize> = common.each_repository(&r).iter().map(|c| c.selected.number).collect();
    assert_eq!(each, [1, 2, 4]);

    let r = run(Cmd::Info, &[("repo-number", "4")], &env).unwrap();
    assert_eq!(Common::from(&r).unwrap().selected.repo, pgcairn::RepoLocation::parse("/four").unwrap());
    let each: Vec<usize> = Common::from(&r).unwrap().each_repository(&r).iter().map(|c| c.selected.number).collect();
    assert_eq!(each, [4], "repo-number chooses one");
    // Expire of repository 2 under its own retention.
    let r = run(Cmd::Expire, &[], &env).unwrap();
    assert_eq!(typed::expire_request_of(&r, 2, None, false).unwrap().policy.full, Some(7));
    let r = run(Cmd::Info, &[("repo-number", "3")], &env).unwrap();
    let err = Common::from(&r).unwrap_err().to_string();
    assert!(err.contains("repository 3 is not configured") && err.contains("repo3"), "{err}");

    // archive-get reads every repository, or the one named explicitly.
    let r = run(Cmd::ArchiveGet, &[], &env).unwrap();
    assert_eq!(typed::get_request(&r, &Common::from(&r).unwrap()).unwrap().repos.len(), 3);
    let r = run(Cmd::ArchiveGet, &[("repo-number", "2")], &env).unwrap();
    let only = typed::get_request(&r, &Common::from(&r).unwrap()).unwrap();
    assert_eq!(only.repos.iter().map(|a| a.number).collect::<Vec<_>>(), [2]);
}

/// Issue 26: `process-max` bounds the runtime's worker threads (and rayon's pool, see
/// `pgcairn::limit_cores`); `bandwidth-max` takes sizes; both default to no limit.
#[test]
fn resource_limits_are_read_and_applied() {
    let base = [("stanza", "main"), ("repo", "/r")];
    let common = Common::from(&run(Cmd::Backup, &base, &[]).unwrap()).unwrap();
    assert_eq!((common.process_max, common.bandwidth_max), (None, None));
    let env = [("PGCAIRN_PROCESS_MAX", "1"), ("PGCAIRN_BANDWIDTH_MAX", "50MiB")];
    let common = Common::from(&run(Cmd::Backup, &base, &env).unwrap()).unwrap();
    assert_eq!((common.process_max, common.bandwidth_max), (Some(1), Some(50 << 20)));
    assert_eq!(common.runtime(None).unwrap().metrics().num_workers(), 1);
    assert_eq!(common.runtime(Some(2)).unwrap().metrics().num_workers(), 1, "process-max caps a default");
    let e = run(Cmd::Backup, &base, &[("PGCAIRN_PROCESS_MAX", "0")]).unwrap_err().to_string();
    assert!(e.contains("PROCESS_MAX") && e.contains("1 or more"), "{e}");
    // A size without its unit is bytes: 50 a second would hang with the stanza locked.
    let r = run(Cmd::Backup, &base, &[("PGCAIRN_BANDWIDTH_MAX", "50")]).unwrap();
    let e = Common::from(&r).unwrap_err().to_string();
    assert!(e.contains("below 64KiB") && e.contains("50MiB"), "{e}");
    // A relative key-cache-path would put the key in the data directory (archive_command's cwd).
    let r = run(Cmd::Backup, &base, &[("PGCAIRN_KEY_CACHE_PATH", "shm")]).unwrap();
    let e = Common::from(&r).unwrap_err().to_string();
    assert!(e.contains("not an absolute path"), "{e}");
}
