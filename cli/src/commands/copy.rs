//! `pgcairn copy`.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn::Error;
use pgcairn_cli::settings::typed::Common;
use pgcairn_cli::settings::Resolved;

use crate::progress;

/// Copy from the selected repository into repository `to`.
pub(crate) async fn copy(
    r: &Resolved,
    common: &Common,
    to: usize,
    set: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let dest = common.repos.iter().find(|s| s.number == to).ok_or_else(|| {
        Error::setting(
            format!("copy --to-repo={to}: repository {to} is not configured"),
            format!("set repo{to} (and its repo{to}-… settings) in the config file"),
        )
    })?;
    if to == common.selected.number {
        let problem = format!("copy --to-repo={to} names the repository it copies from (repo-number {to})");
        return Err(Error::setting(problem, "choose another repository to copy into, or another --repo-number").into());
    }
    // Both at once: each unlock derives its key on a blocking thread of its own.
    let (src_access, dst_access) = (common.access()?, dest.access(&common.stanza)?);
    let (src, dst) = tokio::join!(src_access.open(), dst_access.open());
    let (src, dst) = (src?, dst?);
    let req = pgcairn::CopyRequest { set, level: r.get("compress-level")?, progress: progress() };
    let report = pgcairn::copy(&src, &dst, &req).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "copied {} backup(s) ({} bytes, {} stored anew) and {} WAL file(s) into repository {to} in {:.1}s; already there: {} backup(s), {} WAL file(s)",
            report.copied.len(),
            report.bytes,
            report.stored_new,
            report.wal_copied,
            report.seconds,
            report.present.len(),
            report.wal_present
        );
        for label in &report.copied {
            outln!("{label}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
