//! `pgcairn check` and `check --archive-only`.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use super::restore::shell_quote;
use crate::output;
use crate::Output;

/// The archive_command check suggests: absolute paths (the server's PATH rarely has
/// pgcairn), the config file this run used, the stanza.
pub(crate) fn wanted_archive_command(r: &Resolved, common: &Common) -> String {
    let exe = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("pgcairn-archive-push")));
    let push = exe.map_or_else(|| "/usr/local/bin/pgcairn-archive-push".to_string(), |p| p.display().to_string());
    let config = r.config_file().map(|c| format!(" --config={}", shell_quote(&c.display().to_string())));
    format!("{}{} --stanza={} %p", shell_quote(&push), config.unwrap_or_default(), common.stanza)
}

pub(crate) async fn check(r: &Resolved, common: &Common, restore_point: bool, out: Output) -> Result<()> {
    let settings = typed::Check::from(r)?;
    let repo = common.access()?.open().await?;
    let spool_problems = match &settings.spool_path {
        Some(spool) => pgcairn::spool_problems(spool, &common.stanza, common.selected.number)?,
        None => Vec::new(),
    };
    let req = pgcairn::CheckRequest {
        pg: settings.pg,
        timeout: settings.archive_timeout,
        spool_problems,
        restore_point,
        wanted_command: wanted_archive_command(r, common),
    };
    let report = pgcairn::check(&repo, &req).await?;
    if out == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    outln!(
        "check ok: stanza {} (system {}), archive_command '{}', wal segment {} reached the repository in {:.1}s",
        common.stanza,
        report.system_identifier,
        report.archive_command,
        report.segment,
        report.seconds
    );
    Ok(())
}

/// `check --archive-only`: Nagios plugin output and exit codes (0 ok, 1 warning,
/// 2 critical); an error reading the repository is critical.
pub(crate) async fn check_archive(r: &Resolved, common: &Common, out: Output) -> Result<ExitCode> {
    let pg = typed::optional_pg(r)?;
    let result = async { pgcairn::check_archive(&common.access()?.open().await?, pg.as_ref()).await }.await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            outln!("PGCAIRN ARCHIVE CRITICAL - stanza {}: {e}", common.stanza);
            return Ok(ExitCode::from(pgcairn::Level::Critical.exit_code()));
        }
    };
    if out == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        output::print_archive_check(&common.stanza, &report)?;
    }
    Ok(ExitCode::from(report.level.exit_code()))
}
