//! Recovery settings a restore leaves for PostgreSQL: restore_command, the
//! recovery target, and recovery.signal.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::fsutil::{self, Commit};

/// A recovery_target_time in the common spellings PostgreSQL accepts (RFC 3339,
/// `YYYY-MM-DD HH:MM:SS[.frac][+HH[:MM]]`, a trailing ` UTC`); `None` when it is
/// not one of them (PostgreSQL is then left to judge it).
pub(crate) fn parse_target_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.to_utc());
    }
    let utc = text.strip_suffix(" UTC").or_else(|| text.strip_suffix("Z"));
    if let Some(naive) = utc.and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").ok()) {
        return Some(naive.and_utc());
    }
    ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"]
        .iter()
        .find_map(|f| chrono::DateTime::parse_from_str(text, f).ok())
        .map(|t| t.to_utc())
}

/// Where recovery stops, as PostgreSQL's recovery_target* settings say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay the whole archive, then promote.
    EndOfArchive,
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// Stop at a time (recovery_target_time), in PostgreSQL's timestamp syntax.
    Time(String),
    /// Stop at an LSN (recovery_target_lsn), e.g. `16/B374D848`.
    Lsn(String),
    /// Stop at a named restore point (recovery_target_name).
    Name(String),
    /// Stop at a transaction id (recovery_target_xid).
    Xid(String),
    /// Write no recovery settings (only for sets that carry their WAL).
    None,
}

/// The recovery settings a restore writes into postgresql.auto.conf.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Where replay stops.
    pub target: RecoveryTarget,
    /// recovery_target_action: pause, promote or shutdown.
    pub action: Option<String>,
    /// recovery_target_timeline, e.g. latest, current or a number.
    pub timeline: Option<String>,
    /// The command PostgreSQL runs to fetch WAL: `pgcairn ... archive-get %f "%p"`.
    pub restore_command: String,
}

/// A value in postgresql.conf syntax.
fn guc_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Recovery settings appended to postgresql.auto.conf (where ALTER SYSTEM writes, and
/// which wins over postgresql.conf) plus recovery.signal.
pub(crate) fn write_recovery(target_dir: &Path, label: &str, r: &Recovery) -> Result<()> {
    let mut lines = vec![
        format!("\n# recovery settings written by pgcairn restore of backup {label}"),
        format!("restore_command = {}", guc_quote(&r.restore_command)),
    ];
    let (key, value) = match &r.target {
        RecoveryTarget::EndOfArchive | RecoveryTarget::None => (None, None),
        RecoveryTarget::Immediate => (Some("recovery_target"), Some("immediate")),
        RecoveryTarget::Time(t) => (Some("recovery_target_time"), Some(t.as_str())),
        RecoveryTarget::Lsn(t) => (Some("recovery_target_lsn"), Some(t.as_str())),
        RecoveryTarget::Name(t) => (Some("recovery_target_name"), Some(t.as_str())),
        RecoveryTarget::Xid(t) => (Some("recovery_target_xid"), Some(t.as_str())),
    };
    if let (Some(k), Some(v)) = (key, value) {
        lines.push(format!("{k} = {}", guc_quote(v)));
    }
    if let Some(a) = &r.action {
        lines.push(format!("recovery_target_action = {}", guc_quote(a)));
    }
    if let Some(t) = &r.timeline {
        lines.push(format!("recovery_target_timeline = {}", guc_quote(t)));
    }
    let auto = target_dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&lines.join("\n"));
    text.push('\n');
    let ctx = || format!("cannot write recovery settings into {}", auto.display());
    fsutil::write_file(&auto, text.as_bytes(), Commit::Replace).ctx(ctx)?;
    std::fs::set_permissions(&auto, std::fs::Permissions::from_mode(0o600)).ctx(ctx)?;
    let signal = target_dir.join("recovery.signal");
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
    }

    #[test]
    fn recovery_settings_are_appended_and_quoted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postgresql.auto.conf"), "work_mem = '4MB'\n").unwrap();
        let r = Recovery {
            target: RecoveryTarget::Name("before it's gone".into()),
            action: Some("promote".into()),
            timeline: None,
            restore_command: "pgcairn --stanza=main archive-get %f \"%p\"".into(),
        };
        write_recovery(dir.path(), "L", &r).unwrap();
        let text = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(text.starts_with("work_mem = '4MB'\n"), "{text}");
        assert!(text.contains("restore_command = 'pgcairn --stanza=main archive-get %f \"%p\"'"), "{text}");
        assert!(text.contains("recovery_target_name = 'before it''s gone'"), "{text}");
        assert!(text.contains("recovery_target_action = 'promote'"), "{text}");
        assert!(dir.path().join("recovery.signal").is_file());
    }
}
