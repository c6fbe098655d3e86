//! How the SQLite store treats its files.

use std::time::Duration;

use crate::helpers::{Backend, NewAccount, TestApp};

/// A sweep's writes go to the WAL; once the writer has been idle for a moment, the store
/// copies them into the database file itself (SQLite's own autocheckpoint would wait for
/// ~200 MB of WAL). Without the background checkpoint the file would not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sqlite_store_checkpoints_its_wal_into_the_database_file() {
    let app = TestApp::spawn(Backend::Sqlite)
        .await
        .expect("SQLite test app");
    let path = app.db.sqlite_path().expect("a SQLite file");
    for i in 0..20 {
        let email = format!("owner{i}@example.com");
        app.insert_account(NewAccount::new(&email, 1_000)).await;
    }
    // Let a checkpoint of the set-up (if any) happen first, then take the file as it is.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let before = std::fs::read(&path).expect("read the database file");
    let summary = app.sweep().await;
    assert_eq!(summary.sent, 20);
    let unchanged_right_after = std::fs::read(&path).expect("read the database file") == before;
    assert!(
        unchanged_right_after,
        "the sweep itself must not checkpoint (its writes stay in the WAL)"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read(&path).expect("read the database file") == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file did not change within 10 s of the sweep: no checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
