//! Concurrent sweeps — separate connection pools, as separate processes would have — deliver
//! exactly one alert per eligible account (counted at the channel).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balance_alertd::application::check_account::{BalanceAlert, CheckReport};
use balance_alertd::application::sweep::BulkBalanceAlert;
use balance_alertd::infrastructure::db::{self, SeaOrmStore};
use balance_alertd::infrastructure::notify::ConsoleChannel;

use crate::helpers::{Backend, NewAccount, SlowConsole, TestApp};

const ELIGIBLE: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_concurrent_sweeps_on_one_postgres_database_alert_each_account_once() {
    concurrent_sweeps_alert_each_account_once(Backend::Postgres, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_sweeps_on_one_sqlite_file_alert_each_account_once() {
    concurrent_sweeps_alert_each_account_once(Backend::Sqlite, 2).await;
}

async fn concurrent_sweeps_alert_each_account_once(backend: Backend, sweeps: usize) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    // Small pages make many claim transactions race against each other.
    app.delivery.batch_size = 7;
    let mut emails = Vec::new();
    for i in 0..ELIGIBLE {
        let email = format!("c{i}@example.com");
        let threshold = (i % 4 == 0).then_some(100_000);
        app.insert_account(NewAccount {
            threshold_minor: threshold,
            ..NewAccount::new(&email, (i as i64) * 10)
        })
        .await;
        emails.push(email);
    }
    for round in 0..3 {
        let mut handles = Vec::new();
        for _ in 0..sweeps {
            let store = SeaOrmStore::new(app.db.connect().await, app.db.url.clone());
            let mut ctx = app.context();
            ctx.store = Arc::new(store);
            handles.push(tokio::spawn(async move {
                BulkBalanceAlert::new(ctx).execute().await
            }));
        }
        let mut sent = 0;
        for handle in handles {
            let summary = handle.await.expect("sweep task").expect("sweep");
            assert_eq!(summary.failed, 0);
            sent += summary.sent;
        }
        let expected = if round == 0 { ELIGIBLE as u64 } else { 0 };
        assert_eq!(
            sent, expected,
            "round {round}: deliveries across all sweeps"
        );
    }
    for email in &emails {
        assert_eq!(app.console.count_for(email), 1, "{email}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_of_one_account_alert_once_on_postgres() {
    concurrent_checks_alert_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_of_one_account_alert_once_on_sqlite() {
    concurrent_checks_alert_once(Backend::Sqlite).await;
}

async fn concurrent_checks_alert_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = app
        .insert_account(NewAccount::new("race@example.com", 1))
        .await;
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = SeaOrmStore::new(app.db.connect().await, app.db.url.clone());
        let mut ctx = app.context_with(vec![Arc::new(ConsoleChannel::new(app.console.out()))]);
        ctx.store = Arc::new(store);
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            BalanceAlert::new(ctx).execute(&id).await
        }));
    }
    for handle in handles {
        handle.await.expect("check task").expect("check");
    }
    assert_eq!(app.console.count_for("race@example.com"), 1);
    assert_eq!(app.alert_rows(&id).await.len(), 1);
}

/// On SQLite the outcome recorder keeps the process's one writer connection from batch to
/// batch only while deliveries come back to back. Between slow deliveries it gives it back,
/// so another writer — here a balance check — does not wait for a page of slow deliveries
/// (and time out: this writer waits at most 250 ms for the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_deliveries_leave_the_sqlite_writer_to_other_writers_between_batches() {
    let Some(mut app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let mut settings = app.db.settings(4);
    settings.connect_timeout = Duration::from_millis(250);
    let writer = db::connect_writer(&settings).await.expect("writer");
    app.store = SeaOrmStore::with_writer(app.conn.clone(), writer, app.db.url.clone());
    app.delivery.concurrency = 1;
    for i in 0..3 {
        app.insert_account(NewAccount::new(&format!("slow{i}@example.com"), 100))
            .await;
    }
    let console = Arc::new(Mutex::new(SlowConsole {
        delay: Duration::from_millis(600),
        inner: app.console.clone(),
    }));
    let slow = ConsoleChannel::new(console);
    let ctx = app.context_with(vec![Arc::new(slow)]);
    let sweep = tokio::spawn(async move { BulkBalanceAlert::new(ctx).execute().await });

    // The first delivery is written (and recorded right after); the second takes 600 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.console.lines().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first slow delivery never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let late = app
        .insert_account(NewAccount::new("late@example.com", 100))
        .await;
    let outcome = BalanceAlert::new(app.context())
        .execute(&late)
        .await
        .expect("the check gets the writer while the sweep waits for a slow delivery");
    assert!(matches!(outcome, CheckReport::Evaluated(_)), "{outcome:?}");
    assert_eq!(app.console.count_for("late@example.com"), 1);

    let summary = sweep.await.expect("sweep task").expect("sweep");
    assert_eq!((summary.sent, summary.failed), (3, 0));
}
