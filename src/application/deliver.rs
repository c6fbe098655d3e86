//! Delivering claimed alerts: bounded concurrency, per-attempt timeout, retries with capped
//! jittered exponential backoff (backon), leases renewed while the claims are held, and the
//! outcomes recorded in small batches as they complete, each batch audited as it is recorded.
//!
//! What must stay true:
//! - At most `notify.concurrency` deliveries are ever sent-but-not-recorded: a permit is taken
//!   before a delivery starts and given back only once its outcome is in `alert_logs`. A crash
//!   repeats at most that many, each under its alert id.
//! - An attempt starts only while its claim stays held past the attempt's time limit
//!   ([`Lease::may_start`]), so no other sweep can take it over while it is being sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use backon::{ExponentialBuilder, Retryable};
use futures::stream::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, warn};

use super::{AlertContext, DeliveryPolicy};
use crate::domain::ports::{AuditEntry, AuditEvent, Channel, StoreError};
use crate::domain::{
    AlertMessage, AlertStatus, Claim, DeliveryError, EmailAddress, Lease, Outcome, PhoneNumber,
};

/// What the deliveries of a run came to, in deliveries (account x channel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryTally {
    pub sent: u64,
    /// Transient failures, due again at the next sweep.
    pub retry: u64,
    /// Permanent failures, parked until the contact details change.
    pub failed: u64,
    /// Transient failures past `give_up_after`.
    pub expired: u64,
    /// Claims not attempted: the run was abandoned or the claim's lease ran short.
    pub abandoned: u64,
    /// Outcomes not recorded because another holder had taken the claim over.
    pub fenced: u64,
}

impl DeliveryTally {
    fn count(&mut self, outcome: &Outcome) {
        match outcome.status {
            AlertStatus::Sent => self.sent += 1,
            AlertStatus::Retry => self.retry += 1,
            AlertStatus::Failed => self.failed += 1,
            AlertStatus::Expired => self.expired += 1,
            AlertStatus::Pending => {}
        }
    }

    /// Attempted deliveries that did not get through.
    pub fn unsuccessful(&self) -> u64 {
        self.retry + self.failed + self.expired
    }
}

/// Renews the lease's claims until the returned handle is dropped.
pub fn spawn_renewer(ctx: &AlertContext, lease: Arc<Lease>) -> AbortOnDropHandle<()> {
    let (store, clock) = (ctx.store.clone(), ctx.clock.clone());
    let every = Lease::renew_every(ctx.rules.claim_timeout, ctx.delivery.timeout);
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate: the claims were just taken
        loop {
            ticks.tick().await;
            let ids = lease.held();
            if ids.is_empty() {
                continue;
            }
            let now = clock.now();
            match store.renew(lease.holder(), &ids, now).await {
                Ok(still) => {
                    if still.len() < ids.len() {
                        debug!(
                            asked = ids.len(),
                            renewed = still.len(),
                            "Some claims were recorded or taken over meanwhile."
                        );
                    }
                    lease.renewed(&ids, &still, now);
                }
                // The claims keep their last renewal; deliveries stop starting as it ages.
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "Cannot renew the claims' lease; retrying."
                ),
            }
        }
    }))
}

