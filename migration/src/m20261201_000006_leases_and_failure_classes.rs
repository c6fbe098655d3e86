//! Leases and failure classes (SPEC §2, §3), and the per-account columns of SPEC §3.
//!
//! `alert_logs`:
//! - `status` gains `retry` (a transient failure, due again next sweep under the same id) and
//!   `expired` (given up after `delivery.give_up_after`). Rows that were `failed` under the
//!   old rules were all retried by every sweep, whatever the failure: they become `retry`,
//!   and their next attempt classifies them (a permanent failure then parks them as `failed`).
//! - `claimed_by`: the lease holder (one id per sweep) that owns a `pending` claim. Only the
//!   holder renews the claim (`claimed_at`) and records its outcome: a write is fenced on it.
//! - `contact`: the contact details the alert was addressed to; a `failed` alert is parked
//!   until the account's contact details differ from these.
//! - `currency`, `resolved_at`: the account's currency at the alert, the recovery time
//!   (`once` policy).
//! - At most one *open* alert (`pending`, `retry`, `failed`) per account and channel: the
//!   unique index's predicate changes, so that any number of `expired` rows may stay.
//!
//! `accounts` gains the nullable per-account settings (currency, phone, policy, channels,
//! time zone, quiet hours): existing rows and external writers need not know them.
//!
//! SQLite cannot alter a CHECK constraint, so there `alert_logs` is rebuilt (the documented
//! 12-step procedure, in one transaction: see `use_transaction`); PostgreSQL alters it in place.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const ACCOUNT_COLUMNS: [&str; 6] = [
    "ALTER TABLE accounts ADD COLUMN currency varchar(3) NULL",
    "ALTER TABLE accounts ADD COLUMN owner_phone varchar(32) NULL",
    "ALTER TABLE accounts ADD COLUMN alert_policy varchar(16) NULL",
    "ALTER TABLE accounts ADD COLUMN alert_channels varchar(255) NULL",
    "ALTER TABLE accounts ADD COLUMN timezone varchar(64) NULL",
    "ALTER TABLE accounts ADD COLUMN quiet_hours varchar(32) NULL",
];

const ACCOUNT_COLUMNS_DOWN: [&str; 6] = [
    "ALTER TABLE accounts DROP COLUMN currency",
    "ALTER TABLE accounts DROP COLUMN owner_phone",
    "ALTER TABLE accounts DROP COLUMN alert_policy",
    "ALTER TABLE accounts DROP COLUMN alert_channels",
    "ALTER TABLE accounts DROP COLUMN timezone",
    "ALTER TABLE accounts DROP COLUMN quiet_hours",
];

const SQLITE_UP: [&str; 7] = [
    r#"CREATE TABLE alert_logs_new (
         "id" varchar(36) NOT NULL PRIMARY KEY,
         "account_id" varchar(36) NOT NULL,
         "channel" varchar(32) NOT NULL,
         "threshold_minor" integer NOT NULL,
         "balance_at_alert_minor" integer NOT NULL,
         "status" varchar(16) NOT NULL
           CHECK ("status" IN ('pending', 'sent', 'retry', 'failed', 'expired')),
         "attempts" integer NOT NULL DEFAULT 0,
         "last_error" text NULL,
         "created_at" timestamp_with_timezone_text NOT NULL,
         "claimed_at" timestamp_with_timezone_text NOT NULL,
         "sent_at" timestamp_with_timezone_text NULL,
         "claimed_by" varchar(36) NULL,
         "contact" varchar(255) NULL,
         "currency" varchar(3) NULL,
         "resolved_at" timestamp_with_timezone_text NULL,
         FOREIGN KEY ("account_id") REFERENCES "accounts" ("id") ON DELETE CASCADE)"#,
    "INSERT INTO alert_logs_new (id, account_id, channel, threshold_minor, \
       balance_at_alert_minor, status, attempts, last_error, created_at, claimed_at, sent_at) \
     SELECT id, account_id, channel, threshold_minor, balance_at_alert_minor, \
       CASE status WHEN 'failed' THEN 'retry' ELSE status END, \
       attempts, last_error, created_at, claimed_at, sent_at FROM alert_logs",
    "DROP TABLE alert_logs",
    "ALTER TABLE alert_logs_new RENAME TO alert_logs",
    "CREATE UNIQUE INDEX ux_alert_logs_open ON alert_logs (account_id, channel) \
     WHERE status IN ('pending', 'retry', 'failed')",
    "CREATE INDEX idx_alert_logs_cooldown ON alert_logs (account_id, channel)",
    "PRAGMA foreign_key_check(alert_logs)",
];

