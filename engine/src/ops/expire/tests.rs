//! The policy as a pure function over synthetic backup lists, and --set.

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::policy::{decide, wal_to_delete, window_start, Candidate};
use super::*;
use crate::pg::Lsn;

const SEG: u32 = 16 << 20;

fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
}

fn backup(label: &str, kind: BackupType, parent: Option<&str>, stop_time: DateTime<Utc>) -> Candidate {
    Candidate {
        label: label.into(),
        kind,
        parent: parent.map(str::to_string),
        stop_time,
        start_lsn: Lsn(0),
        stop_lsn: Lsn(1),
        timeline: 1,
        usable: true,
    }
}

fn policy() -> RetentionPolicy {
    RetentionPolicy { time_zone: "UTC".into(), ..Default::default() }
}

fn kept(backups: &[Candidate], reasons: &[Reason]) -> Vec<String> {
    backups.iter().zip(reasons).filter(|(_, r)| r.is_some()).map(|(b, _)| b.label.clone()).collect()
}

/// A full every day at 01:00 UTC for two years up to Monday 2026-11-30; 7 daily,
/// 4 weekly, 12 monthly keeps exactly these 20 days (worked out by hand: the ISO
/// weeks end on Sundays, the months on their last day).
#[test]
fn seven_daily_four_weekly_twelve_monthly() {
    let first = at(2024, 12, 1, 1, 0);
    let backups: Vec<Candidate> = (0..730)
        .map(|d| {
            let t = first + Duration::days(d);
            backup(&t.format("%Y-%m-%d").to_string(), BackupType::Full, None, t)
        })
        .collect();
    assert_eq!(backups.last().unwrap().label, "2026-11-30");
    let p = RetentionPolicy { keep_daily: Some(7), keep_weekly: Some(4), keep_monthly: Some(12), ..policy() };
    let reasons = decide(&p, &backups, at(2026, 11, 30, 12, 0)).unwrap();
    let mut want: Vec<&str> = vec![
        "2026-11-24",
        "2026-11-25",
        "2026-11-26",
        "2026-11-27",
        "2026-11-28",
        "2026-11-29",
        "2026-11-30",
        "2026-11-22",
        "2026-11-15", // weeks 48 and 47 (49 and 48's Sunday already kept)
        "2025-12-31",
        "2026-01-31",
        "2026-02-28",
        "2026-03-31",
        "2026-04-30",
        "2026-05-31",
        "2026-06-30",
        "2026-07-31",
        "2026-08-31",
        "2026-09-30",
        "2026-10-31",
    ];
    want.sort_unstable();
    assert_eq!(kept(&backups, &reasons), want);
    let reason = |label: &str| reasons[backups.iter().position(|b| b.label == label).unwrap()].clone().unwrap();
    assert_eq!(reason("2026-11-15"), "retention-keep-weekly=4 (2026-W46)");
    assert_eq!(reason("2026-02-28"), "retention-keep-monthly=12 (2026-02)");
}

/// Calendar days are the configured zone's: 23:30 UTC on the 29th is already the
/// 30th in Paris.
#[test]
fn calendar_days_follow_the_time_zone() {
    let backups = vec![
        backup("a", BackupType::Full, None, at(2026, 11, 29, 22, 30)),
        backup("b", BackupType::Full, None, at(2026, 11, 29, 23, 30)),
        backup("c", BackupType::Full, None, at(2026, 11, 30, 10, 0)),
    ];
    let now = at(2026, 11, 30, 12, 0);
    let utc = RetentionPolicy { keep_daily: Some(2), ..policy() };
    assert_eq!(kept(&backups, &decide(&utc, &backups, now).unwrap()), ["b", "c"]);
    let paris = RetentionPolicy { time_zone: "Europe/Paris".into(), ..utc };
    assert_eq!(kept(&backups, &decide(&paris, &backups, now).unwrap()), ["a", "c"]);
}

fn chains() -> Vec<Candidate> {
    let t = |d: i64| at(2026, 1, 1, 0, 0) + Duration::days(d);
    vec![
        backup("F1", BackupType::Full, None, t(0)),
        backup("D1", BackupType::Diff, Some("F1"), t(1)),
        backup("I1", BackupType::Incr, Some("D1"), t(2)),
        backup("F2", BackupType::Full, None, t(3)),
        backup("D2a", BackupType::Diff, Some("F2"), t(4)),
        backup("I2a", BackupType::Incr, Some("D2a"), t(5)),
        backup("D2b", BackupType::Diff, Some("F2"), t(6)),
        backup("I2b", BackupType::Incr, Some("D2b"), t(7)),
        backup("F3", BackupType::Full, None, t(8)),
        backup("I3", BackupType::Incr, Some("F3"), t(9)),
    ]
}

