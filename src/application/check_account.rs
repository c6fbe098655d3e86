//! The single-account check (`check ACCOUNT_ID`), the reference's `BalanceAlertService`.

use std::sync::Arc;

use futures::stream;
use tokio_util::sync::CancellationToken;

use super::{AlertContext, deliver, sweep};
use crate::domain::ports::StoreError;
use crate::domain::{AccountId, ChannelName, Decision, Lease, Money, Outcome};

/// What the check found for the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckReport {
    NotFound,
    /// At or above its effective threshold: nothing to do.
    AboveThreshold {
        balance: Money,
        /// `None`: the account has no threshold at all (its currency has no default).
        threshold: Option<Money>,
    },
    /// Below its threshold: what happened on each configured channel.
    Evaluated(Vec<(ChannelName, ChannelResult)>),
}

/// What happened on one channel: a delivery's outcome, or why none was due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelResult {
    Delivered(Outcome),
    NotDue(Decision),
    /// Claimed, but its lease ran short before an attempt could start; retried later.
    NotAttempted,
}

impl CheckReport {
    /// A delivery was attempted and did not get through (exit 3).
    pub fn any_failed(&self) -> bool {
        matches!(self, Self::Evaluated(channels)
            if channels.iter().any(|(_, r)| matches!(r, ChannelResult::Delivered(o) if o.error.is_some())))
    }
}

pub struct BalanceAlert {
    ctx: AlertContext,
}

impl BalanceAlert {
    pub fn new(ctx: AlertContext) -> Self {
        Self { ctx }
    }

    pub async fn execute(&self, account_id: &AccountId) -> Result<CheckReport, StoreError> {
        let ctx = &self.ctx;
        let Some(account) = ctx.store.find_account(account_id).await? else {
            return Ok(CheckReport::NotFound);
        };
        let above = CheckReport::AboveThreshold {
            balance: account.balance,
            threshold: account.effective_threshold(&ctx.rules.thresholds),
        };
        if !account.is_below_threshold(&ctx.rules.thresholds) {
            return Ok(above);
        }
        let lease = Arc::new(Lease::new(ctx.rules.claim_timeout));
        let _renewer = deliver::spawn_renewer(ctx, lease.clone());
        let channels = ctx.channel_names();
        let batch = ctx
            .store
            .claim_account(&lease, account_id, &channels, &ctx.rules, ctx.clock.now())
            .await?;
        // Read again under the lock: it changed since the first read.
        if batch.tally.gone > 0 {
            return Ok(CheckReport::NotFound);
        }
        if batch.tally.changed > 0 {
            return Ok(above);
        }
        sweep::audit_given_up(ctx, &batch.expired);
        let claimed: Vec<ChannelName> = batch.claims.iter().map(|c| c.channel.clone()).collect();
        let (_, outcomes) = deliver::deliver(
            ctx,
            lease,
            stream::iter(batch.claims),
            &CancellationToken::new(),
            true,
        )
        .await?;
        let results = batch
            .decisions
            .into_iter()
            .map(|(_, channel, decision)| {
                let result = match outcomes.iter().find(|o| o.channel == channel) {
                    Some(outcome) => ChannelResult::Delivered(outcome.clone()),
                    None if claimed.contains(&channel) => ChannelResult::NotAttempted,
                    None => ChannelResult::NotDue(decision),
                };
                (channel, result)
            })
            .collect();
        Ok(CheckReport::Evaluated(results))
    }
}
