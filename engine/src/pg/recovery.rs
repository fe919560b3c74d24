//! Recovery settings a restore leaves for PostgreSQL: restore_command, the
//! recovery target, and recovery.signal.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Misconfig, Result};
use crate::fsutil::{self, Commit};
use crate::pg::Lsn;

/// A recovery_target_time in the spellings PostgreSQL accepts that carry a zone
/// (RFC 3339, `YYYY-MM-DD HH:MM:SS[.frac]±HH[:MM]`, a trailing ` UTC` or `Z`); `None`
/// otherwise. A time without a zone is refused: PostgreSQL would read it in the
/// server's `timezone`, which the operator rarely has in mind at 3 a.m.
pub(crate) fn parse_target_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.to_utc());
    }
    let utc = text.strip_suffix(" UTC").or_else(|| text.strip_suffix("Z"));
    if let Some(naive) =
        utc.and_then(|t| chrono::NaiveDateTime::parse_from_str(t.trim_end(), "%Y-%m-%d %H:%M:%S%.f").ok())
    {
        return Some(naive.and_utc());
    }
    ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"]
        .iter()
        .find_map(|f| chrono::DateTime::parse_from_str(text, f).ok())
        .map(|t| t.to_utc())
}

/// Where recovery stops, as PostgreSQL's recovery_target* settings say it, parsed
/// and checked (see [`RecoveryTarget::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay the whole archive, then promote.
    EndOfArchive,
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// Stop at a time (recovery_target_time).
    Time(chrono::DateTime<chrono::Utc>),
    /// Stop at an LSN (recovery_target_lsn).
    Lsn(Lsn),
    /// Stop at a named restore point (recovery_target_name).
    Name(String),
    /// Stop at the end of a transaction (recovery_target_xid): 64-bit as
    /// `txid_current()` shows it; PostgreSQL compares its low 32 bits.
    Xid(u64),
    /// Write no recovery settings (only for sets that carry their WAL).
    None,
}

/// PostgreSQL's limit on restore point names (MAXFNAMELEN - 1).
const MAX_RESTORE_POINT_NAME: usize = 63;
/// The first transaction id PostgreSQL assigns to a transaction.
const FIRST_NORMAL_XID: u64 = 3;

fn bad_target(problem: String, hint: &str) -> Error {
    Error::misconfigured(Misconfig::Request, problem, hint)
}

impl RecoveryTarget {
    /// A target from `--type` (default, immediate, time, lsn, name, xid, none) and
    /// `--target`, checked the way PostgreSQL would check it at startup — so that a
    /// mistyped target is refused before a byte is restored, not after.
    pub fn parse(kind: &str, text: Option<&str>) -> Result<RecoveryTarget> {
        let takes_text = matches!(kind, "time" | "lsn" | "name" | "xid");
        let text = match (takes_text, text) {
            (true, None) => return Err(bad_target(format!("--type={kind} needs --target"), TARGET_HINT)),
            (false, Some(t)) => {
                return Err(bad_target(
                    format!("--target={t} is given but --type={kind} takes no target"),
                    "add --type=time, lsn, name or xid to say what the target is",
                ))
            }
            (_, t) => t.unwrap_or_default(),
        };
        Ok(match kind {
            "default" => RecoveryTarget::EndOfArchive,
            "immediate" => RecoveryTarget::Immediate,
            "none" => RecoveryTarget::None,
            "time" => RecoveryTarget::Time(parse_target_time(text).ok_or_else(|| {
                bad_target(
                    format!("--target={text:?} is not a time with a zone"),
                    "write it as YYYY-MM-DD HH:MM:SS+ZZ, e.g. '2026-11-30 18:00:00+00' (or RFC 3339)",
                )
            })?),
            "lsn" => RecoveryTarget::Lsn(text.parse().map_err(|_| {
                bad_target(
                    format!("--target={text:?} is not an LSN"),
                    "write it as PostgreSQL shows it, e.g. 16/B374D848",
                )
            })?),
            "xid" => RecoveryTarget::Xid(parse_xid(text)?),
            "name" => RecoveryTarget::Name(parse_name(text)?),
            other => return Err(bad_target(format!("--type={other} is not a recovery target type"), TARGET_HINT)),
        })
    }

