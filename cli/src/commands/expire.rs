//! `pgcairn expire`.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use crate::output;
use crate::Output;

pub(crate) async fn expire(
    r: &Resolved,
    common: &Common,
    set: &Option<String>,
    dry_run: bool,
    out: Output,
) -> Result<ExitCode> {
    let req = typed::expire_request(r, set.clone(), dry_run)?;
    let report = pgcairn::expire(&common.access()?.open().await?, &req).await?;
    if out == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        output::print_expire(&report)?;
    }
    // Deletes that failed left a consistent repository; the next run retries them.
    Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(pgcairn::exit::STORAGE) })
}
