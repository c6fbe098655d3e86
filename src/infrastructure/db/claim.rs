//! Writes: claiming deliveries race-free and recording their outcomes, in batches.
//!
//! The claim follows the pattern PITFALLS proved on PostgreSQL 15: in one transaction, first
//! lock the candidate accounts (`FOR UPDATE [SKIP LOCKED]`), then — in later statements,
//! which take a fresh snapshot after the locks are held — re-read the accounts' alerts,
//! decide again and write the claims. Any competitor claiming the same account held its
//! lock until it committed, so the re-read sees its claim. On SQLite a `BEGIN IMMEDIATE`
//! transaction takes the single write lock first, which serializes claimers across
//! processes. The partial unique index on unresolved alerts backs both up.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    CaseStatement, Expr, ExprTrait, LockBehavior, LockType, OnConflict, Query, SimpleExpr,
    ValueTuple,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use super::convert::status_literal;
use super::entities::{accounts, alert_logs};
use super::store::{IDS_PER_QUERY, SeaOrmStore, open_and_recent, to_records};
use crate::domain::ports::{ClaimRequest, LockWait, StoreError};
use crate::domain::{
    AlertId, AlertPolicy, AlertRecord, AlertStatus, AlertsByPair, Claim, Decision, Money,
};

/// Rows per multi-row INSERT: 5 binds a row stays far below SQLite's 32,766-bind limit.
const ROWS_PER_INSERT: usize = 1000;

/// Rows per CASE-UPDATE (retries, failures): each row's CASE scans every arm, so keep it short.
pub(super) const ROWS_PER_CASE: usize = 200;

use alert_logs::Column as L;

impl SeaOrmStore {
    /// A write transaction; on SQLite `BEGIN IMMEDIATE`, so it queues on the busy timeout
    /// instead of failing with SQLITE_BUSY when it later upgrades from read to write.
    pub(super) async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let options = match self.writer.get_database_backend() {
            DbBackend::Sqlite => options,
            _ => TransactionOptions::default(),
        };
        self.writer
            .begin_with_options(options)
            .await
            .map_err(self.err("cannot begin a transaction"))
    }

    /// Commits a transaction from [`Self::begin_write`] and counts it (the WAL checkpointer
    /// waits for a moment without commits).
    pub(super) async fn commit_write(
        &self,
        txn: DatabaseTransaction,
        what: &str,
    ) -> Result<(), StoreError> {
        txn.commit().await.map_err(self.err(what))?;
        self.count_commit();
        Ok(())
    }

    /// Counts a committed write (the WAL checkpointer waits for a moment without commits).
    pub(super) fn count_commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) async fn claim_deliveries(
        &self,
        requests: &[ClaimRequest],
        policy: &AlertPolicy,
        now: DateTime<Utc>,
        lock: LockWait,
    ) -> Result<Vec<Claim>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_write().await?;
        let locked = lock_accounts(&txn, requests, lock)
            .await
            .map_err(self.err("cannot lock accounts"))?;
        let mut requests: Vec<&ClaimRequest> = requests
            .iter()
            .filter(|r| locked.contains(r.account.id.as_str()))
            .collect();
        // Claims in account order (sweep pages already are): alert ids, which grow with
        // time, then follow account order, so the rows an outcome batch marks are neighbours
        // both in the table and in the account-keyed unresolved index.
        requests.sort_unstable_by(|a, b| a.account.id.as_str().cmp(b.account.id.as_str()));
        let locked_ids: Vec<String> = requests
            .iter()
            .map(|r| r.account.id.as_str().to_owned())
            .collect();
        // A statement after the lock: its snapshot includes every competitor's committed claim.
        let rows = open_and_recent(&txn, &locked_ids, policy.cooldown_cutoff(now))
            .await
            .map_err(self.err("cannot read alert_logs"))?;
        let plan = plan_claims(&requests, &to_records(rows)?, policy, now);
        let skipped = insert_new(&txn, &plan.new, now)
            .await
            .map_err(self.err("cannot insert claims into alert_logs"))?;
        let reclaimed = reclaim(&txn, &plan.retries, now)
            .await
            .map_err(self.err("cannot reclaim alerts in alert_logs"))?;
        self.commit_write(txn, "cannot commit claims").await?;
        let mut claims = plan.new;
        claims.retain(|c| !skipped.contains(c.alert_id.as_str()));
        claims.extend(
            plan.retries
                .into_iter()
                .filter(|c| reclaimed.contains(c.alert_id.as_str())),
        );
        Ok(claims)
    }
}