/// retention-full counts fulls and keeps what hangs on them; retention-diff keeps
/// the newest diffs of those fulls, and an incr goes with its parent.
#[test]
fn full_and_diff_counts_keep_whole_chains() {
    let b = chains();
    let now = at(2026, 2, 1, 0, 0);
    let two_fulls = RetentionPolicy { full: Some(2), ..policy() };
    assert_eq!(kept(&b, &decide(&two_fulls, &b, now).unwrap()), ["F2", "D2a", "I2a", "D2b", "I2b", "F3", "I3"]);
    let one_diff = RetentionPolicy { diff: Some(1), ..two_fulls };
    assert_eq!(kept(&b, &decide(&one_diff, &b, now).unwrap()), ["F2", "D2b", "I2b", "F3", "I3"]);
}

/// A calendar tier that keeps a diff keeps its full ("parent of").
#[test]
fn a_kept_backup_keeps_its_parents() {
    let b = chains();
    let p = RetentionPolicy { full: Some(1), keep_monthly: Some(1), ..policy() };
    let reasons = decide(&p, &b, at(2026, 2, 1, 0, 0)).unwrap();
    assert_eq!(kept(&b, &reasons), ["F3", "I3"], "January's newest is I3 itself");
    let p = RetentionPolicy { full: Some(1), keep_daily: Some(4), ..policy() };
    let reasons = decide(&p, &b, at(2026, 2, 1, 0, 0)).unwrap();
    assert_eq!(kept(&b, &reasons), ["F2", "D2b", "I2b", "F3", "I3"]);
    assert_eq!(reasons[3].as_deref(), Some("parent of I2b"));
}

/// Time-based full retention keeps the fulls that stopped inside the window and
/// the newest one before it, which restores the window's first moments.
#[test]
fn full_retention_by_time() {
    let now = at(2026, 6, 1, 0, 0);
    let b: Vec<Candidate> = [40, 20, 5]
        .iter()
        .map(|&d| backup(&format!("F-{d}"), BackupType::Full, None, now - Duration::days(d)))
        .collect();
    let p = RetentionPolicy { full: Some(10), full_type: FullRetention::Time, ..policy() };
    assert_eq!(kept(&b, &decide(&p, &b, now).unwrap()), ["F-20", "F-5"]);
}

/// Damaged backups count for no rule, but the newest backup is always kept.
#[test]
fn unusable_backups_count_for_nothing_but_the_newest_stays() {
    let mut b = chains();
    b[8].usable = false; // F3
    b[9].usable = false; // I3
    let p = RetentionPolicy { full: Some(1), ..policy() };
    let reasons = decide(&p, &b, at(2026, 2, 1, 0, 0)).unwrap();
    assert_eq!(kept(&b, &reasons), ["F2", "D2a", "I2a", "D2b", "I2b", "F3", "I3"]);
    assert_eq!(reasons[9].as_deref(), Some("newest backup"));
}

