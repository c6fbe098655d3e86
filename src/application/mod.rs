//! Use-cases, one per file: [`check_account`] (one account, the reference's
//! `BalanceAlertService`) and [`sweep`] (every account, `BulkBalanceAlertService`). Both
//! claim, deliver and record through [`dispatch`].

pub mod check_account;
pub mod dispatch;
pub mod sweep;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::ports::{AlertStore, AuditLog, Channel, ClaimRequest, Clock};
use crate::domain::{
    Account, AlertPolicy, AlertRecord, AlertsByPair, ChannelName, Currency, Decision,
};

/// How deliveries are attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Attempts per delivery within one run (transient failures only).
    pub max_attempts: u32,
    /// Time limit of one attempt.
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Accounts read, claimed and recorded per round trip.
    pub batch_size: u32,
    /// Fixes the backoff jitter's random sequence (tests); `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
}

/// What the use-cases work with; cheap to clone, rebuilt on reload.
#[derive(Clone)]
pub struct AlertContext {
    pub store: Arc<dyn AlertStore>,
    pub channels: Vec<Arc<dyn Channel>>,
    pub audit: Arc<dyn AuditLog>,
    pub clock: Arc<dyn Clock>,
    pub policy: AlertPolicy,
    pub delivery: DeliveryPolicy,
    pub currency: Currency,
}

impl AlertContext {
    fn channel_names(&self) -> impl Iterator<Item = &ChannelName> {
        self.channels.iter().map(|c| c.name())
    }
}

/// Decides, from an unlocked read, which account/channel pairs are worth claiming; the
/// claim itself decides again under lock. Returns the decisions too, for reporting.
fn plan_requests<'a>(
    ctx: &AlertContext,
    accounts: &'a [Account],
    records: &[AlertRecord],
    now: DateTime<Utc>,
) -> (Vec<ClaimRequest>, HashMap<(&'a str, ChannelName), Decision>) {
    let by_pair = AlertsByPair::new(records);
    let mut requests = Vec::new();
    let mut decisions = HashMap::new();
    for account in accounts {
        let mut channels = Vec::new();
        for channel in ctx.channel_names() {
            let decision = ctx.policy.decide(now, by_pair.get(&account.id, channel));
            if decision.is_claimable() {
                channels.push(channel.clone());
            }
            decisions.insert((account.id.as_str(), channel.clone()), decision);
        }
        if !channels.is_empty() {
            requests.push(ClaimRequest {
                account: account.clone(),
                channels,
            });
        }
    }
    (requests, decisions)
}
