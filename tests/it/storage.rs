//! How the store treats its files (SQLite) and its schema (PostgreSQL).

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};

use crate::helpers::{Backend, NewAccount, TestApp, TestDb};

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

const BYTEWISE: [&str; 3] = [
    "accounts.id=C",
    "alert_logs.account_id=C",
    "alert_logs.id=C",
];

/// The id columns compare bytewise on PostgreSQL (migration 5), whatever the database's
/// default collation, and every migration rolls back and re-applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ids_compare_bytewise_and_the_migrations_roll_back() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let conn = db.connect().await;
    let collations = || async {
        let rows = conn
            .query_all_raw(Statement::from_string(
                conn.get_database_backend(),
                "SELECT table_name || '.' || column_name, coalesce(collation_name, 'default') \
                 FROM information_schema.columns \
                 WHERE (table_name, column_name) IN \
                   (('accounts', 'id'), ('alert_logs', 'id'), ('alert_logs', 'account_id')) \
                 ORDER BY 1",
            ))
            .await
            .expect("read the column collations");
        rows.iter()
            .map(|r| {
                let column: String = r.try_get_by_index(0).expect("column");
                let collation: String = r.try_get_by_index(1).expect("collation");
                format!("{column}={collation}")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(collations().await, BYTEWISE);
    // Down to migration 6 (those after it leave the ids alone), then 6 itself.
    let after_six = u32::try_from(Migrator::migrations().len() - 6).expect("a few migrations");
    Migrator::down(&conn, Some(after_six))
        .await
        .expect("the migrations after 6 down");
    Migrator::down(&conn, Some(1))
        .await
        .expect("migration 6 down");
    assert_eq!(
        collations().await,
        BYTEWISE,
        "migration 6 keeps the collation"
    );
    Migrator::down(&conn, Some(1))
        .await
        .expect("migration 5 down");
    assert_eq!(
        collations().await,
        [
            "accounts.id=default",
            "alert_logs.account_id=default",
            "alert_logs.id=default"
        ]
    );
    Migrator::down(&conn, None)
        .await
        .expect("every migration down");
    Migrator::up(&conn, None)
        .await
        .expect("every migration up again");
    assert_eq!(collations().await, BYTEWISE);
}
