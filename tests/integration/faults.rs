//! Fault matrix: SIGKILL at random points of every command that writes, a storage server
//! that dies mid-upload, a repository that runs out of space, and after each group of
//! faults a full read-back of the repository.
//!
//! | test | faults |
//! |---|---|
//! | `backup_killed_full_and_incr` | `backup --type=full`, then `--type=incr`, killed (archiving on) |
//! | `restore_and_delta_restore_killed` | `restore` into a new directory, then `restore --delta` over the partial one and over a changed one |
//! | `archive_push_and_get_killed` | `pgcairn-archive-push` sync; async: the enqueuing process and the drainer; `archive-get` with prefetch in a restored data directory, and its background WAL fetcher (kill -9 while it opens the repository, fetches, writes the spool); the directory then recovers through the archive and the fetcher exits when recovery ends |
//! | `s3_server_killed_mid_backup` | `backup` and `pgcairn-archive-push` to S3 killed; s3s-fs itself killed mid-backup and restarted; archive-push, and archive-get through its background fetcher, started while it is down |
//! | `cloud_servers_down_mid_backup` | Azurite (SIGTERM) and fake-gcs-server's front (SIGKILL) taken down mid-backup; archive-push, and archive-get through its background fetcher, started while they are down; then restarted |
//! | `repository_disk_full` | backup and archive-push on a 40 MiB tmpfs until ENOSPC, then space freed |
//! | `a_damaged_lock_goes_stale` | `lock/holder` replaced by garbage, then emptied: info works, backup says when the lock goes stale and what to delete, then takes it over |
//! | `lifecycle::a_lost_full_never_turns_into_deleted_packs` | a full's `backup/<label>/` removed by hand, a killed backup's leftovers, expire with GC: nothing the surviving incrs name is deleted, and they restore |
//!
//! A kill point is a random delay in 0..=1.2× a clean run's duration (measured first), after
//! which the child we spawned gets SIGKILL; only kills that hit a live process count, and
//! `KILL_POINTS` (checked at compile time) adds up to at least 50. Delays come from a
//! xorshift generator seeded from the clock; each test prints the seed and
//! PGCAIRN_FAULT_SEED=N draws the same delays again (timing still varies, so a replay is
//! likely, not certain, to hit the same phase).
//!
//! The read-back after each group: `info` lists the backups and every backup reported done;
//! every listed backup restores into a new directory (restore decrypts and verifies every
//! block), and PostgreSQL starts on the first, the last and one randomly drawn of them with
//! the data fingerprinted just before it was taken (no writes run while backups do; not all
//! are started, to bound the runtime); every WAL object comes back through `archive-get`,
//! byte-identical to the original where we still have it; every segment whose push exited 0
//! is in the archive.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::archive::{archive_push_bin, Archiving};
use crate::cli::{wait_promoted, Pgcairn};
use crate::support::cloud::{AZURITE_ACCOUNT, AZURITE_KEY};
use crate::support::{
    chown_to_postgres, is_root, private_file, run, Azurite, Cluster, FakeGcs, PgVersion, S3Server, TestDir,
};

const BACKUP_KILLS: usize = 8; // per backup type
const RESTORE_ROUNDS: usize = 3; // each: 1 plain restore + 2 × 2 delta restores killed
const PUSH_KILLS: usize = 8;
const ENQUEUE_KILLS: usize = 4;
const DRAIN_KILLS: usize = 4;
const GET_KILLS: usize = 6;
const FETCHER_KILLS: usize = 6;
const S3_BACKUP_KILLS: usize = 3;
const S3_PUSH_KILLS: usize = 3;
/// Azure and GCS, each taken down once mid-backup.
const CLOUD_OUTAGES: usize = 2;
/// Every kill point of the matrix; the s3s-fs kill counts once.
const KILL_POINTS: usize = 2 * BACKUP_KILLS
    + 5 * RESTORE_ROUNDS
    + PUSH_KILLS
    + ENQUEUE_KILLS
    + DRAIN_KILLS
    + GET_KILLS
    + FETCHER_KILLS
    + S3_BACKUP_KILLS
    + S3_PUSH_KILLS
    + 1
    + CLOUD_OUTAGES;
const _: () = assert!(KILL_POINTS >= 50, "the issue asks for at least 50 kill points");

// ---------------------------------------------------------------------------------------
// Random kill points

/// The run's seed: PGCAIRN_FAULT_SEED, else the clock.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("PGCAIRN_FAULT_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("PGCAIRN_FAULT_SEED={s} is not an unsigned integer")),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64,
    })
}

/// xorshift64*: small, deterministic per seed, no crate needed. One per test, which also
/// reports the test's kill points and time.
struct Rng {
    state: u64,
    test: &'static str,
    started: Instant,
}

impl Rng {
    /// The run's seed mixed with the test's name, so a test draws the same delays
    /// whatever order the tests run in.
    fn for_test(test: &'static str) -> Rng {
        eprintln!("faults::{test}: seed {0} (PGCAIRN_FAULT_SEED={0} replays it)", seed());
        let mut h = seed() ^ 0x9e37_79b9_7f4a_7c15;
        for b in test.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng { state: h | 1, test, started: Instant::now() }
    }

    /// The test made the kill points it was planned with (KILL_POINTS counts on them).
    fn finish(&self, kills: usize, planned: usize) {
        eprintln!("faults::{}: {kills} kill points, {:.1?}", self.test, self.started.elapsed());
        assert_eq!(kills, planned, "kill points of {}", self.test);
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..=max.
    fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.next() % (max.as_micros() as u64 + 1))
    }
}

/// Runs `cmd`, SIGKILLs it after `delay` unless it finished first, and reaps it. Only the
/// pid we spawned is signalled. Returns whether the kill hit the live process, how long it
/// ran, and its output.
fn run_killed(cmd: &mut Command, delay: Duration) -> (bool, Duration, Output) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn for a kill point");
    let started = Instant::now();
    // Polled, so that a run that finishes early tells how long it took.
    while started.elapsed() < delay && child.try_wait().expect("try_wait").is_none() {
        std::thread::sleep(Duration::from_millis(2).min(delay.saturating_sub(started.elapsed())));
    }
    let ran = started.elapsed();
    // A child that exited (and was reaped by try_wait) is not signalled again: kill is
    // then a no-op, so no other process can be hit.
    let _ = child.kill();
    let out = child.wait_with_output().expect("reap the killed child");
    (out.status.signal() == Some(9), ran, out)
}

/// Kill points: runs from `make(attempt)`, each SIGKILLed after a random delay in
/// 0..=1.2×`typical`, until `want` kills hit a live process. With `adapt`, a run that
/// finishes first becomes the new `typical`, for commands whose duration depends on what
/// earlier runs left (a delta restore over a complete directory only compares).
/// `after(attempt, killed, out)` sees every run: it asserts what a completed run must
/// satisfy and what a kill may leave. Returns the kills.
fn kill_points(
    rng: &mut Rng,
    want: usize,
    (mut typical, adapt): (Duration, bool),
    mut make: impl FnMut(usize) -> Command,
    mut after: impl FnMut(usize, bool, &Output),
) -> usize {
    let (started, mut kills, mut runs) = (Instant::now(), 0, 0);
    for attempt in 0..want * 5 {
        if kills == want {
            break;
        }
        let (killed, ran, out) = run_killed(&mut make(attempt), rng.delay(typical.mul_f64(1.2)));
        kills += killed as usize;
        runs += 1;
        if adapt && !killed {
            typical = ran;
        }
        after(attempt, killed, &out);
    }
    eprintln!("  {kills} kills in {runs} runs (clean run {typical:.1?}), {:.1?}", started.elapsed());
    assert_eq!(kills, want, "only {kills} runs were still running when killed (a clean run took {typical:?})");
    kills
}