/// Bad policies are refused before anything is read.
#[test]
fn invalid_policies_are_refused() {
    for (p, want) in [
        (RetentionPolicy { full: Some(0), ..policy() }, "retention-full = 0"),
        (RetentionPolicy { keep_weekly: Some(0), ..policy() }, "retention-keep-weekly = 0"),
        (RetentionPolicy { diff: Some(2), ..policy() }, "retention-diff alone"),
        (RetentionPolicy { full: Some(1), time_zone: "Mars/Olympus".into(), ..policy() }, "Mars/Olympus"),
    ] {
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    assert!(!policy().is_set());
}

/// --set takes the backup and its dependants, and never the newest.
#[test]
fn expire_set_takes_dependants_and_refuses_the_newest() {
    let b = chains();
    let reasons = expire_set(&b, "D2a").unwrap();
    let gone: Vec<&str> = b.iter().zip(&reasons).filter(|(_, r)| r.is_none()).map(|(b, _)| b.label.as_str()).collect();
    assert_eq!(gone, ["D2a", "I2a"]);
    assert!(expire_set(&b, "F3").unwrap_err().to_string().contains("newest"));
    assert!(expire_set(&b, "nope").unwrap_err().to_string().contains("no such backup"));
}

fn seg(timeline: u32, segno: u64) -> String {
    crate::pg::wal::segment_name(timeline, segno, SEG)
}

/// WAL before the window goes, but a kept backup's own start..stop range stays,
/// and history files of timelines a kept backup is on or after stay.
#[test]
fn wal_before_the_window_goes_except_what_kept_backups_need() {
    let lsn = |segno: u64| Lsn(segno * SEG as u64 + 40);
    let old = Candidate {
        start_lsn: lsn(10),
        stop_lsn: lsn(11),
        ..backup("old", BackupType::Full, None, at(2026, 1, 1, 0, 0))
    };
    let new = Candidate {
        start_lsn: lsn(20),
        stop_lsn: lsn(20),
        timeline: 2,
        ..backup("new", BackupType::Full, None, at(2026, 1, 2, 0, 0))
    };
    let kept = [&old, &new];
    let mut names: Vec<String> = (1..=25).map(|n| seg(1, n)).collect();
    names.push("00000002.history".into());
    names.push(format!("{}.00000028.backup", seg(1, 10)));

    let window = window_start(&policy(), &kept);
    assert_eq!(window, Some(lsn(10)));
    let gone = wal_to_delete(&names, &kept, window, SEG);
    assert_eq!(gone, (1..10).map(|n| seg(1, n)).collect::<Vec<_>>());

    let only_newest = RetentionPolicy { archive: Some(1), ..policy() };
    let window = window_start(&only_newest, &kept);
    assert_eq!(window, Some(lsn(20)));
    let gone = wal_to_delete(&names, &kept, window, SEG);
    let want: Vec<String> = (1..10).chain(12..20).map(|n| seg(1, n)).collect();
    assert_eq!(gone, want, "the old backup keeps 10..=11 (and its .backup file)");

    assert!(wal_to_delete(&names, &[], None, SEG).is_empty(), "nothing kept: all WAL stays");
    let later = Candidate { timeline: 3, ..new.clone() };
    let gone = wal_to_delete(&names, &[&later], Some(lsn(20)), SEG);
    assert!(gone.contains(&"00000002.history".to_string()), "no kept backup on or before timeline 2");
}

/// Issue 12, immutable buckets: deletes refused (S3 Object Lock) are reported by
/// object, the repository stays one every reader accepts, and the next expire, once
/// deletes work, finishes the job: no pack of an expired backup is left.
#[tokio::test]
async fn refused_deletes_are_reported_and_finished_later() {
    use crate::storage::fault::{Fault, FaultStorage};
    use crate::storage::memory::MemoryStorage;
    use crate::storage::Storage;
    let mem = std::sync::Arc::new(MemoryStorage::new());
    let faulty = std::sync::Arc::new(FaultStorage::new(mem.clone()));
    let repo = crate::repo::synthetic::synthetic_repository(faulty.clone(), 6, 2, 3, 64).await.unwrap();
    let policy = RetentionPolicy { full: Some(1), ..policy() };
    let req = ExpireRequest { policy, ..Default::default() };

    faulty.inject(Fault::RefuseDeletes { prefix: "data/".into() });
    let report = expire(&repo, &req).await.unwrap();
    assert!(!report.failures.is_empty() && report.failures.iter().all(|f| f.contains("data/")), "{report:?}");
    let listed = crate::ops::info::info(&repo).await.unwrap();
    assert_eq!(listed.backups.len(), 2, "the expired backups are gone from view");
    assert!(listed.backups.iter().all(|b| b.status == BackupStatus::Ok));
    assert_eq!(mem.list("data/").await.unwrap().len(), 6 * 3, "no pack was deleted");

    faulty.allow_deletes();
    let report = expire(&repo, &req).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(mem.list("data/").await.unwrap().len(), 2 * 3, "only the kept chain's packs stay");
    let full = &listed.backups[0].label;
    assert!(mem.list("backup/").await.unwrap().iter().all(|o| o.key.contains(full.as_str())));
    assert!(mem.list("lock/").await.unwrap().is_empty(), "the lock was released");
}

/// Issue 12, leftovers: a backup killed before its summary leaves its marker, block
/// list parts, packs and maybe an index object that no backup names. Younger than
/// repo-gc-grace they stay (it might still be running elsewhere); older, expire
/// collects them, and nothing a kept backup names.
#[tokio::test]
async fn a_killed_backup_is_collected_after_the_grace_period() {
    use crate::repo::blocklist::BlockPart;
    use crate::repo::format::{index_key, pack_key, IndexFile, IndexPack};
    use crate::storage::memory::MemoryStorage;
    use crate::storage::Storage;
    let mem = std::sync::Arc::new(MemoryStorage::new());
    let repo = crate::repo::synthetic::synthetic_repository(mem.clone(), 2, 2, 3, 64).await.unwrap();
    let kept_packs = mem.list("data/").await.unwrap().len();
    let killed = "20991231-000000F";
    repo.mark_backup_started(killed).await.unwrap();
    repo.put_block_part(killed, 0, &BlockPart::default()).await.unwrap();
    let pack = |n: u8| IndexPack { id: hex::encode([n; 32]), key_id: "00".repeat(16), size: 64, blobs: Vec::new() };
    for n in [1, 2] {
        mem.put_new(&pack_key(&pack(n).id), bytes::Bytes::from_static(&[0; 64])).await.unwrap();
    }
    repo.put_meta(&index_key(&"ab".repeat(32)), &IndexFile { packs: vec![pack(1)] }).await.unwrap();
    let req = ExpireRequest { policy: RetentionPolicy { full: Some(1), ..policy() }, ..Default::default() };

    let report = expire(&repo, &req).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(mem.list("data/").await.unwrap().len(), kept_packs + 2, "young leftovers were collected");
    assert!(!mem.list(&format!("backup/{killed}/")).await.unwrap().is_empty());

    mem.backdate("", 2 * 86_400);
    let report = expire(&repo, &req).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(mem.list("data/").await.unwrap().len(), kept_packs, "the killed backup's packs stay");
    assert!(mem.list(&format!("backup/{killed}/")).await.unwrap().is_empty());
    assert_eq!(mem.list("index/").await.unwrap().len(), 2, "the kept backups' index objects only");
    let listed = crate::ops::info::info(&repo).await.unwrap();
    assert!(listed.backups.iter().all(|b| b.status == BackupStatus::Ok), "{listed:?}");
}

/// Issue 12, async spool state: a segment parked in `error/` and a `dropped.log` line
/// about WAL before the kept window mean nothing once that WAL is expired, and kept
/// `check` failing forever; expire forgets them. Newer ones stay.
#[tokio::test]
async fn spool_entries_about_expired_wal_are_forgotten() {
    use crate::storage::memory::MemoryStorage;
    let mem = std::sync::Arc::new(MemoryStorage::new());
    // Six backups starting at segments 1..=6; retention-full=1 keeps the last chain (5, 6).
    let repo = crate::repo::synthetic::synthetic_repository(mem, 6, 2, 1, 16).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let root = spool.path().join("main");
    std::fs::create_dir_all(root.join("error")).unwrap();
    let (old, new) = (seg(1, 2), seg(1, 9));
    std::fs::write(root.join("error").join(&old), b"x").unwrap();
    std::fs::write(root.join("error").join(&new), b"x").unwrap();
    std::fs::write(root.join("dropped.log"), format!("2026-01-01T00:00:00Z {old}\n2026-01-02T00:00:00Z {new}\n"))
        .unwrap();

    let req = ExpireRequest {
        policy: RetentionPolicy { full: Some(1), ..policy() },
        spool_path: Some(spool.path().to_path_buf()),
        ..Default::default()
    };
    let report = expire(&repo, &req).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.spool_pruned.len(), 2, "{report:?}");
    assert!(!root.join("error").join(&old).exists() && root.join("error").join(&new).exists());
    let log = std::fs::read_to_string(root.join("dropped.log")).unwrap();
    assert_eq!(log, format!("2026-01-02T00:00:00Z {new}\n"));
}

