//! Ports: what the application needs from the outside world, as traits used as
//! `Arc<dyn Port>` (channels are chosen from config at run time, so all ports follow one rule).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::Serialize;

use super::account::{Account, AccountId};
use super::alert::{
    AlertId, AlertMessage, AlertPolicy, AlertRecord, ChannelName, Claim, DeliveryError,
    DeliveryOutcome,
};
use super::money::Money;

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

/// How a claim treats accounts that another transaction has locked right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Skip them: a concurrent sweep is claiming them (sweeps share the work this way).
    Skip,
    /// Wait for the lock (a single-account check).
    Wait,
}

/// The channels a caller wants to claim for one account, as the caller read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub account: Account,
    pub channels: Vec<ChannelName>,
}

/// What a sweep asks the store for: accounts below their threshold that are not blocked
/// (sent within the cooldown, or claimed and still live) on at least one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateQuery {
    pub default_threshold: Money,
    pub channels: Vec<ChannelName>,
    /// Alerts sent at or after this block.
    pub cooldown_cutoff: DateTime<Utc>,
    /// `pending` claims taken after this are live and block.
    pub claim_expiry: DateTime<Utc>,
    pub page_size: u32,
}

/// Accounts and their alert log.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// MUST return `Ok(None)` for an unknown id, `Err(Unavailable)` when the database cannot
    /// be reached.
    async fn find_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError>;

    /// How many accounts are strictly below their effective threshold (their own, else
    /// `default_threshold`).
    async fn count_below_threshold(&self, default_threshold: Money) -> Result<u64, StoreError>;

    /// The sweep's candidates: every account strictly below its effective threshold that is
    /// not blocked on at least one of the query's channels, in pages of at most `page_size`,
    /// each account at most once, never more than one page in memory. A read without locks:
    /// [`Self::claim`] decides again. A failed page read MUST end the stream with that error.
    fn claim_candidates(
        &self,
        query: CandidateQuery,
    ) -> BoxStream<'static, Result<Vec<Account>, StoreError>>;

    /// The alerts of these accounts that can block or be retried: every unresolved one
    /// (`pending`/`failed`) and every one sent at or after `sent_since`. Read without locks.
    async fn open_and_recent_alerts(
        &self,
        accounts: &[AccountId],
        sent_since: DateTime<Utc>,
    ) -> Result<Vec<AlertRecord>, StoreError>;

    /// Atomically claims deliveries: locks the accounts, re-reads their alerts after the lock
    /// is held, decides again under `policy` (with the accounts as the caller read them), writes `pending` rows (new ids for
    /// [`Decision::New`](super::Decision::New), the old id for a retry) and commits. Two
    /// callers — in this process or another — MUST never both receive a claim for the same
    /// account and channel while one is live. Returns only the claims this caller now owns.
    async fn claim(
        &self,
        requests: &[ClaimRequest],
        policy: &AlertPolicy,
        now: DateTime<Utc>,
        lock: LockWait,
    ) -> Result<Vec<Claim>, StoreError>;

    /// How many [`Self::claim`] transactions of one sweep are worth running at once: 1 where
    /// the database has a single writer (a second would only queue behind the first, and
    /// the outcomes being recorded behind both), more on a database server.
    fn parallel_claims(&self) -> usize {
        1
    }

    /// Where the outcomes of one run of deliveries are recorded, batch after batch.
    fn outcome_recorder(&self) -> Box<dyn OutcomeRecorder>;
}

/// Records delivery outcomes batch after batch. It may keep its database connection from
/// one batch to the next (checking a connection out of the pool and back for every batch
/// costs a round trip each time); [`Self::release`] gives it back while no batch is coming,
/// and so does dropping the recorder.
#[async_trait]
pub trait OutcomeRecorder: Send {
    /// Marks delivered alerts `sent` (at the outcome's time) and failed ones `failed` with
    /// their error; adds the attempts. A row already `sent` MUST stay `sent`.
    async fn record(&mut self, outcomes: &[DeliveryOutcome]) -> Result<(), StoreError>;

    /// Gives back the connection kept between batches, if any.
    fn release(&mut self);
}

/// A way to tell an account owner (or the bank's staff) about a low balance.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The name deliveries on this channel are stored under.
    fn name(&self) -> &ChannelName;

    /// Who receives `message` on this channel, as written to the audit log.
    fn recipient(&self, message: &AlertMessage) -> String {
        message.recipient.to_string()
    }

    /// Delivers one alert. MUST classify failures: [`DeliveryError::transient`] for what a
    /// later attempt may fix, [`DeliveryError::permanent`] otherwise. The caller applies the
    /// per-attempt timeout and the retries.
    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError>;
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
}
