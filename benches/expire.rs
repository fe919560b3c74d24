//! expire of a large repository: BACKUPS synthetic backups (a full every CHAIN, incrs
//! between) with PACKS small packs each, on local storage, then `expire
//! --retention-full=KEEP` through the public API (info, plan, lock, deletes in the
//! §8.2 order). Prints the wall time of each phase and the process's peak RSS.
//!
//!   cargo bench -p pgcairn-engine --bench expire
//!   BACKUPS=120 CHAIN=10 PACKS=100 KEEP=2 cargo bench -p pgcairn-engine --bench expire
//!
//! Figures: docs/benchmarks.md (expire).

// A benchmark: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use pgcairn::{ExpireRequest, RepoLocation, RetentionPolicy};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`: nothing to list
    }
    let (backups, chain, packs, keep) = (env("BACKUPS", 120), env("CHAIN", 10), env("PACKS", 100), env("KEEP", 2));
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
    let location = RepoLocation::parse(&dir.path().display().to_string()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = location.open("main", &pgcairn::CloudSettings::default()).unwrap();
        let started = Instant::now();
        let repo = pgcairn::testing::synthetic_repository(storage, backups, chain, packs, 1024).await.unwrap();
        println!("built {backups} backups × {packs} packs in {:.1}s", started.elapsed().as_secs_f64());
        let started = Instant::now();
        let req = ExpireRequest {
            policy: RetentionPolicy { full: Some(keep as u32), time_zone: "UTC".into(), ..Default::default() },
            ..Default::default()
        };
        let report = pgcairn::expire(&repo, &req).await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        let expired = report.backups.iter().filter(|b| b.expired).count();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        println!(
            "expire: {expired} of {backups} backups, {} objects deleted in {secs:.2}s ({:.0} objects/s); peak RSS {:.0} MiB",
            report.deleted_objects,
            report.deleted_objects as f64 / secs,
            peak_rss_mib()
        );
    });
}
