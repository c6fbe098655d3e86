//! Claiming deliveries race-free, on data read under the lock.
//!
//! The pattern PITFALLS proved on PostgreSQL 15: in one transaction, first lock the accounts
//! (`FOR UPDATE [SKIP LOCKED]`, reading their rows as they are now), then — in later
//! statements, which take a fresh snapshot after the locks are held — re-read their alerts,
//! decide with [`plan_claims`] and write the claims. A competitor claiming the same account
//! held its lock until it committed, so the re-read sees its claim. On SQLite the immediate
//! transaction holds the single write lock from the start. The unique index on open alerts
//! backs both up. Takeovers of open alerts are fenced in the UPDATE itself (their old holder
//! renews without the account lock).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    CaseStatement, Expr, ExprTrait, OnConflict, Query, SimpleExpr, ValueTuple,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use super::candidates::{Listed, Page, ReadAhead, accounts_changes};
use super::conn::Conns;
use super::convert::{account_columns, is_open, read_accounts, read_records, status_literal};
use super::entities::{accounts, alert_logs};
use crate::domain::alert::before;
use crate::domain::ports::{ClaimBatch, StoreError};
use crate::domain::{
    Account, AlertId, AlertRecord, AlertRules, AlertStatus, ChannelName, Claim, Cutoffs,
    LeaseHolder, Policy, plan_claims,
};

/// Ids per `IN (...)` list: far below SQLite's 32,766 and PostgreSQL's 65,535 bind limits.
pub(super) const IDS_PER_QUERY: usize = 5_000;

/// Rows per multi-row INSERT: 6 binds a row stays far below SQLite's 32,766-bind limit.
const ROWS_PER_INSERT: usize = 1000;

/// Rows per CASE-UPDATE (retries, failures): each row's CASE scans every arm, so keep it short.
pub(super) const ROWS_PER_CASE: usize = 200;

use alert_logs::Column as L;

/// The accounts one claim transaction looks at.
pub(super) enum Scope<'a> {
    /// These accounts, by id (a check).
    Ids(&'a [String]),
    /// A sweep's page of candidates, read again under the lock by its ids unless it was read
    /// ahead and `accounts` has not changed since.
    Page(Page),
}

/// One claim transaction.
pub(super) struct ClaimTxn<'a> {
    pub(super) lease: &'a LeaseHolder,
    pub(super) channels: &'a [ChannelName],
    pub(super) rules: &'a AlertRules,
    pub(super) now: DateTime<Utc>,
    /// Wait for locked accounts (a check) instead of skipping them (a sweep).
    pub(super) wait: bool,
    pub(super) keep_decisions: bool,
}

impl ClaimTxn<'_> {
    /// How this claim locks the accounts it reads.
    fn lock(&self, conns: &Conns) -> impl Fn(AccountSelect) -> AccountSelect {
        let (dialect, wait) = (conns.dialect, self.wait);
        move |select| dialect.lock_rows(select, wait)
    }

    /// Claims for the accounts of `scope` and commits.
    pub(super) async fn run(
        &self,
        conns: &Conns,
        scope: Scope<'_>,
    ) -> Result<ClaimBatch, StoreError> {
        let cutoffs = self.rules.cutoffs(self.now);
        let txn = conns.begin_write().await?;
        let (accounts, locked, gone, changed) = match scope {
            Scope::Ids(ids) => {
                let accounts = read_by_ids(&txn, ids, self.lock(conns))
                    .await
                    .map_err(conns.err("cannot lock accounts"))?;
                let (locked, gone) = missing(&txn, ids, &accounts)
                    .await
                    .map_err(conns.err("cannot read accounts"))?;
                (accounts, locked, gone, 0)
            }
            Scope::Page(page) => {
                let listed = page.listed.len();
                let accounts = match page.listed {
                    Listed::Ahead(ahead)
                        if unchanged(&txn, &ahead)
                            .await
                            .map_err(conns.err("cannot read accounts_changes"))? =>
                    {
                        ahead.accounts
                    }
                    listed => read_by_ids(&txn, &listed.ids(), self.lock(conns))
                        .await
                        .map_err(conns.err("cannot lock accounts"))?,
                };
                let changed = listed.saturating_sub(accounts.len() as u64);
                (accounts, 0, 0, changed)
            }
        };
        let records = alerts_deciding(&txn, &accounts, self.rules, &cutoffs)
            .await
            .map_err(conns.err("cannot read alert_logs"))?;
        let mut plan = plan_claims(
            &accounts,
            &records,
            self.channels,
            self.rules,
            &cutoffs,
            self.keep_decisions,
        );
        plan.tally.locked += locked;
        plan.tally.gone += gone;
        plan.tally.changed += changed;
        let expired = take_over(&txn, &plan.expire, Takeover::Expire, self.lease, &cutoffs)
            .await
            .map_err(conns.err("cannot expire alerts in alert_logs"))?;
        let skipped = insert_new(&txn, self.lease, &plan.new, self.now)
            .await
            .map_err(conns.err("cannot insert claims into alert_logs"))?;
        let reclaimed = take_over(&txn, &plan.retries, Takeover::Reclaim, self.lease, &cutoffs)
            .await
            .map_err(conns.err("cannot reclaim alerts in alert_logs"))?;
        conns.commit_write(txn, "cannot commit claims").await?;
        let mut claims = plan.new;
        claims.retain(|c| !skipped.contains(c.alert_id.as_str()));
        claims.extend(
            plan.retries
                .into_iter()
                .filter(|c| reclaimed.contains(c.alert_id.as_str())),
        );
        plan.expire
            .retain(|c| expired.contains(c.alert_id.as_str()));
        Ok(ClaimBatch {
            claims,
            expired: plan.expire,
            tally: plan.tally,
            decisions: plan.decisions,
            unconfigured: plan.unconfigured,
        })
    }
}

