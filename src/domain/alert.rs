//! Alerts: the record of one alert per account, channel and cooldown window, and the rules
//! that decide whether a delivery may be claimed now.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::account::{Account, AccountId};
use super::email::EmailAddress;
use super::money::Money;

/// The id an alert keeps for life: every retry reuses it, so receivers can drop duplicates
/// (webhook `Idempotency-Key`, e-mail `Message-ID`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AlertId(String);

impl AlertId {
    /// A new time-ordered id (UUIDv7), which keeps inserts into the primary-key index local.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn from_stored(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name a channel is stored and configured under (`console`, `email`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an alert stands. `pending` is a claim: written before the send, so a crash can
/// never lose a delivery, only leave a claim that expires and is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    Pending,
    Sent,
    Failed,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "sent" => Some(Self::Sent),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One stored alert (a row of `alert_logs`) as far as the claim rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    pub id: AlertId,
    pub account_id: AccountId,
    pub channel: ChannelName,
    pub status: AlertStatus,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub claimed_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Stored alerts grouped by account: what the claim rules decide on, per channel.
pub struct AlertsByPair<'a>(HashMap<&'a str, Vec<&'a AlertRecord>>);

impl<'a> AlertsByPair<'a> {
    pub fn new(records: &'a [AlertRecord]) -> Self {
        let mut by_account: HashMap<&str, Vec<&AlertRecord>> = HashMap::new();
        for record in records {
            by_account
                .entry(record.account_id.as_str())
                .or_default()
                .push(record);
        }
        Self(by_account)
    }

    /// The alerts of one account on one channel.
    pub fn get<'s>(
        &'s self,
        account: &AccountId,
        channel: &ChannelName,
    ) -> impl Iterator<Item = &'a AlertRecord> + use<'s, 'a> {
        let channel = channel.clone();
        self.0
            .get(account.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(move |record| record.channel == channel)
    }
}

/// The tunable alert rules (SIGHUP may replace them between sweeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertPolicy {
    /// Applies to accounts without their own threshold.
    pub default_threshold: Money,
    /// After a sent alert, no new alert for that account and channel within this window.
    pub cooldown: Duration,
    /// A `pending` claim older than this is considered abandoned (its sender crashed).
    pub claim_timeout: Duration,
}

/// What may happen for one account on one channel right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No alert in this window yet: create one with a new id.
    New,
    /// An earlier alert failed or its claim was abandoned: send it again under its id.
    Retry { alert_id: AlertId, attempts: u32 },
    /// An alert was sent within the cooldown.
    InCooldown { sent_at: DateTime<Utc> },
    /// Another sweep holds a live claim and is delivering it now.
    InFlight { claimed_at: DateTime<Utc> },
}

impl Decision {
    pub fn is_claimable(&self) -> bool {
        matches!(self, Self::New | Self::Retry { .. })
    }
}

impl AlertPolicy {
    /// Alerts sent at or after this instant block a new one.
    pub fn cooldown_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - to_delta(self.cooldown)
    }

    /// `pending` claims taken after this instant are live; older ones were abandoned.
    pub fn claim_expiry(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - to_delta(self.claim_timeout)
    }

    /// Decides for one account and channel from that pair's stored alerts (the unresolved
    /// one, if any, and those sent since [`Self::cooldown_cutoff`]; older ones are ignored).
    pub fn decide<'a>(
        &self,
        now: DateTime<Utc>,
        records: impl IntoIterator<Item = &'a AlertRecord>,
    ) -> Decision {
        let cutoff = self.cooldown_cutoff(now);
        let claim_expiry = self.claim_expiry(now);
        let mut unresolved = None;
        for record in records {
            if let Some(sent_at) = record.sent_at.filter(|sent| *sent >= cutoff) {
                return Decision::InCooldown { sent_at };
            }
            if record.status != AlertStatus::Sent {
                unresolved = Some(record);
            }
        }
        match unresolved {
            None => Decision::New,
            Some(r) if r.status == AlertStatus::Pending && r.claimed_at > claim_expiry => {
                Decision::InFlight {
                    claimed_at: r.claimed_at,
                }
            }
            Some(r) => Decision::Retry {
                alert_id: r.id.clone(),
                attempts: r.attempts,
            },
        }
    }
}