/// Delivers every claim of the stream under `lease`, audits each outcome and records it.
/// Returns the tally, and the outcomes themselves when `keep_outcomes` (a check reports
/// them; a sweep of 100,000 alerts only counts them).
///
/// A failing delivery never stops the others. The store failing stops the run: unrecorded
/// alerts stay `pending` and are retried once their leases expire. When `abandon` fires, no
/// new delivery starts, those in flight are dropped, and what was delivered is recorded.
pub async fn deliver(
    ctx: &AlertContext,
    lease: Arc<Lease>,
    claims: impl Stream<Item = Claim> + Send,
    abandon: &CancellationToken,
    keep_outcomes: bool,
) -> Result<(DeliveryTally, Vec<Outcome>), StoreError> {
    let limit = ctx.delivery.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(limit));
    let (completed, to_record) = mpsc::channel::<Completed>(limit);
    let recorder_failed = CancellationToken::new();
    let recorder = tokio::spawn(record_as_they_come(
        ctx.clone(),
        lease.clone(),
        permits.clone(),
        to_record,
        recorder_failed.clone(),
        keep_outcomes,
    ));
    let mut abandoned = 0;
    let in_flight = claims
        .map(|claim| {
            let (permits, lease) = (permits.clone(), lease.clone());
            async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let permit = permits.acquire_owned().await.ok();
                (deliver_one(ctx, &lease, claim).await, permit)
            }
        })
        .buffer_unordered(limit);
    // Boxed so that `drop` below really cancels deliveries not yet finished when abandoned.
    let mut in_flight = Box::pin(in_flight);
    loop {
        tokio::select! {
            biased;
            () = abandon.cancelled() => break,
            () = recorder_failed.cancelled() => break,
            next = in_flight.next() => match next {
                Some((Some((outcome, audit)), permit)) => {
                    if completed.send(Completed { outcome, audit, permit }).await.is_err() {
                        break;
                    }
                }
                Some((None, _)) => abandoned += 1,
                None => break,
            },
        }
    }
    drop(in_flight);
    drop(completed);
    let (mut tally, outcomes) = recorder
        .await
        .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("outcome recorder failed: {e}")))??;
    tally.abandoned += abandoned;
    Ok((tally, outcomes))
}

/// A delivered alert waiting to be recorded; its permit is released when it is.
struct Completed {
    outcome: Outcome,
    audit: AuditEntry,
    permit: Option<OwnedSemaphorePermit>,
}

/// Records outcomes in batches of whatever has completed (at most `notify.concurrency`):
/// the rows in `alert_logs` and, meanwhile, the audit lines in one queued write; then the
/// claims leave the lease and the permits are released.
async fn record_as_they_come(
    ctx: AlertContext,
    lease: Arc<Lease>,
    permits: Arc<Semaphore>,
    mut to_record: mpsc::Receiver<Completed>,
    failed: CancellationToken,
    keep_outcomes: bool,
) -> Result<(DeliveryTally, Vec<Outcome>), StoreError> {
    let limit = ctx.delivery.concurrency.max(1);
    let (mut tally, mut kept) = (DeliveryTally::default(), Vec::new());
    let mut batch = Vec::with_capacity(limit);
    while to_record.recv_many(&mut batch, limit).await > 0 {
        fill(&mut batch, &mut to_record, &permits, limit).await;
        // Moved out, not cloned (a clone per delivery was measurable); the permits stay
        // held until the batch is recorded and its claims left the lease.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        let mut held = Vec::with_capacity(batch.len());
        for completed in batch.drain(..) {
            outcomes.push(completed.outcome);
            entries.push(completed.audit);
            held.push(completed.permit);
        }
        // The audit lines are queued while the database runs the batch's UPDATE: join polls
        // the store first, which sends the UPDATE before the audit future runs.
        let (recorded, audited) =
            tokio::join!(ctx.store.record(lease.holder(), &outcomes), async {
                ctx.audit.record(&entries)
            });
        if let Err(e) = audited {
            let ids: Vec<&str> = entries.iter().map(|e| e.alert_id.as_str()).collect();
            error!(alert_ids = ?ids, error = %e, "Cannot write the audit log; the outcomes are still recorded in alert_logs.");
        }
        let recorded = match recorded {
            Ok(n) => n,
            Err(e) => {
                failed.cancel();
                return Err(e);
            }
        };
        let fenced = (outcomes.len() as u64).saturating_sub(recorded);
        if fenced > 0 {
            warn!(
                fenced,
                "Outcomes not recorded: another sweep took their claims over after this one's lease ran out."
            );
            tally.fenced += fenced;
        }
        lease.release(outcomes.iter().map(|o| &o.alert_id));
        for outcome in &outcomes {
            tally.count(outcome);
        }
        if keep_outcomes {
            kept.extend(outcomes);
        }
        drop(held);
    }
    Ok((tally, kept))
}