/// Locks the requested accounts and returns the ids this transaction holds. PostgreSQL:
/// row locks (`SKIP LOCKED` leaves accounts a concurrent sweep is claiming to it); SQLite:
/// the immediate transaction already holds the database's write lock.
async fn lock_accounts(
    txn: &DatabaseTransaction,
    requests: &[ClaimRequest],
    lock: LockWait,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    let ids: Vec<&str> = requests.iter().map(|r| r.account.id.as_str()).collect();
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(ids.into_iter().map(str::to_owned).collect());
    }
    let mut locked = HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let query = accounts::Entity::find()
            .select_only()
            .column(accounts::Column::Id)
            .filter(accounts::Column::Id.is_in(chunk.iter().copied()))
            // One order for every claimer, so waiting claimers cannot deadlock.
            .order_by_asc(accounts::Column::Id);
        let query = match lock {
            LockWait::Skip => query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked),
            LockWait::Wait => query.lock(LockType::Update),
        };
        locked.extend(query.into_tuple::<String>().all(txn).await?);
    }
    Ok(locked)
}

/// What the claim will write: new alerts and retries of unresolved ones.
struct ClaimPlan {
    new: Vec<Claim>,
    retries: Vec<Claim>,
}

fn plan_claims(
    requests: &[&ClaimRequest],
    records: &[AlertRecord],
    policy: &AlertPolicy,
    now: DateTime<Utc>,
) -> ClaimPlan {
    let by_pair = AlertsByPair::new(records);
    let mut plan = ClaimPlan {
        new: Vec::new(),
        retries: Vec::new(),
    };
    for request in requests {
        let account = &request.account;
        if !account.is_below_threshold(policy.default_threshold) {
            continue;
        }
        let threshold = account.effective_threshold(policy.default_threshold);
        for channel in &request.channels {
            let claim = |alert_id, prior_attempts, created_at| Claim {
                alert_id,
                channel: channel.clone(),
                account: account.clone(),
                threshold,
                prior_attempts,
                created_at,
            };
            match policy.decide(now, by_pair.get(&account.id, channel)) {
                Decision::New => plan.new.push(claim(AlertId::generate(), 0, now)),
                Decision::Retry { alert_id, attempts } => {
                    let created_at = by_pair
                        .get(&account.id, channel)
                        .find(|r| r.id == alert_id)
                        .map_or(now, |r| r.created_at);
                    plan.retries.push(claim(alert_id, attempts, created_at));
                }
                Decision::InCooldown { .. } | Decision::InFlight { .. } => {}
            }
        }
    }
    plan
}

