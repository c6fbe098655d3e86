//! Alerts: the record of one alert per account, channel and cooldown window, and the rules
//! that decide whether a delivery may be claimed now.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::account::{Account, AccountId};
use super::currency::Thresholds;
use super::email::{EmailAddress, PhoneNumber};
use super::money::{Currency, Money};
use super::policy::{AccountPolicy, Policy, PolicyDefaults, QuietHours, start_of_day};

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

    /// `sms` addresses the owner's phone; every other channel the owner's e-mail (console and
    /// e-mail send to it, Slack and webhook carry it). An account without a phone is not
    /// alerted on `sms` at all (skipped, not failed).
    pub fn addresses_phone(&self) -> bool {
        self.0 == "sms"
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

/// Where an alert stands (SPEC §3). `pending` is a claim: written before the send, so a
/// crash can never lose a delivery, only leave a claim that expires and is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertStatus {
    /// Claimed, in flight; owned by the lease holder in `claimed_by`.
    Pending,
    Sent,
    /// A transient failure: due again at the next sweep, under the same id.
    Retry,
    /// A permanent failure: parked until the account's contact details change.
    Failed,
    /// Transient failures went on past `delivery.give_up_after`: given up.
    Expired,
}

impl AlertStatus {
    /// Every status (the schema's CHECK constraint lists the same).
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Sent,
        Self::Retry,
        Self::Failed,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Retry => "retry",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Open alerts hold their account and channel: at most one per pair (a unique index).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Retry | Self::Failed)
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
    /// When the current claim was taken or last renewed; for an `expired` alert, when it
    /// was given up.
    pub claimed_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The contact details the alert was addressed to (see [`Account::contact`]).
    pub contact: Option<String>,
    /// When a sweep saw the account recovered after this alert (`once` re-arms on it).
    pub resolved_at: Option<DateTime<Utc>>,
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

/// The tunable alert rules (SIGHUP may replace them between sweeps). Every duration is
/// bounded by the configuration (`config::load`); the arithmetic here saturates anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRules {
    /// The default threshold of each currency, for accounts without their own.
    pub thresholds: Thresholds,
    /// After a sent alert, no new alert for that account and channel within this window.
    pub cooldown: Duration,
    /// A claim not renewed for this long was abandoned by its holder (a crash).
    pub claim_timeout: Duration,
    /// Transient failures are retried by later sweeps until the alert is this old.
    pub give_up_after: Duration,
    /// Policy, time zone and quiet hours for accounts without their own.
    pub policy: PolicyDefaults,
    /// `once`: an account is recovered (re-armed) at threshold + this margin or above.
    pub rearm_margin: Money,
}

/// The instants the rules compare stored timestamps with, at one moment. The candidate
/// query (SQL) and [`Cutoffs::decide`] use the same values, so they cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub now: DateTime<Utc>,
    /// Alerts sent (or given up) at or after this block a new one.
    pub cooldown_since: DateTime<Utc>,
    /// `pending` claims renewed after this are live; older ones were abandoned.
    pub live_since: DateTime<Utc>,
    /// Alerts created before this are not retried after a transient failure: expired.
    pub give_up_before: DateTime<Utc>,
    /// `daily`: the start of today in `alert.timezone` (accounts without their own zone).
    pub today_since: DateTime<Utc>,
}

impl AlertRules {
    pub fn cutoffs(&self, now: DateTime<Utc>) -> Cutoffs {
        Cutoffs {
            now,
            cooldown_since: before(now, self.cooldown),
            live_since: before(now, self.claim_timeout),
            give_up_before: before(now, self.give_up_after),
            today_since: start_of_day(self.policy.timezone, now),
        }
    }
}

/// `now - duration`, saturating at the earliest representable instant: a window longer
/// than recorded time simply covers everything.
pub fn before(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_sub_signed(delta))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `at + duration`, saturating at the latest representable instant.
pub fn after(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// What may happen for one account on one channel right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No alert in this window yet: create one with a new id.
    New,
    /// A transient failure, an abandoned claim, or a permanent failure whose contact details
    /// have since changed: send it again under its id.
    Retry {
        alert_id: AlertId,
        attempts: u32,
        created_at: DateTime<Utc>,
    },
    /// Due for a retry but older than `give_up_after`: record it `expired`, send nothing.
    Expire {
        alert_id: AlertId,
        attempts: u32,
        created_at: DateTime<Utc>,
    },
    /// `repeat`: an alert was sent (or given up) within the cooldown.
    InCooldown { since: DateTime<Utc> },
    /// `once`: alerted (or given up) for this dip at `since`; no sweep has seen the
    /// account recovered since.
    NotRearmed { since: DateTime<Utc> },
    /// `daily`: already alerted (or given up) today, local time, at `since`.
    AlreadyToday { since: DateTime<Utc> },
    /// Due, but inside the account's quiet hours: deferred, not dropped.
    Deferred { quiet_hours: QuietHours },
    /// Another sweep holds a live claim and is delivering it now.
    InFlight { claimed_at: DateTime<Utc> },
    /// It failed permanently on these very contact details: parked until they change.
    Parked { alert_id: AlertId },
}