/// Back to migration 5's table: `retry` and `expired` read as the old `failed` (retried by
/// every sweep). The old schema allows one unresolved row per account and channel, so an
/// `expired` row beside an open one is dropped.
const SQLITE_DOWN: [&str; 6] = [
    r#"CREATE TABLE alert_logs_old (
         "id" varchar(36) NOT NULL PRIMARY KEY,
         "account_id" varchar(36) NOT NULL,
         "channel" varchar(32) NOT NULL,
         "threshold_minor" integer NOT NULL,
         "balance_at_alert_minor" integer NOT NULL,
         "status" varchar(16) NOT NULL CHECK ("status" IN ('pending', 'sent', 'failed')),
         "attempts" integer NOT NULL DEFAULT 0,
         "last_error" text NULL,
         "created_at" timestamp_with_timezone_text NOT NULL,
         "claimed_at" timestamp_with_timezone_text NOT NULL,
         "sent_at" timestamp_with_timezone_text NULL,
         FOREIGN KEY ("account_id") REFERENCES "accounts" ("id") ON DELETE CASCADE)"#,
    // Of several closed-and-open rows per pair only one may be unresolved in the old schema.
    "INSERT INTO alert_logs_old SELECT id, account_id, channel, threshold_minor, \
       balance_at_alert_minor, CASE WHEN status IN ('retry', 'expired') THEN 'failed' ELSE status END, \
       attempts, last_error, created_at, claimed_at, sent_at FROM alert_logs l \
     WHERE status <> 'expired' OR NOT EXISTS (SELECT 1 FROM alert_logs o WHERE o.account_id = l.account_id \
       AND o.channel = l.channel AND o.status IN ('pending', 'retry', 'failed'))",
    "DROP TABLE alert_logs",
    "ALTER TABLE alert_logs_old RENAME TO alert_logs",
    "CREATE UNIQUE INDEX ux_alert_logs_unresolved ON alert_logs (account_id, channel) \
     WHERE status <> 'sent'",
    "CREATE INDEX idx_alert_logs_cooldown ON alert_logs (account_id, channel)",
];

const POSTGRES_UP: [&str; 5] = [
    "ALTER TABLE alert_logs DROP CONSTRAINT IF EXISTS alert_logs_status_check",
    "UPDATE alert_logs SET status = 'retry' WHERE status = 'failed'",
    "ALTER TABLE alert_logs \
       ADD CONSTRAINT alert_logs_status_check \
         CHECK (status IN ('pending', 'sent', 'retry', 'failed', 'expired')), \
       ADD COLUMN claimed_by varchar(36) COLLATE \"C\" NULL, \
       ADD COLUMN contact varchar(255) NULL, \
       ADD COLUMN currency varchar(3) NULL, \
       ADD COLUMN resolved_at timestamp with time zone NULL",
    "DROP INDEX ux_alert_logs_unresolved",
    "CREATE UNIQUE INDEX ux_alert_logs_open ON alert_logs (account_id, channel) \
     WHERE status IN ('pending', 'retry', 'failed')",
];

const POSTGRES_DOWN: [&str; 6] = [
    "DROP INDEX ux_alert_logs_open",
    "ALTER TABLE alert_logs DROP CONSTRAINT alert_logs_status_check",
    "DELETE FROM alert_logs l WHERE status = 'expired' AND EXISTS (SELECT 1 FROM alert_logs o \
       WHERE o.account_id = l.account_id AND o.channel = l.channel \
       AND o.status IN ('pending', 'retry', 'failed'))",
    "UPDATE alert_logs SET status = 'failed' WHERE status IN ('retry', 'expired')",
    "ALTER TABLE alert_logs ADD CONSTRAINT alert_logs_status_check \
       CHECK (status IN ('pending', 'sent', 'failed')), \
     DROP COLUMN claimed_by, DROP COLUMN contact, DROP COLUMN currency, DROP COLUMN resolved_at",
    "CREATE UNIQUE INDEX ux_alert_logs_unresolved ON alert_logs (account_id, channel) \
     WHERE status <> 'sent'",
];

/// SQLite: the claim re-reads each account under the write lock, so that read is on the
/// single writer's critical path. Covered by the id-ordered index of migration 4 extended
/// with the new columns, it reads one index instead of the index and the table: 1,000
/// accounts ~2 ms instead of ~7 ms, and the 1M-account first sweep ~0.7 s shorter. (Not on
/// PostgreSQL: claims there run two at a time beside the writer, and its B-tree entries are
/// limited to 2,704 bytes, which these text columns together could exceed.)
const SQLITE_COVERING_UP: [&str; 2] = [
    "DROP INDEX idx_accounts_sweep_by_id",
    "CREATE INDEX idx_accounts_sweep_by_id ON accounts (id, balance_minor, alert_threshold_minor, \
       owner_email, owner_name, owner_phone, currency, alert_policy, alert_channels, timezone, \
       quiet_hours)",
];

/// Migration 4's index again (the columns it names can only be dropped once it is gone).
const SQLITE_COVERING_DOWN: [&str; 2] = [
    "DROP INDEX idx_accounts_sweep_by_id",
    "CREATE INDEX idx_accounts_sweep_by_id \
     ON accounts (id, balance_minor, alert_threshold_minor, owner_email, owner_name)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on both databases: sea-orm-migration runs SQLite migrations outside a
    /// transaction by default, and a rebuild stopped half-way would leave no `alert_logs`.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_sql(manager, &ACCOUNT_COLUMNS).await?;
        match manager.get_database_backend() {
            DbBackend::Postgres => crate::run_sql(manager, &POSTGRES_UP).await,
            _ => {
                crate::run_sql(manager, &SQLITE_UP).await?;
                crate::run_sql(manager, &SQLITE_COVERING_UP).await
            }
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => crate::run_sql(manager, &POSTGRES_DOWN).await?,
            _ => {
                crate::run_sql(manager, &SQLITE_DOWN).await?;
                crate::run_sql(manager, &SQLITE_COVERING_DOWN).await?;
            }
        }
        crate::run_sql(manager, &ACCOUNT_COLUMNS_DOWN).await
    }
}
