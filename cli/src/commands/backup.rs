//! `pgcairn backup`.

use std::io::IsTerminal;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use crate::output;
use crate::{progress, BackupType};

pub(crate) async fn backup(r: &Resolved, common: &Common, backup_type: BackupType) -> Result<()> {
    let settings = typed::Backup::from(r)?;
    let repo = common.access()?.open().await?;
    let req = pgcairn::BackupRequest {
        pg: settings.pg.clone(),
        primary: settings.primary.clone(),
        backup_type: match backup_type {
            BackupType::Full => pgcairn::BackupType::Full,
            BackupType::Diff => pgcairn::BackupType::Diff,
            BackupType::Incr => pgcairn::BackupType::Incr,
        },
        fast_checkpoint: settings.start_fast,
        compress_level: settings.compress_level,
        estimate_size: std::io::stderr().is_terminal(),
        progress: progress(),
        archive_check: settings.archive_check,
        archive_copy: settings.archive_copy,
        archive_timeout: settings.archive_timeout,
        expire: settings.expire.clone(),
    };
    let sum = pgcairn::backup(&repo, &req).await?;
    typed::clear_prefetch(&settings, common);
    let based_on = sum.parent.as_deref().map(|p| format!(" (on {p})")).unwrap_or_default();
    let read = match &sum.read {
        Some(r) if r.from_summaries() => format!(", changed pages only: {} sent", output::human(r.streamed)),
        _ => String::new(),
    };
    // Regression (issue 21, item 8): `backup | tail -n1` is documented as the label,
    // but auto-expire printed after it. stdout is the label alone; the rest is stderr.
    eprintln!(
        "{} backup {}{based_on} done: {} in {} files{read}, {} new in the repository, wal {}..{}, {:.1}s",
        sum.backup_type.as_str(),
        sum.label,
        output::human(sum.size),
        sum.files,
        output::human(sum.stored_new),
        sum.start_lsn,
        sum.stop_lsn,
        sum.seconds
    );
    if let Some(report) = &sum.expire {
        output::write_expire(&mut std::io::stderr().lock(), report)?;
    }
    outln!("{}", sum.label);
    if let Some(e) = &sum.expire_error {
        eprintln!(
            "warning: the backup succeeded, but expiring by the retention policy failed: {e}; run `pgcairn expire`"
        );
    }
    Ok(())
}