    /// The target for messages, in the form PostgreSQL would log it.
    pub fn describe(&self) -> String {
        match self {
            RecoveryTarget::EndOfArchive => "the end of the archived WAL".into(),
            RecoveryTarget::Immediate => "the end of the backup (immediate)".into(),
            RecoveryTarget::Time(t) => format!("time {}", guc_time(t)),
            RecoveryTarget::Lsn(l) => format!("LSN {l}"),
            RecoveryTarget::Name(n) => format!("restore point {n:?}"),
            RecoveryTarget::Xid(x) => format!("transaction {x}"),
            RecoveryTarget::None => "no recovery (WAL carried in the backup)".into(),
        }
    }

    /// The setting and value written for PostgreSQL, if any.
    fn setting(&self) -> Option<(&'static str, String)> {
        match self {
            RecoveryTarget::EndOfArchive | RecoveryTarget::None => None,
            RecoveryTarget::Immediate => Some(("recovery_target", "immediate".into())),
            RecoveryTarget::Time(t) => Some(("recovery_target_time", guc_time(t))),
            RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
            RecoveryTarget::Name(n) => Some(("recovery_target_name", n.clone())),
            RecoveryTarget::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        }
    }
}

const TARGET_HINT: &str =
    "--type=time|lsn|name|xid with --target=VALUE, or --type=default|immediate|none without --target";

/// A time as recovery_target_time, in UTC with an explicit zone.
fn guc_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

fn parse_xid(text: &str) -> Result<u64> {
    let xid: u64 = text.trim().parse().map_err(|_| {
        bad_target(
            format!("--target={text:?} is not a transaction id"),
            "give the decimal id txid_current() or pg_current_xact_id() showed, e.g. 7421",
        )
    })?;
    if xid & 0xffff_ffff < FIRST_NORMAL_XID {
        return Err(bad_target(format!("--target={xid} is a reserved transaction id"), "no transaction ends there"));
    }
    Ok(xid)
}

fn parse_name(text: &str) -> Result<String> {
    if text.is_empty() || text.len() > MAX_RESTORE_POINT_NAME {
        return Err(bad_target(
            format!("--target={text:?} cannot be a restore point name: it is {} bytes", text.len()),
            "a name from pg_create_restore_point() has 1 to 63 bytes",
        ));
    }
    Ok(text.to_string())
}

/// recovery_target_timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineTarget {
    /// The newest timeline in the archive that descends from the backup's (PostgreSQL's default).
    Latest,
    /// The backup's own timeline.
    Current,
    /// A numbered timeline.
    Id(u32),
}

impl TimelineTarget {
    /// `latest`, `current` or a timeline number (decimal, or hex with 0x as PostgreSQL takes it).
    pub fn parse(text: &str) -> Result<TimelineTarget> {
        let bad = || {
            bad_target(
                format!("--target-timeline={text:?} is not a timeline"),
                "use latest, current or a timeline number (the first 8 hex digits of a WAL file name, e.g. 2)",
            )
        };
        match text.trim() {
            "latest" => Ok(TimelineTarget::Latest),
            "current" => Ok(TimelineTarget::Current),
            t => {
                let n = match t.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16).map_err(|_| bad())?,
                    None => t.parse().map_err(|_| bad())?,
                };
                if n == 0 {
                    return Err(bad());
                }
                Ok(TimelineTarget::Id(n))
            }
        }
    }

    fn setting(self) -> String {
        match self {
            TimelineTarget::Latest => "latest".into(),
            TimelineTarget::Current => "current".into(),
            TimelineTarget::Id(n) => n.to_string(),
        }
    }
}

/// recovery_target_action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    /// Pause at the target (PostgreSQL's default with a target).
    Pause,
    /// End recovery and open for writes.
    Promote,
    /// Stop the server at the target.
    Shutdown,
}

impl TargetAction {
    /// `pause`, `promote` or `shutdown`.
    pub fn parse(text: &str) -> Result<TargetAction> {
        match text {
            "pause" => Ok(TargetAction::Pause),
            "promote" => Ok(TargetAction::Promote),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => {
                Err(bad_target(format!("--target-action={text:?} is not an action"), "use pause, promote or shutdown"))
            }
        }
    }