/// What a sweep would claim on this page now, decided exactly as [`ClaimTxn::run`] decides
/// but read without locks and writing nothing (`sweep --dry-run`).
pub(super) async fn preview(
    conns: &Conns,
    channels: &[ChannelName],
    rules: &AlertRules,
    now: DateTime<Utc>,
    page: Page,
) -> Result<ClaimBatch, StoreError> {
    let cutoffs = rules.cutoffs(now);
    let listed = page.listed.len();
    let accounts = match page.listed {
        Listed::Ahead(ahead) => ahead.accounts,
        Listed::Ids(ids) => read_by_ids(&conns.db, &ids, |select| select)
            .await
            .map_err(conns.err("cannot read accounts"))?,
    };
    let records = alerts_deciding(&conns.db, &accounts, rules, &cutoffs)
        .await
        .map_err(conns.err("cannot read alert_logs"))?;
    let mut plan = plan_claims(&accounts, &records, channels, rules, &cutoffs, false);
    plan.tally.changed += listed.saturating_sub(accounts.len() as u64);
    let mut claims = plan.new;
    claims.append(&mut plan.retries);
    Ok(ClaimBatch {
        claims,
        expired: plan.expire,
        tally: plan.tally,
        decisions: Vec::new(),
        unconfigured: plan.unconfigured,
    })
}

/// The stored alerts the decision needs for these accounts (see [`open_and_recent`]).
async fn alerts_deciding<C: ConnectionTrait>(
    db: &C,
    accounts: &[Account],
    rules: &AlertRules,
    cutoffs: &Cutoffs,
) -> Result<Vec<AlertRecord>, DbErr> {
    let ids: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
    let once_ids: HashSet<&str> = accounts
        .iter()
        .filter(|a| rules.policy.for_account(a).0.policy == Policy::Once)
        .map(|a| a.id.as_str())
        .collect();
    open_and_recent(db, &ids, &once_ids, records_since(cutoffs)).await
}

/// Whether no account was updated or deleted since the page was read ahead (the count is
/// read under the write lock, so nothing can change it until the claim commits).
async fn unchanged(txn: &DatabaseTransaction, ahead: &ReadAhead) -> Result<bool, DbErr> {
    Ok(accounts_changes(txn).await? == ahead.changes)
}

type AccountSelect = sea_orm::Select<accounts::Entity>;

/// Reads these accounts as they are now, in id order, locked by `lock` (the claim's
/// [`Dialect::lock_rows`](super::dialect::Dialect::lock_rows); a dry run reads without
/// locks). An account another claimer holds (PostgreSQL, sweep) or one deleted is left out.
async fn read_by_ids<C: ConnectionTrait, S: AsRef<str>>(
    db: &C,
    ids: &[S],
    lock: impl Fn(AccountSelect) -> AccountSelect,
) -> Result<Vec<Account>, DbErr> {
    use accounts::Column as A;
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let select = account_columns()
            .filter(A::Id.is_in(chunk.iter().map(AsRef::as_ref)))
            // One order for every claimer, so waiting claimers cannot deadlock.
            .order_by_asc(A::Id);
        out.append(&mut read_accounts(db, lock(select)).await?);
    }
    Ok(out)
}

