//! SQLite: `idx_alert_logs_unresolved` holds every alert not resolved, from its claim on,
//! instead of only those sent or given up.
//!
//! SQLite updates an index on UPDATE only when a column it reads — key or partial-index
//! predicate — changes. With `status` in the predicate, recording each outcome moved the row
//! into the index: one more B-tree insert per delivery, in the small outcome batches that
//! bound a crash's duplicates (~30% of their cost; README "Performance"). Keyed on
//! `resolved_at IS NULL` alone, the row enters the index once, with its claim's bulk INSERT,
//! and outcomes leave it alone. The recovery check still reads only alerts sent or given up
//! (it tests `status` on the row). PostgreSQL keeps the old predicate: an UPDATE there writes
//! a new row version into every index whose predicate it matches, so the wider predicate
//! would only add the claim's entries.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 2] = [
    "DROP INDEX idx_alert_logs_unresolved",
    "CREATE INDEX idx_alert_logs_unresolved ON alert_logs (account_id) \
     WHERE resolved_at IS NULL",
];

const DOWN: [&str; 2] = [
    "DROP INDEX idx_alert_logs_unresolved",
    "CREATE INDEX idx_alert_logs_unresolved ON alert_logs (account_id) \
     WHERE resolved_at IS NULL AND status IN ('sent', 'expired')",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_sqlite(manager, &UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_sqlite(manager, &DOWN).await
    }
}
