//! Delivering claimed alerts: bounded concurrency, per-attempt timeout, retries with capped
//! jittered exponential backoff (backon), and the outcomes recorded in small batches as they
//! complete: each batch's audit lines queued while its rows are written to `alert_logs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::stream::{self, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{AlertContext, DeliveryPolicy};
use crate::domain::ports::{AlertStore, AuditEntry, AuditEvent, AuditLog, Channel, StoreError};
use crate::domain::{
    AlertMessage, ChannelName, Claim, DeliveryError, DeliveryOutcome, EmailAddress,
};

/// What became of one claim (the claim itself is dropped once delivered: a sweep holds
/// thousands of them).
#[derive(Debug, Clone)]
pub struct Delivered {
    pub channel: ChannelName,
    pub outcome: DeliveryOutcome,
}

/// Delivers every claim, audits each outcome and records it in `alert_logs`.
///
/// At most `notify.concurrency` deliveries are ever sent-but-not-recorded: a permit is taken
/// before a delivery starts and given back only once its outcome is in `alert_logs` (a
/// recorder task writes them in small batches while deliveries go on). A crash can
/// therefore repeat at most `notify.concurrency` deliveries, each under its alert id.
///
/// A failing delivery never stops the others. The store failing stops this batch: the
/// unrecorded alerts stay `pending` and are retried once their claims expire. When
/// `abandon` fires (shutdown past its grace), no new delivery starts, those in flight are
/// dropped, and what was delivered is still recorded.
pub async fn deliver_claims(
    ctx: &AlertContext,
    claims: Vec<Claim>,
    abandon: &CancellationToken,
) -> Result<Vec<Delivered>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let limit = ctx.delivery.concurrency.max(1);
    let channels: HashMap<_, _> = ctx
        .channels
        .iter()
        .map(|c| (c.name().clone(), c.clone()))
        .collect();
    let permits = Arc::new(Semaphore::new(limit));
    let (completed, to_record) = mpsc::channel::<Completed>(limit);
    let recorder_failed = CancellationToken::new();
    let recorder = tokio::spawn(record_as_they_come(
        ctx.store.clone(),
        ctx.audit.clone(),
        to_record,
        limit,
        recorder_failed.clone(),
    ));
    let mut in_flight = stream::iter(claims)
        .map(|claim| {
            let channel = channels.get(&claim.channel).cloned();
            let permits = permits.clone();
            async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let permit = permits.acquire_owned().await.ok();
                (deliver_one(ctx, channel, claim).await, permit)
            }
        })
        .buffer_unordered(limit);
    loop {
        tokio::select! {
            biased;
            () = abandon.cancelled() => break,
            () = recorder_failed.cancelled() => break,
            next = in_flight.next() => match next {
                Some(((channel, outcome, audit), permit)) => {
                    if completed.send(Completed { channel, outcome, audit: Some(audit), _permit: permit }).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    drop(in_flight);
    drop(completed);
    recorder
        .await
        .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("outcome recorder failed: {e}")))?
}

/// How long the recorder waits for the next batch before it gives its database connection
/// back: on SQLite that connection is the single writer, which the next page's claim waits
/// for. With the console channel the next batch arrives a fraction of a millisecond after
/// the previous one is recorded; slower channels let the connection go between batches.
const RELEASE_WHEN_IDLE: Duration = Duration::from_millis(2);

/// A delivered alert waiting to be recorded; its permit is released when it is.
struct Completed {
    channel: ChannelName,
    outcome: DeliveryOutcome,
    /// Taken when the batch's audit lines are written.
    audit: Option<AuditEntry>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Records outcomes in batches of whatever has completed (at most `limit`): the batch's rows
/// in `alert_logs` and, meanwhile, its audit lines in one queued write; the permits are
/// released once the rows are there.
async fn record_as_they_come(
    store: Arc<dyn AlertStore>,
    audit: Arc<dyn AuditLog>,
    mut to_record: mpsc::Receiver<Completed>,
    limit: usize,
    failed: CancellationToken,
) -> Result<Vec<Delivered>, StoreError> {
    let mut recorder = store.outcome_recorder();
    let mut delivered = Vec::new();
    let mut batch = Vec::with_capacity(limit);
    loop {
        let received =
            match tokio::time::timeout(RELEASE_WHEN_IDLE, to_record.recv_many(&mut batch, limit))
                .await
            {
                Ok(received) => received,
                // recv_many is cancel-safe: nothing was taken from the queue.
                Err(_idle) => {
                    recorder.release();
                    to_record.recv_many(&mut batch, limit).await
                }
            };
        if received == 0 {
            break;
        }
        let entries: Vec<AuditEntry> = batch.iter_mut().filter_map(|c| c.audit.take()).collect();
        let outcomes: Vec<DeliveryOutcome> = batch.iter().map(|c| c.outcome.clone()).collect();
        // The audit lines are serialized and queued while the database runs the batch's
        // UPDATE: join polls the recorder first, which sends the UPDATE (or waits for its
        // connection) before the audit future runs.
        let (recorded, audited) =
            tokio::join!(recorder.record(&outcomes), async { audit.record(&entries) });
        if let Err(e) = audited {
            let ids: Vec<&str> = entries.iter().map(|e| e.alert_id.as_str()).collect();
            error!(alert_ids = ?ids, error = %e, "Cannot write the audit log; the outcomes are still recorded in alert_logs.");
        }
        if let Err(e) = recorded {
            failed.cancel();
            return Err(e);
        }
        delivered.extend(batch.drain(..).map(|c| Delivered {
            channel: c.channel,
            outcome: c.outcome,
        }));
    }
    Ok(delivered)
}

async fn deliver_one(
    ctx: &AlertContext,
    channel: Option<Arc<dyn Channel>>,
    claim: Claim,
) -> (ChannelName, DeliveryOutcome, AuditEntry) {
    let (attempts, result, recipient) =
        match (channel, EmailAddress::parse(&claim.account.owner_email)) {
            (None, _) => (
                0,
                // Only possible if the store returned a claim for a channel we did not ask for.
                Err(DeliveryError::permanent(format!(
                    "channel {} is not configured",
                    claim.channel
                ))),
                claim.account.owner_email.clone(),
            ),
            (Some(_), Err(invalid)) => (
                1,
                Err(DeliveryError::permanent(format!(
                    "account {}: owner_email: {invalid}",
                    claim.account.id
                ))),
                invalid.address,
            ),
            (Some(channel), Ok(address)) => {
                let message = AlertMessage {
                    alert_id: claim.alert_id.clone(),
                    account_id: claim.account.id.clone(),
                    recipient: address,
                    owner_name: claim.account.owner_name.clone(),
                    balance: claim.account.balance,
                    threshold: claim.threshold,
                    created_at: claim.created_at,
                };
                let (attempts, result) =
                    send_with_retry(channel.as_ref(), &message, &ctx.delivery).await;
                (attempts, result, channel.recipient(&message))
            }
        };
    let finished_at = ctx.clock.now();
    let outcome = DeliveryOutcome {
        alert_id: claim.alert_id.clone(),
        attempts,
        result: result.map(|()| finished_at),
    };
    let audit = audit_entry(ctx, &claim, &outcome, recipient);
    (claim.channel, outcome, audit)
}

/// Sends with the per-attempt timeout, retrying transient failures. Returns the attempts made.
pub async fn send_with_retry(
    channel: &dyn Channel,
    message: &AlertMessage,
    policy: &DeliveryPolicy,
) -> (u32, Result<(), DeliveryError>) {
    let attempts = AtomicU32::new(0);
    let attempt = || async {
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
        .when(DeliveryError::is_transient)
        // Honour the receiver's Retry-After, within our own cap.
        .adjust(move |e, delay| delay.map(|d| e.retry_after.map_or(d, |ra| ra.min(max_backoff))))
        .notify(|e, delay| {
            debug!(alert_id = %message.alert_id, channel = %channel.name(), error = %e.message, ?delay, "Delivery attempt failed; retrying.");
        })
        .await;
    (attempts.load(Ordering::Relaxed), result)
}

/// The audit line of an outcome (and a log line for a failure, as it happens).
fn audit_entry(
    ctx: &AlertContext,
    claim: &Claim,
    outcome: &DeliveryOutcome,
    recipient: String,
) -> AuditEntry {
    let (event, error) = match &outcome.result {
        Ok(_) => (AuditEvent::AlertSent, None),
        Err(e) => {
            warn!(alert_id = %claim.alert_id, account_id = %claim.account.id, channel = %claim.channel,
                  attempts = outcome.attempts, error = %e.message, "Alert delivery failed.");
            (
                AuditEvent::AlertFailed,
                Some(format!("{}: {}", kind(e), e.message)),
            )
        }
    };
    AuditEntry {
        timestamp: ctx.clock.now(),
        event,
        alert_id: claim.alert_id.clone(),
        account_id: claim.account.id.clone(),
        channel: claim.channel.clone(),
        recipient,
        threshold: ctx.currency.decimal(claim.threshold),
        balance: ctx.currency.decimal(claim.account.balance),
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
