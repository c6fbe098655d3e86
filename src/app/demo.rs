//! `demo`: the reference example's run, in a throwaway in-memory SQLite database.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sea_orm::{ActiveValue::Set, EntityTrait};

use super::{AppError, migrate_up, stdout_console};
use crate::application::sweep::BulkBalanceAlert;
use crate::application::{AlertContext, DeliveryPolicy};
use crate::domain::{AlertRules, Currency, Money, Thresholds};
use crate::infrastructure::audit::NoAuditLog;
use crate::infrastructure::clock::SystemClock;
use crate::infrastructure::db::entities::accounts;
use crate::infrastructure::db::{self, SeaOrmStore};
use crate::infrastructure::notify::ConsoleChannel;

/// The reference's seed: Alice and Carol are below $50.00, Bob is not.
const SEED: [(&str, &str, i64); 3] = [
    ("alice@example.com", "Alice", 4_900),
    ("bob@example.com", "Bob", 15_000),
    ("carol@example.com", "Carol", 2_500),
];

/// Seeds three accounts and runs one sweep at threshold 50.00 on the console channel.
/// Never reads the configuration, never touches the configured database or log directory.
pub async fn run_demo() -> Result<ExitCode, AppError> {
    let conn = db::connect_in_memory().await?;
    migrate_up(&conn).await?;
    let rows = SEED.map(|(email, name, balance)| accounts::ActiveModel {
        id: Set(uuid::Uuid::new_v4().to_string()),
        owner_email: Set(email.into()),
        owner_name: Set(Some(name.into())),
        balance_minor: Set(balance),
        alert_threshold_minor: Set(None),
        updated_at: Set(chrono::Utc::now()),
        ..Default::default()
    });
    accounts::Entity::insert_many(rows)
        .exec(&conn)
        .await
        .context("cannot seed the demo accounts")?;

    let currency = Currency::usd();
    let threshold = Money::from_minor(5_000);
    let ctx = AlertContext {
        store: Arc::new(SeaOrmStore::new(conn, "sqlite::memory:")),
        channels: vec![Arc::new(ConsoleChannel::new(stdout_console()))],
        audit: Arc::new(NoAuditLog),
        clock: Arc::new(SystemClock),
        rules: AlertRules {
            thresholds: Thresholds::new(currency.clone(), threshold),
            cooldown: Duration::from_secs(24 * 3600),
            claim_timeout: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            policy: crate::domain::PolicyDefaults::default(),
            rearm_margin: crate::domain::Money::from_minor(0),
        },
        delivery: DeliveryPolicy {
            max_attempts: 1,
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            concurrency: 1,
            batch_size: 100,
            jitter_seed: None,
            limits: Default::default(),
        },
        digests: Vec::new(),
    };
    println!(
        "\n--- Running bulk alerts (threshold: {}) ---",
        currency.format(threshold)
    );
    let summary = BulkBalanceAlert::new(ctx).execute().await?;
    println!("\nTotal alerts sent: {}", summary.sent);
    Ok(super::delivery_exit_code(summary.failed > 0))
}
