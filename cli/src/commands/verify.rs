//! `pgcairn verify`: the chosen repository, or each of them in turn.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn_cli::settings::typed::Common;
use pgcairn_cli::settings::Resolved;

use super::each_repo;
use crate::{progress, proof};

pub(crate) async fn verify(
    r: &Resolved,
    common: &Common,
    set: &Option<String>,
    sample: Option<f64>,
    json: bool,
) -> Result<ExitCode> {
    let req = pgcairn::VerifyRequest { set: set.clone(), sample, progress: progress() };
    let list = common.each_repository(r);
    if list.len() == 1 {
        let report = pgcairn::verify(&common.access()?.open().await?, &req).await?;
        return proof::print_verify(&report, json);
    }
    let req = &req;
    let outcomes = each_repo::run_each(list, |c| async move {
        tracing::info!("verifying {}", each_repo::heading(&c.selected));
        Ok(pgcairn::verify(&c.access()?.open().await?, req).await?)
    })
    .await;
    if json {
        let unreadable = |e: &anyhow::Error| serde_json::json!({ "ok": false, "error": format!("{e:#}") });
        outln!("{}", each_repo::json_array(&outcomes, unreadable)?);
    } else {
        each_repo::print_text(&outcomes, proof::print_verify_text)?;
    }
    // Damage in one repository is the run's verdict even when another was unreadable
    // (that one is shown above).
    let codes: Vec<ExitCode> =
        outcomes.iter().filter_map(|(_, o)| o.as_ref().ok()).map(proof::verify_exit_code).collect();
    let damaged = ExitCode::from(pgcairn::exit::DAMAGED);
    if codes.contains(&damaged) {
        return Ok(damaged);
    }
    each_repo::first_error(outcomes)?;
    Ok(codes.into_iter().find(|c| *c != ExitCode::SUCCESS).unwrap_or(ExitCode::SUCCESS))
}
