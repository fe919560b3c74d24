//! Resolution: for each setting the command uses, the first of command-line flag,
//! PGCAIRN_* environment variable, the config file's `[stanza.NAME]` table, its top
//! level, the table's default; parsed once, here, so a bad value stops the command
//! at start-up with the key and where it came from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pgcairn::{Error, Result};

use super::file::{ConfigFile, Place};
use super::kind::{parse, FromValue, Value};
use super::table::{setting, Cmd, Forward, Kind, Setting, SETTINGS};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// A PGCAIRN_* environment variable.
    Env,
    /// The config file.
    File {
        /// The config file's path.
        path: PathBuf,
        /// Its top level or a stanza's table.
        place: Place,
    },
    /// The settings table's default.
    Default,
}

impl Source {
    /// `--key=value`, `PGCAIRN_KEY=value` or `key = value in FILE [stanza.NAME]`.
    fn describe(&self, s: &Setting, raw: &str) -> String {
        let raw = if s.kind == Kind::Secret { "***" } else { raw };
        match self {
            Source::Flag => format!("--{}={raw}", s.name),
            Source::Env => format!("{}={raw}", s.env()),
            Source::File { path, place: Place::Top } => format!("{} = {raw:?} in {}", s.name, path.display()),
            Source::File { path, place: Place::Stanza(n) } => {
                format!("{} = {raw:?} in {} [stanza.{n}]", s.name, path.display())
            }
            Source::Default => format!("{} = {raw} (the default)", s.name),
        }
    }
}

/// One resolved setting.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The parsed value.
    pub value: Value,
    /// The text it was parsed from; `***` for a secret.
    pub raw: String,
    /// Where the text came from.
    pub source: Source,
}

/// Every setting the command uses, parsed. Built once by [`resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    cmd: Cmd,
    values: BTreeMap<&'static str, Entry>,
    /// The config file read, if any (named or the default one).
    config_file: Option<PathBuf>,
}