/// Of the requested accounts the lock did not return: how many are locked by another
/// claimer, and how many were deleted. Only PostgreSQL skips locked rows.
async fn missing(
    txn: &DatabaseTransaction,
    ids: &[String],
    read: &[Account],
) -> Result<(u64, u64), DbErr> {
    let missing = ids.len().saturating_sub(read.len()) as u64;
    if missing == 0 || txn.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok((0, missing));
    }
    let read: HashSet<&str> = read.iter().map(|a| a.id.as_str()).collect();
    let absent: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| !read.contains(id))
        .collect();
    let mut exist = 0;
    for chunk in absent.chunks(IDS_PER_QUERY) {
        exist += accounts::Entity::find()
            .filter(accounts::Column::Id.is_in(chunk.iter().copied()))
            .count(txn)
            .await?;
    }
    Ok((exist, missing - exist))
}

/// How far back a closed alert may still block a new one: the cooldown (`repeat`), or the
/// start of the local day in any time zone (`daily`; a day is at most 25 hours long).
fn records_since(cutoffs: &Cutoffs) -> DateTime<Utc> {
    Ord::min(cutoffs.cooldown_since, before(cutoffs.now, DAILY_LOOKBACK))
}

/// Longer than any local day, so `daily` sees every alert of today in any time zone.
const DAILY_LOOKBACK: Duration = Duration::from_secs(26 * 3600);

/// Of these accounts: open alerts, alerts sent or given up since `since`, and (`once_ids`
/// only: those whose policy is `once`) alerts sent or given up and not resolved since.
async fn open_and_recent<C: ConnectionTrait>(
    db: &C,
    accounts: &[&str],
    once_ids: &HashSet<&str>,
    since: DateTime<Utc>,
) -> Result<Vec<AlertRecord>, DbErr> {
    let mut rows = Vec::new();
    let closed = || {
        Expr::col(L::Status).is_in([
            status_literal(AlertStatus::Sent),
            status_literal(AlertStatus::Expired),
        ])
    };
    for chunk in accounts.chunks(IDS_PER_QUERY) {
        let mut wanted = Condition::any()
            .add(is_open())
            .add(L::SentAt.gte(since))
            .add(
                Expr::col(L::Status)
                    .eq(status_literal(AlertStatus::Expired))
                    .and(L::ClaimedAt.gte(since)),
            );
        let once: Vec<&str> = chunk
            .iter()
            .copied()
            .filter(|id| once_ids.contains(id))
            .collect();
        let unresolved = Condition::all().add(closed()).add(L::ResolvedAt.is_null());
        // Every row wanted passes `not_old_sent`, which skips the accounts' history in the
        // index; `once` accounts keep their old sent alerts (not resolved: still blocking).
        let mut not_history = Some(not_old_sent(since, Condition::any()));
        if once.len() == chunk.len() {
            wanted = wanted.add(unresolved);
            not_history = None;
        } else if !once.is_empty() {
            let once_ids = || L::AccountId.is_in(once.iter().copied());
            wanted = wanted.add(unresolved.add(once_ids()));
            not_history = Some(not_old_sent(since, Condition::any().add(once_ids())));
        }
        let select = alert_logs::Entity::find()
            .filter(L::AccountId.is_in(chunk.iter().copied()))
            .apply_if(not_history, QueryFilter::filter)
            .filter(wanted);
        let mut part = read_records(db, select).await?;
        rows.append(&mut part);
    }
    Ok(rows)
}

/// Not an alert sent before `since`, unless `keep` (the accounts whose every closed alert
/// counts: `once`). Every alert the claim decides on passes it: open, given up (neither has
/// a `sent_at`), or sent since the cut-off. It reads only columns of `idx_alert_logs_recent`,
/// so SQLite tests it in the index before it fetches the row: an account's history, its old
/// sent alerts, is skipped there (migration 12).
fn not_old_sent(since: DateTime<Utc>, keep: Condition) -> Condition {
    let col = |c: L| Expr::col((alert_logs::Entity, c));
    Condition::any()
        .add(col(L::SentAt).is_null())
        .add(col(L::SentAt).gte(since))
        .add(keep)
}

