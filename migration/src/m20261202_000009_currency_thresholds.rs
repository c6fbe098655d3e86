//! Default thresholds per currency (SPEC §2): an account without its own threshold is below
//! the default of its currency, so the sweep's indexes read the currency too.
//!
//! - `idx_accounts_default_threshold_balance` becomes (currency, balance_minor): the count of
//!   accounts below each currency's default is a range per currency (null = the default
//!   currency), and the accounts in a currency without a default are the entries with a
//!   currency, without reading the table.
//! - PostgreSQL: the id-ordered covering index gains `currency`, which the candidate query
//!   now reads per account, so its scan stays index-only (SQLite's covering index has had
//!   every per-account column since migration 6).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 2] = [
    "DROP INDEX idx_accounts_default_threshold_balance",
    "CREATE INDEX idx_accounts_default_threshold_balance \
     ON accounts (currency, balance_minor) WHERE alert_threshold_minor IS NULL",
];

const DOWN: [&str; 2] = [
    "DROP INDEX idx_accounts_default_threshold_balance",
    "CREATE INDEX idx_accounts_default_threshold_balance \
     ON accounts (balance_minor) WHERE alert_threshold_minor IS NULL",
];

const POSTGRES_COVERING_UP: [&str; 2] = [
    "DROP INDEX idx_accounts_sweep_by_id",
    "CREATE INDEX idx_accounts_sweep_by_id ON accounts (id, balance_minor, \
       alert_threshold_minor, owner_email, owner_name, alert_policy, timezone, currency)",
];

const POSTGRES_COVERING_DOWN: [&str; 2] = [
    "DROP INDEX idx_accounts_sweep_by_id",
    "CREATE INDEX idx_accounts_sweep_by_id ON accounts (id, balance_minor, \
       alert_threshold_minor, owner_email, owner_name, alert_policy, timezone)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::up_with_postgres(manager, &UP, &POSTGRES_COVERING_UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::down_with_postgres(manager, &DOWN, &POSTGRES_COVERING_DOWN).await
    }
}
