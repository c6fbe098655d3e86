//! SQLite: the `status` tests that SQLite evaluates for every row written — the CHECK
//! constraint and the predicate of the unique index on open alerts — are written as
//! comparisons instead of `IN (...)` lists. PostgreSQL keeps its `IN` lists.
//!
//! SQLite evaluates an `IN (...)` list in a CHECK constraint or a partial index's predicate
//! by building a temporary B-tree of the list's values for every row it tests: not once per
//! statement, as in a WHERE clause (`EXPLAIN`: `OpenEphemeral` without `Once`). The claim's
//! INSERT tested two such lists per row; recording an outcome three (the CHECK, and the
//! index predicate on the row before and after). Measured on a copy of a 1M-account
//! database, 100,000 claims in INSERTs of 1,000 and their outcomes in UPDATEs of 32
//! (Python's `sqlite3`, three rounds): INSERTs 2.3–2.8 s → 1.8–2.0 s, UPDATEs 1.7–2.0 s →
//! 0.8–1.0 s — what the schema before migration 6 cost (1.8 s and 0.8 s). The tests mean the
//! same: the CHECK allows exactly the five statuses, and an alert is open (at most one per
//! account and channel) exactly when it is neither `sent` nor `expired`.
//!
//! SQLite cannot alter a CHECK constraint, so `alert_logs` is rebuilt (the documented
//! 12-step procedure, in one transaction; `alert_logs` is no table's parent, and the copy's
//! rows are checked against `accounts` as they are inserted, foreign keys being on), with
//! every index it had after migration 12. Its cost grows with the table: 3.1M alert rows
//! took 19 s and left the 1.73 GB file 0.65 GB larger (the old pages become free pages,
//! which later writes reuse; `VACUUM` returns them), with a WAL of 1.25 GB until it was
//! checkpointed: it needs free disk of about twice the table's size. The daemon keeps
//! systemd's start timeout extended while a migration runs.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const COLUMNS: &str = "id, account_id, channel, threshold_minor, balance_at_alert_minor, \
    status, attempts, last_error, created_at, claimed_at, sent_at, claimed_by, contact, \
    currency, resolved_at";

/// The table of migration 6 with `status`'s CHECK written as `check`. Repeated here, not
/// shared with migration 6: a released migration's SQL must never change, whatever a later
/// one needs.
fn create_table(name: &str, check: &str) -> String {
    format!(
        r#"CREATE TABLE {name} (
         "id" varchar(36) NOT NULL PRIMARY KEY,
         "account_id" varchar(36) NOT NULL,
         "channel" varchar(32) NOT NULL,
         "threshold_minor" integer NOT NULL,
         "balance_at_alert_minor" integer NOT NULL,
         "status" varchar(16) NOT NULL CHECK ({check}),
         "attempts" integer NOT NULL DEFAULT 0,
         "last_error" text NULL,
         "created_at" timestamp_with_timezone_text NOT NULL,
         "claimed_at" timestamp_with_timezone_text NOT NULL,
         "sent_at" timestamp_with_timezone_text NULL,
         "claimed_by" varchar(36) NULL,
         "contact" varchar(255) NULL,
         "currency" varchar(3) NULL,
         "resolved_at" timestamp_with_timezone_text NULL,
         FOREIGN KEY ("account_id") REFERENCES "accounts" ("id") ON DELETE CASCADE)"#
    )
}

/// Rebuilds `alert_logs` with `check` and the unique index on open alerts with `open`.
fn rebuild(check: &str, open: &str) -> Vec<String> {
    vec![
        create_table("alert_logs_rebuilt", check),
        format!("INSERT INTO alert_logs_rebuilt ({COLUMNS}) SELECT {COLUMNS} FROM alert_logs"),
        "DROP TABLE alert_logs".to_owned(),
        "ALTER TABLE alert_logs_rebuilt RENAME TO alert_logs".to_owned(),
        format!(
            "CREATE UNIQUE INDEX ux_alert_logs_open ON alert_logs (account_id, channel) \
             WHERE {open}"
        ),
        // Migration 10's and migration 12's indexes, unchanged.
        "CREATE INDEX idx_alert_logs_unresolved ON alert_logs (account_id) \
         WHERE resolved_at IS NULL"
            .to_owned(),
        "CREATE INDEX idx_alert_logs_recent ON alert_logs (account_id, channel, sent_at)"
            .to_owned(),
    ]
}

const CHECK_COMPARED: &str = r#""status" = 'pending' OR "status" = 'sent' OR "status" = 'retry'
           OR "status" = 'failed' OR "status" = 'expired'"#;
const OPEN_COMPARED: &str = "status <> 'sent' AND status <> 'expired'";

const CHECK_LISTED: &str = r#""status" IN ('pending', 'sent', 'retry', 'failed', 'expired')"#;
const OPEN_LISTED: &str = "status IN ('pending', 'retry', 'failed')";

async fn run_on_sqlite(manager: &SchemaManager<'_>, statements: Vec<String>) -> Result<(), DbErr> {
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    crate::on_sqlite(manager, &statements).await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing: sea-orm-migration runs SQLite migrations outside a transaction by
    /// default, each statement on any connection of the pool; a rebuild stopped half-way
    /// would leave no `alert_logs`.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_on_sqlite(manager, rebuild(CHECK_COMPARED, OPEN_COMPARED)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_on_sqlite(manager, rebuild(CHECK_LISTED, OPEN_LISTED)).await
    }
}
