//! `pgcairn drill`.

use std::process::ExitCode;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use super::restore::recovery;
use crate::proof;
use crate::{progress, Output, TargetArgs};

pub(crate) async fn drill(
    r: &Resolved,
    common: &Common,
    target: &TargetArgs,
    databases: pgcairn::DbSelection,
    keep: bool,
    output: Output,
) -> Result<ExitCode> {
    let settings = typed::Drill::from(r)?;
    let req = pgcairn::DrillRequest {
        set: target.set.clone(),
        recovery: recovery(common, &settings.forwarded, target)?,
        pg_bin: settings.pg_bin,
        drill_path: settings.drill_path,
        sql_file: settings.drill_sql,
        timeout: settings.timeout,
        keep,
        progress: progress(),
        databases,
    };
    let report = pgcairn::drill(&common.access()?.open().await?, &req).await?;
    proof::print_drill(&report, output == Output::Json)
}
