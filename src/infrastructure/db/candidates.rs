//! The sweep's candidates: ids of accounts below their threshold that are not blocked on
//! every channel, in keyset pages of account ids. A read without locks, and only a filter:
//! the claim reads each account again under its lock and decides on that.

use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, Condition, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::conn::Conns;
use super::convert::status_literal;
use super::dialect::Dialect;
use super::entities::{accounts, alert_logs};
use crate::domain::ports::StoreError;
use crate::domain::{AlertStatus, ChannelName, Cutoffs, Money};

/// `balance < threshold` for accounts on the configured threshold. Written exactly as the
/// partial index's predicate, so both planners use it.
pub(super) fn on_default_threshold(threshold: Money) -> Condition {
    use accounts::Column as A;
    Condition::all()
        .add(A::AlertThresholdMinor.is_null())
        .add(A::BalanceMinor.lt(threshold.minor()))
}

/// `balance < own threshold`, again exactly as the partial index's predicate.
pub(super) fn below_own_threshold() -> Condition {
    use accounts::Column as A;
    Condition::all()
        .add(A::AlertThresholdMinor.is_not_null())
        .add(Expr::col(A::BalanceMinor).lt(Expr::col(A::AlertThresholdMinor)))
}

/// True when the account is not blocked on at least one of the channels: for each channel,
/// `NOT EXISTS` an alert that blocks it, probed through `idx_alert_logs_cooldown`. The same
/// cut-offs as [`Cutoffs::decide`], which has the last word under the claim's lock: sent or
/// given up within the cooldown, a live claim, a permanent failure on the same contact.
fn claimable_somewhere(channels: &[ChannelName], cutoffs: &Cutoffs, dialect: Dialect) -> Condition {
    use alert_logs::Column as L;
    let col = |c: L| Expr::col((alert_logs::Entity, c));
    let status = |s: AlertStatus| col(L::Status).eq(status_literal(s));
    let blocking = Condition::any()
        .add(col(L::SentAt).gte(cutoffs.cooldown_since))
        .add(status(AlertStatus::Pending).and(col(L::ClaimedAt).gt(cutoffs.live_since)))
        .add(
            status(AlertStatus::Failed)
                .and(col(L::Contact).equals((accounts::Entity, accounts::Column::OwnerEmail))),
        )
        .add(status(AlertStatus::Expired).and(col(L::ClaimedAt).gte(cutoffs.cooldown_since)));
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
enum Part {
    DefaultThreshold,
    OwnThreshold,
}

/// What to list.
pub(super) struct Listing {
    pub(super) default_threshold: Money,
    pub(super) channels: Vec<ChannelName>,
    pub(super) cutoffs: Cutoffs,
    pub(super) page_size: u32,
}

async fn next_page(
    conns: &Conns,
    listing: &Listing,
    part: Part,
    after: Option<&str>,
) -> Result<Vec<String>, DbErr> {
    use accounts::Column as A;
    let below = match part {
        Part::DefaultThreshold => on_default_threshold(listing.default_threshold),
        Part::OwnThreshold => below_own_threshold(),
    };
    let mut select = accounts::Entity::find()
        .select_only()
        .column(A::Id)
        .filter(below)
        .filter(claimable_somewhere(
            &listing.channels,
            &listing.cutoffs,
            conns.dialect,
        ));
    if let Some(id) = after {
        select = select.filter(A::Id.gt(id));
    }
    select
        .order_by_asc(A::Id)
        .limit(u64::from(Ord::max(listing.page_size, 1)))
        .into_tuple()
        .all(&conns.db)
        .await
}

/// The candidate pages, each a disjoint range of account ids, read one page ahead of the
/// consumer (a task of its own); dropping the stream stops the reading.
pub(super) fn pages(
    conns: Arc<Conns>,
    listing: Listing,
) -> BoxStream<'static, Result<Vec<String>, StoreError>> {
    let page_size = Ord::max(listing.page_size, 1) as usize;
    let listing = Arc::new(listing);
    let start = Some((Part::DefaultThreshold, None::<String>));
    let mut scan = stream::try_unfold(start, move |mut scan| {
        let (conns, listing) = (conns.clone(), listing.clone());
        async move {
            while let Some((part, after)) = scan {
                let ids = next_page(&conns, &listing, part, after.as_deref())
                    .await
                    .map_err(conns.err("cannot read accounts"))?;
                let next_part = match part {
                    Part::DefaultThreshold => Some((Part::OwnThreshold, None)),
                    Part::OwnThreshold => None,
                };
                scan = match ids.last() {
                    Some(last) if ids.len() >= page_size => Some((part, Some(last.clone()))),
                    _ => next_part,
                };
                if !ids.is_empty() {
                    return Ok(Some((ids, scan)));
                }
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

/// How many accounts are below their effective threshold.
pub(super) async fn count_below(
    conns: &Conns,
    default_threshold: Money,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for below in [
        on_default_threshold(default_threshold),
        below_own_threshold(),
    ] {
        total += accounts::Entity::find()
            .filter(below)
            .count(&conns.db)
            .await
            .map_err(conns.err("cannot count accounts"))?;
    }
    Ok(total)
}
