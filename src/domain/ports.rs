//! Ports: what the application needs from the outside world, as traits used as
//! `Arc<dyn Port>` (channels are chosen from config at run time, so all ports follow one rule).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::Serialize;

use std::sync::Arc;

use super::account::{Account, AccountId};
use super::alert::{
    AlertId, AlertMessage, AlertRules, ChannelName, Claim, Decision, DeliveryError, Outcome,
};
use super::claiming::ClaimTally;
use super::lease::{Lease, LeaseHolder};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the connection; the message names it.
    #[error("database unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: anyhow::Error,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// What a sweep asks the store to claim.
#[derive(Debug, Clone)]
pub struct SweepClaims {
    /// Every claim is taken under this lease (its holder is stored with it) and added to it.
    pub lease: Arc<Lease>,
    pub channels: Vec<ChannelName>,
    pub rules: AlertRules,
    /// Accounts per claim transaction.
    pub page_size: u32,
}

/// What one claim transaction took, and what it found.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    /// Deliveries now held by the caller's lease, with the accounts as read under the lock.
    pub claims: Vec<Claim>,
    /// Alerts the claim gave up (retried past `give_up_after`): already recorded `expired`,
    /// still to be audited.
    pub expired: Vec<Claim>,
    pub tally: ClaimTally,
    /// Per account and channel, what was decided (filled by [`AlertStore::claim_account`]).
    pub decisions: Vec<(AccountId, ChannelName, Decision)>,
    /// Channel names accounts asked for that are not configured (ignored).
    pub unconfigured: std::collections::BTreeSet<String>,
}

/// What [`AlertStore::count_accounts`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountCounts {
    /// Strictly below their effective threshold.
    pub below_threshold: u64,
    /// Accounts without a threshold of their own in a currency without a default one
    /// (`alert.thresholds.<CODE>`), per stored currency code: never alerted (SPEC §2).
    pub without_threshold: Vec<(String, u64)>,
}

impl AccountCounts {
    /// Accounts without any threshold, all currencies together.
    pub fn without_threshold_total(&self) -> u64 {
        self.without_threshold.iter().map(|(_, n)| n).sum()
    }
}