/// Regression (issue 21, item 1): a full's `backup/<label>/` removed by hand. The
/// incr's block list still names the full's packs; GC (run because a killed backup
/// left leftovers) deleted them, as no summary named their index object, and a
/// keep-everything retention-full=10 expired the incr. Now the incr is kept (saying
/// why), the packs it names and the index object listing them stay, and the killed
/// backup's leftovers go. When a surviving block list cannot be read, no pack goes.
#[tokio::test]
async fn packs_a_surviving_block_list_names_are_never_collected() {
    use crate::repo::blocklist::{BlockLocation, BlockPart, PackRef};
    use crate::repo::format::{manifest_key, summary_key, ChunkId, IndexFile, Summary};
    use crate::storage::memory::MemoryStorage;
    use crate::storage::Storage;
    let mem = std::sync::Arc::new(MemoryStorage::new());
    let repo = crate::repo::synthetic::synthetic_repository(mem.clone(), 3, 3, 3, 64).await.unwrap();
    let labels = repo.list_backups().await.unwrap();
    let (full, incr) = (labels[0].clone(), labels[1].clone());
    let full_index = repo.load_summary(&full).await.unwrap().indexes[0].clone();
    let file: IndexFile = repo.get_meta(&crate::repo::format::index_key(&full_index)).await.unwrap();
    let id: [u8; 32] = hex::decode(&file.packs[0].id).unwrap().try_into().unwrap();
    let loc =
        BlockLocation { pack: PackRef { id, key_id: [0; 16] }, offset: 0, length: 64, raw_length: 64, base: None };
    let mut part = BlockPart::default();
    part.push(ChunkId([7; 32]), &loc);
    repo.put_block_part(&incr, 0, &part).await.unwrap();
    let mut m = repo.load_manifest(&incr).await.unwrap();
    m.blocks = 1;
    for key in [summary_key(&incr), manifest_key(&incr)] {
        mem.delete(&key).await.unwrap();
    }
    repo.put_meta(&summary_key(&incr), &Summary::of(&m)).await.unwrap();
    repo.put_meta(&manifest_key(&incr), &m).await.unwrap();
    for o in mem.list(&format!("backup/{full}/")).await.unwrap() {
        mem.delete(&o.key).await.unwrap();
    }
    repo.mark_backup_started("20200101-000000F").await.unwrap();
    mem.backdate("", 2 * 86_400);
    let packs_before = mem.list("data/").await.unwrap().len();
    let req = ExpireRequest {
        policy: RetentionPolicy { full: Some(10), ..policy() },
        gc_grace: std::time::Duration::ZERO,
        ..Default::default()
    };

    let plan = expire(&repo, &ExpireRequest { dry_run: true, ..req.clone() }).await.unwrap();
    let kept_by = plan.backups[0].kept_by.clone().unwrap_or_default();
    assert!(kept_by.contains("retention-full=10 (its full is gone"), "{plan:?}");
    let report = expire(&repo, &req).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(repo.list_backups().await.unwrap(), labels[1..]);
    assert!(mem.list("backup/20200101-000000F/").await.unwrap().is_empty(), "the killed backup's leftovers stayed");
    let packs = mem.list("data/").await.unwrap();
    assert!(packs.iter().any(|o| o.key.ends_with(&file.packs[0].id)), "a pack the incr names was deleted");
    assert_eq!(packs.len(), packs_before - 2, "the full's packs no block list names go");
    assert!(!mem.list(&crate::repo::format::index_key(&full_index)).await.unwrap().is_empty(), "its index object went");

    // A survivor whose block list does not authenticate: nothing is known unreachable.
    mem.overwrite(&crate::repo::blocklist::block_part_key(&incr, 0), bytes::Bytes::from_static(b"garbage"));
    repo.mark_backup_started("20200102-000000F").await.unwrap();
    mem.backdate("", 2 * 86_400);
    let report = expire(&repo, &req).await.unwrap();
    assert!(report.failures.iter().any(|f| f.starts_with("no pack deleted")), "{report:?}");
    assert_eq!(mem.list("data/").await.unwrap().len(), packs_before - 2, "a pack went unread");
}

