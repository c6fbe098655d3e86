//! `alert_logs`: one row per alert (account x channel x cooldown window), the audit trail
//! and the claim that makes delivery race-free (SPEC §2, §3).

use sea_orm_migration::prelude::*;

use crate::m20261127_000001_create_accounts::Accounts;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AlertLogs {
    Table,
    Id,
    AccountId,
    Channel,
    ThresholdMinor,
    BalanceAtAlertMinor,
    Status,
    Attempts,
    LastError,
    CreatedAt,
    ClaimedAt,
    SentAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AlertLogs::Table)
                    .col(
                        ColumnDef::new(AlertLogs::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AlertLogs::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AlertLogs::Channel).string_len(32).not_null())
                    .col(
                        ColumnDef::new(AlertLogs::ThresholdMinor)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AlertLogs::BalanceAtAlertMinor)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AlertLogs::Status)
                            .string_len(16)
                            .not_null()
                            .check(
                                Expr::col(AlertLogs::Status).is_in(["pending", "sent", "failed"]),
                            ),
                    )
                    .col(
                        ColumnDef::new(AlertLogs::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(AlertLogs::LastError).text().null())
                    // Every timestamp of this table is written by the daemon in one format
                    // (never a database default), because SQLite compares them as text.
                    .col(
                        ColumnDef::new(AlertLogs::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AlertLogs::ClaimedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AlertLogs::SentAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_alert_logs_account_id")
                            .from(AlertLogs::Table, AlertLogs::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Cooldown lookups: "was this account alerted since T?" is a range scan of one
        // account's entries, never a scan of the table.
        manager
            .create_index(
                Index::create()
                    .name("idx_alert_logs_account_id_sent_at")
                    .table(AlertLogs::Table)
                    .col(AlertLogs::AccountId)
                    .col(AlertLogs::SentAt)
                    .to_owned(),
            )
            .await?;
        // At most one unresolved (pending or failed) alert per account and channel: the
        // database itself refuses a second claim, whatever a buggy or concurrent writer does.
        // It is also the index that finds the alert to retry under its original id.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX ux_alert_logs_unresolved \
                 ON alert_logs (account_id, channel) WHERE status <> 'sent'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AlertLogs::Table).to_owned())
            .await
    }
}
