//! Alert policies (SPEC §2): what the candidate query and the recovery check of `once` read.
//!
//! - `idx_alert_logs_unresolved`: alerts sent or given up whose recovery no sweep has seen
//!   yet. `once` re-arms an account by resolving them when a sweep sees it recovered; with
//!   `alert.policy = "once"` that check walks this index instead of the whole alert history.
//! - `idx_accounts_own_policy`: the few accounts with a policy of their own, so that the
//!   recovery check under another default policy reads only those.
//! - PostgreSQL: the id-ordered covering index gains `alert_policy` and `timezone`, which the
//!   candidate query now reads per account, so its scan stays index-only (SQLite's covering
//!   index has had every per-account column since migration 6).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 2] = [
    "CREATE INDEX idx_alert_logs_unresolved ON alert_logs (account_id) \
     WHERE resolved_at IS NULL AND status IN ('sent', 'expired')",
    "CREATE INDEX idx_accounts_own_policy ON accounts (id) WHERE alert_policy IS NOT NULL",
];

const DOWN: [&str; 2] = [
    "DROP INDEX idx_alert_logs_unresolved",
    "DROP INDEX idx_accounts_own_policy",
];

const POSTGRES_COVERING_UP: [&str; 2] = [
    "DROP INDEX idx_accounts_sweep_by_id",
    "CREATE INDEX idx_accounts_sweep_by_id ON accounts (id, balance_minor, \
       alert_threshold_minor, owner_email, owner_name, alert_policy, timezone)",
];

const POSTGRES_COVERING_DOWN: [&str; 2] = [
    "DROP INDEX idx_accounts_sweep_by_id",
    "CREATE INDEX idx_accounts_sweep_by_id \
     ON accounts (id, balance_minor, alert_threshold_minor, owner_email, owner_name)",
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
