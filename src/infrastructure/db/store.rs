//! Reads: the account pages of a sweep and the alerts that decide eligibility.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use super::convert::status_literal;
use super::entities::{accounts, alert_logs};
use super::outcomes::HeldOutcomeRecorder;
use super::{SQLITE_CHECKPOINT_WHEN_IDLE, map_db_err};
use crate::domain::ports::{
    AlertStore, CandidateQuery, ClaimRequest, LockWait, OutcomeRecorder, StoreError,
};
use crate::domain::{Account, AccountId, AlertPolicy, AlertRecord, AlertStatus, Claim, Money};

/// Ids per `IN (...)` list: far below SQLite's 32,766 and PostgreSQL's 65,535 bind limits.
pub(super) const IDS_PER_QUERY: usize = 5_000;

/// Claim transactions one sweep runs at once on PostgreSQL ([`AlertStore::parallel_claims`]).
const PARALLEL_CLAIMS_ON_A_SERVER: usize = 2;

/// [`AlertStore`] on SQLite or PostgreSQL through SeaORM.
#[derive(Clone)]
pub struct SeaOrmStore {
    pub(super) db: DatabaseConnection,
    /// Where write transactions run: `db` itself, or on SQLite one dedicated connection
    /// ([`super::connect_writer`]).
    pub(super) writer: DatabaseConnection,
    /// Stops the background WAL checkpoints when the last clone of the store is dropped.
    checkpointer: Option<Arc<DropGuard>>,
    /// Write transactions committed so far (the checkpointer waits for a quiet moment).
    pub(super) commits: Arc<AtomicU64>,
    /// The database URL with its password masked, for error messages.
    pub(super) label: Arc<str>,
}

impl SeaOrmStore {
    pub fn new(db: DatabaseConnection, label: impl Into<Arc<str>>) -> Self {
        Self {
            writer: db.clone(),
            checkpointer: None,
            commits: Arc::default(),
            db,
            label: label.into(),
        }
    }

    /// Runs write transactions on `writer` instead of the pool, and (SQLite, inside a tokio
    /// runtime) checkpoints the WAL in the background while the store is alive.
    pub fn with_writer(mut self, writer: Option<DatabaseConnection>) -> Self {
        if let Some(writer) = writer {
            self.writer = writer;
            if tokio::runtime::Handle::try_current().is_ok() {
                self.checkpointer = Some(Arc::new(spawn_checkpointer(
                    self.db.clone(),
                    self.commits.clone(),
                    self.label.clone(),
                )));
            }
        }
        self
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(super) fn err(&self, action: &str) -> impl FnOnce(DbErr) -> StoreError + '_ {
        let action = action.to_owned();
        move |e| map_db_err(&self.label, &action, e)
    }
}

/// Copies the WAL into the database file once no write transaction has committed for
/// [`SQLITE_CHECKPOINT_WHEN_IDLE`] since the last copy, until the returned guard is dropped.
fn spawn_checkpointer(
    pool: DatabaseConnection,
    commits: Arc<AtomicU64>,
    label: Arc<str>,
) -> DropGuard {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SQLITE_CHECKPOINT_WHEN_IDLE);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut seen, mut checkpointed) = (0, 0);
        loop {
            tokio::select! {
                () = stopped.cancelled() => break,
                _ = every.tick() => {}
            }
            let now = commits.load(Ordering::Relaxed);
            let quiet = now == seen;
            seen = now;
            if !quiet || now == checkpointed {
                continue;
            }
            match pool
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                Ok(_) => checkpointed = now,
                // Not fatal: tried again at the next quiet moment (SQLite's own
                // autocheckpoint is the backstop).
                Err(e) => debug!(database = %label, error = %e, "WAL checkpoint failed."),
            }
        }
    });
    stop.drop_guard()
}

/// `balance < threshold` for accounts on the configured threshold. Written exactly as the
/// partial index's predicate, so both planners use it.
fn on_default_threshold(threshold: Money) -> Condition {
    use accounts::Column as A;
    Condition::all()
        .add(A::AlertThresholdMinor.is_null())
        .add(A::BalanceMinor.lt(threshold.minor()))
}

/// `balance < own threshold`, again exactly as the partial index's predicate.
fn below_own_threshold() -> Condition {
    use accounts::Column as A;
    Condition::all()
        .add(A::AlertThresholdMinor.is_not_null())
        .add(Expr::col(A::BalanceMinor).lt(Expr::col(A::AlertThresholdMinor)))
}

/// True when the account is not blocked on at least one of the channels: for each channel,
/// `NOT EXISTS` an alert sent since the cutoff or a live claim, probed through
/// `idx_alert_logs_cooldown`. The same rule as [`AlertPolicy::decide`], which has the last word.
fn claimable_somewhere(query: &CandidateQuery, backend: DbBackend) -> Condition {
    use alert_logs::Column as L;
    query
        .channels
        .iter()
        .fold(Condition::any(), |any, channel| {
            let mut blocking = Query::select()
                .expr(Expr::val(1))
                .from(alert_logs::Entity)
                .and_where(
                    Expr::col((alert_logs::Entity, L::AccountId))
                        .equals((accounts::Entity, accounts::Column::Id)),
                )
                .and_where(Expr::col((alert_logs::Entity, L::Channel)).eq(channel.as_str()))
                .cond_where(
                    Condition::any()
                        .add(Expr::col((alert_logs::Entity, L::SentAt)).gte(query.cooldown_cutoff))
                        .add(
                            Condition::all()
                                .add(
                                    Expr::col((alert_logs::Entity, L::Status))
                                        .eq(status_literal(AlertStatus::Pending)),
                                )
                                .add(
                                    Expr::col((alert_logs::Entity, L::ClaimedAt))
                                        .gt(query.claim_expiry),
                                ),
                        ),
                )
                .to_owned();
            if backend == DbBackend::Postgres {
                // An optimization fence: with OFFSET, PostgreSQL keeps the NOT EXISTS as a
                // per-account index probe instead of turning it into a join. While alert_logs
                // has no statistics yet (a new deployment, mid-way through its first sweep)
                // the join it chose was a nested loop over every claim: 922 ms instead of
                // 5 ms for a page of 2,000 accounts (EXPLAIN ANALYZE). SQLite plans the index
                // probe anyway (and rejects OFFSET without LIMIT).
                blocking.offset(0);
            }
            any.add(Expr::exists(blocking).not())
        })
}

