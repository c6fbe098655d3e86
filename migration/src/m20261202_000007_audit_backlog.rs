//! `audit_backlog`: audit lines that could not be written to `audit.log` before the process
//! exited (disk full, permissions), kept until a later start writes them (SPEC §7: every
//! outcome gets its line once the log is writable again). Written only on that failure path;
//! empty otherwise. `seq` keeps the lines in the order they were meant to be written.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let create = match manager.get_database_backend() {
            DbBackend::Postgres => {
                "CREATE TABLE audit_backlog (seq bigserial PRIMARY KEY, line text NOT NULL)"
            }
            _ => {
                "CREATE TABLE audit_backlog (seq integer PRIMARY KEY AUTOINCREMENT, line text NOT NULL)"
            }
        };
        crate::run_sql(manager, &[create]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_sql(manager, &["DROP TABLE audit_backlog"]).await
    }
}
