//! Schema migrations for `balance-alertd`: the only place the schema is defined.
//!
//! The daemon applies them at start (`database.auto_migrate`) and operators drive them with
//! `balance-alertd migrate [up|down|status|fresh]`; there is deliberately no second binary.
#![forbid(unsafe_code)]

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_accounts;
mod m20261127_000002_create_alert_logs;
mod m20261127_000003_index_the_sweep;
mod m20261127_000004_sweep_in_account_order;
mod m20261127_000005_ids_compare_bytewise;
mod m20261201_000006_leases_and_failure_classes;
mod m20261202_000007_audit_backlog;
mod m20261202_000008_alert_policies;
mod m20261202_000009_currency_thresholds;
mod m20261202_000010_unresolved_before_outcome;
mod m20261202_000011_accounts_change_counter;
mod m20261203_000012_recent_alerts_index;
mod m20261203_000013_status_checks_without_in_lists;

/// Applies the migrations in order; `seaql_migrations` records what ran.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_accounts::Migration),
            Box::new(m20261127_000002_create_alert_logs::Migration),
            Box::new(m20261127_000003_index_the_sweep::Migration),
            Box::new(m20261127_000004_sweep_in_account_order::Migration),
            Box::new(m20261127_000005_ids_compare_bytewise::Migration),
            Box::new(m20261201_000006_leases_and_failure_classes::Migration),
            Box::new(m20261202_000007_audit_backlog::Migration),
            Box::new(m20261202_000008_alert_policies::Migration),
            Box::new(m20261202_000009_currency_thresholds::Migration),
            Box::new(m20261202_000010_unresolved_before_outcome::Migration),
            Box::new(m20261202_000011_accounts_change_counter::Migration),
            Box::new(m20261203_000012_recent_alerts_index::Migration),
            Box::new(m20261203_000013_status_checks_without_in_lists::Migration),
        ]
    }
}

/// Runs raw SQL statements in order: for migrations made of statements SeaQuery cannot build
/// for both backends (partial indexes, drops of named indexes).
pub(crate) async fn run_sql(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    for sql in statements {
        manager.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}

/// Runs `statements` on SQLite only: for what only SQLite's single writer needs.
pub(crate) async fn on_sqlite(
    manager: &SchemaManager<'_>,
    statements: &[&str],
) -> Result<(), DbErr> {
    if manager.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Sqlite {
        run_sql(manager, statements).await?;
    }
    Ok(())
}

/// A migration's statements for both backends plus PostgreSQL-only ones: `up` runs the shared
/// ones first, `down` undoes the PostgreSQL ones first (the reverse order).
pub(crate) async fn up_with_postgres(
    manager: &SchemaManager<'_>,
    both: &[&str],
    postgres: &[&str],
) -> Result<(), DbErr> {
    run_sql(manager, both).await?;
    if manager.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Postgres {
        run_sql(manager, postgres).await?;
    }
    Ok(())
}

/// The reverse of [`up_with_postgres`].
pub(crate) async fn down_with_postgres(
    manager: &SchemaManager<'_>,
    both: &[&str],
    postgres: &[&str],
) -> Result<(), DbErr> {
    if manager.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Postgres {
        run_sql(manager, postgres).await?;
    }
    run_sql(manager, both).await
}
