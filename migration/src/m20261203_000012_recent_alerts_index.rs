//! `idx_alert_logs_recent` (account_id, channel, sent_at) replaces `idx_alert_logs_cooldown`
//! (account_id, channel), on both databases.
//!
//! Under `repeat` and `daily` an account is alerted again and again while it stays low, and
//! every alert stays in `alert_logs` for the auditors: after a month of daily alerts an
//! account has 30 rows. The eligibility probe and the claim's read of an account's alerts
//! need only its open alerts, those closed within the cooldown or today, and (`once`) those
//! not resolved; with `(account_id, channel)` alone they fetched every row of the account's
//! history from the table to test it. With `sent_at` in the index the probe reads index
//! ranges that hold no history (`sent_at IS NULL`, `sent_at >= cut-off`), and the claim's
//! read skips the old sent alerts in the index itself on SQLite. Measured on both databases,
//! 1M accounts, 100,000 below with 31 alerts each (README "Performance", "A month of alert
//! history"). The index keeps `account_id` first: it still serves the foreign key's cascade
//! and every per-account read.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 2] = [
    "CREATE INDEX idx_alert_logs_recent ON alert_logs (account_id, channel, sent_at)",
    "DROP INDEX idx_alert_logs_cooldown",
];

const DOWN: [&str; 2] = [
    "CREATE INDEX idx_alert_logs_cooldown ON alert_logs (account_id, channel)",
    "DROP INDEX idx_alert_logs_recent",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_sql(manager, &UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_sql(manager, &DOWN).await
    }
}
