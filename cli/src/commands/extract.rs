//! `pgcairn extract`: one database, or some of its tables, as a pg_dump file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use super::restore::recovery;
use crate::output::human;
use crate::{progress, DumpFormatArg, Output, TargetArgs};

/// What to dump and where, as given on the command line.
pub(crate) struct What<'a> {
    pub db: &'a String,
    pub tables: &'a [String],
    pub schemas: &'a [String],
    pub format: DumpFormatArg,
    pub file: &'a str,
}

pub(crate) async fn extract(
    r: &Resolved,
    common: &Common,
    target: &TargetArgs,
    what: What<'_>,
    output: Output,
) -> Result<()> {
    let settings = typed::Extract::from(r)?;
    let to_stdout = what.file == "-";
    let req = pgcairn::ExtractRequest {
        database: what.db.clone(),
        tables: what.tables.to_vec(),
        schemas: what.schemas.to_vec(),
        format: match what.format {
            DumpFormatArg::Plain => pgcairn::DumpFormat::Plain,
            DumpFormatArg::Custom => pgcairn::DumpFormat::Custom,
        },
        output: if to_stdout {
            pgcairn::DumpOutput::Stdout
        } else {
            pgcairn::DumpOutput::File(PathBuf::from(what.file))
        },
        set: target.set.clone(),
        recovery: recovery(common, &settings.forwarded, target)?,
        pg_bin: settings.pg_bin,
        work_path: settings.work_path,
        timeout: settings.timeout,
        progress: progress(),
    };
    let report = pgcairn::extract(&common.access()?.open().await?, &req).await?;
    // With the dump on standard output, the report must not mix into it.
    let mut out: Box<dyn Write> =
        if to_stdout { Box::new(std::io::stderr().lock()) } else { Box::new(std::io::stdout().lock()) };
    if output == Output::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    writeln!(out, "chose backup {}: {}", report.label, report.chosen_because)?;
    writeln!(
        out,
        "extracted database {} at {} into {}: restored {} of the backup's {} in {:.1}s, recovery {:.1}s, pg_dump {:.1}s",
        report.database,
        report.target,
        report.output,
        human(report.restored_bytes),
        human(report.backup_bytes),
        report.restore_seconds,
        report.recovery_seconds,
        report.dump_seconds
    )?;
    Ok(())
}
