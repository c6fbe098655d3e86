//! Use-cases, one per file: [`check_account`] (one account, the reference's
//! `BalanceAlertService`) and [`sweep`] (every account, `BulkBalanceAlertService`). Both
//! claim through the store and deliver, renew and record through [`deliver`].

pub mod check_account;
pub mod deliver;
pub mod sweep;

use std::sync::Arc;
use std::time::Duration;

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
