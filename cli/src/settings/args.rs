//! The settings as clap arguments: global ones on `pgcairn` itself (accepted before
//! and after the subcommand), the others on the subcommands that use them only.

use clap::{Arg, ArgAction, ArgMatches};

use super::table::{Cmd, Kind, Setting, SETTINGS};

fn value_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text | Kind::Secret => "TEXT",
        Kind::Path => "PATH",
        Kind::Bool => "BOOL",
        Kind::Size => "SIZE",
        Kind::Seconds => "SECONDS",
        Kind::Count => "N",
        Kind::Zstd => "LEVEL",
        Kind::Choice(_) => "WORD",
        Kind::Stanza => "NAME",
        Kind::Repo => "REPO",
    }
}

/// The help line: the table's text, its environment variable and default.
pub fn help(s: &Setting) -> String {
    let mut h = s.help.to_string();
    let env = if s.sources.env { format!("env: {}", s.env()) } else { String::new() };
    let default = s.default.map(|d| format!("default: {d}")).unwrap_or_default();
    let notes: Vec<String> = [env, default].into_iter().filter(|n| !n.is_empty()).collect();
    if !notes.is_empty() {
        h.push_str(&format!(" [{}]", notes.join("; ")));
    }
    h
}

fn arg(s: &'static Setting) -> Arg {
    let mut a = Arg::new(s.name)
        .long(s.name)
        .value_name(value_name(s.kind))
        .help(help(s))
        // No clap value parser: values are parsed with the other sources', so a bad
        // one is reported the same way (exit 3, naming the flag).
        .action(ArgAction::Set)
        // Negative zstd levels: `--compress-level-wal -3`.
        .allow_hyphen_values(s.kind == Kind::Zstd)
        .global(s.is_global())
        // repo2-… to repo4-…: in docs/config.md, not in every command's --help.
        .hide(s.repo_number().is_some())
        .help_heading(if s.is_global() { "Repository settings" } else { "Settings" });
    if s.kind == Kind::Bool {
        // `--start-fast` alone means true; a value needs `=`, so the next word is
        // never taken for one (`--archive-async PATH`).
        a = a.num_args(0..=1).require_equals(true).default_missing_value("true");
    }
    a
}

/// `root` (the derived `pgcairn` command) with every setting where it belongs.
pub fn with_settings(mut root: clap::Command) -> clap::Command {
    root = root.args(SETTINGS.iter().filter(|s| s.sources.flag && s.is_global()).map(arg));
    for cmd in Cmd::ALL {
        let own = SETTINGS.iter().filter(move |s| s.sources.flag && !s.is_global() && s.applies_to(cmd));
        root = root.mut_subcommand(cmd.name(), |sc| sc.args(own.map(arg)));
    }
    root
}

/// The settings given as flags, from the subcommand's matches (globals included).
pub fn given(cmd: Cmd, m: &ArgMatches) -> Vec<(&'static Setting, String)> {
    SETTINGS
        .iter()
        .filter(|s| s.sources.flag && s.applies_to(cmd))
        .filter_map(|s| Some((s, m.get_one::<String>(s.name)?.clone())))
        .collect()
}

/// `pgcairn-archive-push`'s parser: the same settings and flag syntax as
/// `pgcairn archive-push` (`--key value`, `--key=value`), plus the WAL path.
pub fn archive_push_command() -> clap::Command {
    let own = SETTINGS.iter().filter(|s| s.sources.flag && s.applies_to(Cmd::ArchivePush));
    clap::Command::new("pgcairn-archive-push")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Archive one WAL segment into a pgcairn repository: PostgreSQL's archive_command")
        .after_help(
            "Set it with an absolute path (archive_command runs with the server's PATH):\n  \
             archive_command = '/usr/local/bin/pgcairn-archive-push --config /etc/pgcairn/pgcairn.toml --stanza main %p'\n\
             Exit 0 only once the segment is durable in the repository (or durably queued with archive-async).",
        )
        .arg(
            Arg::new("wal")
                .value_name("WAL_PATH")
                .help("the WAL file to archive (%p)")
                .required(true)
                .value_parser(clap::value_parser!(std::path::PathBuf)),
        )
        .args(own.map(arg))
}