/// Time one clean run that must succeed.
fn timed_ok(cmd: &mut Command, what: &str) -> (Duration, Output) {
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, stderr(&out));
    (started.elapsed(), out)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------
// Data and exit-code contracts

/// pgbench tables plus a canary table that records the write rounds.
fn setup_data(c: &Cluster) {
    c.pgbench(&["-i", "-s", "1", "-q"]);
    c.psql("CREATE TABLE canary (round int, at timestamptz)");
}

/// Some writes, so that each backup has data of its own to restore.
fn write_round(c: &Cluster, round: usize) {
    c.pgbench(&["-n", "-c", "1", "-t", "100"]);
    c.psql(&format!("INSERT INTO canary VALUES ({round}, now())"));
}

/// About a segment of WAL that compresses only about 2:1, then a segment switch: pushes
/// and fetches of it take long enough to be killed in the middle of their work.
fn fill_segment(c: &Cluster) {
    c.psql(
        "CREATE TABLE IF NOT EXISTS filler (v text);
         INSERT INTO filler SELECT md5(random()::text) FROM generate_series(1, 150000);
         SELECT pg_switch_wal()",
    );
}

/// The data a restore must reproduce: every account balance (hashed) and the canary rows.
fn fingerprint(c: &Cluster) -> String {
    c.psql(
        "SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts
         UNION ALL SELECT count(*) || ' rounds, last ' || coalesce(max(round), -1) FROM canary",
    )
}

/// A completed `backup` run: exit 0, its label on the last line.
fn backup_label(out: &Output) -> String {
    assert!(out.status.success(), "a backup that was not killed failed ({}):\n{}", out.status, stderr(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().expect("backup prints its label").trim().to_string()
}

/// pgcairn-archive-push: 0, or a failure PostgreSQL retries (1..=125, never a panic's 101).
fn assert_push_code(out: &Output, what: &str) {
    let code = out.status.code();
    assert!(
        code == Some(0) || code.is_some_and(|c| (1..=125).contains(&c) && c != 101),
        "{what}: archive-push exited {:?}, outside 0 and 1..=125 (not 101):\n{}",
        out.status,
        stderr(out)
    );
}

/// archive-get: 0 delivered, 1 not in the archive; anything else must stop recovery (> 125).
fn assert_get_code(out: &Output, what: &str) {
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)) || code.is_some_and(|c| c > 125),
        "{what}: archive-get exited {:?}: only 0, 1 or > 125 (stop recovery) are allowed:\n{}",
        out.status,
        stderr(out)
    );
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------
// The repository under test and its read-back

/// A repository under test and how to reach it.
struct Repo {
    p: Pgcairn,
    key: PathBuf,
    /// `<stanza>/wal` as files: the local repository's, or the S3 server's served tree;
    /// None for a store whose objects are not files (Azurite, fake-gcs-server).
    wal_dir: Option<PathBuf>,
    /// A local repository: chowned to `postgres` before a restored cluster's
    /// restore_command (which runs as that user) reads it.
    local: Option<PathBuf>,
    version: PgVersion,
}

impl Repo {
    fn of(a: &Archiving) -> Repo {
        Repo {
            p: a.p.clone(),
            key: a.key.clone(),
            wal_dir: Some(a.repo.path().join("main/wal")),
            local: Some(a.repo.path().to_path_buf()),
            version: a.cluster.version(),
        }
    }

    fn labels(&self) -> BTreeSet<String> {
        info_backups(&self.p).iter().map(|b| b["label"].as_str().unwrap().to_string()).collect()
    }

