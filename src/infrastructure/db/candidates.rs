//! The sweep's candidates: accounts below their threshold that are not blocked on every
//! channel, in keyset pages of account ids, listed without locks. The claim reads a page's
//! accounts again under its lock and decides on that. On PostgreSQL the listing returns the
//! page's ids, which the claim locks and reads by primary key. On SQLite the listing reads
//! the accounts themselves, with a count of the changes to `accounts` ([`ReadAhead`]): the
//! single writer, which every claim and outcome waits for, then reads them again only if
//! something changed — instead of scanning the accounts for every page itself.

use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use super::conn::Conns;
use super::convert::{account_columns, read_accounts, status_literal};
use super::dialect::Dialect;
use super::entities::{accounts, alert_logs};
use crate::domain::ports::{AccountCounts, StoreError};
use crate::domain::{
    Account, AlertStatus, ChannelName, Cutoffs, Policy, PolicyDefaults, ThresholdGroup, Thresholds,
};

/// `currency` is one of the group's codes (or null, when the group holds the default
/// currency).
pub(super) fn in_group(group: &ThresholdGroup) -> Condition {
    use accounts::Column as A;
    // Null first: almost every account of an existing bank's table has none.
    let any = if group.with_null {
        Condition::any().add(A::Currency.is_null())
    } else {
        Condition::any()
    };
    any.add(A::Currency.is_in(group.codes.iter().map(String::as_str)))
}

/// `balance < the default threshold of its currency` for accounts without their own
/// threshold (SPEC §2); accounts in a currency without one never match.
pub(super) fn on_default_threshold(thresholds: &Thresholds) -> Condition {
    use accounts::Column as A;
    let below = thresholds
        .groups()
        .iter()
        .fold(Condition::any(), |any, group| {
            // The balance first: most accounts are above every threshold.
            any.add(
                Condition::all()
                    .add(A::BalanceMinor.lt(group.threshold.minor()))
                    .add(in_group(group)),
            )
        });
    Condition::all()
        .add(A::AlertThresholdMinor.is_null())
        .add(below)
}

/// `balance < own threshold`, again exactly as the partial index's predicate.
pub(super) fn below_own_threshold() -> Condition {
    use accounts::Column as A;
    Condition::all()
        .add(A::AlertThresholdMinor.is_not_null())
        .add(Expr::col(A::BalanceMinor).lt(Expr::col(A::AlertThresholdMinor)))
}

/// `accounts.alert_policy` names `policy`, or is null and `policy` is the default. Never
/// SQL's NULL (`IS NOT NULL` first): the eligibility probe negates it, and `NOT (NULL AND
/// true)` would leave out an account whose column is null.
pub(super) fn policy_is(policy: Policy, defaults: &PolicyDefaults) -> Condition {
    let column = || Expr::col((accounts::Entity, accounts::Column::AlertPolicy));
    let named = Condition::all()
        .add(column().is_not_null())
        .add(column().eq(policy.as_str()));
    if policy == defaults.policy {
        Condition::any().add(column().is_null()).add(named)
    } else {
        named
    }
}

