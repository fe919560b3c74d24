//! `pgcairn check` and `check --archive-only`.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use super::each_repo;
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
    // archive_command writes to every repository, so the check waits for each,
    // unless repo-number chose one.
    let checked = common.each_repository(r);
    let mut spool_problems = Vec::new();
    if let Some(spool) = &settings.spool_path {
        for c in &checked {
            let n = c.selected.number;
            let found = pgcairn::spool_problems(spool, &common.stanza, n)?;
            let named = |p: String| if checked.len() > 1 { format!("repository {n}: {p}") } else { p };
            spool_problems.extend(found.into_iter().map(named));
        }
    }
    let req = pgcairn::CheckRequest {
        pg: settings.pg,
        primary: settings.primary,
        timeout: settings.archive_timeout,
        spool_problems,
        restore_point,
        wanted_command: wanted_archive_command(r, common),
        repos: checked.iter().map(Common::access).collect::<pgcairn::Result<_>>()?,
    };
    let report = pgcairn::check(&req).await?;
    if out == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let reached = match report.repositories.as_slice() {
        [_] => "the repository".to_string(),
        numbers => format!("repositories {}", numbers.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    outln!(
        "check ok: stanza {} (system {}), archive_command '{}', wal segment {} reached {reached} in {:.1}s",
        common.stanza,
        report.system_identifier,
        report.archive_command,
        report.segment,
        report.seconds
    );
    outln!("  {}", report.wal_summaries.describe());
    Ok(())
}

/// `check --archive-only`: Nagios plugin output and exit codes (0 ok, 1 warning,
/// 2 critical); an error reading a repository is critical. With several
/// repositories, one line each, the worst first (the line Nagios shows), and the
/// worst exit code.
pub(crate) async fn check_archive(r: &Resolved, common: &Common, out: Output) -> Result<ExitCode> {
    let pg = typed::optional_pg(r)?;
    let list = common.each_repository(r);
    let several = list.len() > 1;
    let pg = &pg;
    let mut outcomes = each_repo::run_each(list, |c| async move {
        Ok(pgcairn::check_archive(&c.access()?.open().await?, pg.as_ref()).await?)
    })
    .await;
    let level = |o: &Result<pgcairn::ArchiveCheck>| o.as_ref().map_or(pgcairn::Level::Critical, |a| a.level);
    outcomes.sort_by_key(|(_, o)| std::cmp::Reverse(level(o)));
    let worst = outcomes.first().map_or(pgcairn::Level::Critical, |(_, o)| level(o));
    if out == Output::Json && several {
        let unreadable = |e: &anyhow::Error| serde_json::json!({ "level": "critical", "problems": [format!("{e:#}")] });
        outln!("{}", each_repo::json_array(&outcomes, unreadable)?);
        return Ok(ExitCode::from(worst.exit_code()));
    }
    for (spec, outcome) in &outcomes {
        let label = match several {
            true => format!("stanza {} repository {}", common.stanza, spec.number),
            false => format!("stanza {}", common.stanza),
        };
        match outcome {
            Ok(report) if out == Output::Json => outln!("{}", serde_json::to_string_pretty(report)?),
            Ok(report) => output::print_archive_check(&label, report)?,
            Err(e) => outln!("PGCAIRN ARCHIVE CRITICAL - {label}: {e}"),
        }
    }
    Ok(ExitCode::from(worst.exit_code()))
}