/// Why each expired backup goes, for --dry-run and the report.
#[test]
fn every_expired_backup_says_why() {
    let b = chains();
    let p = RetentionPolicy { full: Some(1), diff: Some(1), ..policy() };
    let keep = decide(&p, &b, at(2026, 2, 1, 0, 0)).unwrap();
    let why = |label: &str| {
        let i = b.iter().position(|c| c.label == label).unwrap();
        super::policy::why_expired(&p, &b, &keep, i)
    };
    assert_eq!(why("F1"), "older than the 1 newest full backups retention-full=1 keeps");
    assert_eq!(why("D1"), "its parent F1 is expired");
    assert_eq!(why("I1"), "its parent D1 is expired");
    let orphan = vec![backup("F9_D", BackupType::Diff, Some("F9"), at(2026, 1, 1, 0, 0)), b[8].clone()];
    let p = RetentionPolicy { full: Some(1), ..policy() };
    let keep = decide(&p, &orphan, at(2026, 2, 1, 0, 0)).unwrap();
    assert!(keep[0].is_none(), "one full is kept, and F3 is newer than F9");
    assert!(super::policy::why_expired(&p, &orphan, &keep, 0).contains("its parent F9 is gone"));
    let p = RetentionPolicy { full: Some(2), ..policy() };
    let keep = decide(&p, &orphan, at(2026, 2, 1, 0, 0)).unwrap();
    assert!(keep[0].as_deref().is_some_and(|k| k.contains("its full is gone")), "{keep:?}");
}