/// True when the account is not blocked on at least one of the channels. The same cut-offs
/// as [`Cutoffs::decide`], which has the last word under the claim's lock: a live claim, a
/// permanent failure on the same contact, and per policy `repeat` sent or given up within
/// the cooldown, `once` sent or given up and not resolved, `daily` sent or given up since the
/// start of today in `alert.timezone`. `daily` accounts with a time zone of their own, and
/// rows with a policy the daemon does not know, are not blocked here: SQLite cannot compute
/// their local day, so the domain decides on them under the lock.
///
/// One `EXISTS` probe per kind of blocking alert, each an index range of its own, so that an
/// account's history — its old sent alerts, a row a day under `repeat` — is never read:
/// alerts not sent (`sent_at IS NULL` in `idx_alert_logs_recent`: live claims, failures,
/// given up), alerts sent since the policy's cut-off (`sent_at >= cut-off`, the same index),
/// and a `once` account's unresolved alerts (`idx_alert_logs_unresolved`). With one probe
/// and an `OR` of these, both databases fetched every row of the history to test it
/// (README "Performance", "A month of alert history").
fn claimable_somewhere(
    channels: &[ChannelName],
    cutoffs: &Cutoffs,
    defaults: &PolicyDefaults,
    dialect: Dialect,
) -> Condition {
    use alert_logs::Column as L;
    let col = |c: L| Expr::col((alert_logs::Entity, c));
    let status = |s: AlertStatus| col(L::Status).eq(status_literal(s));
    // `policy_is` may be an `any` (null or named): conditions go beside it, not into it.
    let repeat = || Condition::all().add(policy_is(Policy::Repeat, defaults));
    let daily_here = || {
        Condition::all()
            .add(policy_is(Policy::Daily, defaults))
            .add(Expr::col((accounts::Entity, accounts::Column::Timezone)).is_null())
    };
    let given_up_since = |since| status(AlertStatus::Expired).and(col(L::ClaimedAt).gte(since));
    let not_sent = Condition::all().add(col(L::SentAt).is_null()).add(
        Condition::any()
            .add(status(AlertStatus::Pending).and(col(L::ClaimedAt).gt(cutoffs.live_since)))
            .add(
                status(AlertStatus::Failed)
                    .and(col(L::Contact).equals((accounts::Entity, accounts::Column::OwnerEmail))),
            )
            .add(repeat().add(given_up_since(cutoffs.cooldown_since)))
            .add(daily_here().add(given_up_since(cutoffs.today_since))),
    );
    let sent_since = |since| Condition::all().add(col(L::SentAt).gte(since));
    let unresolved = Condition::all()
        .add(col(L::ResolvedAt).is_null())
        .add(col(L::Status).is_in([
            status_literal(AlertStatus::Sent),
            status_literal(AlertStatus::Expired),
        ]));
    channels.iter().fold(Condition::any(), |any, channel| {
        let blocked = |blocking: Condition| {
            let mut probe = Query::select()
                .expr(Expr::val(1))
                .from(alert_logs::Entity)
                .and_where(col(L::AccountId).equals((accounts::Entity, accounts::Column::Id)))
                .and_where(col(L::Channel).eq(channel.as_str()))
                .cond_where(blocking)
                .to_owned();
            dialect.fence(&mut probe);
            Expr::exists(probe)
        };
        // Blocked by any of these, tested in this order: a `CASE`, because PostgreSQL orders
        // ANDed conditions (and `NOT (a OR b)`, which it rewrites to them) by estimated cost,
        // and once `alert_logs` has statistics it tested the "not sent" probe first, so each
        // account in cooldown took both probes (README "Performance": re-sweep 0.62 s instead
        // of 0.39 s). The policy's own probe first excludes such an account after one.
        let blocked_by = [
            repeat().add(blocked(sent_since(cutoffs.cooldown_since))),
            daily_here().add(blocked(sent_since(cutoffs.today_since))),
            Condition::all()
                .add(policy_is(Policy::Once, defaults))
                .add(blocked(unresolved.clone())),
            Condition::all().add(blocked(not_sent.clone())),
        ];
        let claimable: SimpleExpr = blocked_by
            .into_iter()
            .fold(CaseStatement::new(), |case, blocking| {
                case.case(blocking, Expr::val(false))
            })
            .finally(Expr::val(true))
            .into();
        any.add(claimable)
    })
}

/// Where the keyset scan stands. Both parts read in account-id order (migration 4): first
/// the accounts on the configured threshold, through `idx_accounts_sweep_by_id` alone, then
/// the few with their own threshold below it, through `idx_accounts_own_threshold_below`.
/// Two scans rather than one with `OR`: with the `OR`, PostgreSQL no longer scans the
/// covering index alone but fetches every account's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    DefaultThreshold,
    OwnThreshold,
}

impl Part {
    pub(super) const FIRST: Self = Self::DefaultThreshold;

    fn below(self, thresholds: &Thresholds) -> Condition {
        match self {
            Self::DefaultThreshold => on_default_threshold(thresholds),
            Self::OwnThreshold => below_own_threshold(),
        }
    }

    pub(super) fn next(self) -> Option<Self> {
        match self {
            Self::DefaultThreshold => Some(Self::OwnThreshold),
            Self::OwnThreshold => None,
        }
    }
}

