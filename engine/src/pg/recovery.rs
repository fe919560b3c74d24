//! Recovery settings a restore leaves for PostgreSQL: restore_command, the
//! recovery target, and recovery.signal.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::fsutil::{self, Commit};

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
