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

/// The demo's database: in memory, one connection, which the recorder keeps between outcome
/// batches. A sweep over several pages of both parts (accounts on the default threshold,
/// then those with their own) must not wait for that connection: listing the second part's
/// first page without taking turns with the recorder waited for the pool until it timed out
/// (a quarter of `demo` runs failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_on_a_one_connection_database_pages_through_both_parts() {
    use std::sync::Arc;

    use balance_alertd::application::sweep::BulkBalanceAlert;
    use balance_alertd::application::{AlertContext, DeliveryPolicy};
    use balance_alertd::domain::{AlertRules, Currency, Money, PolicyDefaults, Thresholds};
    use balance_alertd::infrastructure::audit::NoAuditLog;
    use balance_alertd::infrastructure::db::{self, SeaOrmStore};
    use balance_alertd::infrastructure::notify::ConsoleChannel;

    use crate::helpers::{Captured, FakeClock, HOUR};

    let conn = db::connect_in_memory().await.expect("in-memory database");
    Migrator::up(&conn, None).await.expect("migrate");
    for i in 0..9 {
        // Six on the default threshold (50.00), three below a threshold of their own.
        let own = if i % 3 == 0 { "20000" } else { "NULL" };
        let sql = format!(
            "INSERT INTO accounts (id, owner_email, balance_minor, alert_threshold_minor) \
             VALUES ('00000000-0000-4000-8000-00000000000{i}', 'o{i}@example.com', 1000, {own})"
        );
        conn.execute_unprepared(&sql).await.expect("insert account");
    }
    let console = Captured::default();
    let ctx = AlertContext {
        store: Arc::new(SeaOrmStore::new(conn, "sqlite::memory:")),
        channels: vec![Arc::new(ConsoleChannel::new(console.out()))],
        audit: Arc::new(NoAuditLog),
        clock: Arc::new(FakeClock::new()),
        rules: AlertRules {
            thresholds: Thresholds::new(Currency::usd(), Money::from_minor(5_000)),
            cooldown: 24 * HOUR,
            claim_timeout: Duration::from_secs(300),
            give_up_after: 24 * HOUR,
            policy: PolicyDefaults::default(),
            rearm_margin: Money::from_minor(0),
        },
        delivery: DeliveryPolicy {
            max_attempts: 1,
            timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            concurrency: 1,
            batch_size: 2,
            jitter_seed: Some(7),
            limits: Default::default(),
        },
        digests: Vec::new(),
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(20),
        BulkBalanceAlert::new(ctx).execute(),
    )
    .await
    .expect("the sweep does not wait for the pool's only connection")
    .expect("sweep");
    assert_eq!(summary.sent, 9);
    assert_eq!(console.lines().len(), 9);
}

/// SQLite reads candidate pages ahead of the writer and decides on them under the write lock
/// only if `accounts_changes` has not moved since (migration 11). The bank's own UPDATEs and
/// DELETEs, from any client, must move it; INSERTs need not (a new account is not on a page
/// read before it). The migration also rolls back and forth cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_counts_every_change_to_accounts_for_the_claims_read_ahead() {
    let app = TestApp::spawn(Backend::Sqlite)
        .await
        .expect("SQLite test app");
    let changes = || async {
        app.count("SELECT changes AS n FROM accounts_changes WHERE id = 1")
            .await
    };
    let start = changes().await;
    let a = app
        .insert_account(NewAccount::new("a@example.com", 1_000))
        .await;
    app.insert_account(NewAccount::new("b@example.com", 1_000))
        .await;
    assert_eq!(changes().await, start, "an INSERT is not counted");
    app.exec(
        "UPDATE accounts SET balance_minor = 999999 WHERE id = $1",
        vec![a.as_str().into()],
    )
    .await;
    assert_eq!(changes().await, start + 1, "an UPDATE is counted");
    app.exec("UPDATE accounts SET owner_email = owner_email", vec![])
        .await;
    assert_eq!(changes().await, start + 3, "each updated row is counted");
    app.exec(
        "DELETE FROM accounts WHERE id = $1",
        vec![a.as_str().into()],
    )
    .await;
    assert_eq!(changes().await, start + 4, "a DELETE is counted");

    // Migration 11 and those after it.
    let from_eleven = u32::try_from(Migrator::migrations().len() - 10).expect("a few migrations");
    Migrator::down(&app.conn, Some(from_eleven))
        .await
        .expect("migration 11 down");
    app.exec("UPDATE accounts SET owner_email = owner_email", vec![])
        .await;
    Migrator::up(&app.conn, None)
        .await
        .expect("migration 11 up again");
    app.exec("UPDATE accounts SET owner_email = owner_email", vec![])
        .await;
    assert_eq!(
        changes().await,
        1,
        "the counter starts again, triggers in place"
    );
}

crate::on_both_backends!(
    the_schema_allows_one_open_alert_per_account_and_channel_and_five_statuses
);

/// What `alert_logs` itself guarantees, whichever way a migration writes it (SQLite's
/// migration 13 rewrote the CHECK and the unique index's predicate without `IN` lists): a
/// status outside the five is refused; at most one open alert (`pending`, `retry`,
/// `failed`) per account and channel; any number of `sent` and `expired` rows beside it.
async fn the_schema_allows_one_open_alert_per_account_and_channel_and_five_statuses(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await.expect("test app");
    let account = app
        .insert_account(NewAccount::new("a@example.com", 1_000))
        .await;
    let try_insert = |status: &str, channel: &str| {
        let statement = app.statement(
            "INSERT INTO alert_logs (id, account_id, channel, threshold_minor, \
               balance_at_alert_minor, status, attempts, created_at, claimed_at) \
             VALUES ($1, $2, $3, 5000, 1000, $4, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
            vec![
                uuid::Uuid::new_v4().to_string().into(),
                account.as_str().into(),
                channel.into(),
                status.into(),
            ],
        );
        let conn = &app.conn;
        async move { conn.execute_raw(statement).await.map(|_| ()) }
    };
    assert!(
        try_insert("delivered", "console").await.is_err(),
        "a status outside the five is refused"
    );
    for status in ["sent", "expired", "sent", "expired", "pending"] {
        try_insert(status, "console")
            .await
            .unwrap_or_else(|e| panic!("a {status} row beside closed ones: {e}"));
    }
    for open in ["pending", "retry", "failed"] {
        assert!(
            try_insert(open, "console").await.is_err(),
            "a second open alert ({open}) for the same account and channel is refused"
        );
    }
    for status in ["sent", "expired"] {
        try_insert(status, "console")
            .await
            .unwrap_or_else(|e| panic!("a {status} row beside an open one: {e}"));
    }
    try_insert("retry", "webhook")
        .await
        .expect("an open alert on another channel");
    app.exec(
        "UPDATE alert_logs SET status = 'sent' WHERE account_id = $1 AND status = 'pending'",
        vec![account.as_str().into()],
    )
    .await;
    try_insert("failed", "console")
        .await
        .expect("a new open alert once the last one is closed");
}
