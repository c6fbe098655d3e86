//! Rows to domain values. A row the daemon cannot interpret is an error naming the row,
//! never a panic.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::sqlx;
use sea_orm::{
    ConnectionTrait, DbErr, EntityTrait, QueryResult, QuerySelect, QueryTrait, TryGetable,
};

use super::entities::{accounts, alert_logs};
use crate::domain::{
    Account, AccountId, AccountSettings, AlertId, AlertRecord, AlertStatus, ChannelName, Money,
};

impl From<accounts::Model> for Account {
    fn from(row: accounts::Model) -> Self {
        Self {
            id: AccountId::new(row.id),
            owner_email: row.owner_email,
            owner_name: row.owner_name,
            balance: Money::from_minor(row.balance_minor),
            threshold_override: row.alert_threshold_minor.map(Money::from_minor),
            updated_at: Some(row.updated_at),
            owner_phone: row.owner_phone,
            settings: AccountSettings {
                currency: row.currency,
                alert_policy: row.alert_policy,
                alert_channels: row.alert_channels,
                timezone: row.timezone,
                quiet_hours: row.quiet_hours,
            },
        }
    }
}

/// `status IN ('pending', 'retry', 'failed')`: the open alerts, as the predicate of the unique
/// index `ux_alert_logs_open` defines them (on SQLite written `status <> 'sent' AND status <>
/// 'expired'`, the same set: migration 13), with literals (see [`status_literal`]).
pub(super) fn is_open() -> Expr {
    let open = [
        AlertStatus::Pending,
        AlertStatus::Retry,
        AlertStatus::Failed,
    ];
    Expr::col(super::entities::alert_logs::Column::Status).is_in(open.map(status_literal))
}

/// `status` compared in a WHERE clause: written into the SQL as a literal, not bound.
///
/// `status <> 'sent'` is the predicate of the partial unique index on unresolved alerts. When
/// SQLite matches a bound parameter against a partial index's predicate, it marks the
/// statement to be compiled again whenever that parameter is bound anew — on every execution:
/// a large first sweep spent ~6% of its CPU re-parsing the same UPDATE and SELECT (perf). As a
/// literal the cached statement is reused. (PostgreSQL measured the same either way.)
pub(super) fn status_literal(status: AlertStatus) -> Expr {
    Expr::Constant(status.as_str().into())
}

/// Attempts as stored (INTEGER); saturates instead of wrapping.
pub(super) fn attempts_column(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

/// The alerts of `select` as the claim rules see them.
pub(super) async fn read_records<C: ConnectionTrait>(
    db: &C,
    select: sea_orm::Select<alert_logs::Entity>,
) -> Result<Vec<AlertRecord>, DbErr> {
    use alert_logs::Column as L;
    let select = select.select_only().columns([
        L::Id,
        L::AccountId,
        L::Channel,
        L::Status,
        L::Attempts,
        L::CreatedAt,
        L::ClaimedAt,
        L::SentAt,
        L::Contact,
        L::ResolvedAt,
    ]);
    let rows = db.query_all(&select.into_query()).await?;
    rows.iter().map(record).collect()
}

/// An alert from a row of [`read_records`]'s columns; a status the daemon does not know is an
/// error naming the row.
fn record(row: &QueryResult) -> Result<AlertRecord, DbErr> {
    let id: String = column(row, 0)?;
    let at = in_row("alert_logs", &id);
    let stored: String = column(row, 3).map_err(at)?;
    let status = AlertStatus::parse(&stored)
        .ok_or_else(|| DbErr::Type(format!("alert_logs row {id}: unknown status {stored:?}")))?;
    Ok(AlertRecord {
        account_id: AccountId::new(column::<String>(row, 1).map_err(at)?),
        channel: ChannelName::new(column::<String>(row, 2).map_err(at)?),
        status,
        // A negative count can only come from a hand-edited row; read it as none.
        attempts: u32::try_from(column::<i32>(row, 4).map_err(at)?).unwrap_or(0),
        created_at: column(row, 5).map_err(at)?,
        claimed_at: column(row, 6).map_err(at)?,
        sent_at: column(row, 7).map_err(at)?,
        contact: column(row, 8).map_err(at)?,
        resolved_at: column(row, 9).map_err(at)?,
        id: AlertId::from_stored(id),
    })
}

/// The account columns a claim decides on.
pub(super) fn account_columns() -> sea_orm::Select<accounts::Entity> {
    use accounts::Column as A;
    accounts::Entity::find().select_only().columns([
        A::Id,
        A::OwnerEmail,
        A::OwnerName,
        A::BalanceMinor,
        A::AlertThresholdMinor,
        A::OwnerPhone,
        A::Currency,
        A::AlertPolicy,
        A::AlertChannels,
        A::Timezone,
        A::QuietHours,
    ])
}

/// The accounts `select` (built on [`account_columns`]) returns.
pub(super) async fn read_accounts<C: ConnectionTrait>(
    db: &C,
    select: sea_orm::Select<accounts::Entity>,
) -> Result<Vec<Account>, DbErr> {
    let rows = db.query_all(&select.into_query()).await?;
    rows.iter().map(account).collect()
}

/// An account as a claim decides on it, from a row of [`account_columns`].
fn account(row: &QueryResult) -> Result<Account, DbErr> {
    let id: String = column(row, 0)?;
    let at = in_row("accounts", &id);
    Ok(Account {
        owner_email: column(row, 1).map_err(at)?,
        owner_name: column(row, 2).map_err(at)?,
        balance: Money::from_minor(column(row, 3).map_err(at)?),
        threshold_override: column::<Option<i64>>(row, 4)
            .map_err(at)?
            .map(Money::from_minor),
        updated_at: None,
        owner_phone: column(row, 5).map_err(at)?,
        settings: AccountSettings {
            currency: column(row, 6).map_err(at)?,
            alert_policy: column(row, 7).map_err(at)?,
            alert_channels: column(row, 8).map_err(at)?,
            timezone: column(row, 9).map_err(at)?,
            quiet_hours: column(row, 10).map_err(at)?,
        },
        id: AccountId::new(id),
    })
}

/// A decode error of a column, naming the table and row it came from.
fn in_row<'a>(table: &'static str, id: &'a str) -> impl Fn(DbErr) -> DbErr + Copy + 'a {
    move |e| DbErr::Type(format!("{table} row {id}: {e}"))
}

/// Column `index` of a row, decoded by sqlx itself: SeaORM's `TryGetable` formats an error
/// message for every NULL it then turns into `None`, and most optional columns of a bank's
/// rows are NULL (README "Performance").
fn column<T>(row: &QueryResult, index: usize) -> Result<T, DbErr>
where
    T: TryGetable
        + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>,
{
    use sqlx::Row as _;
    let decoded = if let Some(row) = row.try_as_sqlite_row() {
        row.try_get(index)
    } else if let Some(row) = row.try_as_pg_row() {
        row.try_get(index)
    } else {
        return row.try_get_by_index(index);
    };
    decoded.map_err(|e| DbErr::Type(format!("column {index}: {e}")))
}
