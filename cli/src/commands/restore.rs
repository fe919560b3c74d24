//! `pgcairn restore`: the request, the recovery settings and the restore_command it writes.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::ValueEnum;
use pgcairn::{Recovery, RecoveryTarget, TargetAction, TimelineTarget};
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use crate::output;
use crate::{progress, TargetArgs};

pub(crate) async fn restore(
    r: &Resolved,
    common: &Common,
    target: &TargetArgs,
    databases: pgcairn::DbSelection,
    tablespace_map: &[String],
    recovery_options: &[String],
    delta: bool,
) -> Result<()> {
    let settings = typed::Restore::from(r)?;
    let target_dir =
        settings.pg_data.clone().ok_or_else(|| anyhow!("restore needs --pg-data=DIR (an empty or new directory)"))?;
    let req = &pgcairn::RestoreRequest {
        target: target_dir,
        set: target.set.clone(),
        tablespace_map: parse_tablespace_map(tablespace_map)?,
        progress: progress(),
        recovery: with_options(recovery(common, &settings.forwarded, target)?, recovery_options)?,
        delta,
        check_server_environment: true,
        databases,
    };
    let repo = common.access()?.open().await?;
    let sum = pgcairn::restore(&repo, req).await?;
    let delta_note = if req.delta {
        format!(" ({} files unchanged, {} fetched)", sum.files_unchanged, output::human(sum.bytes_fetched))
    } else {
        String::new()
    };
    outln!("chose backup {}: {}", sum.label, sum.chosen_because);
    outln!(
        "restored backup {} into {}: {} in {} files{delta_note}, {:.1}s; start PostgreSQL on it to finish recovery",
        sum.label,
        req.target.display(),
        output::human(sum.bytes),
        sum.files,
        sum.seconds
    );
    if !sum.databases_zeroed.is_empty() {
        outln!(
            "left out (files written as zeros): {}; once the server is up, DROP DATABASE each of them: they cannot be used",
            sum.databases_zeroed.join(", ")
        );
    }
    Ok(())
}

/// restore_command for a restored cluster: this binary, with the settings the
/// table forwards to archive-get, quoted for /bin/sh.
pub(crate) fn restore_command(forwarded: &[String]) -> Result<String> {
    let exe = std::env::current_exe()?;
    let mut words = vec![exe.display().to_string()];
    words.extend(forwarded.iter().cloned());
    let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    Ok(format!("{} archive-get %f \"%p\"", quoted.join(" ")))
}

pub(crate) fn shell_quote(w: &str) -> String {
    if w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

pub(crate) fn parse_tablespace_map(items: &[String]) -> Result<HashMap<u32, PathBuf>> {
    items
        .iter()
        .map(|i| {
            let (oid, dir) = i.split_once('=').ok_or_else(|| anyhow!("--tablespace-map {i}: use OID=DIR"))?;
            let oid = oid.parse().map_err(|_| anyhow!("--tablespace-map {i}: {oid} is not a tablespace OID"))?;
            Ok((oid, PathBuf::from(dir)))
        })
        .collect()
}

/// `--recovery-option KEY=VALUE` (repeatable) added to `r`, and checked with it.
fn with_options(mut r: Recovery, options: &[String]) -> Result<Recovery> {
    for o in options {
        let (k, v) = o.split_once('=').ok_or_else(|| anyhow!("--recovery-option {o}: use KEY=VALUE"))?;
        r.options.push((k.trim().to_string(), v.to_string()));
    }
    if r.standby && !r.options.iter().any(|(k, _)| k == "primary_conninfo") {
        tracing::warn!(
            "a standby without --recovery-option primary_conninfo=… follows the archive only, not its primary"
        );
    }
    r.check()?;
    Ok(r)
}

pub(crate) fn recovery(common: &Common, forwarded: &[String], t: &TargetArgs) -> Result<Recovery> {
    let standby = t.target_type == crate::TargetType::Standby;
    // A standby replays like a recovery to the end of the archive, then follows its primary.
    let kind = if standby {
        "default".to_string()
    } else {
        t.target_type.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    };
    let target = RecoveryTarget::parse(&kind, t.target.as_deref())?;
    let action = t.target_action.as_deref().map(TargetAction::parse).transpose()?;
    let timeline = t.target_timeline.as_deref().map(TimelineTarget::parse).transpose()?;
    // PGCAIRN_REPO_PASSPHRASE does not reach PostgreSQL's restore_command; only a
    // key file or passphrase file named in the forwarded settings does.
    if target != RecoveryTarget::None && common.selected.key_file.is_none() && common.selected.passphrase_file.is_none()
    {
        tracing::warn!("restore_command will need the repository key: set repo-key-file (or repo-passphrase-file) where PostgreSQL can read it");
    }
    let restore_command = restore_command(forwarded)?;
    let (exclusive, options) = (t.target_exclusive, Vec::new());
    let recovery = Recovery { target, exclusive, action, timeline, restore_command, standby, options };
    recovery.check()?;
    Ok(recovery)
}
