//! The single-account check (`check ACCOUNT_ID`), the reference's `BalanceAlertService`.

use tokio_util::sync::CancellationToken;

use super::{AlertContext, dispatch, plan_requests};
use crate::domain::ports::{LockWait, StoreError};
use crate::domain::{AccountId, AlertId, ChannelName, Decision, Money};

/// What the check found for the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NotFound,
    /// At or above its effective threshold: nothing to do.
    AboveThreshold {
        balance: Money,
        threshold: Money,
    },
    /// Below its threshold: what happened on each configured channel.
    Evaluated(Vec<(ChannelName, ChannelOutcome)>),
}

/// What happened on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelOutcome {
    Sent {
        alert_id: AlertId,
    },
    Failed {
        alert_id: AlertId,
        error: String,
    },
    /// An alert was sent within the cooldown.
    InCooldown,
    /// Another sweep is delivering it right now.
    InFlight,
}

impl Outcome {
    pub fn any_failed(&self) -> bool {
        matches!(self, Self::Evaluated(channels)
            if channels.iter().any(|(_, o)| matches!(o, ChannelOutcome::Failed { .. })))
    }
}

pub struct BalanceAlert {
    ctx: AlertContext,
}

impl BalanceAlert {
    pub fn new(ctx: AlertContext) -> Self {
        Self { ctx }
    }

    pub async fn execute(&self, account_id: &AccountId) -> Result<Outcome, StoreError> {
        let ctx = &self.ctx;
        let Some(account) = ctx.store.find_account(account_id).await? else {
            return Ok(Outcome::NotFound);
        };
        let threshold = account.effective_threshold(ctx.policy.default_threshold);
        if !account.is_below_threshold(ctx.policy.default_threshold) {
            return Ok(Outcome::AboveThreshold {
                balance: account.balance,
                threshold,
            });
        }
        let now = ctx.clock.now();
        let records = ctx
            .store
            .open_and_recent_alerts(
                std::slice::from_ref(account_id),
                ctx.policy.cooldown_cutoff(now),
            )
            .await?;
        let accounts = [account];
        let (requests, decisions) = plan_requests(ctx, &accounts, &records, now);
        let claims = ctx
            .store
            .claim(&requests, &ctx.policy, now, LockWait::Wait)
            .await?;
        let delivered = dispatch::deliver_claims(ctx, claims, &CancellationToken::new()).await?;
        let outcomes = ctx
            .channel_names()
            .map(|channel| {
                let outcome = match delivered.iter().find(|d| &d.channel == channel) {
                    Some(d) => match &d.outcome.result {
                        Ok(_) => ChannelOutcome::Sent {
                            alert_id: d.outcome.alert_id.clone(),
                        },
                        Err(e) => ChannelOutcome::Failed {
                            alert_id: d.outcome.alert_id.clone(),
                            error: e.message.clone(),
                        },
                    },
                    None => match decisions.get(&(account_id.as_str(), channel.clone())) {
                        Some(Decision::InCooldown { .. }) => ChannelOutcome::InCooldown,
                        // Claimable before the lock but not after: someone else took it.
                        _ => ChannelOutcome::InFlight,
                    },
                };
                (channel.clone(), outcome)
            })
            .collect();
        Ok(Outcome::Evaluated(outcomes))
    }
}