/// One candidate row: id, e-mail, name, balance, own threshold.
type CandidateRow = (String, String, Option<String>, i64, Option<i64>);

/// Where the keyset scan of the sweep's candidates stands. Both parts read in account-id
/// order (migration 4): first the accounts on the configured threshold, through
/// `idx_accounts_sweep_by_id` alone, then the few with their own threshold below it, through
/// `idx_accounts_own_threshold_below`. Two scans rather than one with `OR`: with the `OR`,
/// PostgreSQL no longer scans the covering index alone but fetches every account's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    DefaultThreshold,
    OwnThreshold,
}

/// The page of candidates of `part` after account `after`, in id order: accounts below
/// their threshold and not blocked on every channel.
async fn next_page(
    db: &DatabaseConnection,
    query: &CandidateQuery,
    part: Part,
    after: Option<&str>,
) -> Result<Vec<CandidateRow>, DbErr> {
    use accounts::Column as A;
    let below = match part {
        Part::DefaultThreshold => on_default_threshold(query.default_threshold),
        Part::OwnThreshold => below_own_threshold(),
    };
    let mut select = accounts::Entity::find()
        .select_only()
        .columns([
            A::Id,
            A::OwnerEmail,
            A::OwnerName,
            A::BalanceMinor,
            A::AlertThresholdMinor,
        ])
        .filter(below)
        .filter(claimable_somewhere(query, db.get_database_backend()));
    if let Some(id) = after {
        select = select.filter(A::Id.gt(id));
    }
    select
        .order_by_asc(A::Id)
        .limit(u64::from(page_size(query)))
        .into_tuple()
        .all(db)
        .await
}

fn page_size(query: &CandidateQuery) -> u32 {
    Ord::max(query.page_size, 1)
}

fn candidate(row: CandidateRow) -> Account {
    let (id, owner_email, owner_name, balance, threshold) = row;
    Account {
        id: AccountId::new(id),
        owner_email,
        owner_name,
        balance: Money::from_minor(balance),
        threshold_override: threshold.map(Money::from_minor),
        updated_at: None,
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
                    .add(Expr::col(L::Status).ne(status_literal(AlertStatus::Sent)))
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

    async fn count_below_threshold(&self, default_threshold: Money) -> Result<u64, StoreError> {
        let on_default = accounts::Entity::find()
            .filter(on_default_threshold(default_threshold))
            .count(&self.db)
            .await
            .map_err(self.err("cannot count accounts"))?;
        let own = accounts::Entity::find()
            .filter(below_own_threshold())
            .count(&self.db)
            .await
            .map_err(self.err("cannot count accounts"))?;
        Ok(on_default + own)
    }

    fn claim_candidates(
        &self,
        query: CandidateQuery,
    ) -> BoxStream<'static, Result<Vec<Account>, StoreError>> {
        let store = self.clone();
        let query = Arc::new(query);
        // The keyset: the part being scanned and the last id read from it.
        let start = Some((Part::DefaultThreshold, None::<String>));
        stream::try_unfold(start, move |mut scan| {
            let (store, query) = (store.clone(), query.clone());
            async move {
                while let Some((part, after)) = scan {
                    let rows = next_page(&store.db, &query, part, after.as_deref())
                        .await
                        .map_err(|e| map_db_err(&store.label, "cannot read accounts", e))?;
                    let next_part = match part {
                        Part::DefaultThreshold => Some((Part::OwnThreshold, None)),
                        Part::OwnThreshold => None,
                    };
                    scan = match rows.last() {
                        Some(last) if rows.len() >= page_size(&query) as usize => {
                            Some((part, Some(last.0.clone())))
                        }
                        _ => next_part,
                    };
                    if !rows.is_empty() {
                        let page = rows.into_iter().map(candidate).collect();
                        return Ok(Some((page, scan)));
                    }
                }
                Ok(None)
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

    fn outcome_recorder(&self) -> Box<dyn OutcomeRecorder> {
        Box::new(HeldOutcomeRecorder::new(self.clone()))
    }

    fn parallel_claims(&self) -> usize {
        match self.writer.get_database_backend() {
            // One writer: claims queue on it anyway.
            DbBackend::Sqlite => 1,
            // The server runs two claims on two cores while this process delivers: a
            // claim's backend idles between its statements (lock, re-read, insert,
            // commit). scripts/bench.sh data, 1,000,000 accounts, medians of three runs: a
            // first sweep of ~4.4 s with one claim at a time, ~3.4-3.8 s with two; a third
            // gained nothing.
            _ => PARALLEL_CLAIMS_ON_A_SERVER,
        }
    }
}
