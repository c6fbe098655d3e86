//! `accounts`: written by the bank's systems, read by the daemon (SPEC §3).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
pub(crate) enum Accounts {
    Table,
    Id,
    OwnerEmail,
    OwnerName,
    BalanceMinor,
    AlertThresholdMinor,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    // Ids are text UUIDs on every backend so `sqlite3` and `psql` users can
                    // read and write them (a native UUID column is a BLOB on SQLite).
                    .col(
                        ColumnDef::new(Accounts::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Accounts::OwnerEmail)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Accounts::OwnerName).string_len(255).null())
                    .col(
                        ColumnDef::new(Accounts::BalanceMinor)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::AlertThresholdMinor)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_accounts_owner_email")
                    .table(Accounts::Table)
                    .col(Accounts::OwnerEmail)
                    .to_owned(),
            )
            .await?;
        // The sweep reads the accounts below their threshold in two keyset-paged index range
        // scans instead of scanning the table (a 5-minute sweep over a million rows):
        // - accounts on the configured threshold, ordered by (balance, id);
        // - accounts with their own threshold that are below it right now (a small set).
        // Both predicates are written identically in the sweep's queries, which is what lets
        // SQLite and PostgreSQL use these partial indexes.
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX idx_accounts_default_threshold_balance \
             ON accounts (balance_minor, id) WHERE alert_threshold_minor IS NULL",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_accounts_own_threshold_below \
             ON accounts (id) WHERE alert_threshold_minor IS NOT NULL \
             AND balance_minor < alert_threshold_minor",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Accounts::Table).to_owned())
            .await
    }
}
