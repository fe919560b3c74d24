//! Printing verify and drill reports: the proof that backups restore.

use std::process::ExitCode;

use anyhow::Result;

use crate::output::human;

/// Print a verify report; exit `DAMAGED` when it found damage.
pub(crate) fn print_verify(r: &pgcairn::VerifyReport, json: bool) -> Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print_verify_text(r)?;
    }
    Ok(verify_exit_code(r))
}

/// `DAMAGED` when the report found damage; `STORAGE` when it is clean but could not
/// be recorded (said on stderr).
pub(crate) fn verify_exit_code(r: &pgcairn::VerifyReport) -> ExitCode {
    if let Some(why) = &r.not_recorded {
        eprintln!("pgcairn: error: the verify result could not be recorded in the repository, so info and monitoring will not show it: {why}");
        if r.ok {
            return ExitCode::from(pgcairn::exit::STORAGE);
        }
    }
    if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(pgcairn::exit::DAMAGED)
    }
}

pub(crate) fn print_verify_text(r: &pgcairn::VerifyReport) -> anyhow::Result<()> {
    let scope = match (&r.set, r.sample) {
        (Some(s), _) => format!("backup {s} and what it needs"),
        (None, Some(f)) => format!("a {}% sample of the packs (at least one pack per backup)", f * 100.0),
        (None, None) => "the whole repository".into(),
    };
    outln!(
        "verified {scope} in {:.1}s: {} of {} packs ({}, {} blobs), {} WAL files ({})",
        r.seconds,
        r.packs_checked,
        r.packs_listed,
        human(r.pack_bytes),
        r.blobs_checked,
        r.wal_files,
        human(r.wal_bytes)
    );
    for b in &r.backups {
        match &b.damage {
            None => match &b.note {
                Some(note) => outln!("    backup {}: ok ({note})", b.label),
                None => outln!("    backup {}: ok", b.label),
            },
            Some(d) => {
                let place = match (&d.file, d.block) {
                    (Some(f), Some(n)) => format!("file {f} block {n} ({} damaged blocks in all): ", b.damaged_blocks),
                    _ => String::new(),
                };
                outln!("    backup {}: DAMAGED: {place}{}: {}", b.label, d.object, d.detail);
            }
        }
    }
    for t in &r.timelines {
        let ranges: Vec<String> = t.ranges.iter().map(|(a, b)| format!("{a} - {b}")).collect();
        let ranges = if ranges.is_empty() { "no segments".to_string() } else { ranges.join(", ") };
        outln!("    wal timeline {}: {ranges}", t.timeline);
        for g in &t.gaps {
            let kind = if g.earlier { "earlier gap (warning)" } else { "GAP" };
            outln!("        {kind} {} - {}: {}", g.first, g.last, g.breaks);
        }
        if let Some(h) = &t.history {
            outln!("        HISTORY: {h}");
        }
    }
    for w in &r.warnings {
        outln!("    warning: {w}");
    }
    if r.ok {
        outln!("verify ok: every backup checked restores, and the archive has no gap after the oldest one");
    } else {
        outln!("verify found DAMAGE: see docs/operations.md \"When verify finds damage\"; take a new full backup now (`pgcairn backup --type=full`) so that a clean restore point exists");
    }
    Ok(())
}

/// Print a drill report; exit `DRILL_FAILED` when the drill failed.
pub(crate) fn print_drill(r: &pgcairn::DrillReport, json: bool) -> Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(r)?);
    } else {
        outln!("drill of backup {} ({}) to {}:", r.label, r.chosen_because, r.target);
        outln!(
            "    RTO {:.1}s = restore {:.1}s + recovery {:.1}s + checks {:.1}s, {} restored, PostgreSQL from {}",
            r.rto_seconds,
            r.restore_seconds,
            r.recovery_seconds,
            r.checks_seconds,
            human(r.data_bytes),
            r.pg_bin
        );
        outln!("    pg_amcheck: {}; SQL checks passed: {}", r.amcheck, r.sql_checks_passed);
        if !r.databases_zeroed.is_empty() {
            outln!("    databases left out (written as zeros, not checked): {}", r.databases_zeroed.join(", "));
        }
        match &r.failure {
            None if !r.databases_zeroed.is_empty() => {
                outln!("drill passed, partially: the databases left out were not proven")
            }
            None => outln!("drill passed"),
            Some(f) => outln!("drill FAILED: {f}"),
        }
    }
    Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::from(pgcairn::exit::DRILL_FAILED) })
}
