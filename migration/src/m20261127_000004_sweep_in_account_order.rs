//! The sweep reads its candidates in account-id order (scripts/bench.sh, 1,000,000 accounts,
//! 100,000 below the threshold, SQLite):
//!
//! - Everything a sweep writes is keyed by account: the claims' entries in
//!   `idx_alert_logs_cooldown` and `ux_alert_logs_unresolved`, and the foreign-key probes of
//!   `accounts`. In (balance, id) order, as migration 3 read them, a page of 1,000 claims
//!   landed on ~1,000 random index pages, each rewritten (and written to the WAL) by every
//!   page's commit. In id order a page's claims are neighbours: a few dozen index pages.
//! - `idx_accounts_sweep_by_id` makes that scan index-only: keyed by id, carrying every
//!   column the candidate query reads or tests. It replaces the (balance, id)-ordered
//!   covering index of migration 3 (about the same size); the sweep's count of accounts below
//!   the threshold keeps a slim partial index on balance. Extra key columns rather than
//!   PostgreSQL's INCLUDE keep one definition for both backends; `id` is unique, so the order
//!   is the id order.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 3] = [
    "CREATE INDEX idx_accounts_sweep_by_id \
     ON accounts (id, balance_minor, alert_threshold_minor, owner_email, owner_name)",
    "CREATE INDEX idx_accounts_default_threshold_balance \
     ON accounts (balance_minor) WHERE alert_threshold_minor IS NULL",
    "DROP INDEX idx_accounts_default_threshold_sweep",
];

const DOWN: [&str; 3] = [
    "CREATE INDEX idx_accounts_default_threshold_sweep \
     ON accounts (balance_minor, id, owner_email, owner_name, alert_threshold_minor) \
     WHERE alert_threshold_minor IS NULL",
    "DROP INDEX idx_accounts_default_threshold_balance",
    "DROP INDEX idx_accounts_sweep_by_id",
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