/// Scheduler passes a batch waits for deliveries still running before it is recorded.
const FILL_PASSES: usize = 4;

/// Lets deliveries that are still running complete into `batch` for a few scheduler passes:
/// the permits of the batch recorded last were released only when it was, so without this
/// every other batch would hold only the deliveries that finished meanwhile.
async fn fill(
    batch: &mut Vec<Completed>,
    to_record: &mut mpsc::Receiver<Completed>,
    permits: &Semaphore,
    limit: usize,
) {
    for _ in 0..FILL_PASSES {
        let held = limit.saturating_sub(permits.available_permits());
        if batch.len() >= limit || held <= batch.len() {
            return;
        }
        tokio::task::yield_now().await;
        while batch.len() < limit {
            match to_record.try_recv() {
                Ok(completed) => batch.push(completed),
                Err(_) => break,
            }
        }
    }
}

/// Delivers one claim; `None` when its lease no longer allows an attempt (left `pending`:
/// it expires and is retried).
async fn deliver_one(
    ctx: &AlertContext,
    lease: &Lease,
    claim: Claim,
) -> Option<(Outcome, AuditEntry)> {
    let channel = ctx.channels.iter().find(|c| c.name() == &claim.channel);
    // No delivery starts while its audit line could not be written (SPEC §7): the claim is
    // left to expire and is retried once the log is writable again.
    let may_attempt = || {
        ctx.audit.failure().is_none()
            && lease.may_start(&claim.alert_id, ctx.clock.now(), ctx.delivery.timeout)
    };
    if !may_attempt() {
        return None;
    }
    let (attempts, result, recipient) = match (channel, contact_for(&claim)) {
        // A setting of the account's row cannot be honoured: fail it, send nothing.
        (Some(_), _) if claim.rejected.is_some() => (
            0,
            Err(DeliveryError::permanent(format!(
                "account {}: {}",
                claim.account.id,
                claim.rejected.as_deref().unwrap_or_default()
            ))),
            claim.account.owner_email.clone(),
        ),
        // Only possible if the store returned a claim for a channel we did not ask for.
        (None, _) => (
            0,
            Err(DeliveryError::permanent(format!(
                "channel {} is not configured",
                claim.channel
            ))),
            claim.account.owner_email.clone(),
        ),
        (Some(_), Err((invalid, shown))) => (1, Err(invalid), shown),
        (Some(channel), Ok((recipient, phone))) => {
            let message = AlertMessage {
                alert_id: claim.alert_id.clone(),
                account_id: claim.account.id.clone(),
                recipient,
                phone,
                owner_name: claim.account.owner_name.clone(),
                balance: claim.account.balance,
                threshold: claim.threshold,
                currency: claim.currency.clone(),
                created_at: claim.created_at,
            };
            let (attempts, result) =
                send_with_retry(channel.as_ref(), &message, &ctx.delivery, may_attempt).await;
            (attempts, result, channel.recipient(&message))
        }
    };
    let at = ctx.clock.now();
    let (status, error) = match result {
        Ok(()) => (AlertStatus::Sent, None),
        Err(e) if e.is_transient() => (
            ctx.rules
                .cutoffs(at)
                .after_transient_failure(claim.created_at),
            Some(e),
        ),
        Err(e) => (AlertStatus::Failed, Some(e)),
    };
    let outcome = Outcome {
        alert_id: claim.alert_id.clone(),
        channel: claim.channel.clone(),
        status,
        attempts,
        at,
        error: error.as_ref().map(|e| e.message.clone()),
        contact: (status == AlertStatus::Failed).then(|| claim.contact.clone()),
    };
    if let Some(e) = &error {
        warn!(alert_id = %claim.alert_id, account_id = %claim.account.id, channel = %claim.channel,
              attempts, outcome = status.as_str(), error = %e.message, "Alert delivery failed.");
    }
    let audit = audit_entry(claim, &outcome, recipient, error.as_ref());
    Some((outcome, audit))
}