/// Saturating: a configured duration beyond chrono's range (~292 million years) means "forever".
fn to_delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// A delivery this process now owns: the alert row is `pending` with a fresh claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub alert_id: AlertId,
    pub channel: ChannelName,
    /// The account as read under the claim's lock.
    pub account: Account,
    pub threshold: Money,
    /// Attempts made by earlier sweeps for this alert.
    pub prior_attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// What a channel is asked to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertMessage {
    pub alert_id: AlertId,
    pub account_id: AccountId,
    pub recipient: EmailAddress,
    /// The owner's name as stored (may be missing).
    pub owner_name: Option<String>,
    pub balance: Money,
    pub threshold: Money,
    pub created_at: DateTime<Utc>,
}

impl AlertMessage {
    /// The name to greet the owner with: "Customer" when the bank has none on file.
    pub fn display_name(&self) -> &str {
        super::account::display_name(self.owner_name.as_deref())
    }
}

/// How a delivery attempt failed, which decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// Timeouts, connection errors, HTTP 408/429/5xx, SMTP 4xx: worth another attempt.
    Transient,
    /// Other HTTP 4xx, SMTP 5xx, invalid address: retrying cannot help.
    Permanent,
}

/// A failed delivery attempt, as channels report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} failure: {message}")]
pub struct DeliveryError {
    pub kind: FailureKind,
    pub message: String,
    /// The receiver asked us to wait this long (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Transient,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }
}

/// The result of delivering one claim, to be recorded in `alert_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub alert_id: AlertId,
    /// Attempts made by this sweep.
    pub attempts: u32,
    pub result: Result<DateTime<Utc>, DeliveryError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> AlertPolicy {
        AlertPolicy {
            default_threshold: Money::from_minor(5000),
            cooldown: 24 * HOUR,
            claim_timeout: Duration::from_secs(300),
        }
    }

    fn at(hours_ago: i64) -> DateTime<Utc> {
        now() - TimeDelta::hours(hours_ago)
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn record(status: AlertStatus, claimed_at: DateTime<Utc>) -> AlertRecord {
        AlertRecord {
            id: AlertId::from_stored("a1"),
            account_id: AccountId::new("acc"),
            channel: ChannelName::new("console"),
            status,
            attempts: 1,
            created_at: claimed_at,
            claimed_at,
            sent_at: (status == AlertStatus::Sent).then_some(claimed_at),
        }
    }

    #[test]
    fn no_alert_yet_means_a_new_one() {
        assert_eq!(policy().decide(now(), []), Decision::New);
    }

    #[test]
    fn an_alert_sent_within_the_cooldown_blocks() {
        let sent = record(AlertStatus::Sent, at(23));
        assert!(matches!(
            policy().decide(now(), [&sent]),
            Decision::InCooldown { .. }
        ));
        let exactly = record(AlertStatus::Sent, at(24));
        assert!(matches!(
            policy().decide(now(), [&exactly]),
            Decision::InCooldown { .. }
        ));
    }

    #[test]
    fn an_alert_sent_before_the_cooldown_does_not_block() {
        let old = record(AlertStatus::Sent, at(25));
        assert_eq!(policy().decide(now(), [&old]), Decision::New);
    }

    #[test]
    fn a_failed_alert_is_retried_under_its_id() {
        let failed = record(AlertStatus::Failed, at(1));
        assert_eq!(
            policy().decide(now(), [&failed]),
            Decision::Retry {
                alert_id: AlertId::from_stored("a1"),
                attempts: 1
            }
        );
    }

    #[test]
    fn a_live_claim_blocks_and_an_abandoned_one_is_retried() {
        let live = record(AlertStatus::Pending, now() - TimeDelta::minutes(4));
        assert!(matches!(
            policy().decide(now(), [&live]),
            Decision::InFlight { .. }
        ));
        let abandoned = record(AlertStatus::Pending, now() - TimeDelta::minutes(5));
        assert!(matches!(
            policy().decide(now(), [&abandoned]),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn cooldown_wins_over_an_unresolved_alert() {
        let sent = record(AlertStatus::Sent, at(2));
        let failed = record(AlertStatus::Failed, at(1));
        assert!(matches!(
            policy().decide(now(), [&failed, &sent]),
            Decision::InCooldown { .. }
        ));
    }
}
