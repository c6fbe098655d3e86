//! The sweep's candidates: accounts below their threshold that are not blocked on every
//! channel, in keyset pages of account ids. A page is either listed without locks — only its
//! bounds and size; the claim reads its accounts under its lock (the same filter on the same
//! id range) and decides on that — or open: the claim lists it under its lock (SQLite, where
//! nothing can change in between; see [`PageEnd`]). One read of each account's columns, not
//! two: moving every listed row to the process twice cost more than the claim's writes.

use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use sea_orm::sea_query::{Expr, ExprTrait, Func, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait,
};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::conn::Conns;
use super::convert::status_literal;
use super::dialect::Dialect;
use super::entities::{accounts, alert_logs};
use crate::domain::ports::{AccountCounts, StoreError};
use crate::domain::{
    AlertRules, AlertStatus, ChannelName, Cutoffs, Policy, PolicyDefaults, ThresholdGroup,
    Thresholds,
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

/// `accounts.alert_policy` names `policy`, or is null and `policy` is the default.
pub(super) fn policy_is(policy: Policy, defaults: &PolicyDefaults) -> Condition {
    let column = || Expr::col((accounts::Entity, accounts::Column::AlertPolicy));
    let named = Condition::all().add(column().eq(policy.as_str()));
    if policy == defaults.policy {
        Condition::any().add(column().is_null()).add(named)
    } else {
        named
    }
}

/// True when the account is not blocked on at least one of the channels: for each channel,
/// `NOT EXISTS` an alert that blocks it, probed through `idx_alert_logs_cooldown`. The same
/// cut-offs as [`Cutoffs::decide`], which has the last word under the claim's lock: a live
/// claim, a permanent failure on the same contact, and per policy `repeat` sent or given up
/// within the cooldown, `once` sent or given up and not resolved, `daily` sent or given up
/// since the start of today in `alert.timezone`. `daily` accounts with a time zone of their
/// own, and rows with a policy the daemon does not know, are not blocked here: SQLite cannot
/// compute their local day, so the domain decides on them under the lock.
fn claimable_somewhere(
    channels: &[ChannelName],
    cutoffs: &Cutoffs,
    defaults: &PolicyDefaults,
    dialect: Dialect,
) -> Condition {
    use alert_logs::Column as L;
    let col = |c: L| Expr::col((alert_logs::Entity, c));
    let status = |s: AlertStatus| col(L::Status).eq(status_literal(s));
    let closed_since = |since| {
        Condition::any()
            .add(col(L::SentAt).gte(since))
            .add(status(AlertStatus::Expired).and(col(L::ClaimedAt).gte(since)))
    };
    let blocking = Condition::any()
        .add(status(AlertStatus::Pending).and(col(L::ClaimedAt).gt(cutoffs.live_since)))
        .add(
            status(AlertStatus::Failed)
                .and(col(L::Contact).equals((accounts::Entity, accounts::Column::OwnerEmail))),
        )
        .add(
            Condition::all()
                .add(policy_is(Policy::Repeat, defaults))
                .add(closed_since(cutoffs.cooldown_since)),
        )
        .add(
            Condition::all()
                .add(policy_is(Policy::Once, defaults))
                .add(col(L::Status).is_in([
                    status_literal(AlertStatus::Sent),
                    status_literal(AlertStatus::Expired),
                ]))
                .add(col(L::ResolvedAt).is_null()),
        )
        .add(
            Condition::all()
                .add(policy_is(Policy::Daily, defaults))
                .add(Expr::col((accounts::Entity, accounts::Column::Timezone)).is_null())
                .add(closed_since(cutoffs.today_since)),
        );
    channels.iter().fold(Condition::any(), |any, channel| {
        let mut probe = Query::select()
            .expr(Expr::val(1))
            .from(alert_logs::Entity)
            .and_where(col(L::AccountId).equals((accounts::Entity, accounts::Column::Id)))
            .and_where(col(L::Channel).eq(channel.as_str()))
            .cond_where(blocking.clone())
            .to_owned();
        dialect.fence(&mut probe);
        any.add(Expr::exists(probe).not())
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

/// One page of candidates, in account-id order after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Page {
    pub(super) part: Part,
    /// Exclusive lower bound (the previous page's last id).
    after: Option<String>,
    pub(super) end: PageEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PageEnd {
    /// Listed without locks: the accounts up to `last` (inclusive), `listed` of them then;
    /// those the claim no longer finds changed or were deleted meanwhile, or (PostgreSQL) are
    /// locked by another claimer.
    Listed { last: String, listed: u64 },
    /// Not listed: the next `limit` candidates, listed by the claim under its lock (SQLite,
    /// whose write lock excludes every other writer: one scan of the index, not two).
    Open { limit: u64 },
}

impl Page {
    /// The page's accounts that are still candidates: below their threshold, claimable on a
    /// channel with `cutoffs`, in the page's id range. An open page's reader adds its limit.
    pub(super) fn filter(
        &self,
        rules: &AlertRules,
        channels: &[ChannelName],
        cutoffs: &Cutoffs,
        dialect: Dialect,
    ) -> Condition {
        use accounts::Column as A;
        let mut filter = Condition::all()
            .add(self.part.below(&rules.thresholds))
            .add(claimable_somewhere(
                channels,
                cutoffs,
                &rules.policy,
                dialect,
            ));
        if let PageEnd::Listed { last, .. } = &self.end {
            filter = filter.add(A::Id.lte(last.as_str()));
        }
        if let Some(after) = &self.after {
            filter = filter.add(A::Id.gt(after.as_str()));
        }
        filter
    }

    /// The page after this one, given the accounts its claim read (how many, the last id):
    /// an open page, or `None` when this one ended its part.
    pub(super) fn following(
        &self,
        read: u64,
        last_read: Option<&str>,
        page_size: u64,
    ) -> Option<Self> {
        let (full, last) = match &self.end {
            PageEnd::Listed { last, listed } => (*listed >= page_size, Some(last.as_str())),
            PageEnd::Open { limit } => (read >= *limit, last_read),
        };
        let last = last.filter(|_| full)?;
        Some(Self {
            part: self.part,
            after: Some(last.to_owned()),
            end: PageEnd::Open { limit: page_size },
        })
    }

    /// Accounts listed but not found by the claim.
    pub(super) fn changed(&self, read: u64) -> u64 {
        match self.end {
            PageEnd::Listed { listed, .. } => listed.saturating_sub(read),
            PageEnd::Open { .. } => 0,
        }
    }

    pub(super) fn limit(&self) -> Option<u64> {
        match self.end {
            PageEnd::Listed { .. } => None,
            PageEnd::Open { limit } => Some(limit),
        }
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

/// Lists the next page after `after`: its size and last id, or `None` past the end.
pub(super) async fn next_page(
    conns: &Conns,
    listing: &Listing,
    part: Part,
    after: Option<String>,
) -> Result<Option<Page>, DbErr> {
    use accounts::Column as A;
    let mut select = accounts::Entity::find()
        .select_only()
        .column(A::Id)
        .filter(part.below(&listing.thresholds))
        .filter(claimable_somewhere(
            &listing.channels,
            &listing.cutoffs,
            &listing.policy,
            conns.dialect,
        ));
    if let Some(id) = &after {
        select = select.filter(A::Id.gt(id.as_str()));
    }
    let page = select
        .order_by_asc(A::Id)
        .limit(u64::from(Ord::max(listing.page_size, 1)))
        .into_query();
    let bounds = Query::select()
        .expr(Func::count(Expr::col(A::Id)))
        .expr(Func::max(Expr::col(A::Id)))
        .from_subquery(page, "page")
        .to_owned();
    let row = conns.db.query_one(&bounds).await?;
    let (listed, last): (i64, Option<String>) = match row {
        Some(row) => (row.try_get_by_index(0)?, row.try_get_by_index(1)?),
        None => (0, None),
    };
    Ok(last.map(|last| Page {
        part,
        after,
        end: PageEnd::Listed {
            last,
            listed: u64::try_from(listed).unwrap_or_default(),
        },
    }))
}

/// The candidate pages, each a disjoint range of account ids, read one page ahead of the
/// consumer (a task of its own); dropping the stream stops the reading.
pub(super) fn pages(
    conns: Arc<Conns>,
    listing: Listing,
) -> BoxStream<'static, Result<Page, StoreError>> {
    let page_size = u64::from(Ord::max(listing.page_size, 1));
    let listing = Arc::new(listing);
    let start = Some((Part::FIRST, None::<String>));
    let mut scan = stream::try_unfold(start, move |mut scan| {
        let (conns, listing) = (conns.clone(), listing.clone());
        async move {
            while let Some((part, after)) = scan {
                let page = next_page(&conns, &listing, part, after)
                    .await
                    .map_err(conns.err("cannot read accounts"))?;
                let next_part = part.next().map(|part| (part, None));
                let Some(page) = page else {
                    scan = next_part;
                    continue;
                };
                scan = match &page.end {
                    PageEnd::Listed { last, listed } if *listed >= page_size => {
                        Some((part, Some(last.clone())))
                    }
                    _ => next_part,
                };
                return Ok(Some((page, scan)));
            }
            Ok(None)
        }
    })
    .boxed();
    let (tx, rx) = mpsc::channel(1);
    let reader = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(page) = scan.next().await {
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                break;
            }
        }
    }));
    stream::unfold((rx, reader), |(mut rx, reader)| async move {
        rx.recv().await.map(|page| (page, (rx, reader)))
    })
    .boxed()
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
