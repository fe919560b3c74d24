//! How results read on a terminal: sizes, and info's text report (JSON comes
//! straight from the engine's serialisable reports).

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// expire's plan or result: each backup's fate, the WAL removed, what failed.
pub(crate) fn print_expire(r: &pgcairn::ExpireReport) -> anyhow::Result<()> {
    write_expire(&mut std::io::stdout().lock(), r)
}

/// The same, to `out` (backup sends its auto-expire's lines to stderr: its stdout is
/// the label alone).
pub(crate) fn write_expire(out: &mut dyn std::io::Write, r: &pgcairn::ExpireReport) -> anyhow::Result<()> {
    if !r.policy_set && r.backups.iter().all(|b| !b.expired) {
        writeln!(out, "expire: no retention policy set (retention-full, retention-keep-*): nothing expired")?;
        return Ok(());
    }
    let verb = if r.dry_run { "would expire" } else { "expired" };
    for b in &r.backups {
        match &b.kept_by {
            None => {
                let why = b.expired_because.as_deref().unwrap_or("no rule keeps it");
                writeln!(out, "{verb} {} backup {}: {why}", b.backup_type, b.label)?;
            }
            Some(why) => writeln!(out, "kept {} backup {}: {why}", b.backup_type, b.label)?,
        }
    }
    for w in &r.wal {
        writeln!(out, "{verb} WAL on timeline {}: {} files, {} .. {}", w.timeline, w.files, w.first, w.last)?;
    }
    if !r.dry_run {
        writeln!(out, "expire: {} objects deleted, {}", r.deleted_objects, human(r.deleted_bytes))?;
    }
    for s in &r.spool_pruned {
        writeln!(out, "forgot async spool entry {s}: its WAL is expired")?;
    }
    for f in &r.failures {
        if f.starts_with("no pack deleted") {
            eprintln!("expire: {f}");
        } else {
            eprintln!("could not delete {f}; the repository is consistent and the next expire retries it");
        }
    }
    Ok(())
}