impl Decision {
    /// A delivery is to be claimed (and then sent).
    pub fn is_claimable(&self) -> bool {
        matches!(self, Self::New | Self::Retry { .. })
    }
}

impl Cutoffs {
    /// Decides for one account and channel from that pair's stored alerts under `policy`
    /// (the open one, if any, and those that may still block a new one: sent or given up
    /// since [`Self::cooldown_since`] or within the last two days, or not yet resolved;
    /// others are ignored). `contact` is the account's contact details as read now. Quiet
    /// hours are the caller's to apply: they defer what this finds due.
    pub fn decide<'a>(
        &self,
        contact: &str,
        policy: &AccountPolicy,
        records: impl IntoIterator<Item = &'a AlertRecord>,
    ) -> Decision {
        let mut open = None;
        for record in records {
            // When an alert that blocks the next one happened: its sending, or for an
            // `expired` one its giving up (`claimed_at`).
            let closed_at = match record.status {
                AlertStatus::Sent => record.sent_at,
                AlertStatus::Expired => Some(record.claimed_at),
                _ => None,
            };
            if let Some(since) = closed_at {
                match policy.policy {
                    Policy::Repeat if since >= self.cooldown_since => {
                        return Decision::InCooldown { since };
                    }
                    Policy::Once if record.resolved_at.is_none() => {
                        return Decision::NotRearmed { since };
                    }
                    Policy::Daily if policy.local_date(since) == policy.local_date(self.now) => {
                        return Decision::AlreadyToday { since };
                    }
                    _ => {}
                }
            }
            if record.status.is_open() {
                open = Some(record);
            }
        }
        let Some(r) = open else {
            return Decision::New;
        };
        match r.status {
            AlertStatus::Pending if r.claimed_at > self.live_since => Decision::InFlight {
                claimed_at: r.claimed_at,
            },
            AlertStatus::Failed if r.contact.as_deref() == Some(contact) => Decision::Parked {
                alert_id: r.id.clone(),
            },
            // The bank fixed the address: try again under the same id, however old.
            AlertStatus::Failed => Decision::Retry {
                alert_id: r.id.clone(),
                attempts: r.attempts,
                created_at: r.created_at,
            },
            _ if r.created_at < self.give_up_before => Decision::Expire {
                alert_id: r.id.clone(),
                attempts: r.attempts,
                created_at: r.created_at,
            },
            _ => Decision::Retry {
                alert_id: r.id.clone(),
                attempts: r.attempts,
                created_at: r.created_at,
            },
        }
    }

    /// What the outcome of a transient failure is: `retry`, or `expired` once the alert is
    /// older than `give_up_after`.
    pub fn after_transient_failure(&self, created_at: DateTime<Utc>) -> AlertStatus {
        if created_at < self.give_up_before {
            AlertStatus::Expired
        } else {
            AlertStatus::Retry
        }
    }
}

/// A delivery this process now owns: the alert row is `pending`, held by its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub alert_id: AlertId,
    pub channel: ChannelName,
    /// The account as read under the claim's lock.
    pub account: Account,
    pub threshold: Money,
    /// The account's currency, which its balance and threshold count in.
    pub currency: Arc<Currency>,
    /// Attempts made by earlier sweeps for this alert.
    pub prior_attempts: u32,
    pub created_at: DateTime<Utc>,
    /// The account's contact details as decided on (see [`Account::contact`]); stored with
    /// a permanent failure, which stays parked while they are unchanged.
    pub contact: String,
    /// A per-account setting the daemon cannot honour (it names the column and value): the
    /// delivery fails permanently without being sent.
    pub rejected: Option<String>,
}