/// One page of candidates, in account-id order, listed without locks. The claim reads its
/// accounts again under its lock, by the ids listed, and decides on that — unless the page
/// was read ahead ([`Listed::Ahead`]) and nothing in `accounts` changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Page {
    pub(super) part: Part,
    /// The last account listed: the next page of the part starts after it.
    pub(super) last: String,
    pub(super) listed: Listed,
}

/// What the listing read of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Listed {
    /// SQLite: the page's accounts, and `accounts_changes.changes` read in the same read
    /// transaction (migration 11). A claim that reads the same count under the write lock
    /// decides on these rows: no account was updated or deleted in between.
    Ahead(ReadAhead),
    /// PostgreSQL: the ids, in order. The claim's decision needs every column read under the
    /// lock anyway, by primary key; the listing's probes of each account's alerts need not
    /// run again there (the claim reads the alerts it decides on itself).
    Ids(Vec<String>),
}

/// See [`Listed::Ahead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadAhead {
    pub(super) accounts: Vec<Account>,
    pub(super) changes: i64,
}

impl Listed {
    /// How many accounts were listed; those the claim no longer finds were deleted meanwhile
    /// or (PostgreSQL) are locked by another claimer.
    pub(super) fn len(&self) -> u64 {
        let n = match self {
            Self::Ahead(ahead) => ahead.accounts.len(),
            Self::Ids(ids) => ids.len(),
        };
        n as u64
    }

    /// The ids listed, in order.
    pub(super) fn ids(&self) -> Vec<&str> {
        match self {
            Self::Ahead(ahead) => ahead.accounts.iter().map(|a| a.id.as_str()).collect(),
            Self::Ids(ids) => ids.iter().map(String::as_str).collect(),
        }
    }
}

impl Page {
    /// Whether the page was full, so that another may follow it in its part.
    pub(super) fn full(&self, page_size: u32) -> bool {
        self.listed.len() >= u64::from(Ord::max(page_size, 1))
    }
}

/// Accounts of `part` that are candidates with these cut-offs.
fn candidates(
    thresholds: &Thresholds,
    channels: &[ChannelName],
    cutoffs: &Cutoffs,
    defaults: &PolicyDefaults,
    dialect: Dialect,
    part: Part,
) -> Condition {
    Condition::all()
        .add(part.below(thresholds))
        .add(claimable_somewhere(channels, cutoffs, defaults, dialect))
}

/// `id > after`, or everything.
fn after(after: Option<&str>) -> Condition {
    let all = Condition::all();
    match after {
        Some(id) => all.add(accounts::Column::Id.gt(id)),
        None => all,
    }
}

/// What to list.
pub(super) struct Listing {
    pub(super) thresholds: Thresholds,
    pub(super) policy: PolicyDefaults,
    pub(super) channels: Vec<ChannelName>,
    pub(super) cutoffs: Cutoffs,
    pub(super) page_size: u32,
}

/// Lists the next page of `part` after `after`, or `None` past its end. Where the claims
/// have one writer to share ([`Dialect::reads_pages_ahead`]), the page's accounts are read
/// with it; otherwise its ids.
pub(super) async fn next_page(
    conns: &Conns,
    listing: &Listing,
    part: Part,
    after_id: Option<String>,
) -> Result<Option<Page>, DbErr> {
    use accounts::Column as A;
    let filter = candidates(
        &listing.thresholds,
        &listing.channels,
        &listing.cutoffs,
        &listing.policy,
        conns.dialect,
        part,
    )
    .add(after(after_id.as_deref()));
    let limit = u64::from(Ord::max(listing.page_size, 1));
    if conns.dialect.reads_pages_ahead() {
        let select = account_columns()
            .filter(filter)
            .order_by_asc(A::Id)
            .limit(limit);
        // One read transaction: the count and the rows from the same snapshot.
        let txn = conns.db.begin().await?;
        let changes = accounts_changes(&txn).await?;
        let accounts = read_accounts(&txn, select).await?;
        txn.commit().await?;
        let Some(last) = accounts.last().map(|a| a.id.as_str().to_owned()) else {
            return Ok(None);
        };
        return Ok(Some(Page {
            part,
            last,
            listed: Listed::Ahead(ReadAhead { accounts, changes }),
        }));
    }
    let ids: Vec<String> = accounts::Entity::find()
        .select_only()
        .column(A::Id)
        .filter(filter)
        .order_by_asc(A::Id)
        .limit(limit)
        .into_tuple()
        .all(&conns.db)
        .await?;
    let Some(last) = ids.last().cloned() else {
        return Ok(None);
    };
    Ok(Some(Page {
        part,
        last,
        listed: Listed::Ids(ids),
    }))
}