/// Inserts new `pending` rows; returns the ids left out (a conflicting unresolved row —
/// which the locks should make impossible — leaves that claim out rather than failing).
///
/// `INSERT ... SELECT ... FROM (VALUES ...)`: each row binds only what differs between rows
/// (id, account, channel, threshold, balance); the status and attempt count are literals and
/// the claim time is bound once. With a bound value per column a page of 1,000 claims took
/// 9,000 binds, 2,000 of them timestamps formatted one by one, all while the claim held the
/// writer. The usual case, every row inserted, is told by the row count, without `RETURNING`
/// every id.
async fn insert_new(
    txn: &DatabaseTransaction,
    claims: &[Claim],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    const ROWS: &str = "claims";
    let from_rows = |n: usize| Expr::col((ROWS, format!("column{n}")));
    let mut skipped = HashSet::new();
    for chunk in claims.chunks(ROWS_PER_INSERT) {
        let rows = chunk.iter().map(|c| {
            ValueTuple::Many(vec![
                c.alert_id.as_str().into(),
                c.account.id.as_str().into(),
                c.channel.as_str().into(),
                c.threshold.minor().into(),
                c.account.balance.minor().into(),
            ])
        });
        let mut select = Query::select();
        select
            .exprs((1..=5).map(from_rows))
            .expr(status_literal(AlertStatus::Pending))
            .expr(Expr::Constant(0i32.into()))
            .expr(Expr::val(now))
            .expr(Expr::val(now))
            .from_values(rows, ROWS)
            // SQLite needs a WHERE to parse `INSERT ... SELECT ... ON CONFLICT` as an upsert.
            .and_where(Expr::Constant(true.into()));
        let mut insert = Query::insert();
        insert
            .into_table(alert_logs::Entity)
            .columns([
                L::Id,
                L::AccountId,
                L::Channel,
                L::ThresholdMinor,
                L::BalanceAtAlertMinor,
                L::Status,
                L::Attempts,
                L::CreatedAt,
                L::ClaimedAt,
            ])
            .select_from(select)
            .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?
            .on_conflict(OnConflict::new().do_nothing().to_owned());
        let written = txn.execute(&insert).await?.rows_affected();
        if usize::try_from(written).is_ok_and(|n| n == chunk.len()) {
            continue;
        }
        // Which ones? The ids are new, so a row with one of them is this insert's.
        let ids: Vec<&str> = chunk.iter().map(|c| c.alert_id.as_str()).collect();
        let present: HashSet<String> = alert_logs::Entity::find()
            .select_only()
            .column(L::Id)
            .filter(L::Id.is_in(ids.iter().copied()))
            .into_tuple::<String>()
            .all(txn)
            .await?
            .into_iter()
            .collect();
        skipped.extend(
            ids.into_iter()
                .filter(|id| !present.contains(*id))
                .map(str::to_owned),
        );
    }
    Ok(skipped)
}

/// Takes over failed or abandoned alerts under their ids, with the current balance and
/// threshold (the message must tell today's balance; the id lets receivers deduplicate).
async fn reclaim(
    txn: &DatabaseTransaction,
    claims: &[Claim],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    let mut reclaimed = HashSet::with_capacity(claims.len());
    for chunk in claims.chunks(ROWS_PER_CASE) {
        let thresholds = chunk.iter().map(|c| (&c.alert_id, minor(c.threshold)));
        let balances = chunk
            .iter()
            .map(|c| (&c.alert_id, minor(c.account.balance)));
        let mut update = Query::update();
        update
            .table(alert_logs::Entity)
            .value(L::Status, AlertStatus::Pending.as_str())
            .value(L::ClaimedAt, now)
            .value(L::ThresholdMinor, by_id(thresholds, L::ThresholdMinor))
            .value(
                L::BalanceAtAlertMinor,
                by_id(balances, L::BalanceAtAlertMinor),
            )
            .and_where(L::Id.is_in(chunk.iter().map(|c| c.alert_id.as_str())))
            .and_where(Expr::col(L::Status).ne(status_literal(AlertStatus::Sent)))
            .returning_col(L::Id);
        for row in txn.query_all(&update).await? {
            reclaimed.insert(row.try_get::<String>("", "id")?);
        }
    }
    Ok(reclaimed)
}

/// `CASE WHEN id = a THEN va WHEN id = b THEN vb ... ELSE column END`: one statement sets a
/// different value per row.
pub(super) fn by_id<'a, V: Into<Expr>>(
    pairs: impl Iterator<Item = (&'a AlertId, V)>,
    column: L,
) -> SimpleExpr {
    pairs
        .fold(CaseStatement::new(), |case, (id, value)| {
            case.case(Expr::col(L::Id).eq(id.as_str()), value)
        })
        .finally(Expr::col(column))
        .into()
}

fn minor(money: Money) -> Expr {
    Expr::val(money.minor())
}