/// Settings given on the command line, with their text.
pub type Flags = Vec<(&'static Setting, String)>;

/// The environment, as a function so tests need not touch the process's.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment variable `name`, if set and valid Unicode: the [`Env`] of a real run.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Resolve `cmd`'s settings. `flags` come from the command line, already limited by
/// its parser to settings `cmd` takes as flags.
pub fn resolve(cmd: Cmd, flags: &[(&'static Setting, String)], env: Env) -> Result<Resolved> {
    resolve_as(cmd, flags, env, true)
}

/// `--all-stanzas` (info, metrics): no stanza, and the config file's top level only —
/// each stanza the repository holds is then resolved on its own with [`resolve`].
pub fn resolve_top_level(cmd: Cmd, flags: &[(&'static Setting, String)], env: Env) -> Result<Resolved> {
    if flags.iter().any(|(s, _)| s.name == "stanza") {
        return Err(Error::setting("--all-stanzas and --stanza together", "give one of them"));
    }
    // One server for every stanza is never right: each stanza is its own cluster.
    if flags.iter().any(|(s, _)| s.name == "pg") || env("PGCAIRN_PG").is_some_and(|v| !v.is_empty()) {
        return Err(Error::setting(
            "--all-stanzas with pg on the command line or in PGCAIRN_PG would ask one server about every stanza",
            "set each stanza's pg in its [stanza.NAME] section of the config file",
        ));
    }
    resolve_as(cmd, flags, env, false)
}

fn resolve_as(cmd: Cmd, flags: &[(&'static Setting, String)], env: Env, one_stanza: bool) -> Result<Resolved> {
    if let Some((s, _)) = flags.iter().find(|(s, _)| !s.sources.flag || !s.applies_to(cmd)) {
        return Err(Error::setting(
            format!("{cmd} does not take --{}", s.name),
            format!("`pgcairn {cmd} --help` lists its settings"),
        ));
    }
    let flag = |s: &Setting| flags.iter().rev().find(|(f, _)| f.name == s.name).map(|(_, v)| v.clone());
    let env_value = |s: &Setting| s.sources.env.then(|| env(&s.env())).flatten().filter(|v| !v.is_empty());
    let given = |s: &Setting| flag(s).map(|v| (v, Source::Flag)).or_else(|| env_value(s).map(|v| (v, Source::Env)));
    let mut r = Resolved { cmd, values: BTreeMap::new(), config_file: None };

    let config = known("config")?;
    // An empty PGCAIRN_CONFIG reads no config file, not even the default one.
    let no_file = flag(config).is_none() && env(&config.env()).is_some_and(|v| v.is_empty());
    let file = match given(config) {
        Some((raw, source)) => {
            r.insert(config, raw, source)?;
            ConfigFile::load(r.opt::<PathBuf>("config")?.as_deref())?
        }
        None if no_file => ConfigFile::default(),
        None => ConfigFile::load(None)?,
    };
    r.config_file = (!file.path.as_os_str().is_empty()).then(|| file.path.clone());
    let from_file = |s: &Setting, stanza: Option<&str>| {
        let (raw, place) = s.sources.file.then(|| file.get(stanza, s.name)).flatten()?;
        Some((raw, Source::File { path: file.path.clone(), place }))
    };

    // The stanza picks the config file's table, so it comes from the top level only.
    let stanza = known("stanza")?;
    let mut table = None;
    if one_stanza {
        let (raw, source) = given(stanza).or_else(|| from_file(stanza, None)).ok_or_else(|| {
            Error::setting(
                "no stanza given",
                "pass --stanza=NAME (or --all-stanzas to info and metrics), set PGCAIRN_STANZA, or `stanza = \"NAME\"` in the config file",
            )
        })?;
        r.insert(stanza, raw.clone(), source)?;
        table = Some(raw);
    }

    for s in SETTINGS.iter().filter(|s| s.applies_to(cmd) && !["config", "stanza"].contains(&s.name)) {
        let found = given(s).or_else(|| from_file(s, table.as_deref()));
        if let Some((v, source)) = found.or_else(|| s.default.map(|d| (d.to_string(), Source::Default))) {
            r.insert(s, v, source)?;
        }
    }
    Ok(r)
}

/// A setting the code names (the table's tests make sure each exists).
pub(super) fn known(name: &str) -> Result<&'static Setting> {
    setting(name).ok_or_else(|| Error::Internal(format!("no setting {name} in the table")))
}

impl Resolved {
    fn insert(&mut self, s: &'static Setting, raw: String, source: Source) -> Result<()> {
        let value = parse(s.kind, &raw)
            .map_err(|why| Error::setting(format!("{}: {why}", source.describe(s, &raw)), s.help))?;
        // A secret stays in its zeroized Secret only.
        let raw = if s.kind == Kind::Secret { "***".to_string() } else { raw };
        self.values.insert(s.name, Entry { value, raw, source });
        Ok(())
    }

    /// The config file read (named, or the default one when it exists).
    pub fn config_file(&self) -> Option<&std::path::Path> {
        self.config_file.as_deref()
    }

    /// The command the settings were resolved for.
    pub fn cmd(&self) -> Cmd {
        self.cmd
    }

    /// The setting `name` as resolved; None when unset and without a default.
    pub fn entry_of(&self, name: &str) -> Option<&Entry> {
        self.values.get(name)
    }

    /// A setting's value, None when unset and without a default.
    pub fn opt<T: FromValue>(&self, name: &str) -> Result<Option<T>> {
        if !setting(name).is_some_and(|s| s.applies_to(self.cmd)) {
            return Err(Error::Internal(format!("{} does not use setting {name}", self.cmd)));
        }
        match self.values.get(name) {
            None => Ok(None),
            Some(e) => T::from_value(&e.value)
                .map(Some)
                .ok_or_else(|| Error::Internal(format!("setting {name} read as the wrong type"))),
        }
    }

    /// A setting that has a default (or is required): its value.
    pub fn get<T: FromValue>(&self, name: &str) -> Result<T> {
        self.opt(name)?.ok_or_else(|| {
            let env = setting(name).map(Setting::env).unwrap_or_default();
            Error::setting(
                format!("{name} is not set"),
                format!("pass --{name}, set {env}, or add `{name} = ...` to the config file"),
            )
        })
    }

    /// The flags that make a child pgcairn running `child` (restore_command runs
    /// archive-get, the async drainer archive-push) see what this process saw.
    pub fn forwarded(&self, child: Cmd) -> Vec<String> {
        SETTINGS
            .iter()
            .filter(|s| s.applies_to(child) && s.sources.flag)
            .filter_map(|s| {
                let e = self.values.get(s.name)?;
                let given = matches!(e.source, Source::Flag | Source::Env);
                let send = s.forward == Forward::Always || (s.forward == Forward::Given && given);
                send.then(|| format!("--{}={}", s.name, e.raw))
            })
            .collect()
    }

    /// One line per value and where it came from, secrets masked (logged at debug).
    pub fn describe(&self) -> Vec<String> {
        SETTINGS
            .iter()
            .filter_map(|s| Some(self.values.get(s.name)?.source.describe(s, &self.values.get(s.name)?.raw)))
            .collect()
    }
}