/// SQLite: how many times `accounts` rows were updated or deleted (migration 11).
pub(super) async fn accounts_changes<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    let count = Query::select()
        .column("changes")
        .from("accounts_changes")
        .and_where(Expr::col("id").eq(1))
        .to_owned();
    let row = db
        .query_one(&count)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("accounts_changes has no row 1".into()))?;
    row.try_get_by_index(0)
}

/// How many accounts are below their effective threshold, and how many (per currency) have
/// none. One count per default threshold and currency set, each a range of
/// `idx_accounts_default_threshold_balance` (currency, balance), and one of the accounts with
/// their own threshold below it; the accounts without any threshold are the index's entries
/// in currencies without a default, grouped.
pub(super) async fn count_accounts(
    conns: &Conns,
    thresholds: &Thresholds,
) -> Result<AccountCounts, StoreError> {
    use accounts::Column as A;
    let err = || conns.err("cannot count accounts");
    let mut parts = vec![below_own_threshold()];
    for group in thresholds.groups() {
        let below = |currency: Condition| {
            Condition::all()
                .add(A::AlertThresholdMinor.is_null())
                .add(currency)
                .add(A::BalanceMinor.lt(group.threshold.minor()))
        };
        parts.push(below(
            Condition::all().add(A::Currency.is_in(group.codes.iter().map(String::as_str))),
        ));
        if group.with_null {
            parts.push(below(Condition::all().add(A::Currency.is_null())));
        }
    }
    let mut counts = AccountCounts::default();
    for below in parts {
        counts.below_threshold += accounts::Entity::find()
            .filter(below)
            .count(&conns.db)
            .await
            .map_err(err())?;
    }
    let without = accounts::Entity::find()
        .select_only()
        .column(A::Currency)
        .column_as(Expr::col(A::Id).count(), "accounts")
        .filter(A::AlertThresholdMinor.is_null())
        .filter(A::Currency.is_not_null())
        .filter(A::Currency.is_not_in(thresholds.codes()))
        .group_by(A::Currency)
        .into_tuple::<(String, i64)>()
        .all(&conns.db)
        .await
        .map_err(err())?;
    counts.without_threshold = without
        .into_iter()
        .map(|(code, n)| (code, u64::try_from(n).unwrap_or_default()))
        .collect();
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use chrono::{DateTime, TimeDelta, Utc};
    use migration::MigratorTrait;
    use sea_orm::ActiveValue::Set;
    use sea_orm::{ActiveModelTrait, DatabaseConnection, DbBackend};

    use super::*;
    use crate::domain::{AlertRules, Currency, Money};
    use crate::infrastructure::db::connect_in_memory;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ago(minutes: i64) -> DateTime<Utc> {
        now() - TimeDelta::minutes(minutes)
    }

    async fn account(db: &DatabaseConnection, id: &str, balance: i64, policy: Option<&str>) {
        accounts::ActiveModel {
            id: Set(id.to_owned()),
            owner_email: Set(format!("{id}@example.com")),
            balance_minor: Set(balance),
            updated_at: Set(now()),
            alert_policy: Set(policy.map(str::to_owned)),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
    }

    /// An alert on `console`, claimed `claimed` minutes ago, sent `sent` minutes ago.
    struct Alert<'a> {
        status: &'a str,
        claimed: i64,
        sent: Option<i64>,
        contact: Option<&'a str>,
        resolved: bool,
    }

    async fn alert(db: &DatabaseConnection, account: &str, a: Alert<'_>) {
        alert_logs::ActiveModel {
            id: Set(format!("alert-{account}")),
            account_id: Set(account.to_owned()),
            channel: Set("console".to_owned()),
            threshold_minor: Set(5000),
            balance_at_alert_minor: Set(1000),
            status: Set(a.status.to_owned()),
            attempts: Set(1),
            last_error: Set(None),
            created_at: Set(ago(a.claimed)),
            claimed_at: Set(ago(a.claimed)),
            sent_at: Set(a.sent.map(ago)),
            claimed_by: Set(None),
            contact: Set(a.contact.map(str::to_owned)),
            currency: Set(Some("USD".to_owned())),
            resolved_at: Set(a.resolved.then(|| ago(1))),
        }
        .insert(db)
        .await
        .unwrap();
    }

    fn sent(minutes: i64) -> Alert<'static> {
        Alert {
            status: "sent",
            claimed: minutes,
            sent: Some(minutes),
            contact: None,
            resolved: false,
        }
    }

    /// The listing is only a filter before the claim, which decides again under its lock:
    /// listing a blocked account costs a locked read, leaving out a due one loses its alert.
    /// Each kind of blocking alert leaves its account out, and nothing else does.
    #[tokio::test]
    async fn the_listing_leaves_out_exactly_the_accounts_an_alert_blocks() {
        let db = connect_in_memory().await.unwrap();
        migration::Migrator::up(&db, None).await.unwrap();
        let below = [
            ("a01-no-alert", None),
            ("a02-sent-in-cooldown", None),
            ("a03-sent-before-cooldown", None),
            ("a04-live-claim", None),
            ("a05-abandoned-claim", None),
            ("a06-failed-same-contact", None),
            ("a07-failed-other-contact", None),
            ("a08-once-unresolved", Some("once")),
            ("a09-once-resolved", Some("once")),
            ("a10-daily-sent-today", Some("daily")),
            ("a11-daily-sent-yesterday", Some("daily")),
        ];
        for (id, policy) in below {
            account(&db, id, 1000, policy).await;
        }
        account(&db, "a12-above-threshold", 9000, None).await;
        alert(&db, "a02-sent-in-cooldown", sent(60)).await;
        alert(&db, "a03-sent-before-cooldown", sent(2 * 24 * 60)).await;
        let claim = |claimed| Alert {
            status: "pending",
            claimed,
            sent: None,
            contact: None,
            resolved: false,
        };
        alert(&db, "a04-live-claim", claim(1)).await;
        alert(&db, "a05-abandoned-claim", claim(60)).await;
        let failed = |contact| Alert {
            status: "failed",
            claimed: 60,
            sent: None,
            contact: Some(contact),
            resolved: false,
        };
        let same = "a06-failed-same-contact@example.com";
        alert(&db, "a06-failed-same-contact", failed(same)).await;
        alert(&db, "a07-failed-other-contact", failed("old@example.com")).await;
        alert(&db, "a08-once-unresolved", sent(3 * 24 * 60)).await;
        let resolved = Alert {
            resolved: true,
            ..sent(3 * 24 * 60)
        };
        alert(&db, "a09-once-resolved", resolved).await;
        // Today began 12 h ago (UTC, noon); the cooldown would block both.
        alert(&db, "a10-daily-sent-today", sent(11 * 60)).await;
        alert(&db, "a11-daily-sent-yesterday", sent(13 * 60)).await;

        let rules = AlertRules {
            thresholds: Thresholds::new(Currency::usd(), Money::from_minor(5000)),
            cooldown: Duration::from_secs(24 * 3600),
            claim_timeout: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            policy: PolicyDefaults::default(),
            rearm_margin: Money::from_minor(0),
        };
        let listing = Listing {
            thresholds: rules.thresholds.clone(),
            policy: rules.policy,
            channels: vec![ChannelName::new("console")],
            cutoffs: rules.cutoffs(now()),
            page_size: 100,
        };
        let conns = Conns {
            db: db.clone(),
            writer: db,
            dialect: Dialect::of(DbBackend::Sqlite),
            commits: AtomicU64::new(0),
            label: "sqlite::memory:".into(),
        };
        let page = next_page(&conns, &listing, Part::DefaultThreshold, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            page.listed.ids(),
            [
                "a01-no-alert",
                "a03-sent-before-cooldown",
                "a05-abandoned-claim",
                "a07-failed-other-contact",
                "a09-once-resolved",
                "a11-daily-sent-yesterday",
            ]
        );
    }
}
