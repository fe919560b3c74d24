//! `pgcairn expire`: the chosen repository, or each of them under its own retention.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use super::each_repo;
use crate::output;
use crate::Output;

pub(crate) async fn expire(
    r: &Resolved,
    common: &Common,
    set: &Option<String>,
    dry_run: bool,
    out: Output,
) -> Result<ExitCode> {
    let list = common.each_repository(r);
    if list.len() > 1 {
        return expire_repos(r, list, set, dry_run, out).await;
    }
    let req = typed::expire_request(r, set.clone(), dry_run)?;
    let report = pgcairn::expire(&common.access()?.open().await?, &req).await?;
    if out == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        output::print_expire(&report)?;
    }
    Ok(exit_code(&report))
}

/// Deletes that failed left a consistent repository; the next run retries them.
fn exit_code(report: &pgcairn::ExpireReport) -> ExitCode {
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(pgcairn::exit::STORAGE)
    }
}

/// `expire` of every repository, each under its own `repoN-retention-*`: one that
/// cannot be read or expired does not keep the others from being expired.
async fn expire_repos(
    r: &Resolved,
    list: Vec<Common>,
    set: &Option<String>,
    dry_run: bool,
    out: Output,
) -> Result<ExitCode> {
    let outcomes = each_repo::run_each(list, |c| async move {
        let req = typed::expire_request_of(r, c.selected.number, set.clone(), dry_run)?;
        Ok(pgcairn::expire(&c.access()?.open().await?, &req).await?)
    })
    .await;
    if out == Output::Json {
        let unreadable = |e: &anyhow::Error| serde_json::json!({ "error": format!("{e:#}") });
        outln!("{}", each_repo::json_array(&outcomes, unreadable)?);
    } else {
        each_repo::print_text(&outcomes, output::print_expire)?;
    }
    let failed = outcomes.iter().find_map(|(_, o)| o.as_ref().ok().map(exit_code).filter(|c| *c != ExitCode::SUCCESS));
    each_repo::first_error(outcomes)?;
    Ok(failed.unwrap_or(ExitCode::SUCCESS))
}
