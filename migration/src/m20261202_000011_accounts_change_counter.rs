//! SQLite: `accounts_changes` counts the UPDATEs and DELETEs committed to `accounts`, kept
//! by two triggers, so that a claim knows whether the accounts it read without the write lock
//! are still as they were.
//!
//! A sweep on SQLite reads each page of candidates ahead, on a reader connection and in one
//! read transaction with this counter, while the single writer claims the page before it.
//! Under the write lock the claim reads the counter again: unchanged, nothing in `accounts`
//! changed since the page was read and the claim decides on those rows; changed, it reads the
//! page's accounts again under the lock (SPEC §2: never alert on stale data). Reading every
//! page under the lock instead made the single writer, which every claim and outcome waits
//! for, scan the accounts too (README "Performance"). INSERTs are not counted: an account
//! added after its page was read is not on the page, and the next sweep finds it.
//! PostgreSQL needs none of it: its claims lock and re-read their rows in parallel.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 4] = [
    "CREATE TABLE accounts_changes (\
       id integer NOT NULL PRIMARY KEY CHECK (id = 1), \
       changes integer NOT NULL)",
    "INSERT INTO accounts_changes (id, changes) VALUES (1, 0)",
    "CREATE TRIGGER accounts_changes_on_update AFTER UPDATE ON accounts BEGIN \
       UPDATE accounts_changes SET changes = changes + 1 WHERE id = 1; END",
    "CREATE TRIGGER accounts_changes_on_delete AFTER DELETE ON accounts BEGIN \
       UPDATE accounts_changes SET changes = changes + 1 WHERE id = 1; END",
];

const DOWN: [&str; 3] = [
    "DROP TRIGGER accounts_changes_on_delete",
    "DROP TRIGGER accounts_changes_on_update",
    "DROP TABLE accounts_changes",
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
