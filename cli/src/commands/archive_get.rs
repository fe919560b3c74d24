//! `pgcairn archive-get` as restore_command runs it: its exit statuses, and panics
//! that must stop recovery too.

use std::process::ExitCode;

use pgcairn::Error;

/// archive-get's exit status for every failure but "not in the archive" (1). Any
/// status above 125 makes PostgreSQL abort recovery instead of taking the segment as
/// absent and ending recovery early (promoting without the rest of the WAL).
pub(crate) const ARCHIVE_GET_STOP_RECOVERY: u8 = pgcairn::exit::STOP_RECOVERY;

/// Whether this run is archive-get (decided from argv, before or without parsing).
pub(crate) fn is_archive_get() -> bool {
    std::env::args_os().skip(1).any(|a| a == "archive-get")
}

/// For archive-get, a panic must stop recovery too (101 would read as "absent").
pub(crate) fn stop_recovery_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("pgcairn: archive-get failed unexpectedly: stopping recovery (exit {ARCHIVE_GET_STOP_RECOVERY})");
        std::process::exit(ARCHIVE_GET_STOP_RECOVERY.into());
    }));
}

pub(crate) fn archive_get_failure(e: &anyhow::Error) -> ExitCode {
    let hint = match e.downcast_ref::<Error>() {
        Some(Error::Corrupt { .. }) => "the archived file is damaged: recover to a target before it (--type=time or --type=lsn), or restore another backup",
        Some(Error::StorageUnavailable { .. } | Error::Storage { .. }) => "fix access to the repository, then start PostgreSQL again: recovery resumes where it stopped",
        _ => "fix the cause, then start PostgreSQL again: recovery resumes where it stopped",
    };
    eprintln!(
        "pgcairn: error: {e:#}\npgcairn: archive-get exits {ARCHIVE_GET_STOP_RECOVERY} so that PostgreSQL stops recovery instead of ending it early: {hint}"
    );
    ExitCode::from(ARCHIVE_GET_STOP_RECOVERY)
}