    /// pgcairn-archive-push of `path` to this repository, with the key file.
    fn push(&self, path: &Path) -> Command {
        let mut c = Command::new(archive_push_bin());
        // As `Pgcairn::cmd` does: nothing from the developer's environment leaks in.
        for (k, _) in std::env::vars()
            .filter(|(k, _)| (k.starts_with("PGCAIRN_") && k != "PGCAIRN_KEY_CACHE_PATH") || k.starts_with("AWS_"))
        {
            c.env_remove(k);
        }
        c.env("PGCAIRN_CONFIG", "");
        c.args([
            "--stanza=main",
            &format!("--repo={}", self.p.repo),
            &format!("--repo-key-file={}", self.key.display()),
        ]);
        c.arg(path).envs(self.p.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn restore_args(&self, label: &str, data: &Path, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "restore".to_string(),
            format!("--set={label}"),
            format!("--pg-data={}", data.display()),
            format!("--repo-key-file={}", self.key.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
}

fn info_backups(p: &Pgcairn) -> Vec<serde_json::Value> {
    let info: serde_json::Value = serde_json::from_str(&p.ok(&["info", "--output=json"])).expect("info JSON");
    info["backups"].as_array().expect("info lists backups").clone()
}

/// Backups that appeared since `before` hold the data fingerprinted as `fp` (no writes ran
/// since); every backup that reported success must be among them.
fn attribute(
    r: &Repo,
    before: &BTreeSet<String>,
    done: &BTreeSet<String>,
    fp: &str,
    expected: &mut BTreeMap<String, String>,
) {
    let now = r.labels();
    for label in done {
        assert!(now.contains(label), "backup {label} reported success but is not listed: {now:?}");
    }
    for label in now.difference(before) {
        expected.insert(label.clone(), fp.to_string());
    }
}

/// A cluster with pgbench data that keeps its WAL (archiving is off), so that
/// `copy_segments` finds segments.
fn data_cluster() -> Cluster {
    let c = Cluster::init(PgVersion::V15);
    c.psql("ALTER SYSTEM SET wal_keep_size = '1GB'; SELECT pg_reload_conf()");
    setup_data(&c);
    c
}

/// A stanza for `cluster` through `p`, and a key file for it (in the returned directory).
fn new_stanza(p: Pgcairn, cluster: &Cluster, wal_dir: Option<PathBuf>, local: Option<PathBuf>) -> (Repo, TestDir) {
    p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    let key_dir = TestDir::new("key");
    let key = key_dir.path().join("repo.key");
    p.ok(&["key-file", &format!("--output={}", key.display())]);
    (Repo { p, key, wal_dir, local, version: cluster.version() }, key_dir)
}

/// Start PostgreSQL on a restored directory with archiving off (the copy must not write
/// into the repository under test) and wait for the end of recovery.
fn start_copy(version: PgVersion, data: &Path) -> Cluster {
    let mut auto = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.auto.conf")).unwrap();
    std::io::Write::write_all(&mut auto, b"\narchive_mode = off\n").unwrap();
    let c = Cluster::start_restored(version, data);
    wait_promoted(&c);
    c
}

/// Restore `label` into a new directory (restore decrypts and verifies every block);
/// with `fp`, start PostgreSQL on it and compare its data.
fn restore_and_check(r: &Repo, label: &str, wal_included: bool, fp: Option<&str>) {
    let dir = TestDir::new("readback");
    let data = dir.path().join("data");
    // A set carrying its WAL needs no archive; one relying on it replays up to consistency.
    let kind: &[&str] = if wal_included { &["--type=none"] } else { &["--type=immediate", "--target-action=promote"] };
    let args = r.restore_args(label, &data, kind);
    let out = r.p.run(&as_strs(&args));
    assert!(out.status.success(), "read-back: restore of {label} failed ({}):\n{}", out.status, stderr(&out));
    if let Some(fp) = fp {
        let c = start_copy(r.version, &data);
        assert_eq!(fingerprint(&c), fp, "read-back: backup {label} restored with the wrong data");
    }
}

/// The read-back (see the module comment). Every listed backup is restored; to bound the
/// runtime PostgreSQL is started only on the first, the last and one drawn at random of
/// them (a start and its recovery cost more than the restore).
fn read_back(
    r: &Repo,
    rng: &mut Rng,
    expected: &BTreeMap<String, String>,
    originals: &[&Path],
    pushed: &BTreeSet<String>,
) {
    let started = Instant::now();
    let backups = info_backups(&r.p);
    assert!(!backups.is_empty(), "read-back: no backups listed");
    if let Some(root) = &r.local {
        chown_to_postgres(root); // restore_command runs as postgres
    }
    let n = backups.len();
    let drawn = 1 + rng.next() as usize % n.saturating_sub(2).max(1);
    for (i, b) in backups.iter().enumerate() {
        let label = b["label"].as_str().unwrap();
        let fp = expected.get(label).unwrap_or_else(|| panic!("read-back: unexpected backup {label} listed"));
        let start = i == 0 || i == n - 1 || i == drawn;
        restore_and_check(r, label, b["wal_included"].as_bool().unwrap(), start.then_some(fp.as_str()));
    }
    let objects = read_back_wal(r, originals, pushed);
    for name in pushed {
        assert!(objects.contains(name), "read-back: {name} was archived (push exited 0) but is not in the archive");
    }
    eprintln!("  read-back: {n} backups, {} WAL objects, {:.1?}", objects.len(), started.elapsed());
}

/// Every WAL object (every one `pushed` where the store's objects cannot be listed as
/// files) comes back through archive-get, byte-identical to the original where one of
/// `originals` still has it. Returns the object names.
fn read_back_wal(r: &Repo, originals: &[&Path], pushed: &BTreeSet<String>) -> BTreeSet<String> {
    let objects = r.wal_dir.as_deref().map_or_else(|| pushed.clone(), wal_objects);
    let out = TestDir::new("wal-get");
    for name in &objects {
        let dest = out.path().join(name);
        let o = r.p.run(&["archive-get", name, &dest.display().to_string()]);
        assert_get_code(&o, name);
        assert_eq!(o.status.code(), Some(0), "read-back: archive-get {name}:\n{}", stderr(&o));
        if let Some(orig) = originals.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            let fetched = std::fs::read(&dest).unwrap();
            assert!(fetched == std::fs::read(&orig).unwrap(), "read-back: {name} differs from {}", orig.display());
        }
        std::fs::remove_file(&dest).unwrap();
    }
    objects
}

/// WAL objects under `<stanza>/wal/<timeline>/`, by name; names starting with '.' are
/// temp files of writes in progress (or killed).
fn wal_objects(wal_dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for tl in std::fs::read_dir(wal_dir).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(tl.path()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && e.file_type().unwrap().is_file() {
                names.insert(name);
            }
        }
    }
    names
}

/// Segments PostgreSQL's archiver reported archived (archive_command exited 0).
fn archived_by_postgres(c: &Cluster) -> BTreeSet<String> {
    std::fs::read_dir(c.data_dir().join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".done").map(str::to_string))
        .collect()
}

/// Complete WAL segments of a cluster (archiving off), copied into `dir` after a final
/// switch: the originals that pushes and read-back use. Sorted by name.
fn copy_segments(c: &Cluster, dir: &Path) -> Vec<String> {
    let current = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.psql("SELECT pg_switch_wal()");
    let mut names: Vec<String> = std::fs::read_dir(c.data_dir().join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.chars().all(|ch| ch.is_ascii_hexdigit()) && n.as_str() <= current.as_str())
        .collect();
    names.sort();
    for n in &names {
        std::fs::copy(c.data_dir().join("pg_wal").join(n), dir.join(n)).unwrap();
    }
    names
}

/// pgcairn-archive-push as `a`'s archive_command would run it (plus `extra` flags) on `path`.
fn push_cmd(a: &Archiving, extra: &str, path: &Path) -> Command {
    let cmd = a.archive_command(extra);
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mut c = Command::new(words[0]);
    c.args(&words[1..words.len() - 1]).arg(path).env("PGCAIRN_CONFIG", "");
    c
}

// ---------------------------------------------------------------------------------------
// backup

/// Full and incr backups killed while PostgreSQL archives into the same repository.
#[test]
fn backup_killed_full_and_incr() {
    let mut rng = Rng::for_test("backup_killed_full_and_incr");
    let a = Archiving::new(PgVersion::V15, "");
    setup_data(&a.cluster);
    let r = Repo::of(&a);
    let pg = format!("--pg={}", a.cluster.conninfo());
    let mut expected = BTreeMap::new();
    let mut kills = 0;
    for (round, kind) in ["full", "incr", "full"].into_iter().enumerate() {
        write_round(&a.cluster, round);
        let fp = fingerprint(&a.cluster);
        let before = r.labels();
        let args = ["backup", "--start-fast", &format!("--type={kind}"), &pg];
        let (typical, out) = timed_ok(&mut r.p.cmd(&args), "clean backup");
        let mut done = BTreeSet::from([backup_label(&out)]);
        // The third round: both kinds still work on top of whatever the kills left.
        if round < 2 {
            kills += kill_points(
                &mut rng,
                BACKUP_KILLS,
                (typical, false),
                |_| r.p.cmd(&args),
                |_, killed, out| {
                    if !killed {
                        done.insert(backup_label(out));
                    }
                },
            );
        } else {
            done.insert(backup_label(&r.p.run(&["backup", "--start-fast", "--type=incr", &pg])));
        }
        attribute(&r, &before, &done, &fp, &mut expected);
    }
    read_back(&r, &mut rng, &expected, &[&a.cluster.data_dir().join("pg_wal")], &archived_by_postgres(&a.cluster));
    rng.finish(kills, 2 * BACKUP_KILLS);
}

// ---------------------------------------------------------------------------------------
// restore

/// Restore runs into `data`, killed until `want` kills hit a live process; runs that
/// finish must succeed. A plain restore that finished is undone, so the next one can run.
fn kill_restores(
    rng: &mut Rng,
    r: &Repo,
    label: &str,
    data: &Path,
    delta: bool,
    typical: Duration,
    want: usize,
) -> usize {
    let mut extra = vec!["--type=immediate", "--target-action=promote"];
    if delta {
        extra.push("--delta");
    }
    let args = r.restore_args(label, data, &extra);
    kill_points(
        rng,
        want,
        (typical, true),
        |_| r.p.cmd(&as_strs(&args)),
        |_, killed, out| {
            if killed {
                return;
            }
            let what = if delta { "restore --delta over what killed restores left" } else { "restore" };
            assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, stderr(out));
            if !delta {
                std::fs::remove_dir_all(data).unwrap();
            }
        },
    )
}

/// The restore that must work after kills: --delta over whatever the kills left.
fn finish_delta(r: &Repo, label: &str, data: &Path, fp: &str) -> Cluster {
    let args = r.restore_args(label, data, &["--type=immediate", "--target-action=promote", "--delta"]);
    let out = r.p.run(&as_strs(&args));
    assert!(
        out.status.success(),
        "restore --delta of {label} over a killed restore's directory failed ({}):\n{}",
        out.status,
        stderr(&out)
    );
    let c = start_copy(r.version, data);
    assert_eq!(fingerprint(&c), fp, "{label} restored by --delta after kills has the wrong data");
    c
}