/// "2026-12-01T02:30:00Z (41s ago)".
fn ago(unix: u64) -> String {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let when = chrono::DateTime::from_timestamp(unix as i64, 0)
        .map_or_else(|| unix.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    format!("{when} ({}s ago)", now.saturating_sub(unix))
}

pub(crate) fn print_info(r: &pgcairn::InfoReport) -> anyhow::Result<()> {
    outln!("stanza: {}", r.stanza);
    outln!("    status: {} ({})", r.status.code, r.status.message);
    outln!("    repository: {} (format {})", r.repo, r.format_version);
    if r.encrypted {
        outln!("    encryption: aes-256-gcm");
    } else {
        outln!(
            "    encryption: NONE: created with --no-encryption; whoever can read the storage can read every backup"
        );
    }
    outln!(
        "    system identifier: {}, PostgreSQL {}.{}",
        r.system_identifier,
        r.pg_version / 10000,
        r.pg_version % 10000
    );
    outln!("    repository size: {}", human(r.repo_size));
    match &r.retention_policy {
        Some(p) => outln!("    retention: {p}"),
        None => outln!("    retention: none set: nothing is ever expired (see retention-full, retention-keep-*)"),
    }
    if r.archive.is_empty() {
        outln!("    wal archive: empty");
    }
    for a in &r.archive {
        let range = match (&a.first, &a.last) {
            (Some(f), Some(l)) => format!("{f} - {l} ({} segments)", a.segments),
            _ => "history only".into(),
        };
        let mut gaps = if a.gaps.is_empty() { "no gaps".to_string() } else { format!("GAPS: {}", a.gaps.join(", ")) };
        if !a.earlier_gaps.is_empty() {
            gaps += &format!(
                " (before the newest backup, not needed by it: {}; no point-in-time recovery across them)",
                a.earlier_gaps.join(", ")
            );
        }
        let arrived = a.last_arrived.map(|t| format!(", last arrived {}", ago(t))).unwrap_or_default();
        let streamed = a.streamed_to.map(|lsn| format!(", streamed by wal-receive up to {lsn}")).unwrap_or_default();
        outln!("    wal archive, timeline {}: {range}, {gaps}{arrived}{streamed}", a.timeline);
    }
    print_proofs(r)?;
    if r.backups.is_empty() {
        outln!("    no backups: take one with `pgcairn --stanza={} backup`", r.stanza);
    }
    for b in &r.backups {
        print_backup(b)?;
    }
    Ok(())
}

/// The last verify and drills: the proof that backups restore.
fn print_proofs(r: &pgcairn::InfoReport) -> anyhow::Result<()> {
    match &r.last_verify {
        None => outln!("    last verify: never (run `pgcairn verify` weekly)"),
        Some(v) => {
            let scope = match (&v.set, v.sample) {
                (Some(s), _) => format!("backup {s}"),
                (None, Some(f)) => format!("{:.0}% sample", f * 100.0),
                (None, None) => "whole repository".into(),
            };
            let verdict = if v.ok { "ok".to_string() } else { format!("DAMAGE FOUND ({})", damaged_labels(v)) };
            outln!("    last verify: {} ({scope}, {:.0}s): {verdict}", v.started, v.seconds);
        }
    }
    if r.last_drills.is_empty() {
        outln!("    last drill: never (run `pgcairn drill` monthly)");
    }
    for d in &r.last_drills {
        let verdict = match (d.ok, d.databases_zeroed.len()) {
            (true, 0) => "passed".to_string(),
            (true, n) => format!("passed, partially ({n} databases left out)"),
            (false, _) => format!("FAILED: {}", d.failure.as_deref().unwrap_or("")),
        };
        outln!(
            "    drill {}: backup {} to {}, RTO {:.0}s (restore {:.0}s, recovery {:.0}s, checks {:.0}s): {verdict}",
            d.started,
            d.label,
            d.target,
            d.rto_seconds,
            d.restore_seconds,
            d.recovery_seconds,
            d.checks_seconds
        );
    }
    Ok(())
}

fn damaged_labels(v: &pgcairn::VerifyReport) -> String {
    let mut parts: Vec<String> = v.backups.iter().filter(|b| b.damage.is_some()).map(|b| b.label.clone()).collect();
    let breaks = v.timelines.iter().filter(|t| t.gaps.iter().any(|g| !g.earlier) || t.history.is_some()).count();
    if breaks > 0 {
        parts.push(format!("WAL of {breaks} timeline(s)"));
    }
    parts.join(", ")
}

fn print_backup(b: &pgcairn::BackupInfo) -> anyhow::Result<()> {
    outln!();
    let Some(d) = &b.details else {
        outln!("    DAMAGED backup: {}", b.label);
        outln!("        {}", b.problem.as_deref().unwrap_or("its manifest cannot be read"));
        return Ok(());
    };
    outln!("    {} backup: {}", d.backup_type, b.label);
    match b.status {
        pgcairn::BackupStatus::Ok => {}
        pgcairn::BackupStatus::Damaged => outln!("        DAMAGED: {}", b.problem.as_deref().unwrap_or("")),
        pgcairn::BackupStatus::NotRestorable => {
            outln!("        NOT RESTORABLE: {}", b.problem.as_deref().unwrap_or(""))
        }
    }
    if let Some(parent) = &d.parent {
        outln!("        based on: {parent}");
    }
    if let Some(note) = &b.note {
        outln!("        note: {note}");
    }
    if let Some(retention) = &b.retention {
        outln!("        retention: {retention}");
    }
    outln!("        timestamp start/stop: {} / {}", d.start_time, d.stop_time);
    if let Some(source) = &d.source {
        outln!("        taken from: {} {}", source.role, source.server);
    }
    let wal = match (&d.wal_start, &d.wal_stop) {
        _ if d.wal_included => "wal included in the backup".to_string(),
        (Some(s), Some(e)) => format!("wal archived {s} - {e}"),
        _ => String::new(),
    };
    outln!("        lsn start/stop: {} / {} (timeline {}), {wal}", d.start_lsn, d.stop_lsn, d.timeline);
    outln!("        database size: {}, files: {}, new in repository: {}", human(d.size), d.files, human(d.stored_new));
    if let Some(read) = d.read.as_ref().filter(|_| d.parent.is_some()) {
        let how = match &read.fallback {
            None if read.from_summaries() => "changed pages only (WAL summaries)".to_string(),
            None => "the whole cluster".to_string(),
            Some(why) => format!("the whole cluster, because {why}"),
        };
        outln!("        read: {} streamed, {how}", human(read.streamed));
    }
    Ok(())
}

/// Nagios plugin format: `SERVICE STATUS - text | perfdata`, then one line per problem.
/// `what`: "stanza NAME", with " repository N" when several are shown.
pub(crate) fn print_archive_check(what: &str, r: &pgcairn::ArchiveCheck) -> anyhow::Result<()> {
    let status = match r.level {
        pgcairn::Level::Ok => "OK",
        pgcairn::Level::Warning => "WARNING",
        pgcairn::Level::Critical => "CRITICAL",
    };
    let newest = match (&r.newest_segment, r.lag_seconds) {
        (Some(s), Some(lag)) => format!("newest segment {s} arrived {lag}s ago"),
        (Some(s), None) => format!("newest segment {s}"),
        _ => "no WAL archived".to_string(),
    };
    let failures =
        r.archiver.as_ref().map(|a| format!(", {} archive_command failures", a.failed_count)).unwrap_or_default();
    let mut perf = Vec::new();
    if let Some(lag) = r.lag_seconds {
        perf.push(format!("lag={lag}s"));
    }
    if let Some(b) = r.backlog_segments {
        perf.push(format!("backlog={b};{}", pgcairn::BACKLOG_WARNING));
    }
    if let Some(a) = &r.archiver {
        perf.push(format!("failed={}c", a.failed_count));
    }
    outln!("PGCAIRN ARCHIVE {status} - {what}: {newest}{failures} | {}", perf.join(" "));
    for p in &r.problems {
        outln!("{p}");
    }
    Ok(())
}
