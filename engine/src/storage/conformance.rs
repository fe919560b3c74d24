//! The storage contract as executable checks; run against every backend.

// Test code, like the test doubles: the checks panic on a violation by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;

use super::Storage;
use crate::error::StorageErrorKind;

/// Panics on the first violation of the contract in [`super`]. Expects an empty root.
pub async fn run(s: &dyn Storage) {
    let data = Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<u8>>());

    // create-only put, get, ranged get
    s.put_new("a/b/obj1", data.clone()).await.expect("put_new of a new key");
    assert_eq!(s.get("a/b/obj1").await.unwrap(), data, "get returns what was put");
    assert_eq!(s.get_range("a/b/obj1", 10..20).await.unwrap(), data.slice(10..20));
    assert_eq!(s.get_range("a/b/obj1", 99_990..100_000).await.unwrap(), data.slice(99_990..));
    // several ranges of one object, in the order asked, overlapping or not
    let ranges = [50_000..50_010, 10..20, 15..30, 99_999..100_000, 7..7];
    let want: Vec<Bytes> = ranges.iter().map(|r| data.slice(r.start as usize..r.end as usize)).collect();
    assert_eq!(s.get_ranges("a/b/obj1", &ranges).await.unwrap(), want, "get_ranges");

    // a second put never overwrites
    let err = s.put_new("a/b/obj1", Bytes::from_static(b"other")).await.unwrap_err();
    assert_eq!(err.storage_kind(), Some(StorageErrorKind::AlreadyExists), "second put: {err}");
    assert_eq!(s.get("a/b/obj1").await.unwrap(), data, "existing object untouched");

    // missing objects
    let err = s.get("a/missing").await.unwrap_err();
    assert_eq!(err.storage_kind(), Some(StorageErrorKind::NotFound), "get missing: {err}");
    let err = s.get_range("a/missing", 0..1).await.unwrap_err();
    assert_eq!(err.storage_kind(), Some(StorageErrorKind::NotFound), "get_range missing: {err}");
    let err = s.get_ranges("a/missing", &[0..1, 2..3]).await.unwrap_err();
    assert_eq!(err.storage_kind(), Some(StorageErrorKind::NotFound), "get_ranges missing: {err}");

    // a range past the end is an error, not a short read
    assert!(s.get_range("a/b/obj1", 99_990..100_010).await.is_err(), "range past the end must fail");
    assert!(s.get_ranges("a/b/obj1", &[0..10, 99_990..100_010]).await.is_err(), "one range past the end fails all");

    // empty objects
    s.put_new("a/empty", Bytes::new()).await.unwrap();
    assert_eq!(s.get("a/empty").await.unwrap().len(), 0);

    // list: recursive, sorted, with sizes, prefix-filtered
    s.put_new("a/c", Bytes::from_static(b"xyz")).await.unwrap();
    s.put_new("b/d", Bytes::from_static(b"q")).await.unwrap();
    let keys: Vec<(String, u64)> = s.list("a/").await.unwrap().into_iter().map(|o| (o.key, o.size)).collect();
    assert_eq!(
        keys,
        vec![("a/b/obj1".to_string(), 100_000), ("a/c".to_string(), 3), ("a/empty".to_string(), 0)],
        "list a/"
    );
    assert!(s.list("zz/").await.unwrap().is_empty(), "list of an absent prefix is empty");
    modification_times_and_bulk_deletes(s).await;

    // keys that could leave the root are refused before any I/O
    for bad in ["../escaped", "/abs", "a/../b", "a//b", "a/./b", "", "a/b c", "a\\b"] {
        let err = s.put_new(bad, Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(err.storage_kind(), Some(StorageErrorKind::Permanent), "put {bad:?}: {err}");
        assert!(s.get(bad).await.is_err(), "get {bad:?}");
        assert!(s.delete(bad).await.is_err(), "delete {bad:?}");
    }
    assert!(s.list("../").await.is_err(), "list ../");

    // delete, idempotent
    s.delete("a/c").await.unwrap();
    s.delete("a/c").await.unwrap();
    assert_eq!(s.get("a/c").await.unwrap_err().storage_kind(), Some(StorageErrorKind::NotFound));
}

/// Concurrent create-only puts of one key: exactly one wins. AWS S3 and the local
/// backend guarantee this; s3s-fs (the test S3 server) checks If-None-Match and
/// writes in two steps, so this part is not run against it.
pub async fn run_concurrent_create(s: &dyn Storage) {
    let puts = (0..8u8).map(|i| s.put_new("race", Bytes::from(vec![i; 1000])));
    let results = futures::future::join_all(puts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "exactly one concurrent put wins");
    let winner = s.get("race").await.unwrap();
    assert!(winner.iter().all(|b| *b == winner[0]) && winner.len() == 1000, "winner's bytes intact");
}

/// Every backend says when an object was written (garbage collection's grace period
/// needs it), within a day of this host's clock; `delete_many` deletes several at
/// once, a missing one being no error.
async fn modification_times_and_bulk_deletes(s: &dyn Storage) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for o in s.list("a/").await.unwrap() {
        let written = o.modified.unwrap_or_else(|| panic!("{} has no modification time", o.key));
        assert!(written.abs_diff(now) < 86_400, "{}: written at {written}, now {now}", o.key);
    }
    for k in ["m/1", "m/2", "m/3"] {
        s.put_new(k, Bytes::from_static(b"m")).await.unwrap();
    }
    let keys: Vec<String> = ["m/1", "m/2", "m/missing"].iter().map(|k| k.to_string()).collect();
    s.delete_many(&keys).await.unwrap();
    let left: Vec<String> = s.list("m/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(left, ["m/3"], "delete_many");
}