/// What a channel is asked to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertMessage {
    pub alert_id: AlertId,
    pub account_id: AccountId,
    /// The owner's e-mail, validated; `None` only for a channel that does not address it
    /// (`sms`) when the stored address is not valid.
    pub recipient: Option<EmailAddress>,
    /// The owner's phone, E.164 (`sms` only).
    pub phone: Option<PhoneNumber>,
    /// The owner's name as stored (may be missing).
    pub owner_name: Option<String>,
    pub balance: Money,
    pub threshold: Money,
    /// What `balance` and `threshold` count: messages show amounts in it.
    pub currency: Arc<Currency>,
    pub created_at: DateTime<Utc>,
}

impl AlertMessage {
    /// The e-mail address, for channels that address or carry it.
    pub fn email(&self) -> Result<&EmailAddress, DeliveryError> {
        self.recipient
            .as_ref()
            .ok_or_else(|| DeliveryError::permanent("no valid owner_email for this channel"))
    }

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

/// What became of an alert in this run: its new status in `alert_logs` (`sent`, `retry`,
/// `failed` or `expired`), one audit line, one count in the summary. The one outcome type of
/// the code base: deliveries produce it, the store records it, reports count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub alert_id: AlertId,
    pub channel: ChannelName,
    pub status: AlertStatus,
    /// Attempts made in this run (0 for an alert given up without sending).
    pub attempts: u32,
    /// When it happened: for `sent`, the delivery time.
    pub at: DateTime<Utc>,
    /// Why it failed (`retry`, `failed`, `expired`).
    pub error: Option<String>,
    /// `failed` only: the contact details it failed on (the alert stays parked until the
    /// account's differ). Other rows do not store them.
    pub contact: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;

    const HOUR: Duration = Duration::from_secs(3600);
    const CONTACT: &str = "a@example.com";

