//! Reads: the account pages of a sweep and the alerts that decide eligibility.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::entities::{accounts, alert_logs};
use super::map_db_err;
use crate::domain::ports::{AlertStore, ClaimRequest, LockWait, StoreError};
use crate::domain::{Account, AccountId, AlertPolicy, AlertRecord, Claim, DeliveryOutcome, Money};

/// Ids per `IN (...)` list: far below SQLite's 32,766 and PostgreSQL's 65,535 bind limits.
pub(super) const IDS_PER_QUERY: usize = 5_000;

/// [`AlertStore`] on SQLite or PostgreSQL through SeaORM.
#[derive(Clone)]
pub struct SeaOrmStore {
    pub(super) db: DatabaseConnection,
    /// The database URL with its password masked, for error messages.
    pub(super) label: Arc<str>,
}

impl SeaOrmStore {
    pub fn new(db: DatabaseConnection, label: impl Into<Arc<str>>) -> Self {
        Self {
            db,
            label: label.into(),
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(super) fn err(&self, action: &str) -> impl FnOnce(DbErr) -> StoreError + '_ {
        let action = action.to_owned();
        move |e| map_db_err(&self.label, &action, e)
    }
}

/// Where the keyset scan of accounts below their threshold stands. Accounts on the
/// configured threshold are read in (balance, id) order through their partial index,
/// then accounts with their own threshold in id order through theirs (see the migration).
#[derive(Debug, Clone)]
enum Scan {
    DefaultThreshold { after: Option<(i64, String)> },
    OwnThreshold { after: Option<String> },
    Done,
}

async fn next_page(
    db: &DatabaseConnection,
    threshold: Money,
    limit: u32,
    mut scan: Scan,
) -> Result<Option<(Vec<accounts::Model>, Scan)>, DbErr> {
    use accounts::Column as A;
    loop {
        let (rows, next) = match &scan {
            Scan::Done => return Ok(None),
            Scan::DefaultThreshold { after } => {
                let mut query = accounts::Entity::find()
                    .filter(A::AlertThresholdMinor.is_null())
                    .filter(A::BalanceMinor.lt(threshold.minor()));
                if let Some((balance, id)) = after {
                    query = query.filter(
                        Expr::tuple([Expr::col(A::BalanceMinor), Expr::col(A::Id)])
                            .gt(Expr::tuple([Expr::val(*balance), Expr::val(id.as_str())])),
                    );
                }
                let rows = query
                    .order_by_asc(A::BalanceMinor)
                    .order_by_asc(A::Id)
                    .limit(u64::from(limit))
                    .all(db)
                    .await?;
                let next = match rows.last() {
                    Some(last) if rows.len() == limit as usize => Scan::DefaultThreshold {
                        after: Some((last.balance_minor, last.id.clone())),
                    },
                    _ => Scan::OwnThreshold { after: None },
                };
                (rows, next)
            }
            Scan::OwnThreshold { after } => {
                // Written exactly as the partial index's predicate, so the planner uses it.
                let mut query = accounts::Entity::find()
                    .filter(A::AlertThresholdMinor.is_not_null())
                    .filter(Expr::col(A::BalanceMinor).lt(Expr::col(A::AlertThresholdMinor)));
                if let Some(id) = after {
                    query = query.filter(A::Id.gt(id.as_str()));
                }
                let rows = query
                    .order_by_asc(A::Id)
                    .limit(u64::from(limit))
                    .all(db)
                    .await?;
                let next = match rows.last() {
                    Some(last) if rows.len() == limit as usize => Scan::OwnThreshold {
                        after: Some(last.id.clone()),
                    },
                    _ => Scan::Done,
                };
                (rows, next)
            }
        };
        if rows.is_empty() {
            scan = next;
            continue;
        }
        return Ok(Some((rows, next)));
    }
}

/// Unresolved alerts and alerts sent since `sent_since` for these accounts.
pub(super) async fn open_and_recent<C: ConnectionTrait>(
    db: &C,
    accounts: &[String],
    sent_since: DateTime<Utc>,
) -> Result<Vec<alert_logs::Model>, DbErr> {
    use alert_logs::Column as L;
    let mut rows = Vec::new();
    for chunk in accounts.chunks(IDS_PER_QUERY) {
        let mut part = alert_logs::Entity::find()
            .filter(L::AccountId.is_in(chunk.iter().map(String::as_str)))
            .filter(
                Condition::any()
                    .add(L::Status.ne("sent"))
                    .add(L::SentAt.gte(sent_since)),
            )
            .all(db)
            .await?;
        rows.append(&mut part);
    }
    Ok(rows)
}

pub(super) fn to_records(rows: Vec<alert_logs::Model>) -> Result<Vec<AlertRecord>, StoreError> {
    rows.into_iter()
        .map(|row| AlertRecord::try_from(row).map_err(StoreError::Unexpected))
        .collect()
}

#[async_trait]
impl AlertStore for SeaOrmStore {
    async fn find_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        let row = accounts::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await
            .map_err(self.err("cannot read account"))?;
        Ok(row.map(Account::from))
    }

    fn accounts_below_threshold(
        &self,
        default_threshold: Money,
        page_size: u32,
    ) -> BoxStream<'static, Result<Vec<Account>, StoreError>> {
        let store = self.clone();
        let start = Scan::DefaultThreshold { after: None };
        stream::try_unfold(start, move |scan| {
            let store = store.clone();
            async move {
                let page = next_page(&store.db, default_threshold, Ord::max(page_size, 1), scan)
                    .await
                    .map_err(|e| map_db_err(&store.label, "cannot read accounts", e))?;
                Ok(page.map(|(rows, next)| (rows.into_iter().map(Account::from).collect(), next)))
            }
        })
        .boxed()
    }

    async fn open_and_recent_alerts(
        &self,
        accounts: &[AccountId],
        sent_since: DateTime<Utc>,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let ids: Vec<String> = accounts.iter().map(|a| a.as_str().to_owned()).collect();
        let rows = open_and_recent(&self.db, &ids, sent_since)
            .await
            .map_err(self.err("cannot read alert_logs"))?;
        to_records(rows)
    }

    async fn claim(
        &self,
        requests: &[ClaimRequest],
        policy: &AlertPolicy,
        now: DateTime<Utc>,
        lock: LockWait,
    ) -> Result<Vec<Claim>, StoreError> {
        self.claim_deliveries(requests, policy, now, lock).await
    }

    async fn record_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<(), StoreError> {
        self.write_outcomes(outcomes).await
    }
}
