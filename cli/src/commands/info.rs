//! `pgcairn info`, for one stanza or all.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use super::each_repo;
use crate::Output;
use crate::{output, stanzas};

/// `pgcairn info`: the selected repository's report, or every repository's when
/// several are configured and none was chosen.
pub(crate) async fn run(r: &Resolved, common: &Common, out: Output) -> Result<ExitCode> {
    if common.repos.len() > 1 && !typed::repo_number_given(r) {
        return info_repos(r, common, out).await;
    }
    let report = info(r, common).await?;
    if out == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        output::print_info(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The stanza's info, with the retention policy its settings give.
pub(crate) async fn info(r: &Resolved, common: &Common) -> Result<pgcairn::InfoReport> {
    let policy = typed::retention(r)?;
    Ok(pgcairn::info_with_retention(&common.access()?.open().await?, &policy).await?)
}

/// `info` of a stanza with several repositories and no `repo-number`: each
/// repository's report, in order (see each_repo). One that cannot be read is shown
/// with status unreadable and fails the run after all are printed.
async fn info_repos(r: &Resolved, common: &Common, out: Output) -> Result<ExitCode> {
    let outcomes = each_repo::run_each(common.each_repository(r), |c| async move {
        let policy = typed::retention_of(r, c.selected.number)?;
        Ok(pgcairn::info_with_retention(&c.access()?.open().await?, &policy).await?)
    })
    .await;
    if out == Output::Json {
        let unreadable = |e: &anyhow::Error| unreadable_json(&common.stanza, e);
        outln!("{}", each_repo::json_array(&outcomes, unreadable)?);
    } else {
        each_repo::print_text(&outcomes, output::print_info)?;
    }
    each_repo::first_error(outcomes)?;
    Ok(ExitCode::SUCCESS)
}

/// A stanza's info that could not be read (json).
fn unreadable_json(stanza: &str, e: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({
        "schema_version": pgcairn::INFO_SCHEMA_VERSION,
        "stanza": stanza,
        "status": { "code": "unreadable", "message": format!("{e:#}") },
    })
}

/// `info --all-stanzas`: each stanza's report; one that cannot be read is shown with
/// status unreadable (json: only stanza and status) and fails the run after all are printed.
pub(crate) async fn info_all(all: &stanzas::AllStanzas, out: Output) -> Result<ExitCode> {
    let mut reports = Vec::new();
    for name in all.names().await? {
        let report = async {
            let (r, common) = all.settings(&name)?;
            info(&r, &common).await
        };
        let report = report.await;
        reports.push((name, report));
    }
    if out == Output::Json {
        let values: Vec<serde_json::Value> = reports
            .iter()
            .map(|(name, report)| match report {
                Ok(report) => serde_json::to_value(report),
                Err(e) => Ok(unreadable_json(name, e)),
            })
            .collect::<serde_json::Result<_>>()?;
        outln!("{}", serde_json::to_string_pretty(&values)?);
    } else {
        for (i, (name, report)) in reports.iter().enumerate() {
            if i > 0 {
                outln!();
            }
            match report {
                Ok(report) => output::print_info(report)?,
                Err(e) => outln!("stanza: {name}\n    status: unreadable ({e:#})"),
            }
        }
    }
    match reports.into_iter().find_map(|(_, r)| r.err()) {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}
