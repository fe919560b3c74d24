//! WAL files as archive-push validates them: segments, history and backup files.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgcairn::testing::{validate_backup_history, validate_history, validate_segment, WalFile};

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(40);
    let name = String::from_utf8_lossy(&data[..split]);
    let body = &data[split..];
    if let Some(f) = WalFile::parse(&name) {
        let _ = validate_segment(&f, body, 42, 17, 1 << 24);
        let _ = validate_backup_history(&f, body, 1 << 24);
    }
    let _ = validate_history(2, body);
});