/// Inserts new `pending` rows held by `lease`; returns the ids left out (a conflicting open
/// row — which the locks make impossible — leaves that claim out rather than failing).
///
/// `INSERT ... SELECT ... FROM (VALUES ...)`: each row binds only what differs between rows;
/// the status, attempt count, holder and claim time are bound once. The usual case, every
/// row inserted, is told by the row count, without `RETURNING` every id.
async fn insert_new(
    txn: &DatabaseTransaction,
    lease: &LeaseHolder,
    claims: &[Claim],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, DbErr> {
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
                c.currency.code().into(),
            ])
        });
        let mut select = Query::select();
        select
            .exprs((1..=6).map(from_rows))
            .expr(status_literal(AlertStatus::Pending))
            .expr(Expr::Constant(0i32.into()))
            .expr(Expr::val(now))
            .expr(Expr::val(now))
            .expr(Expr::val(lease.as_str()))
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
                L::Currency,
                L::Status,
                L::Attempts,
                L::CreatedAt,
                L::ClaimedAt,
                L::ClaimedBy,
            ])
            .select_from(select)
            .map_err(|e| DbErr::Custom(e.to_string()))?
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

/// What a takeover of open alerts does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// Claim them (again) under their ids, with the balance and threshold read now.
    Reclaim,
    /// Give them up: `expired`.
    Expire,
}

/// Takes over open alerts by id, fenced in the UPDATE itself: only a `retry`, a `failed`
/// (reclaim only: its contact details changed, decided under the lock) or a `pending` claim
/// not renewed since the cut-off. PostgreSQL re-checks the WHERE on the newest row version
/// after waiting for a concurrent renewal, so a claim renewed meanwhile is left alone.
/// Returns the ids taken over.
async fn take_over(
    txn: &DatabaseTransaction,
    claims: &[Claim],
    what: Takeover,
    lease: &LeaseHolder,
    cutoffs: &Cutoffs,
) -> Result<HashSet<String>, DbErr> {
    let mut taken = HashSet::with_capacity(claims.len());
    for chunk in claims.chunks(ROWS_PER_CASE) {
        let mut update = Query::update();
        update.table(alert_logs::Entity);
        // `retry`, or `pending` not renewed since the cut-off, and (reclaim only) `failed`:
        // written as exclusions, like `record::still_pending`, so that PostgreSQL looks the
        // ids up by primary key instead of scanning the partial index of open alerts.
        let mut not_takeable = vec![AlertStatus::Sent, AlertStatus::Expired];
        if what == Takeover::Expire {
            not_takeable.push(AlertStatus::Failed);
        }
        let takeable = Condition::all()
            .add(Expr::col(L::Status).is_not_in(not_takeable.into_iter().map(status_literal)))
            .add(
                Expr::col(L::Status)
                    .ne(status_literal(AlertStatus::Pending))
                    .or(Expr::col(L::ClaimedAt).lte(cutoffs.live_since)),
            );
        match what {
            Takeover::Reclaim => {
                let per_row = |f: fn(&Claim) -> Expr, column| {
                    by_id(chunk.iter().map(|c| (&c.alert_id, f(c))), column)
                };
                update
                    .value(L::Status, status_literal(AlertStatus::Pending))
                    .value(L::ClaimedAt, cutoffs.now)
                    .value(L::ClaimedBy, lease.as_str())
                    .value(
                        L::ThresholdMinor,
                        per_row(|c| Expr::val(c.threshold.minor()), L::ThresholdMinor),
                    )
                    .value(
                        L::BalanceAtAlertMinor,
                        per_row(
                            |c| Expr::val(c.account.balance.minor()),
                            L::BalanceAtAlertMinor,
                        ),
                    )
                    .value(
                        L::Currency,
                        per_row(|c| Expr::val(c.currency.code()), L::Currency),
                    )
                    // Stored again only if this attempt fails permanently.
                    .value(L::Contact, Expr::Constant(Option::<String>::None.into()))
                    .cond_where(takeable);
            }
            Takeover::Expire => {
                update
                    .value(L::Status, status_literal(AlertStatus::Expired))
                    .value(L::ClaimedAt, cutoffs.now)
                    .value(L::ClaimedBy, Expr::Constant(Option::<String>::None.into()))
                    .value(
                        L::LastError,
                        Expr::val("gave up: still failing after delivery.give_up_after"),
                    )
                    .cond_where(takeable);
            }
        }
        update
            .and_where(L::Id.is_in(chunk.iter().map(|c| c.alert_id.as_str())))
            .returning_col(L::Id);
        for row in txn.query_all(&update).await? {
            taken.insert(row.try_get::<String>("", "id")?);
        }
    }
    Ok(taken)
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
