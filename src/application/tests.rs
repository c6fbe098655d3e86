//! Use-case tests on the in-memory store: leases, fencing, fresh reads and each failure class,
//! with a fake clock. The same behaviours run against SQLite and PostgreSQL in `tests/it`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use super::check_account::{BalanceAlert, ChannelResult, CheckReport};
use super::sweep::{BulkBalanceAlert, SweepSummary};
use super::{AlertContext, DeliveryPolicy};
use crate::domain::ports::{AlertStore, AuditEntry, AuditLog, Channel, Clock};
use crate::domain::{
    Account, AccountId, AlertMessage, AlertRules, AlertStatus, ChannelName, Currency, Decision,
    DeliveryError, Lease, Money, Outcome, Thresholds,
};
use crate::infrastructure::clock::SystemClock;
use crate::infrastructure::memory::InMemoryStore;

const HOUR: Duration = Duration::from_secs(3600);

struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    fn new() -> Arc<Self> {
        let start = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap();
        Arc::new(Self(Mutex::new(start.with_timezone(&Utc))))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += TimeDelta::from_std(by).unwrap();
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// A channel that records what it was asked to send and answers as told per address.
#[derive(Default)]
struct Recording {
    sent: Mutex<Vec<AlertMessage>>,
    answers: Mutex<HashMap<String, DeliveryError>>,
    delay: Mutex<Duration>,
    on_send: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Recording {
    fn answer(&self, email: &str, error: DeliveryError) {
        self.answers.lock().unwrap().insert(email.into(), error);
    }

    fn attempts_for(&self, email: &str) -> usize {
        let sent = self.sent.lock().unwrap();
        sent.iter()
            .filter(|m| m.recipient.as_ref().is_some_and(|r| r.as_str() == email))
            .count()
    }
}

struct RecordingChannel(Arc<Recording>, ChannelName);

#[async_trait]
impl Channel for RecordingChannel {
    fn name(&self) -> &ChannelName {
        &self.1
    }

    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError> {
        self.0.sent.lock().unwrap().push(message.clone());
        if let Some(hook) = &*self.0.on_send.lock().unwrap() {
            hook();
        }
        let delay = *self.0.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self
            .0
            .answers
            .lock()
            .unwrap()
            .get(message.recipient.as_ref().map_or("", |r| r.as_str()))
        {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

#[derive(Default)]
struct Audit(Mutex<Vec<AuditEntry>>);

impl AuditLog for Audit {
    fn record(&self, entries: &[AuditEntry]) -> std::io::Result<()> {
        self.0.lock().unwrap().extend_from_slice(entries);
        Ok(())
    }
}

impl Audit {
    fn events(&self) -> Vec<String> {
        let entries = self.0.lock().unwrap();
        entries
            .iter()
            .map(|e| {
                serde_json::to_value(e.event)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

struct Harness {
    store: InMemoryStore,
    clock: Arc<FakeClock>,
    channel: Arc<Recording>,
    audit: Arc<Audit>,
    ctx: AlertContext,
}

impl Harness {
    fn new() -> Self {
        let (store, clock) = (InMemoryStore::new(), FakeClock::new());
        let (channel, audit) = (Arc::new(Recording::default()), Arc::new(Audit::default()));
        let ctx = AlertContext {
            store: Arc::new(store.clone()),
            channels: vec![Arc::new(RecordingChannel(
                channel.clone(),
                ChannelName::new("console"),
            ))],
            audit: audit.clone(),
            clock: clock.clone(),
            rules: AlertRules {
                thresholds: Thresholds::new(Currency::usd(), Money::from_minor(5_000)),
                cooldown: 24 * HOUR,
                claim_timeout: Duration::from_secs(300),
                give_up_after: 24 * HOUR,
                policy: crate::domain::PolicyDefaults::default(),
                rearm_margin: crate::domain::Money::from_minor(0),
            },
            delivery: DeliveryPolicy {
                max_attempts: 2,
                timeout: Duration::from_secs(5),
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                concurrency: 4,
                batch_size: 2,
                jitter_seed: Some(1),
                limits: Default::default(),
            },
            digests: Vec::new(),
        };
        Self {
            store,
            clock,
            channel,
            audit,
            ctx,
        }
    }

    fn account(&self, n: u8, balance: i64) -> AccountId {
        let id = AccountId::new(format!("00000000-0000-4000-8000-0000000000{n:02}"));
        self.store.put_account(Account {
            id: id.clone(),
            owner_email: format!("owner{n}@example.com"),
            balance: Money::from_minor(balance),
            ..Account::default()
        });
        id
    }

    async fn sweep(&self) -> SweepSummary {
        BulkBalanceAlert::new(self.ctx.clone())
            .execute()
            .await
            .unwrap()
    }

    fn status_of(&self, id: &AccountId) -> Vec<AlertStatus> {
        let alerts = self.store.alerts();
        alerts
            .iter()
            .filter(|a| &a.record.account_id == id)
            .map(|a| a.record.status)
            .collect()
    }
}

#[tokio::test]
async fn a_below_account_is_alerted_once_per_cooldown_and_an_above_one_never() {
    let h = Harness::new();
    h.account(1, 4_999);
    h.account(2, 5_000);
    let first = h.sweep().await;
    assert_eq!(
        (first.below_threshold, first.eligible, first.sent),
        (1, 1, 1)
    );
    let again = h.sweep().await;
    assert_eq!((again.sent, again.in_cooldown), (0, 1));
    h.clock.advance(24 * HOUR);
    assert_eq!(h.sweep().await.sent, 0, "sent exactly a cooldown ago");
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(h.sweep().await.sent, 1, "a reminder after the cooldown");
    assert_eq!(h.channel.attempts_for("owner1@example.com"), 2);
    assert_eq!(h.channel.attempts_for("owner2@example.com"), 0);
}

#[tokio::test]
async fn a_permanent_failure_is_parked_until_the_contact_details_change() {
    let h = Harness::new();
    let id = h.account(1, 100);
    h.channel.answer(
        "owner1@example.com",
        DeliveryError::permanent("550 no such user"),
    );
    let first = h.sweep().await;
    assert_eq!((first.sent, first.failed), (0, 1));
    assert_eq!(h.status_of(&id), [AlertStatus::Failed]);
    for _ in 0..3 {
        h.clock.advance(HOUR);
        let later = h.sweep().await;
        assert_eq!(
            (later.failed, later.in_cooldown),
            (0, 1),
            "parked: no attempt, no failure"
        );
    }
    assert_eq!(h.channel.attempts_for("owner1@example.com"), 1);
    assert_eq!(h.audit.events(), ["alert_failed"]);

    // The bank fixes the address: retried under the same id.
    let alert_id = h.store.alerts()[0].record.id.clone();
    h.store
        .update_account(&id, |a| a.owner_email = "fixed@example.com".into());
    assert_eq!(h.sweep().await.sent, 1);
    let alerts = h.store.alerts();
    assert_eq!((alerts.len(), &alerts[0].record.id), (1, &alert_id));
    assert_eq!(alerts[0].record.status, AlertStatus::Sent);
}

#[tokio::test]
async fn a_transient_failure_is_retried_by_each_sweep_until_it_expires() {
    let h = Harness::new();
    let id = h.account(1, 100);
    h.channel
        .answer("owner1@example.com", DeliveryError::transient("503"));
    let first = h.sweep().await;
    assert_eq!((first.failed, first.retry), (1, 1));
    assert_eq!(h.status_of(&id), [AlertStatus::Retry]);
    h.clock.advance(12 * HOUR);
    assert_eq!(h.sweep().await.retry, 1, "due again, same id");
    assert_eq!(h.store.alerts().len(), 1);
    // Past give_up_after: given up without another attempt, audited once, no failure.
    h.clock.advance(12 * HOUR + Duration::from_secs(1));
    let attempts = h.channel.attempts_for("owner1@example.com");
    let given_up = h.sweep().await;
    assert_eq!((given_up.failed, given_up.expired), (0, 1));
    assert_eq!(h.channel.attempts_for("owner1@example.com"), attempts);
    assert_eq!(h.status_of(&id), [AlertStatus::Expired]);
    for _ in 0..3 {
        h.clock.advance(6 * HOUR);
        let quiet = h.sweep().await;
        assert_eq!(
            (quiet.failed, quiet.expired, quiet.retry),
            (0, 0, 0),
            "no nagging"
        );
    }
    assert_eq!(
        h.audit.events(),
        ["alert_retry", "alert_retry", "alert_expired"]
    );
    // A cooldown after it was given up, a new alert (a new id) is due: the reminder.
    h.clock.advance(6 * HOUR + Duration::from_secs(1));
    assert_eq!(h.sweep().await.retry, 1);
    assert_eq!(h.store.alerts().len(), 2);
}

#[tokio::test]
async fn a_transient_failure_past_give_up_after_expires_at_its_attempt() {
    let h = Harness::new();
    let id = h.account(1, 100);
    h.channel
        .answer("owner1@example.com", DeliveryError::transient("503"));
    h.sweep().await;
    h.clock.advance(24 * HOUR - Duration::from_secs(1));
    // The claim is taken just inside give_up_after; the attempt fails after it.
    let clock = h.clock.clone();
    *h.channel.on_send.lock().unwrap() =
        Some(Box::new(move || clock.advance(Duration::from_secs(2))));
    let summary = h.sweep().await;
    assert_eq!((summary.failed, summary.expired, summary.retry), (1, 1, 0));
    assert_eq!(h.status_of(&id), [AlertStatus::Expired]);
}

#[tokio::test]
async fn accounts_changed_between_listing_and_claim_are_skipped_not_alerted() {
    let h = Harness::new();
    let topped = h.account(1, 100);
    let rethresholded = h.account(2, 100);
    let deleted = h.account(3, 100);
    h.account(4, 100);
    h.store.before_each_claim(move |store, _| {
        store.update_account(&topped, |a| a.balance = Money::from_minor(999_999));
        store.update_account(&rethresholded, |a| {
            a.threshold_override = Some(Money::from_minor(50))
        });
        store.delete_account(&deleted);
    });
    let summary = h.sweep().await;
    assert_eq!(
        (summary.sent, summary.skipped, summary.in_cooldown),
        (1, 3, 0)
    );
    assert_eq!(h.channel.attempts_for("owner4@example.com"), 1);
    assert_eq!(h.store.alerts().len(), 1);
}

#[tokio::test]
async fn the_balance_delivered_is_the_one_read_under_the_lock() {
    let h = Harness::new();
    let id = h.account(1, 4_000);
    let dipped = id.clone();
    h.store.before_each_claim(move |store, _| {
        store.update_account(&dipped, |a| a.balance = Money::from_minor(1_234));
    });
    h.sweep().await;
    let sent = h.channel.sent.lock().unwrap().clone();
    assert_eq!(sent[0].balance, Money::from_minor(1_234));
    assert_eq!(h.store.alerts()[0].balance_minor, 1_234);
}

#[tokio::test]
async fn only_the_current_holder_records_an_outcome() {
    let h = Harness::new();
    let id = h.account(1, 100);
    let now = h.clock.now();
    let channels = [ChannelName::new("console")];
    let crashed = Lease::new(h.ctx.rules.claim_timeout);
    let first = h
        .store
        .claim_account(&crashed, &id, &channels, &h.ctx.rules, now)
        .await
        .unwrap();
    let alert_id = first.claims[0].alert_id.clone();
    // The first holder stops renewing; after claim_timeout a new holder takes it over.
    h.clock
        .advance(h.ctx.rules.claim_timeout + Duration::from_secs(1));
    let taker = Lease::new(h.ctx.rules.claim_timeout);
    let second = h
        .store
        .claim_account(&taker, &id, &channels, &h.ctx.rules, h.clock.now())
        .await
        .unwrap();
    assert_eq!(second.claims[0].alert_id, alert_id, "the same alert id");
    let late = Outcome {
        alert_id: alert_id.clone(),
        channel: channels[0].clone(),
        status: AlertStatus::Failed,
        attempts: 1,
        at: h.clock.now(),
        error: Some("late".into()),
        contact: None,
    };
    assert_eq!(
        h.store
            .record(crashed.holder(), std::slice::from_ref(&late))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        h.store
            .renew(
                crashed.holder(),
                std::slice::from_ref(&alert_id),
                h.clock.now()
            )
            .await
            .unwrap(),
        []
    );
    assert_eq!(
        h.status_of(&id),
        [AlertStatus::Pending],
        "the new holder's claim stands"
    );
    let done = Outcome {
        status: AlertStatus::Sent,
        ..late
    };
    assert_eq!(h.store.record(taker.holder(), &[done]).await.unwrap(), 1);
}

#[tokio::test]
async fn a_check_explains_a_parked_alert() {
    let h = Harness::new();
    let id = h.account(1, 100);
    h.channel
        .answer("owner1@example.com", DeliveryError::permanent("550"));
    h.sweep().await;
    let report = BalanceAlert::new(h.ctx.clone()).execute(&id).await.unwrap();
    let CheckReport::Evaluated(channels) = report else {
        panic!("{report:?}")
    };
    assert!(matches!(
        channels[0].1,
        ChannelResult::NotDue(Decision::Parked { .. })
    ));
}

/// Real time: every claim is taken at the start, the receiver takes 100 ms a delivery and
/// claims time out after 300 ms, so without renewals a second sweep would take over claims
/// the first is still working through (and the first would then send them as well).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_keeps_its_claims_and_a_concurrent_sweep_sends_nothing_twice() {
    let mut h = Harness::new();
    h.ctx.clock = Arc::new(SystemClock);
    h.ctx.rules.claim_timeout = Duration::from_millis(300);
    h.ctx.delivery.timeout = Duration::from_millis(150);
    h.ctx.delivery.concurrency = 1;
    *h.channel.delay.lock().unwrap() = Duration::from_millis(100);
    for n in 0..12 {
        h.account(n, 100);
    }
    let first = tokio::spawn({
        let ctx = h.ctx.clone();
        async move { BulkBalanceAlert::new(ctx).execute().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = BulkBalanceAlert::new(h.ctx.clone())
        .execute()
        .await
        .unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.sent + second.sent, 12);
    for n in 0..12 {
        assert_eq!(
            h.channel.attempts_for(&format!("owner{n}@example.com")),
            1,
            "owner{n}"
        );
    }
}

#[tokio::test]
async fn once_alerts_each_dip_once_and_rearms_when_a_sweep_sees_the_recovery() {
    let mut h = Harness::new();
    h.ctx.rules.policy.policy = crate::domain::Policy::Once;
    h.ctx.rules.rearm_margin = Money::from_minor(500);
    let id = h.account(1, 4_000);
    assert_eq!(h.sweep().await.sent, 1, "the dip");
    h.clock.advance(48 * HOUR);
    assert_eq!(h.sweep().await.sent, 0, "no reminder while it stays low");
    h.store
        .update_account(&id, |a| a.balance = Money::from_minor(5_400)); // under the margin
    h.sweep().await;
    h.store
        .update_account(&id, |a| a.balance = Money::from_minor(4_000));
    assert_eq!(
        h.sweep().await.sent,
        0,
        "not re-armed below threshold + margin"
    );
    h.store
        .update_account(&id, |a| a.balance = Money::from_minor(5_500));
    h.sweep().await;
    h.store
        .update_account(&id, |a| a.balance = Money::from_minor(100));
    assert_eq!(h.sweep().await.sent, 1, "re-armed: the second dip at once");
    assert_eq!(h.channel.attempts_for("owner1@example.com"), 2);
}

#[tokio::test]
async fn quiet_hours_defer_without_claiming_and_send_after_the_window() {
    let mut h = Harness::new();
    // The fake clock reads 12:00 UTC: inside a window of 11:00-13:00 local (UTC).
    h.ctx.rules.policy.quiet_hours = crate::domain::QuietHours::parse("11:00-13:00").unwrap();
    let id = h.account(1, 100);
    let quiet = h.sweep().await;
    assert_eq!((quiet.sent, quiet.deferred, quiet.in_cooldown), (0, 1, 0));
    assert!(h.status_of(&id).is_empty(), "deferred: nothing claimed");
    h.clock.advance(HOUR);
    let after = h.sweep().await;
    assert_eq!((after.sent, after.deferred), (1, 0));
}