    fn setting(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// The recovery settings a restore writes into postgresql.auto.conf.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Where replay stops.
    pub target: RecoveryTarget,
    /// Stop just before the target instead of just after (recovery_target_inclusive = off).
    pub exclusive: bool,
    /// recovery_target_action.
    pub action: Option<TargetAction>,
    /// recovery_target_timeline.
    pub timeline: Option<TimelineTarget>,
    /// The command PostgreSQL runs to fetch WAL: `pgcairn ... archive-get %f "%p"`.
    pub restore_command: String,
    /// Start as a standby (standby.signal, `--type=standby`): it replays the archive,
    /// then streams from its primary (primary_conninfo, from `options`) and keeps
    /// following it, never promoting by itself.
    pub standby: bool,
    /// `--recovery-option KEY=VALUE`: further settings, written last (they win).
    pub options: Vec<(String, String)>,
}

impl Recovery {
    /// Refuse combinations PostgreSQL would ignore or reject: an exclusive target
    /// that is not a time, xid or LSN; an action or timeline without replay.
    pub fn check(&self) -> Result<()> {
        let stops_at_point =
            matches!(self.target, RecoveryTarget::Time(_) | RecoveryTarget::Xid(_) | RecoveryTarget::Lsn(_));
        if self.exclusive && !stops_at_point {
            return Err(bad_target(
                format!("--target-exclusive does not apply to {}", self.target.describe()),
                "use it with --type=time, xid or lsn",
            ));
        }
        let has_target = !matches!(self.target, RecoveryTarget::EndOfArchive | RecoveryTarget::None);
        if self.action.is_some() && !has_target {
            return Err(bad_target(
                "--target-action needs a recovery target".into(),
                "add --type=immediate, time, lsn, name or xid (without a target recovery replays all WAL and promotes)",
            ));
        }
        if self.timeline.is_some() && self.target == RecoveryTarget::None {
            return Err(bad_target(
                "--target-timeline needs recovery, and --type=none writes none".into(),
                TARGET_HINT,
            ));
        }
        if self.standby && self.target != RecoveryTarget::EndOfArchive {
            return Err(bad_target(
                "--type=standby takes no target: a standby follows its primary".into(),
                "restore with --type=standby alone (and --recovery-option primary_conninfo=…)",
            ));
        }
        self.options.iter().try_for_each(|(k, v)| check_option(k, v))
    }
}

/// A `--recovery-option`: a setting name PostgreSQL could know, and no password on a
/// command line.
fn check_option(key: &str, value: &str) -> Result<()> {
    let name_ok = key.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if !name_ok {
        return Err(bad_target(
            format!("--recovery-option {key}=…: {key:?} is not a setting name"),
            "use KEY=VALUE with a PostgreSQL setting name, e.g. primary_conninfo='host=primary user=replicator'",
        ));
    }
    if value.contains("password=") {
        return Err(bad_target(
            format!("--recovery-option {key}=… holds a password, which would sit on the command line"),
            "leave password= out: the standby reads it from the passfile (passfile=… in the connection string, or ~/.pgpass of the server's OS user)",
        ));
    }
    Ok(())
}

/// A value in postgresql.conf syntax.
fn guc_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Recovery settings appended to postgresql.auto.conf (where ALTER SYSTEM writes, and
/// which wins over postgresql.conf) plus recovery.signal.
pub(crate) fn write_recovery(target_dir: &Path, label: &str, r: &Recovery) -> Result<()> {
    let auto = target_dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).unwrap_or_default();
    write_settings(target_dir, &auto, text + &recovery_lines(label, r), r.standby)
}

/// Every recovery setting, each written (empty when unused): the backup's own
/// postgresql.auto.conf may carry settings of an earlier restore (a leftover
/// recovery_target_name beside a new recovery_target_time is a FATAL "multiple
/// recovery targets"; a leftover inclusive = off would move the stop point).
fn recovery_lines(label: &str, r: &Recovery) -> String {
    let mut lines = vec![
        format!("\n# recovery settings written by pgcairn restore of backup {label}"),
        format!("restore_command = {}", guc_quote(&r.restore_command)),
    ];
    // The unused ones first: PostgreSQL's assign hooks refuse a second target even
    // when it is set to '' after the first.
    let chosen = r.target.setting();
    for key in [
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
    ] {
        if chosen.as_ref().is_none_or(|(k, _)| *k != key) {
            lines.push(format!("{key} = ''"));
        }
    }
    if let Some((key, value)) = &chosen {
        lines.push(format!("{key} = {}", guc_quote(value)));
    }
    lines.push(format!("recovery_target_inclusive = {}", if r.exclusive { "off" } else { "on" }));
    let action = r.action.unwrap_or(TargetAction::Pause);
    lines.push(format!("recovery_target_action = {}", guc_quote(action.setting())));
    let timeline = r.timeline.unwrap_or(TimelineTarget::Latest);
    lines.push(format!("recovery_target_timeline = {}", guc_quote(&timeline.setting())));
    lines.extend(r.options.iter().map(|(k, v)| format!("{k} = {}", guc_quote(v))));
    lines.join("\n") + "\n"
}

/// The settings, then the signal file that starts recovery: standby.signal for a
/// standby, else recovery.signal (the other one removed: with both, PostgreSQL starts
/// as a standby).
fn write_settings(target_dir: &Path, auto: &Path, text: String, standby: bool) -> Result<()> {
    let ctx = || format!("cannot write recovery settings into {}", auto.display());
    fsutil::write_file(auto, text.as_bytes(), Commit::Replace).ctx(ctx)?;
    std::fs::set_permissions(auto, std::fs::Permissions::from_mode(0o600)).ctx(ctx)?;
    let (name, other) =
        if standby { ("standby.signal", "recovery.signal") } else { ("recovery.signal", "standby.signal") };
    match std::fs::remove_file(target_dir.join(other)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).ctx(|| format!("cannot remove {}", target_dir.join(other).display()))
        }
        _ => {}
    }
    let signal = target_dir.join(name);
    fsutil::write_file(&signal, b"", Commit::Replace).ctx(|| format!("cannot write {}", signal.display()))?;
    std::fs::set_permissions(&signal, std::fs::Permissions::from_mode(0o600)).ctx(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_in_postgres_spellings() {
        let want = chrono::DateTime::parse_from_rfc3339("2026-11-30T18:00:00Z").unwrap().to_utc();
        for text in [
            "2026-11-30T18:00:00Z",
            "2026-11-30T19:00:00+01:00",
            "2026-11-30 18:00:00+00",
            "2026-11-30 20:00:00+02",
            "2026-11-30 18:00:00 UTC",
            "2026-11-30 18:00:00.000+00:00",
        ] {
            assert_eq!(parse_target_time(text), Some(want), "{text}");
        }
        assert_eq!(parse_target_time("yesterday"), None);
        assert_eq!(parse_target_time("2026-11-30 18:00:00"), None, "no zone");
    }

    #[test]
    fn targets_are_checked_before_anything_is_written() {
        let bad = [
            ("time", Some("garbage")),
            ("time", Some("2026-11-30 18:00:00")),
            ("xid", Some("abc")),
            ("xid", Some("-4")),
            ("xid", Some("1")),
            ("lsn", Some("zz")),
            ("lsn", Some("0/")),
            ("name", Some("")),
            ("name", Some(&*"x".repeat(64))),
            ("time", None),
            ("default", Some("2026-11-30 18:00:00+00")),
            ("immediate", Some("x")),
            ("bogus", None),
        ];
        for (kind, text) in bad {
            let err = RecoveryTarget::parse(kind, text).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::exit::CONFIG, "{kind} {text:?}: {err}");
            assert!(err.to_string().contains("hint:"), "{err}");
        }
        assert_eq!(RecoveryTarget::parse("xid", Some("4294967299")).unwrap(), RecoveryTarget::Xid(4294967299));
        assert_eq!(
            RecoveryTarget::parse("lsn", Some("16/B374D848")).unwrap(),
            RecoveryTarget::Lsn(Lsn(0x16_B374_D848))
        );
        assert_eq!(TimelineTarget::parse("0x1A").unwrap(), TimelineTarget::Id(26));
        assert!(TimelineTarget::parse("newest").is_err() && TimelineTarget::parse("0").is_err());
        assert!(TargetAction::parse("resume").is_err());
        let r = |target, exclusive, action| Recovery {
            target,
            exclusive,
            action,
            timeline: None,
            restore_command: String::new(),
            standby: false,
            options: Vec::new(),
        };
        assert!(r(RecoveryTarget::Name("a".into()), true, None).check().is_err());
        assert!(r(RecoveryTarget::EndOfArchive, false, Some(TargetAction::Pause)).check().is_err());
        r(RecoveryTarget::Xid(9), true, Some(TargetAction::Promote)).check().unwrap();
    }

    /// Review of issue 13: restore appended only the settings it used, after the
    /// backup's own postgresql.auto.conf; a recovery_target_name left there by an
    /// earlier restore beside a new time target is PostgreSQL's FATAL "multiple
    /// recovery targets specified", a leftover inclusive = off moves the stop point.
    /// Now every setting is written, the unused ones empty and first (PostgreSQL's
    /// assign hooks refuse a second target even when it is set to '' after the first).
    #[test]
    fn every_recovery_setting_is_written_and_the_target_last() {
        let dir = tempfile::tempdir().unwrap();
        let leftover =
            "recovery_target_name = 'old'\nrecovery_target_inclusive = off\nrecovery_target_timeline = 'current'\n";
        std::fs::write(dir.path().join("postgresql.auto.conf"), leftover).unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-30T18:00:00Z").unwrap().to_utc();
        let r = Recovery {
            target: RecoveryTarget::Time(t),
            exclusive: false,
            action: None,
            timeline: None,
            restore_command: "x".into(),
            standby: false,
            options: Vec::new(),
        };
        write_recovery(dir.path(), "L", &r).unwrap();
        let text = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        let ours = text.split("# recovery settings written by pgcairn").nth(1).unwrap();
        let lines: Vec<&str> = ours.lines().collect();
        for unused in ["recovery_target ", "recovery_target_lsn", "recovery_target_name", "recovery_target_xid"] {
            let i =
                lines.iter().position(|l| l.starts_with(unused)).unwrap_or_else(|| panic!("{unused} missing: {ours}"));
            assert!(lines[i].ends_with("= ''"), "{}", lines[i]);
        }
        let name = lines.iter().position(|l| l.starts_with("recovery_target_name")).unwrap();
        let time = lines.iter().position(|l| l.starts_with("recovery_target_time")).unwrap();
        assert!(time > name, "the target comes after every emptied one: {ours}");
        assert!(
            ours.contains("recovery_target_inclusive = on") && ours.contains("recovery_target_timeline = 'latest'")
        );
        assert!(ours.contains("recovery_target_action = 'pause'"), "{ours}");
    }

    /// `--type=standby`: standby.signal (no recovery.signal), the options last, and
    /// refusals for a target, a bad name and a password on the command line.
    #[test]
    fn a_standby_gets_its_signal_and_options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("recovery.signal"), "").unwrap();
        let mut r = Recovery {
            target: RecoveryTarget::EndOfArchive,
            exclusive: false,
            action: None,
            timeline: None,
            restore_command: "x".into(),
            standby: true,
            options: vec![("primary_conninfo".into(), "host=primary user=replicator".into())],
        };
        r.check().unwrap();
        write_recovery(dir.path(), "L", &r).unwrap();
        assert!(dir.path().join("standby.signal").is_file() && !dir.path().join("recovery.signal").exists());
        let text = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(text.trim_end().ends_with("primary_conninfo = 'host=primary user=replicator'"), "{text}");
        r.options.push(("primary_conninfo".into(), "host=p password=secret".into()));
        assert!(r.check().unwrap_err().to_string().contains("password"));
        r.options = vec![("Bad Name".into(), "x".into())];
        assert!(r.check().is_err());
        r.options.clear();
        r.target = RecoveryTarget::Immediate;
        assert!(r.check().unwrap_err().to_string().contains("--type=standby takes no target"));
    }

    #[test]
    fn recovery_settings_are_appended_and_quoted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postgresql.auto.conf"), "work_mem = '4MB'\n").unwrap();
        let r = Recovery {
            target: RecoveryTarget::Name("before it's gone".into()),
            exclusive: false,
            action: Some(TargetAction::Promote),
            timeline: None,
            restore_command: "pgcairn --stanza=main archive-get %f \"%p\"".into(),
            standby: false,
            options: Vec::new(),
        };
        write_recovery(dir.path(), "L", &r).unwrap();
        let text = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(text.starts_with("work_mem = '4MB'\n"), "{text}");
        assert!(text.contains("restore_command = 'pgcairn --stanza=main archive-get %f \"%p\"'"), "{text}");
        assert!(text.contains("recovery_target_name = 'before it''s gone'"), "{text}");
        assert!(
            text.contains("recovery_target_time = ''") && text.contains("recovery_target_inclusive = on"),
            "{text}"
        );
        assert!(text.contains("recovery_target_timeline = 'latest'"), "{text}");
        assert!(text.contains("recovery_target_action = 'promote'"), "{text}");
        assert!(dir.path().join("recovery.signal").is_file());
    }
}