/// Accounts and their alert log.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// MUST return `Ok(None)` for an unknown id, `Err(Unavailable)` when the database cannot
    /// be reached.
    async fn find_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError>;

    /// How many accounts are strictly below their effective threshold, and which have none.
    async fn count_accounts(&self, rules: &AlertRules) -> Result<AccountCounts, StoreError>;

    /// `once` policy: records that accounts whose policy is `once` and whose balance is at
    /// or above their effective threshold plus `rules.rearm_margin` have recovered
    /// (`resolved_at = now` on their alerts sent or given up and not yet resolved), which
    /// re-arms them. Returns how many alerts it resolved.
    async fn resolve_recovered(
        &self,
        rules: &AlertRules,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Claims every delivery due now, batch after batch: accounts below their threshold are
    /// locked (those another claimer holds are skipped), read again under the lock, decided
    /// with [`plan_claims`](super::claiming::plan_claims) on that fresh read, and their claims
    /// written and committed under `request.lease` (and added to it) before the batch is
    /// yielded. Claiming runs ahead of the consumer by a few batches; dropping the stream
    /// stops it. Two callers — in this process or another — MUST never both hold a claim for
    /// the same account and channel. A failed read or write MUST end the stream with it.
    fn claim_due(
        &self,
        request: SweepClaims,
        clock: Arc<dyn Clock>,
    ) -> BoxStream<'static, Result<ClaimBatch, StoreError>>;

    /// What [`Self::claim_due`] would claim now, decided by the same rule on the same
    /// candidates, read without locks and writing nothing (`sweep --dry-run`).
    fn preview_due(
        &self,
        channels: Vec<ChannelName>,
        rules: AlertRules,
        page_size: u32,
        now: DateTime<Utc>,
    ) -> BoxStream<'static, Result<ClaimBatch, StoreError>>;

    /// The same for one account, waiting for its lock; fills [`ClaimBatch::decisions`].
    async fn claim_account(
        &self,
        lease: &Lease,
        account: &AccountId,
        channels: &[ChannelName],
        rules: &AlertRules,
        now: DateTime<Utc>,
    ) -> Result<ClaimBatch, StoreError>;

    /// Renews the lease on these claims (`claimed_at = now`) where `lease` still holds them
    /// and they are still `pending`; returns those it renewed.
    async fn renew(
        &self,
        lease: &LeaseHolder,
        alerts: &[AlertId],
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertId>, StoreError>;

    /// Records outcomes of claims `lease` holds. Fenced: a claim another holder has taken
    /// over, or one no longer `pending`, MUST be left as it is. Returns how many were
    /// recorded. Implementations may keep a connection between calls (a sweep records
    /// thousands of small batches).
    async fn record(&self, lease: &LeaseHolder, outcomes: &[Outcome]) -> Result<u64, StoreError>;

    /// Keeps audit lines the audit log could not take before the process exits, in order,
    /// until [`Self::take_audit_backlog`] hands them to a later process (SPEC §7).
    async fn keep_audit_backlog(&self, lines: &[String]) -> Result<(), StoreError>;

    /// Removes and returns the kept audit lines, oldest first (empty almost always).
    async fn take_audit_backlog(&self) -> Result<Vec<String>, StoreError>;
}

/// A way to tell an account owner (or the bank's staff) about a low balance.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The name deliveries on this channel are stored under.
    fn name(&self) -> &ChannelName;

    /// Who receives `message` on this channel, as written to the audit log.
    fn recipient(&self, message: &AlertMessage) -> String {
        message
            .recipient
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Delivers one alert. MUST classify failures: [`DeliveryError::transient`] for what a
    /// later attempt may fix, [`DeliveryError::permanent`] otherwise. The caller applies the
    /// per-attempt timeout and the retries.
    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError>;
}

/// What one sweep did, for an operations channel (`notify.slack.mode = "digest"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepDigest {
    /// Accounts below their threshold, and how many of them got a delivery claimed.
    pub below_threshold: u64,
    pub eligible: u64,
    /// Deliveries (account x channel).
    pub sent: u64,
    pub failed: u64,
    pub deferred: u64,
    /// The first deliveries attempted (at most [`SweepDigest::FIRST`]), in claim order.
    pub first: Vec<Claim>,
}

impl SweepDigest {
    /// Deliveries a digest names one by one.
    pub const FIRST: usize = 5;
}

/// An operations channel told once per sweep that attempted deliveries — never once per
/// account. Its failure is logged and affects nothing else.
#[async_trait]
pub trait DigestSink: Send + Sync {
    /// The name it is configured under (`slack`).
    fn name(&self) -> &str;

    async fn post(&self, digest: &SweepDigest) -> Result<(), DeliveryError>;
}

/// The time, so tests can move it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The kind of an audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    AlertSent,
    AlertFailed,
    AlertRetry,
    AlertExpired,
}

/// One line of `audit.log` (SPEC §7): one delivery outcome. Money is in decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub timestamp: DateTime<Utc>,
    pub event: AuditEvent,
    pub alert_id: AlertId,
    pub account_id: AccountId,
    pub channel: ChannelName,
    pub recipient: String,
    pub threshold: String,
    pub balance: String,
    pub currency: String,
    /// Attempts made for this alert so far, across sweeps.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The operators' record of every delivery outcome.
pub trait AuditLog: Send + Sync {
    /// Records entries, in order and together, without blocking on disk I/O. MUST NOT drop
    /// entries: when the writer is saturated it waits. Errors mean the entries could not be
    /// queued at all.
    fn record(&self, entries: &[AuditEntry]) -> Result<(), std::io::Error>;

    /// Reopens the log file before the next line (SIGHUP: logrotate moved it away).
    fn reopen(&self) {}

    /// Why the last write failed (naming the file), until a write succeeds again. While it
    /// is set no new delivery starts, `/readyz` reports it and `sweep` exits 1 (SPEC §7).
    fn failure(&self) -> Option<String> {
        None
    }

    /// Writes already formatted lines (kept from an earlier process), like [`Self::record`].
    fn record_lines(&self, _lines: &[String]) -> Result<(), std::io::Error> {
        Ok(())
    }

    /// The lines not written yet because writes failed. Meaningful once the log is flushed
    /// for the last time: whatever it returns then would be lost with the process.
    fn unwritten(&self) -> Vec<String> {
        Vec::new()
    }
}