/// restore and restore --delta killed; each time a --delta rerun must produce a cluster
/// that starts with the right data.
#[test]
fn restore_and_delta_restore_killed() {
    let mut rng = Rng::for_test("restore_and_delta_restore_killed");
    let a = Archiving::new(PgVersion::V15, "");
    setup_data(&a.cluster);
    let r = Repo::of(&a);
    let mut sets = Vec::new();
    for (round, kind) in ["full", "incr"].into_iter().enumerate() {
        write_round(&a.cluster, round);
        let fp = fingerprint(&a.cluster);
        let out =
            r.p.run(&["backup", "--start-fast", &format!("--type={kind}"), &format!("--pg={}", a.cluster.conninfo())]);
        sets.push((backup_label(&out), fp));
    }
    chown_to_postgres(a.repo.path()); // restore_command runs as postgres
    let clean = TestDir::new("restore");
    let args = r.restore_args(&sets[0].0, &clean.path().join("data"), &["--type=immediate"]);
    let (typical, _) = timed_ok(&mut r.p.cmd(&as_strs(&args)), "clean restore");
    let mut kills = 0;
    for round in 0..RESTORE_ROUNDS {
        let (first, second) = (&sets[round % 2], &sets[(round + 1) % 2]);
        let dir = TestDir::new("restore");
        let data = dir.path().join("data");
        kills += kill_restores(&mut rng, &r, &first.0, &data, false, typical, 1);
        kills += kill_restores(&mut rng, &r, &first.0, &data, true, typical, 2);
        let c1 = finish_delta(&r, &first.0, &data, &first.1);
        // Change the copy, so the next delta has pages and files to undo.
        c1.psql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 97 = 0; CREATE TABLE scratch AS SELECT generate_series(1, 20000) g; CHECKPOINT");
        c1.stop();
        kills += kill_restores(&mut rng, &r, &second.0, &data, true, typical, 2);
        let c2 = finish_delta(&r, &second.0, &data, &second.1);
        // c1's Drop would stop the server c2 runs on the same directory: c2 goes first.
        drop(c2);
        drop(c1);
    }
    let expected = sets.into_iter().collect();
    read_back(&r, &mut rng, &expected, &[&a.cluster.data_dir().join("pg_wal")], &BTreeSet::new());
    rng.finish(kills, 5 * RESTORE_ROUNDS);
}

// ---------------------------------------------------------------------------------------
// archive-push (sync, async, drainer) and archive-get

/// Holds the async drainer's lock through flock(1), the same flock(2) lock pgcairn takes,
/// so enqueuing starts no drainer and the queue stays for the test to drain, and kill,
/// itself. Released on drop: closing stdin ends `cat`, and with it flock.
struct DrainLock(Child);

impl DrainLock {
    fn hold(spool: &Path) -> DrainLock {
        let lock = spool.join("main/drain.lock");
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        let child = Command::new("flock")
            .arg("-x")
            .arg(&lock)
            .arg("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn flock (util-linux)");
        let held = DrainLock(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Held once a non-blocking attempt by another process fails.
        while Command::new("flock").args(["-n", "-x"]).arg(&lock).arg("true").status().unwrap().success() {
            assert!(Instant::now() < deadline, "flock did not take {}", lock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        held
    }
}

impl Drop for DrainLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Queue files (not temp files) of the async spool.
fn queued(out_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The segment with the most WAL in it (a switched segment is zero-filled after the
/// switch): its clean push is the one that times the kill points.
fn fullest<'n>(dir: &Path, names: &'n [String]) -> &'n String {
    let used_pages = |n: &String| {
        std::fs::read(dir.join(n)).unwrap().chunks(8192).filter(|page| page.iter().any(|b| *b != 0)).count()
    };
    names.iter().max_by_key(|n| used_pages(n)).expect("segments")
}

/// archive-push runs (`cmd(path)`) killed, each on a segment not yet in `wal_dir` while
/// there is one, so that kills land in real pushes. Completed runs must succeed; they go
/// into `pushed`. Returns (kills, the clean push's duration).
fn push_killed(
    rng: &mut Rng,
    want: usize,
    dir: &Path,
    names: &[String],
    wal_dir: &Path,
    cmd: impl Fn(&Path) -> Command,
    pushed: &mut BTreeSet<String>,
) -> (usize, Duration) {
    let timed = fullest(dir, names);
    let (typical, _) = timed_ok(&mut cmd(&dir.join(timed)), "clean archive-push");
    pushed.insert(timed.clone());
    let archived = |n: &str| wal_dir.join(&n[..8]).join(n).is_file();
    let current = std::cell::Cell::new(0);
    let kills = kill_points(
        rng,
        want,
        (typical, false),
        |i| {
            current.set(names.iter().position(|n| !archived(n)).unwrap_or(i % names.len()));
            cmd(&dir.join(&names[current.get()]))
        },
        |_, killed, out| {
            let name = &names[current.get()];
            if !killed {
                assert_push_code(out, name);
                assert!(out.status.success(), "archive-push {name} failed:\n{}", stderr(out));
                pushed.insert(name.clone());
            }
        },
    );
    (kills, typical)
}

/// Sync archive-push killed; then every segment is pushed to completion, as PostgreSQL
/// retries a failed archive_command. Returns (kills, a clean push's duration).
fn push_sync_killed(
    rng: &mut Rng,
    a: &Archiving,
    dir: &Path,
    names: &[String],
    pushed: &mut BTreeSet<String>,
) -> (usize, Duration) {
    let wal_dir = a.repo.path().join("main/wal");
    let (kills, typical) = push_killed(rng, PUSH_KILLS, dir, names, &wal_dir, |p| push_cmd(a, "", p), pushed);
    for n in names {
        let out = push_cmd(a, "", &dir.join(n)).output().unwrap();
        assert_push_code(&out, n);
        assert!(out.status.success(), "archive-push {n} after kills failed:\n{}", stderr(&out));
        pushed.insert(n.clone());
    }
    (kills, typical)
}

/// Async archive-push into a spool of its own: `--archive-async=true --spool-path=...`.
struct AsyncPush<'t> {
    a: &'t Archiving,
    /// Where the segments to push are.
    dir: &'t Path,
    names: &'t [String],
    spool: TestDir,
    flags: String,
}

impl<'t> AsyncPush<'t> {
    fn new(a: &'t Archiving, dir: &'t Path, names: &'t [String]) -> Self {
        let spool = TestDir::new("spool");
        let flags = format!("--archive-async=true --spool-path={}", spool.path().display());
        AsyncPush { a, dir, names, spool, flags }
    }

    fn enqueue(&self, name: &str) -> Command {
        push_cmd(self.a, &self.flags, &self.dir.join(name))
    }

    /// The drainer, started as the enqueuing process would start it.
    fn drain(&self) -> Command {
        let mut c = self.enqueue(&self.names[0]);
        c.env("PGCAIRN_ARCHIVE_DRAIN", "1");
        c
    }

    fn queue(&self) -> Vec<String> {
        queued(&self.spool.path().join("main/out"))
    }

    /// Every segment queued (again), as PostgreSQL's retries would; no drainer starts.
    fn enqueue_all(&self) {
        let _lock = DrainLock::hold(self.spool.path());
        for n in self.names {
            let out = self.enqueue(n).output().unwrap();
            assert_push_code(&out, n);
            assert!(out.status.success(), "async archive-push {n} failed:\n{}", stderr(&out));
        }
    }
}

/// Async archive-push: the enqueuing process killed (no drainer runs: we hold its lock);
/// then each segment is queued, exactly once and whole. Returns the kills.
fn enqueue_killed(rng: &mut Rng, q: &AsyncPush, pushed: &mut BTreeSet<String>) -> usize {
    let kills = {
        let _lock = DrainLock::hold(q.spool.path());
        let (typical, _) = timed_ok(&mut q.enqueue(&q.names[0]), "clean async archive-push");
        let name = |i: usize| &q.names[i % q.names.len()];
        // Adaptive: the first, timed enqueue can be several times slower than the
        // rest (cold cache). Regression: it took 112 ms, later ones a fraction of it,
        // and only 2 of 20 runs were still alive when their kill came.
        kill_points(
            rng,
            ENQUEUE_KILLS,
            (typical, true),
            |i| q.enqueue(name(i)),
            |i, killed, out| {
                if !killed {
                    assert_push_code(out, name(i));
                    assert!(out.status.success(), "async archive-push {} failed:\n{}", name(i), stderr(out));
                }
            },
        )
    };
    q.enqueue_all(); // from here on, each segment counts as archived
    pushed.extend(q.names.iter().cloned());
    assert_eq!(q.queue(), q.names, "the queue holds each segment once");
    for n in q.names {
        let queued = std::fs::read(q.spool.path().join("main/out").join(n)).unwrap();
        assert!(queued == std::fs::read(q.dir.join(n)).unwrap(), "queued {n} differs");
    }
    kills
}

/// The async drainer killed; run again, it empties the queue and parks nothing. Returns
/// the kills.
fn drain_killed(rng: &mut Rng, q: &AsyncPush, push_typical: Duration) -> usize {
    // A drain pushes 4 segments at a time on our 2 cores: about half the sync time each.
    let typical = push_typical * (q.names.len() as u32).div_ceil(2);
    let kills = kill_points(
        rng,
        DRAIN_KILLS,
        (typical, false),
        |_| {
            if q.queue().is_empty() {
                q.enqueue_all(); // again: now the drainer meets segments already archived
            }
            q.drain()
        },
        |_, killed, out| assert!(killed || out.status.success(), "drainer failed:\n{}", stderr(out)),
    );
    let out = q.drain().output().unwrap();
    assert!(out.status.success(), "drainer after kills failed:\n{}", stderr(&out));
    assert_eq!(q.queue(), Vec::<String>::new(), "the drainer left segments queued");
    let parked = queued(&q.spool.path().join("main/error"));
    assert!(parked.is_empty(), "segments parked as refused after drainer kills: {parked:?}");
    kills
}

/// After an archive-get run in `data`: the destination is absent or the whole segment
/// asked for, and everything prefetched is a whole, correct segment.
fn check_get_leftovers(data: &Path, dir: &Path, asked: &str) {
    let dest = data.join("pg_wal/RECOVERYXLOG");
    if dest.exists() {
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(dir.join(asked)).unwrap(),
            "RECOVERYXLOG is not {asked}"
        );
        std::fs::remove_file(&dest).unwrap();
    }
    // Spooled files are named after their segment (plus, possibly, a suffix of the spool's own).
    for name in queued(&data.join("pg_wal/pgcairn-prefetch")) {
        let got = std::fs::read(data.join("pg_wal/pgcairn-prefetch").join(&name)).unwrap();
        let segment = name.get(..24).unwrap_or_else(|| panic!("prefetched file {name} names no segment"));
        assert!(got == std::fs::read(dir.join(segment)).unwrap(), "prefetched {name} is not the archived {segment}");
    }
}

/// Files below `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.file_type().unwrap().is_dir() { count_files(&e.path()) } else { 1 })
        .sum()
}

