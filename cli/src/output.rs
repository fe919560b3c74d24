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
pub(crate) fn print_expire(r: &pgcairn::ExpireReport) {
    if !r.policy_set && r.backups.iter().all(|b| !b.expired) {
        println!("expire: no retention policy set (retention-full, retention-keep-*): nothing expired");
        return;
    }
    let verb = if r.dry_run { "would expire" } else { "expired" };
    for b in &r.backups {
        match &b.kept_by {
            None => println!("{verb} {} backup {}", b.backup_type, b.label),
            Some(why) => println!("kept {} backup {}: {why}", b.backup_type, b.label),
        }
    }
    for w in &r.wal {
        println!("{verb} WAL on timeline {}: {} files, {} .. {}", w.timeline, w.files, w.first, w.last);
    }
    if !r.dry_run {
        println!("expire: {} objects deleted, {}", r.deleted_objects, human(r.deleted_bytes));
    }
    for s in &r.spool_pruned {
        println!("forgot async spool entry {s}: its WAL is expired");
    }
    for f in &r.failures {
        eprintln!("could not delete {f}; the repository is consistent and the next expire retries it");
    }
}

pub(crate) fn print_info(r: &pgcairn::InfoReport) {
    println!("stanza: {}", r.stanza);
    println!("    repository: {} (format {})", r.repo, r.format_version);
    if r.encrypted {
        println!("    encryption: aes-256-gcm");
    } else {
        println!(
            "    encryption: NONE: created with --no-encryption; whoever can read the storage can read every backup"
        );
    }
    println!(
        "    system identifier: {}, PostgreSQL {}.{}",
        r.system_identifier,
        r.pg_version / 10000,
        r.pg_version % 10000
    );
    println!("    repository size: {}", human(r.repo_size));
    match &r.retention_policy {
        Some(p) => println!("    retention: {p}"),
        None => println!("    retention: none set: nothing is ever expired (see retention-full, retention-keep-*)"),
    }
    if r.archive.is_empty() {
        println!("    wal archive: empty");
    }
    for a in &r.archive {
        let range = match (&a.first, &a.last) {
            (Some(f), Some(l)) => format!("{f} - {l} ({} segments)", a.segments),
            _ => "history only".into(),
        };
        let gaps = if a.gaps.is_empty() { "no gaps".to_string() } else { format!("GAPS: {}", a.gaps.join(", ")) };
        println!("    wal archive, timeline {}: {range}, {gaps}", a.timeline);
    }
    if r.backups.is_empty() {
        println!("    no backups: take one with `pgcairn --stanza={} backup`", r.stanza);
    }
    for b in &r.backups {
        print_backup(b);
    }
}

fn print_backup(b: &pgcairn::BackupInfo) {
    println!();
    let Some(d) = &b.details else {
        println!("    DAMAGED backup: {}", b.label);
        println!("        {}", b.problem.as_deref().unwrap_or("its manifest cannot be read"));
        return;
    };
    println!("    {} backup: {}", d.backup_type, b.label);
    match b.status {
        pgcairn::BackupStatus::Ok => {}
        pgcairn::BackupStatus::Damaged => println!("        DAMAGED: {}", b.problem.as_deref().unwrap_or("")),
        pgcairn::BackupStatus::NotRestorable => {
            println!("        NOT RESTORABLE: {}", b.problem.as_deref().unwrap_or(""))
        }
    }
    if let Some(parent) = &d.parent {
        println!("        based on: {parent}");
    }
    if let Some(note) = &b.note {
        println!("        note: {note}");
    }
    if let Some(retention) = &b.retention {
        println!("        retention: {retention}");
    }
    println!("        timestamp start/stop: {} / {}", d.start_time, d.stop_time);
    let wal = match (&d.wal_start, &d.wal_stop) {
        _ if d.wal_included => "wal included in the backup".to_string(),
        (Some(s), Some(e)) => format!("wal archived {s} - {e}"),
        _ => String::new(),
    };
    println!("        lsn start/stop: {} / {} (timeline {}), {wal}", d.start_lsn, d.stop_lsn, d.timeline);
    println!(
        "        database size: {}, files: {}, new in repository: {}",
        human(d.size),
        d.files,
        human(d.stored_new)
    );
}