/// The contact the claim's channel addresses, validated: the e-mail for every channel but
/// `sms`, which addresses the phone (and carries the e-mail only when it is valid). An
/// invalid one is a permanent failure naming the column, with the value as the recipient.
#[allow(clippy::type_complexity)]
fn contact_for(
    claim: &Claim,
) -> Result<(Option<EmailAddress>, Option<PhoneNumber>), (DeliveryError, String)> {
    let account = &claim.account;
    let email = EmailAddress::parse(&account.owner_email);
    if !claim.channel.addresses_phone() {
        return match email {
            Ok(address) => Ok((Some(address), None)),
            Err(invalid) => Err((
                DeliveryError::permanent(format!("account {}: owner_email: {invalid}", account.id)),
                invalid.address,
            )),
        };
    }
    let raw = account.owner_phone.as_deref().unwrap_or_default();
    match PhoneNumber::parse(raw.trim()) {
        Ok(phone) => Ok((email.ok(), Some(phone))),
        Err(reason) => Err((
            DeliveryError::permanent(format!("account {}: owner_phone: {reason}", account.id)),
            raw.chars().take(40).collect(),
        )),
    }
}

/// Sends with the per-attempt timeout, retrying transient failures while `may_attempt`
/// allows another attempt. Returns the attempts made.
pub async fn send_with_retry(
    channel: &dyn Channel,
    message: &AlertMessage,
    policy: &DeliveryPolicy,
    may_attempt: impl Fn() -> bool,
) -> (u32, Result<(), DeliveryError>) {
    let attempts = AtomicU32::new(0);
    let slots = policy.limits.of(channel.name());
    let attempt = || async {
        // A capped channel's slot, held for this attempt only (not across backoff sleeps).
        // The semaphore is never closed; were it, the attempt would go ahead uncapped.
        let _slot = match slots {
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        attempts.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(policy.timeout, channel.send(message)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::transient(format!(
                "timed out after {}",
                humantime::format_duration(policy.timeout)
            ))),
        }
    };
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_max_times(policy.max_attempts.saturating_sub(1) as usize)
        .with_jitter();
    if let Some(seed) = policy.jitter_seed {
        backoff = backoff.with_jitter_seed(seed);
    }
    let max_backoff = policy.max_backoff;
    let result = attempt
        .retry(backoff)
        .when(|e| e.is_transient() && may_attempt())
        // Honour the receiver's Retry-After, within our own cap.
        .adjust(move |e, delay| delay.map(|d| e.retry_after.map_or(d, |ra| ra.min(max_backoff))))
        .notify(|e, delay| {
            debug!(alert_id = %message.alert_id, channel = %channel.name(), error = %e.message, ?delay, "Delivery attempt failed; retrying.");
        })
        .await;
    (attempts.load(Ordering::Relaxed), result)
}

/// The audit line of an outcome.
pub fn audit_entry(
    claim: Claim,
    outcome: &Outcome,
    recipient: String,
    error: Option<&DeliveryError>,
) -> AuditEntry {
    let event = match outcome.status {
        AlertStatus::Sent | AlertStatus::Pending => AuditEvent::AlertSent,
        AlertStatus::Retry => AuditEvent::AlertRetry,
        AlertStatus::Failed => AuditEvent::AlertFailed,
        AlertStatus::Expired => AuditEvent::AlertExpired,
    };
    let error = match (error, &outcome.error) {
        (Some(e), _) => Some(format!("{}: {}", kind(e), e.message)),
        (None, other) => other.clone(),
    };
    AuditEntry {
        timestamp: outcome.at,
        event,
        threshold: claim.currency.decimal(claim.threshold),
        balance: claim.currency.decimal(claim.account.balance),
        alert_id: claim.alert_id,
        account_id: claim.account.id,
        channel: claim.channel,
        recipient,
        currency: claim.currency.code().to_owned(),
        attempts: claim.prior_attempts.saturating_add(outcome.attempts),
        error,
    }
}

fn kind(e: &DeliveryError) -> &'static str {
    if e.is_transient() {
        "transient"
    } else {
        "permanent"
    }
}
