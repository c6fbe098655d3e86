//! Rows to domain values. A row the daemon cannot interpret is an error naming the row,
//! never a panic.

use anyhow::anyhow;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, QuerySelect};

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

impl TryFrom<alert_logs::Model> for AlertRecord {
    type Error = anyhow::Error;

    fn try_from(row: alert_logs::Model) -> Result<Self, Self::Error> {
        let status = AlertStatus::parse(&row.status)
            .ok_or_else(|| anyhow!("alert_logs row {}: unknown status {:?}", row.id, row.status))?;
        Ok(Self {
            id: AlertId::from_stored(row.id),
            account_id: AccountId::new(row.account_id),
            channel: ChannelName::new(row.channel),
            status,
            // A negative count can only come from a hand-edited row; read it as none.
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            created_at: row.created_at,
            claimed_at: row.claimed_at,
            sent_at: row.sent_at,
            contact: row.contact,
            resolved_at: row.resolved_at,
        })
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

/// Rows of `alert_logs` as the claim rules see them.
pub(super) fn to_records(
    rows: Vec<alert_logs::Model>,
) -> Result<Vec<AlertRecord>, crate::domain::ports::StoreError> {
    rows.into_iter()
        .map(|row| AlertRecord::try_from(row).map_err(crate::domain::ports::StoreError::Unexpected))
        .collect()
}

/// One account row as a claim decides on it.
type AccountRow = (
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

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
    let rows: Vec<AccountRow> = select.into_tuple().all(db).await?;
    Ok(rows.into_iter().map(account).collect())
}

/// An account as a claim decides on it ([`account_columns`]).
fn account(row: AccountRow) -> Account {
    let (id, email, name, balance, threshold, phone, currency, policy, channels, tz, quiet) = row;
    Account {
        id: AccountId::new(id),
        owner_email: email,
        owner_name: name,
        balance: Money::from_minor(balance),
        threshold_override: threshold.map(Money::from_minor),
        updated_at: None,
        owner_phone: phone,
        settings: AccountSettings {
            currency,
            alert_policy: policy,
            alert_channels: channels,
            timezone: tz,
            quiet_hours: quiet,
        },
    }
}