/// archive-get killed while it fetches and prefetches in a restored data directory, as
/// recovery runs it; then PostgreSQL recovers through the archive, using whatever the kills
/// left in the prefetch spool, up to the last archived write.
fn get_killed_then_recover(rng: &mut Rng, r: &Repo, dir: &Path, names: &[String], base: &str, fp_end: &str) -> usize {
    let target = TestDir::new("recover");
    let data = target.path().join("data");
    r.p.ok(&as_strs(&r.restore_args(base, &data, &[]))); // to the end of the archive
    let spool = data.join("pg_wal/pgcairn-prefetch");
    let name = |i: usize| &names[i % names.len()];
    // %p as PostgreSQL passes it, relative to the data directory it runs the command in;
    // prefetch of 3 segments (not 8) keeps a run short.
    let get = |i: usize| {
        let mut c = r.p.cmd(&["archive-get", "--archive-get-queue-max=48MiB", name(i), "pg_wal/RECOVERYXLOG"]);
        c.current_dir(&data);
        c
    };
    let (typical, _) = timed_ok(&mut get(0), "clean archive-get");
    check_get_leftovers(&data, dir, name(0));
    let kills = kill_points(rng, GET_KILLS, (typical, false), get, |i, killed, out| {
        check_get_leftovers(&data, dir, name(i));
        if !killed {
            assert_get_code(out, name(i));
            assert!(out.status.success(), "archive-get {} failed:\n{}", name(i), stderr(out));
            // A complete run leaves a clean spool: empty it, so the next run fetches
            // (a killed run's leftovers are left for the next run to meet).
            let _ = std::fs::remove_dir_all(&spool);
        }
    });
    let kills = kills + fetcher_killed(rng, &data, dir, &get, typical);
    let temps = count_files(&spool) - queued(&spool).len();
    eprintln!("  archive-get kills left {temps} temp and control files in pg_wal/pgcairn-prefetch");
    if let Some(root) = &r.local {
        chown_to_postgres(root); // restore_command runs as postgres
    }
    chown_to_postgres(&data); // the calls above ran as root and left the spool theirs
    let c = start_copy(r.version, &data);
    assert!(c.server_log().contains("restored log file"), "recovery did not use archive-get:\n{}", c.server_log());
    assert_eq!(fingerprint(&c), fp_end, "recovery through the archive after archive-get kills ended elsewhere");
    // Recovery ended: the fetcher PostgreSQL's calls started goes, and takes the spool with it.
    let gone = Instant::now();
    while fetcher_pid(&spool).is_some_and(is_alive) {
        assert!(gone.elapsed() < Duration::from_secs(10), "the WAL fetcher outlived recovery by 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(queued(&spool), Vec::<String>::new(), "the fetcher left segments in the spool");
    kills
}

/// The background fetcher's pid, from its lock file.
fn fetcher_pid(spool: &Path) -> Option<i32> {
    std::fs::read_to_string(spool.join(".fetcher.lock")).ok()?.trim().parse().ok()
}

fn is_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// archive-get's background fetcher SIGKILLed at a random point of a call that started
/// it (opening the repository, fetching, writing the spool, fetching ahead): the call
/// still delivers the requested segment whole (it fetches it itself) and nothing
/// half-written is ever served. Each round starts from an empty spool, so a new fetcher.
fn fetcher_killed(rng: &mut Rng, data: &Path, dir: &Path, get: &dyn Fn(usize) -> Command, typical: Duration) -> usize {
    let spool = data.join("pg_wal/pgcairn-prefetch");
    let (started, mut kills) = (Instant::now(), 0);
    for attempt in 0..FETCHER_KILLS * 5 {
        if kills == FETCHER_KILLS {
            break;
        }
        let _ = std::fs::remove_dir_all(&spool); // the old fetcher sees its socket go, and exits
        let child = get(attempt).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn archive-get");
        let delay = rng.delay(typical.mul_f64(1.2));
        let t = Instant::now();
        let pid = loop {
            match fetcher_pid(&spool) {
                Some(pid) if t.elapsed() >= delay => break Some(pid),
                _ if t.elapsed() > delay + Duration::from_secs(5) => break None,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        // SAFETY: kill(2) on the pid the fetcher wrote into its own lock file.
        kills += pid.is_some_and(|pid| is_alive(pid) && unsafe { libc::kill(pid, libc::SIGKILL) } == 0) as usize;
        let out = child.wait_with_output().expect("archive-get");
        assert_get_code(&out, "archive-get with its fetcher killed");
        assert!(out.status.success(), "archive-get failed after its fetcher was killed:\n{}", stderr(&out));
        check_get_leftovers(data, dir, get_name(get, attempt).as_str());
    }
    eprintln!("  {kills} fetcher kills, {:.1?}", started.elapsed());
    assert_eq!(kills, FETCHER_KILLS, "the fetcher was gone before it could be killed");
    kills
}

/// The segment name a call built by `get` asks for (its second-to-last argument).
fn get_name(get: &dyn Fn(usize) -> Command, attempt: usize) -> String {
    let cmd = get(attempt);
    let args: Vec<_> = cmd.get_args().collect();
    args[args.len() - 2].to_string_lossy().into_owned()
}

/// archive-push (sync, async enqueue, drainer) and archive-get killed. PostgreSQL's own
/// archiving is off: segments are pushed by hand from a copy, as PostgreSQL would push them.
#[test]
fn archive_push_and_get_killed() {
    let mut rng = Rng::for_test("archive_push_and_get_killed");
    let a = Archiving::new(PgVersion::V15, "");
    a.cluster.psql("ALTER SYSTEM SET archive_mode = off");
    a.cluster.stop();
    a.cluster.start();
    setup_data(&a.cluster);
    let r = Repo::of(&a);
    write_round(&a.cluster, 0);
    let base = backup_label(&a.p.run(&[
        "backup",
        "--start-fast",
        "--archive-copy",
        &format!("--pg={}", a.cluster.conninfo()),
    ]));
    let expected = BTreeMap::from([(base.clone(), fingerprint(&a.cluster))]);
    for round in 1..=6 {
        write_round(&a.cluster, round);
        fill_segment(&a.cluster);
    }
    let fp_end = fingerprint(&a.cluster);
    let segs = TestDir::new("segments");
    let names = copy_segments(&a.cluster, segs.path());
    assert!(names.len() >= 6, "too few segments to push: {names:?}");
    // The later half holds the filler segments: pushes with real work to kill.
    let (queue, sync) = names.split_at(names.len() / 2);
    let mut pushed = BTreeSet::new();
    let (mut kills, push_typical) = push_sync_killed(&mut rng, &a, segs.path(), sync, &mut pushed);
    let q = AsyncPush::new(&a, segs.path(), queue);
    kills += enqueue_killed(&mut rng, &q, &mut pushed);
    kills += drain_killed(&mut rng, &q, push_typical);
    kills += get_killed_then_recover(&mut rng, &r, segs.path(), &names, &base, &fp_end);
    read_back(&r, &mut rng, &expected, &[segs.path()], &pushed);
    rng.finish(kills, PUSH_KILLS + ENQUEUE_KILLS + DRAIN_KILLS + GET_KILLS + FETCHER_KILLS);
}

// ---------------------------------------------------------------------------------------
// Object stores: the client killed, and the server

/// A storage server a test takes down and brings back with what it acknowledged.
trait StorageServer {
    fn down(&mut self);
    fn up(&mut self);
}

impl StorageServer for S3Server {
    /// SIGKILL, as a crash mid-request would.
    fn down(&mut self) {
        self.kill();
    }
    fn up(&mut self) {
        self.restart();
    }
}

impl StorageServer for Azurite {
    fn down(&mut self) {
        self.stop();
    }
    fn up(&mut self) {
        self.restart();
    }
}

impl StorageServer for FakeGcs {
    fn down(&mut self) {
        self.stop();
    }
    fn up(&mut self) {
        self.restart();
    }
}

/// How long a command may take to notice that the storage server died.
const STORAGE_DOWN_WITHIN: Duration = Duration::from_secs(120);

/// A command running while the storage server is down; stderr goes to a file, as retry
/// warnings could fill a pipe and block it.
struct Down {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

fn spawn_down(cmd: &mut Command, dir: &Path, what: &'static str) -> Down {
    let log = dir.join(format!("{what}.stderr"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    Down { child, log, what }
}

impl Drop for Down {
    /// Whatever happens to the test, the command does not outlive it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Down {
    /// Waits for the command, which must stop by itself within STORAGE_DOWN_WITHIN of
    /// `since` (the server's death), and fail cleanly: 1..=125 (not a panic), or, for
    /// archive-get, > 125. Returns its stderr.
    fn fails(mut self, since: Instant) -> String {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if since.elapsed() > STORAGE_DOWN_WITHIN {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{} still running {STORAGE_DOWN_WITHIN:?} after the storage server died:\n{err}", self.what);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let err = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprintln!("  {}: {status}, seen {:.1?} after the storage server died", self.what, since.elapsed());
        let code = status.code();
        if self.what == "archive-get" {
            // Recovery would take 1..=125 for the end of the archive and promote early.
            assert!(code.is_some_and(|c| c > 125), "archive-get with the storage server down: {status}:\n{err}");
            // Regression: each attempt was one S3 request with the client's own retries,
            // and the deadline was checked only between attempts: --archive-get-timeout=5
            // took 15 to 20 s. Now the deadline bounds every attempt.
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "archive-get-timeout=5 not honoured: {:.1?}:\n{err}",
                since.elapsed()
            );
        } else {
            assert!(
                code.is_some_and(|c| (1..=125).contains(&c) && c != 101),
                "{} with the storage server down must fail cleanly, not {status}:\n{err}",
                self.what
            );
        }
        assert!(err.to_lowercase().contains("storage"), "{}: no storage error reported:\n{err}", self.what);
        err
    }
}

/// Starts backups and takes the server down mid-upload (between 20% and 80% of a clean
/// run); returns the backup that lost its server, and when the server died. Backups that
/// finish first are recorded in `done`.
fn backup_losing_its_server(
    rng: &mut Rng,
    server: &mut dyn StorageServer,
    p: &Pgcairn,
    args: &[&str],
    typical: Duration,
    logs: &Path,
    done: &mut BTreeSet<String>,
) -> (Down, Instant) {
    for _ in 0..5 {
        let mut backup = spawn_down(&mut p.cmd(args), logs, "backup");
        std::thread::sleep(typical.mul_f64(0.2) + rng.delay(typical.mul_f64(0.6)));
        if let Some(status) = backup.child.try_wait().unwrap() {
            let mut stdout = Vec::new();
            std::io::Read::read_to_end(&mut backup.child.stdout.take().unwrap(), &mut stdout).unwrap();
            let stderr = std::fs::read(&backup.log).unwrap();
            done.insert(backup_label(&Output { status, stdout, stderr }));
            continue;
        }
        let stopping = Instant::now();
        server.down();
        eprintln!("  storage server down in {:.1?}", stopping.elapsed());
        return (backup, Instant::now());
    }
    panic!("5 backups finished before the storage server could be stopped");
}

/// archive-push and archive-get started while the storage server is down.
fn started_while_down(r: &Repo, segment: &Path, logs: &Path) -> [Down; 2] {
    let push = spawn_down(&mut r.push(segment), logs, "archive-push");
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    let dest = logs.join("RECOVERYXLOG").display().to_string();
    // A short archive-get-timeout: by default archive-get keeps retrying for 60 s.
    // Through the background fetcher (a spool): it meets the outage opening the
    // repository and hands the error to the call.
    let spool = format!("--spool-path={}", logs.join("spool").display());
    let get = spawn_down(
        &mut r.p.cmd(&["archive-get", "--archive-get-timeout=5", &spool, &name, &dest]),
        logs,
        "archive-get",
    );
    [push, get]
}

/// What runs against a server that goes down: a backup (`args`, a clean run taking
/// `typical`) and pushes of the segments `names` in `segs`.
struct Workload<'a> {
    args: &'a [&'a str],
    typical: Duration,
    segs: &'a Path,
    names: &'a [String],
}

/// The server dies mid-backup; archive-push and archive-get started while it is down
/// fail cleanly too (Down::fails); once it is back, every segment is pushed (added to
/// `pushed`). Backups that finished before the outage are added to `done`.
fn outage_mid_backup(
    rng: &mut Rng,
    server: &mut dyn StorageServer,
    r: &Repo,
    work: &Workload,
    done: &mut BTreeSet<String>,
    pushed: &mut BTreeSet<String>,
) {
    let logs = TestDir::new("storage-down");
    let (backup, since) = backup_losing_its_server(rng, server, &r.p, work.args, work.typical, logs.path(), done);
    let [push, get] = started_while_down(r, &work.segs.join(&work.names[0]), logs.path());
    // archive-get first: it started with the server's death, so the time seen is its own.
    for down in [get, push, backup] {
        down.fails(since);
    }
    server.up();
    for name in work.names {
        let out = r.push(&work.segs.join(name)).output().unwrap();
        assert!(out.status.success(), "archive-push of {name} after the restart failed:\n{}", stderr(&out));
        pushed.insert(name.clone());
    }
}

/// Backups and archive-push to S3 killed; then s3s-fs itself killed mid-backup, the
/// commands run while it is down, and after its restart everything works and reads back.
#[test]
fn s3_server_killed_mid_backup() {
    let mut rng = Rng::for_test("s3_server_killed_mid_backup");
    let mut s3 = S3Server::start();
    let cluster = data_cluster();
    let wal_dir = s3.dir().join(s3.bucket()).join("faults/main/wal");
    let (r, _key_dir) = new_stanza(Pgcairn::s3(&s3, "faults"), &cluster, Some(wal_dir), None);
    let (p, pg) = (&r.p, format!("--pg={}", cluster.conninfo()));
    let mut expected = BTreeMap::new();
    write_round(&cluster, 0);
    let fp = fingerprint(&cluster);
    let before = r.labels();
    let args = ["backup", "--start-fast", &pg];
    let (typical, out) = timed_ok(&mut p.cmd(&args), "clean backup to S3");
    let mut done = BTreeSet::from([backup_label(&out)]);
    let mut kills = kill_points(
        &mut rng,
        S3_BACKUP_KILLS,
        (typical, false),
        |_| p.cmd(&args),
        |_, killed, out| {
            if !killed {
                done.insert(backup_label(out));
            }
        },
    );

    fill_segment(&cluster);
    let segs = TestDir::new("segments");
    let names = copy_segments(&cluster, segs.path());
    let mut pushed = BTreeSet::new();
    let push = |path: &Path| r.push(path);
    let wal_dir = r.wal_dir.clone().unwrap_or_default();
    kills += push_killed(&mut rng, S3_PUSH_KILLS, segs.path(), &names, &wal_dir, push, &mut pushed).0;

    let work = Workload { args: &args, typical, segs: segs.path(), names: &names };
    outage_mid_backup(&mut rng, &mut s3, &r, &work, &mut done, &mut pushed);
    kills += 1;
    attribute(&r, &before, &done, &fp, &mut expected);
    // A new backup works: an incr, on whatever the failed one left.
    write_round(&cluster, 1);
    let fp = fingerprint(&cluster);
    let before = r.labels();
    let done = BTreeSet::from([backup_label(&p.run(&["backup", "--start-fast", "--type=incr", &pg]))]);
    attribute(&r, &before, &done, &fp, &mut expected);
    read_back(&r, &mut rng, &expected, &[segs.path()], &pushed);
    rng.finish(kills, S3_BACKUP_KILLS + S3_PUSH_KILLS + 1);
}

/// Azure (Azurite) and GCS (fake-gcs-server in front of its filesystem backend) go
/// away mid-backup: the backup, and archive-push and archive-get started during the
/// outage, fail cleanly and in bounded time, naming the storage; once the server is
/// back every segment is pushed, a new incr works on what the failed backup left, and
/// everything reads back. (Killing the client is the same code for every store: the
/// S3 test and the local matrix cover it.)
#[test]
fn cloud_servers_down_mid_backup() {
    let mut rng = Rng::for_test("cloud_servers_down_mid_backup");
    // Built now: the first call builds the binary, which must not happen mid-outage
    // (it took a minute, and the outage's time bounds counted it).
    archive_push_bin();
    let cluster = data_cluster();
    fill_segment(&cluster);
    let segs = TestDir::new("segments");
    let names = copy_segments(&cluster, segs.path());
    let secrets = TestDir::new("cloud-secrets");
    let mut azurite = Azurite::start();
    let p = cloud_pgcairn(&azurite_url(&azurite), azurite_env(&azurite, secrets.path()));
    cloud_outage(&mut rng, &mut azurite, p, &cluster, segs.path(), &names);
    drop(azurite);
    let mut gcs = FakeGcs::start();
    let p = cloud_pgcairn(&format!("gs://{}/faults", gcs.bucket()), gcs_env(&gcs, secrets.path()));
    cloud_outage(&mut rng, &mut gcs, p, &cluster, segs.path(), &names);
    rng.finish(CLOUD_OUTAGES, CLOUD_OUTAGES);
}

fn cloud_pgcairn(url: &str, env: Vec<(String, String)>) -> Pgcairn {
    let mut p = Pgcairn::local(Path::new(url));
    p.env.extend(env);
    p
}

fn azurite_url(azurite: &Azurite) -> String {
    format!("az://{}/faults", azurite.container())
}

fn azurite_env(azurite: &Azurite, dir: &Path) -> Vec<(String, String)> {
    let key = dir.join("azure.key");
    private_file(&key, AZURITE_KEY);
    owned(&[
        ("PGCAIRN_REPO_AZURE_ACCOUNT", AZURITE_ACCOUNT.to_string()),
        ("PGCAIRN_REPO_AZURE_KEY_FILE", key.display().to_string()),
        ("PGCAIRN_REPO_AZURE_ENDPOINT", azurite.endpoint()),
        ("PGCAIRN_REPO_AZURE_ALLOW_HTTP", "true".into()),
    ])
}

fn owned(env: &[(&str, String)]) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn gcs_env(gcs: &FakeGcs, dir: &Path) -> Vec<(String, String)> {
    let key = dir.join("gcs.token");
    private_file(&key, "fault-matrix-token");
    owned(&[
        ("PGCAIRN_REPO_GCS_KEY_TYPE", "token".to_string()),
        ("PGCAIRN_REPO_GCS_KEY", key.display().to_string()),
        ("PGCAIRN_REPO_GCS_ENDPOINT", gcs.endpoint()),
        ("PGCAIRN_REPO_GCS_ALLOW_HTTP", "true".into()),
    ])
}

/// One cloud store's outage (see cloud_servers_down_mid_backup), on `cluster`'s data
/// and the segments `names` in `segs`.
fn cloud_outage(
    rng: &mut Rng,
    server: &mut dyn StorageServer,
    p: Pgcairn,
    cluster: &Cluster,
    segs: &Path,
    names: &[String],
) {
    let (r, _key_dir) = new_stanza(p, cluster, None, None);
    let pg = format!("--pg={}", cluster.conninfo());
    let fp = fingerprint(cluster);
    let before = r.labels();
    let args = ["backup", "--start-fast", &pg];
    let (typical, out) = timed_ok(&mut r.p.cmd(&args), "clean backup to the cloud");
    let (mut done, mut pushed, mut expected) = (BTreeSet::from([backup_label(&out)]), BTreeSet::new(), BTreeMap::new());
    let work = Workload { args: &args, typical, segs, names };
    outage_mid_backup(rng, server, &r, &work, &mut done, &mut pushed);
    attribute(&r, &before, &done, &fp, &mut expected);
    let before = r.labels();
    let done = BTreeSet::from([backup_label(&r.p.run(&["backup", "--start-fast", "--type=incr", &pg]))]);
    attribute(&r, &before, &done, &fp, &mut expected);
    read_back(&r, rng, &expected, &[segs], &pushed);
}

// ---------------------------------------------------------------------------------------
// Disk full

/// A tmpfs mounted for one test; unmounted on drop (lazily, so a busy mount cannot block
/// it), also when the test panics.
struct Tmpfs(TestDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        assert!(is_root(), "repository_disk_full mounts a tmpfs: run the tests as root (CI does)");
        let dir = TestDir::new("tmpfs");
        let opts = format!("size={size},mode=0755");
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(dir.path()), "mount tmpfs");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Bytes still free.
    fn avail(&self) -> u64 {
        let out = run(Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()), "df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df output: {text}"))
    }

    /// Fill the filesystem up to `leave` free bytes with a file at `path`.
    fn fill(&self, path: &Path, leave: u64) {
        let mut left = self.avail().saturating_sub(leave);
        let mut f = std::fs::File::create(path).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut f, &chunk[..n]).unwrap_or_else(|e| panic!("ballast: {e}"));
            left -= n as u64;
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A command that ran out of space: a clean failure (1..=125, not a panic) that says so.
fn assert_enospc(out: &Output, what: &str) {
    eprintln!("  {what} on a full disk: {}: {}", out.status, stderr(out).trim());
    let code = out.status.code();
    assert!(code.is_some_and(|c| (1..=125).contains(&c) && c != 101), "{what} on a full disk: {}", out.status);
    assert!(
        stderr(out).contains("No space left on device"),
        "{what}: the error does not name the full disk:\n{}",
        stderr(out)
    );
}

/// Full backups until one fails; returns its output. Those that succeed go into `done`.
fn backups_until_full(r: &Repo, pg: &str, done: &mut BTreeSet<String>) -> Output {
    for _ in 0..4 {
        let out = r.p.run(&["backup", "--start-fast", pg]);
        if !out.status.success() {
            return out;
        }
        done.insert(backup_label(&out));
    }
    panic!("4 backups fit into the space of 1.5");
}

/// Pushes `names` until one fails for want of space; those that succeed go into `pushed`.
fn pushes_until_full(r: &Repo, dir: &Path, names: &[String], pushed: &mut BTreeSet<String>) {
    for n in names {
        let out = r.push(&dir.join(n)).output().unwrap();
        assert_push_code(&out, n);
        if !out.status.success() {
            return assert_enospc(&out, "archive-push");
        }
        pushed.insert(n.clone());
    }
    panic!("every segment fit into 64 KiB");
}

/// Backups and archive-push into a repository on a small tmpfs until they fail for want
/// of space; once ballast is removed they succeed again and everything reads back.
#[test]
fn repository_disk_full() {
    let mut rng = Rng::for_test("repository_disk_full");
    let fs = Tmpfs::mount("40m");
    let cluster = data_cluster();
    // Random text: each full backup takes some MiB of the tmpfs.
    cluster.psql(
        "CREATE TABLE noise AS SELECT g, md5(g::text) || md5((g * 7)::text) AS v FROM generate_series(1, 60000) g",
    );
    let repo_dir = fs.path().join("repo");
    let wal_dir = repo_dir.join("main/wal");
    let (r, _key_dir) = new_stanza(Pgcairn::local(&repo_dir), &cluster, Some(wal_dir), Some(repo_dir.clone()));
    let pg = format!("--pg={}", cluster.conninfo());
    write_round(&cluster, 0);
    let fp = fingerprint(&cluster);
    let mut done = BTreeSet::from([backup_label(&r.p.run(&["backup", "--start-fast", &pg]))]);
    let one_backup = 40 * 1024 * 1024 - fs.avail();
    eprintln!("  one backup (and the stanza) take {one_backup} bytes");
    assert!(fs.avail() > 2 * one_backup, "the tmpfs is too small for this test's backups");
    // Room for about one and a half more: the next backup fits, the one after cannot.
    fs.fill(&fs.path().join("ballast"), one_backup * 3 / 2);
    assert_enospc(&backups_until_full(&r, &pg, &mut done), "backup");
    // info works on a full disk, and the failed backup is not listed.
    assert_eq!(r.labels(), done);
    // archive-push with (almost) no space left.
    fs.fill(&fs.path().join("ballast-2"), 64 * 1024);
    let segs = TestDir::new("segments");
    let names = copy_segments(&cluster, segs.path());
    let mut pushed = BTreeSet::new();
    pushes_until_full(&r, segs.path(), &names, &mut pushed);

    // Space again: the failed commands succeed when retried.
    std::fs::remove_file(fs.path().join("ballast")).unwrap();
    std::fs::remove_file(fs.path().join("ballast-2")).unwrap();
    for n in &names {
        let out = r.push(&segs.path().join(n)).output().unwrap();
        assert!(out.status.success(), "archive-push {n} after space was freed:\n{}", stderr(&out));
        pushed.insert(n.clone());
    }
    done.insert(backup_label(&r.p.run(&["backup", "--start-fast", &pg])));
    let mut expected = BTreeMap::new();
    attribute(&r, &BTreeSet::new(), &done, &fp, &mut expected);
    read_back(&r, &mut rng, &expected, &[segs.path()], &pushed);
    rng.finish(0, 0);
}

/// Regression (issue 21, item 4): garbage or an empty `lock/holder` made backup,
/// expire and info exit 8 ("restore from another backup set") for good. Now info
/// works, backup is refused naming the object and when it goes stale, and once
/// nothing under lock/ was written for the stale window the next backup takes over.
#[test]
fn a_damaged_lock_goes_stale() {
    let a = Archiving::new(PgVersion::V15, "");
    let pg = format!("--pg={}", a.cluster.conninfo());
    let holder = a.repo.path().join("main/lock/holder");
    std::fs::create_dir_all(holder.parent().unwrap()).unwrap();
    for garbage in [&b"garbage"[..], b""] {
        std::fs::write(&holder, garbage).unwrap();
        a.p.ok(&["info"]);
        let (code, err) = a.p.fails(&["backup", "--start-fast", &pg]);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("lock/holder") && err.contains("damaged") && err.contains("stale in"), "{err}");
        let (code, err) = a.p.fails(&["expire", "--retention-full=1"]);
        assert!(code == 3 && err.contains("damaged"), "{err}");
    }
    // Ten minutes of silence under lock/: stale, taken over, and the backup runs.
    run(Command::new("touch").args(["-d", "10 minutes ago"]).arg(&holder), "backdate lock/holder");
    let out = a.p.run(&["backup", "--start-fast", &pg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("removing a damaged lock") || !holder.exists(), "{}", stderr(&out));
    assert!(!holder.exists(), "the lock was not released");
}
