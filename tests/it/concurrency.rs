//! Concurrent sweeps — separate connection pools, as separate processes would have — deliver
//! exactly one alert per eligible account (counted at the channel).

use std::sync::Arc;

use balance_alertd::application::check_account::BalanceAlert;
use balance_alertd::application::sweep::BulkBalanceAlert;
use balance_alertd::domain::Currency;
use balance_alertd::infrastructure::db::SeaOrmStore;
use balance_alertd::infrastructure::notify::ConsoleChannel;

use crate::helpers::{Backend, NewAccount, TestApp};

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
        let mut ctx = app.context_with(vec![Arc::new(ConsoleChannel::new(
            Currency::usd(),
            app.console.out(),
        ))]);
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
