//! The SQLite replay store's group commit: concurrent consumes share transactions, yet each
//! request's keys go in both or neither, a key is fresh exactly once (also within one batch),
//! and what was answered fresh is on disk when the answer arrives.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use writ_attestation::writ::verify::{ReplayKey, ReplayStore};
use writ_gateway::replay::{PURGE_GRACE, SqliteReplay};

fn writ(j: &str) -> ReplayKey {
    ReplayKey::Writ { jti: j.into() }
}
fn proof(k: &str, j: &str) -> ReplayKey {
    ReplayKey::Proof {
        jkt: k.into(),
        jti: j.into(),
    }
}

#[test]
fn concurrent_consumes_are_fresh_exactly_once_and_durable_on_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let store = Arc::new(SqliteReplay::open(&path).unwrap());
    // 8 threads race over 200 writs each; every writ is offered by every thread.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = store.clone();
            std::thread::spawn(move || {
                (0..200)
                    .filter(|i| {
                        s.consume(
                            &[writ(&format!("w{i}")), proof("k", &format!("p{t}-{i}"))],
                            i64::MAX,
                        )
                        .unwrap()
                    })
                    .count()
            })
        })
        .collect();
    let fresh: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(fresh, 200);
    // Both or neither: a losing request's proof key was not left behind, so it is still fresh.
    let left_behind = (0..8)
        .flat_map(|t| (0..200).map(move |i| (t, i)))
        .filter(|(t, i)| {
            store
                .consume(&[proof("k", &format!("p{t}-{i}"))], i64::MAX)
                .unwrap()
        })
        .count();
    assert_eq!(left_behind, 8 * 200 - 200);
    drop(store);
    // Another process's view (a new connection): every writ is recorded.
    let again = SqliteReplay::open(&path).unwrap();
    assert!(!again.consume(&[writ("w0")], i64::MAX).unwrap());
    assert!(!again.consume(&[writ("w199")], i64::MAX).unwrap());
    assert!(again.consume(&[writ("w200")], i64::MAX).unwrap());
}

#[test]
fn a_request_with_one_used_key_records_none_of_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReplay::open(&dir.path().join("r.db")).unwrap();
    assert!(store.consume(&[proof("k", "p")], 100).unwrap());
    // Durable when answered: another connection sees it while the store is still open.
    let other = rusqlite::Connection::open(dir.path().join("r.db")).unwrap();
    let n: i64 = other
        .query_row(
            "SELECT COUNT(*) FROM replay WHERE kind = 'proof' AND a = 'k' AND b = 'p'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    assert!(!store.consume(&[writ("w"), proof("k", "p")], 100).unwrap());
    assert!(store.consume(&[writ("w")], 100).unwrap());
    // A request naming one key twice is refused and records nothing.
    assert!(!store.consume(&[writ("d"), writ("d")], 100).unwrap());
    assert!(store.consume(&[writ("d")], 100).unwrap());
    // Another holder's proof jti never collides.
    assert!(store.consume(&[proof("k2", "p")], 100).unwrap());
}

#[test]
fn purge_forgets_only_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReplay::open(&dir.path().join("r.db")).unwrap();
    assert!(store.consume(&[writ("old")], 100).unwrap());
    assert!(store.consume(&[writ("new")], 300).unwrap());
    // Within the grace period after keep_until nothing goes (other callers may have a larger
    // skew, or have waited in the queue).
    assert_eq!(store.purge(200).unwrap(), 0);
    assert!(!store.consume(&[writ("old")], 100).unwrap());
    assert_eq!(store.purge(200 + PURGE_GRACE).unwrap(), 1);
    assert!(store.consume(&[writ("old")], 100).unwrap());
    assert!(!store.consume(&[writ("new")], 300).unwrap());
}

#[test]
fn bundle_sequences_only_go_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReplay::open(&dir.path().join("r.db")).unwrap();
    store.observe_bundle("writ.test", 3, "aa").unwrap();
    store.observe_bundle("writ.test", 3, "aa").unwrap();
    assert_eq!(
        store.observe_bundle("writ.test", 2, "bb").unwrap_err().code,
        "bundle_rollback"
    );
    assert_eq!(
        store.observe_bundle("writ.test", 3, "bb").unwrap_err().code,
        "bundle_rollback"
    );
    store.observe_bundle("other.test", 1, "cc").unwrap();
    store.observe_bundle("writ.test", 4, "bb").unwrap();
    assert_eq!(
        store.observe_bundle("writ.test", 3, "aa").unwrap_err().code,
        "bundle_rollback"
    );
}

#[test]
fn async_consumes_share_the_writer_and_are_fresh_exactly_once() {
    use writ_attestation::writ::verify::AsyncReplayStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let store = Arc::new(SqliteReplay::open(&path).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let fresh: usize = rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let s = store.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    for i in 0..50 {
                        let keys = [writ(&format!("w{i}")), proof("k", &format!("p{t}-{i}"))];
                        n += usize::from(s.consume_async(&keys, i64::MAX).await.unwrap());
                    }
                    n
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    assert_eq!(fresh, 50);
    // The blocking and the async callers see one store.
    assert!(!store.consume(&[writ("w7")], i64::MAX).unwrap());
}

#[test]
fn a_failed_write_aborts_the_batch_and_records_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let store = SqliteReplay::open(&path).unwrap();
    // A fault on a real SQLite file: a trigger that makes one insert fail.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON replay WHEN NEW.a = 'boom'
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
    let e = store.consume(&[writ("ok"), writ("boom")], 100).unwrap_err();
    assert_eq!(e.code, "replay_store");
    // Both or neither: the first key of the failed request was not kept.
    other.execute_batch("DROP TRIGGER boom").unwrap();
    assert!(store.consume(&[writ("ok")], 100).unwrap());
}
