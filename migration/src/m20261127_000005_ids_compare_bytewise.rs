//! Account and alert ids compare byte by byte on PostgreSQL (`COLLATE "C"`).
//!
//! Ids are UUID strings: nobody sorts them alphabetically by a language's rules. Under the
//! database's default collation (e.g. `C.UTF-8` or `en_US.UTF-8`) every comparison in the
//! id indexes — the primary keys, the foreign-key probes, the sweep's keyset pages, the
//! alert_logs indexes keyed by account — goes through the C library's `strcoll`; under
//! `"C"` it is a `memcmp`. Measured with scripts/bench.sh's data (1,000,000 accounts,
//! 100,000 eligible, PostgreSQL 15 with `C.UTF-8`, three paired runs on freshly loaded
//! databases): first sweep ~5.3 s -> ~4.4 s. The order
//! is also the byte order that SQLite (`BINARY`) and the daemon's own sorting use.
//! SQLite needs nothing: it compares text bytewise already.
//!
//! Changing a column's collation rebuilds the indexes on it (~1.3 s per million accounts).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 2] = [
    r#"ALTER TABLE alert_logs
         ALTER COLUMN id TYPE varchar(36) COLLATE "C",
         ALTER COLUMN account_id TYPE varchar(36) COLLATE "C""#,
    r#"ALTER TABLE accounts ALTER COLUMN id TYPE varchar(36) COLLATE "C""#,
];

const DOWN: [&str; 2] = [
    r#"ALTER TABLE alert_logs
         ALTER COLUMN id TYPE varchar(36) COLLATE "default",
         ALTER COLUMN account_id TYPE varchar(36) COLLATE "default""#,
    r#"ALTER TABLE accounts ALTER COLUMN id TYPE varchar(36) COLLATE "default""#,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        crate::run_sql(manager, &UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        crate::run_sql(manager, &DOWN).await
    }
}
