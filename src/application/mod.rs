//! Use-cases, one per file: [`check_account`] (one account, the reference's
//! `BalanceAlertService`) and [`sweep`] (every account, `BulkBalanceAlertService`). Both
//! claim through the store and deliver, renew and record through [`deliver`].

pub mod check_account;
pub mod deliver;
pub mod sweep;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::domain::ports::{AlertStore, AuditLog, Channel, Clock, DigestSink};
use crate::domain::{AlertRules, ChannelName};

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
    /// Accounts claimed per transaction.
    pub batch_size: u32,
    /// Fixes the backoff jitter's random sequence (tests); `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
    /// Lower caps for some channels (`notify.channel_concurrency`).
    pub limits: ChannelLimits,
}

/// Per-channel caps on deliveries in flight, within [`DeliveryPolicy::concurrency`]: one
/// semaphore per capped channel, shared by every delivery of the sweeps built from this
/// configuration. An attempt takes a slot before its timeout starts, so waiting for a slow
/// relay's free connection is not counted against `delivery.timeout`.
#[derive(Clone, Default)]
pub struct ChannelLimits(Arc<HashMap<ChannelName, (usize, Arc<Semaphore>)>>);

impl ChannelLimits {
    pub fn new(limits: impl IntoIterator<Item = (ChannelName, usize)>) -> Self {
        Self(Arc::new(
            limits
                .into_iter()
                .map(|(name, n)| (name, (n, Arc::new(Semaphore::new(n.max(1))))))
                .collect(),
        ))
    }

    /// The slots of `channel`, when it is capped.
    pub fn of(&self, channel: &ChannelName) -> Option<&Semaphore> {
        self.0.get(channel).map(|(_, slots)| slots.as_ref())
    }

    fn caps(&self) -> BTreeMap<&str, usize> {
        self.0
            .iter()
            .map(|(name, (n, _))| (name.as_str(), *n))
            .collect()
    }
}

impl PartialEq for ChannelLimits {
    fn eq(&self, other: &Self) -> bool {
        self.caps() == other.caps()
    }
}

impl Eq for ChannelLimits {}

impl std::fmt::Debug for ChannelLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.caps()).finish()
    }
}

/// What the use-cases work with; cheap to clone, rebuilt on reload.
#[derive(Clone)]
pub struct AlertContext {
    pub store: Arc<dyn AlertStore>,
    pub channels: Vec<Arc<dyn Channel>>,
    pub audit: Arc<dyn AuditLog>,
    pub clock: Arc<dyn Clock>,
    pub rules: AlertRules,
    pub delivery: DeliveryPolicy,
    /// Operations channels told once per sweep (Slack in digest mode); usually none.
    pub digests: Vec<Arc<dyn DigestSink>>,
}

impl AlertContext {
    fn channel_names(&self) -> Vec<ChannelName> {
        self.channels.iter().map(|c| c.name().clone()).collect()
    }
}

#[cfg(test)]
mod tests;