    fn rules() -> AlertRules {
        AlertRules {
            thresholds: Thresholds::new(Currency::usd(), Money::from_minor(5000)),
            cooldown: 24 * HOUR,
            claim_timeout: Duration::from_secs(300),
            give_up_after: 24 * HOUR,
            policy: crate::domain::PolicyDefaults::default(),
            rearm_margin: crate::domain::Money::from_minor(0),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ago(minutes: i64) -> DateTime<Utc> {
        now() - TimeDelta::minutes(minutes)
    }

    fn record(status: AlertStatus, at: DateTime<Utc>) -> AlertRecord {
        AlertRecord {
            id: AlertId::from_stored("a1"),
            account_id: AccountId::new("acc"),
            channel: ChannelName::new("console"),
            status,
            attempts: 1,
            created_at: at,
            claimed_at: at,
            sent_at: (status == AlertStatus::Sent).then_some(at),
            contact: Some(CONTACT.into()),
            resolved_at: None,
        }
    }

    fn policy(policy: Policy, tz: &str) -> AccountPolicy {
        AccountPolicy {
            policy,
            policy_from: crate::domain::policy::Source::Config,
            timezone: crate::domain::policy::parse_timezone(tz).unwrap(),
            quiet_hours: None,
        }
    }

    fn decide(records: &[AlertRecord]) -> Decision {
        decide_under(Policy::Repeat, records)
    }

    fn decide_under(p: Policy, records: &[AlertRecord]) -> Decision {
        rules()
            .cutoffs(now())
            .decide(CONTACT, &policy(p, "UTC"), records)
    }

    #[test]
    fn no_alert_yet_means_a_new_one() {
        assert_eq!(decide(&[]), Decision::New);
    }

    #[test]
    fn an_alert_sent_within_the_cooldown_blocks_and_one_before_it_does_not() {
        for minutes in [23 * 60, 24 * 60] {
            let sent = record(AlertStatus::Sent, ago(minutes));
            assert!(matches!(decide(&[sent]), Decision::InCooldown { .. }));
        }
        let old = record(AlertStatus::Sent, ago(25 * 60));
        assert_eq!(decide(&[old]), Decision::New);
    }

    #[test]
    fn a_transient_failure_is_retried_under_its_id_until_it_is_given_up() {
        let retry = record(AlertStatus::Retry, ago(60));
        assert!(
            matches!(decide(&[retry]), Decision::Retry { alert_id, .. } if alert_id.as_str() == "a1")
        );
        let too_old = record(AlertStatus::Retry, ago(24 * 60 + 1));
        assert!(matches!(decide(&[too_old]), Decision::Expire { .. }));
    }

    #[test]
    fn an_expired_alert_blocks_for_the_cooldown_from_when_it_was_given_up() {
        let expired = record(AlertStatus::Expired, ago(60));
        assert!(matches!(decide(&[expired]), Decision::InCooldown { .. }));
        let long_ago = record(AlertStatus::Expired, ago(25 * 60));
        assert_eq!(decide(&[long_ago]), Decision::New);
    }

    #[test]
    fn a_permanent_failure_is_parked_until_the_contact_details_change() {
        let failed = record(AlertStatus::Failed, ago(7 * 24 * 60));
        assert!(matches!(
            decide(std::slice::from_ref(&failed)),
            Decision::Parked { .. }
        ));
        let fixed = rules().cutoffs(now()).decide(
            "fixed@example.com",
            &policy(Policy::Repeat, "UTC"),
            [&failed],
        );
        assert!(matches!(fixed, Decision::Retry { alert_id, .. } if alert_id.as_str() == "a1"));
    }

    #[test]
    fn a_live_claim_blocks_and_an_abandoned_one_is_retried() {
        let live = record(AlertStatus::Pending, ago(4));
        assert!(matches!(decide(&[live]), Decision::InFlight { .. }));
        let abandoned = record(AlertStatus::Pending, ago(5));
        assert!(matches!(decide(&[abandoned]), Decision::Retry { .. }));
    }

    #[test]
    fn cooldown_wins_over_an_open_alert() {
        let sent = record(AlertStatus::Sent, ago(120));
        let retry = record(AlertStatus::Retry, ago(60));
        assert!(matches!(
            decide(&[retry, sent]),
            Decision::InCooldown { .. }
        ));
    }

    #[test]
    fn once_blocks_until_a_recovery_is_resolved_whatever_the_cooldown() {
        let long_ago = record(AlertStatus::Sent, ago(30 * 24 * 60));
        assert!(matches!(
            decide_under(Policy::Once, std::slice::from_ref(&long_ago)),
            Decision::NotRearmed { .. }
        ));
        let expired = record(AlertStatus::Expired, ago(30 * 24 * 60));
        assert!(matches!(
            decide_under(Policy::Once, &[expired]),
            Decision::NotRearmed { .. }
        ));
        // Recovered since: the next dip alerts at once, even within the cooldown.
        let mut recent = record(AlertStatus::Sent, ago(60));
        recent.resolved_at = Some(ago(30));
        assert_eq!(decide_under(Policy::Once, &[recent]), Decision::New);
    }

    #[test]
    fn daily_allows_one_alert_per_local_calendar_day() {
        // now() is 12:00 UTC = 13:00 in Paris (CET) and 07:00 in New York (EST).
        let at_0830_utc = record(AlertStatus::Sent, ago(210));
        let cutoffs = rules().cutoffs(now());
        let paris = policy(Policy::Daily, "Europe/Paris");
        assert!(matches!(
            cutoffs.decide(CONTACT, &paris, [&at_0830_utc]),
            Decision::AlreadyToday { .. }
        ));
        // 04:30 UTC yesterday-evening in New York (23:30 EST on the 26th): another day there.
        let at_0430_utc = record(AlertStatus::Sent, ago(450));
        let new_york = policy(Policy::Daily, "America/New_York");
        assert_eq!(
            cutoffs.decide(CONTACT, &new_york, [&at_0430_utc]),
            Decision::New
        );
        assert!(matches!(
            cutoffs.decide(CONTACT, &paris, [&at_0430_utc]),
            Decision::AlreadyToday { .. }
        ));
        // Yesterday 23:59 in Paris (22:59 UTC): a new day, although only 13 hours ago.
        let yesterday = record(AlertStatus::Sent, ago(13 * 60 + 1));
        assert_eq!(cutoffs.decide(CONTACT, &paris, [&yesterday]), Decision::New);
    }

    #[test]
    fn cutoffs_saturate_instead_of_overflowing() {
        let forever = AlertRules {
            cooldown: Duration::MAX,
            claim_timeout: Duration::from_secs(u64::MAX / 2),
            give_up_after: Duration::from_secs(300_000 * 365 * 86_400),
            ..rules()
        };
        let cutoffs = forever.cutoffs(now());
        assert_eq!(cutoffs.cooldown_since, DateTime::<Utc>::MIN_UTC);
        assert_eq!(cutoffs.give_up_before, DateTime::<Utc>::MIN_UTC);
        assert_eq!(after(now(), Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
