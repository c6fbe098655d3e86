//! Delivering claimed alerts: bounded concurrency, per-attempt timeout, retries with capped
//! jittered exponential backoff (backon), one audit line per outcome as it happens, and the
//! outcomes recorded in one batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use backon::{ExponentialBuilder, Retryable};
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{AlertContext, DeliveryPolicy};
use crate::domain::ports::{AuditEntry, AuditEvent, Channel, StoreError};
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

/// Delivers every claim, audits each outcome, records them all in `alert_logs`.
///
/// A failing delivery never stops the others. Only the store failing is an error: the
/// alerts then stay `pending` and are retried once their claims expire.
///
/// When `abandon` fires (shutdown past its grace), no new delivery starts and those in
/// flight are dropped; the outcomes already known are still recorded, so at most the
/// in-flight deliveries (`notify.concurrency`) can be sent again after their claims expire.
pub async fn deliver_claims(
    ctx: &AlertContext,
    claims: Vec<Claim>,
    abandon: &CancellationToken,
) -> Result<Vec<Delivered>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let channels: HashMap<_, _> = ctx
        .channels
        .iter()
        .map(|c| (c.name().clone(), c.clone()))
        .collect();
    let mut in_flight = stream::iter(claims)
        .map(|claim| {
            let channel = channels.get(&claim.channel).cloned();
            deliver_one(ctx, channel, claim)
        })
        .buffer_unordered(ctx.delivery.concurrency.max(1));
    let mut delivered: Vec<(ChannelName, DeliveryOutcome)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = abandon.cancelled() => break,
            next = in_flight.next() => match next {
                Some(d) => delivered.push(d),
                None => break,
            },
        }
    }
    drop(in_flight);
    let (channels, outcomes): (Vec<ChannelName>, Vec<DeliveryOutcome>) =
        delivered.into_iter().unzip();
    ctx.store.record_outcomes(&outcomes).await?;
    Ok(channels
        .into_iter()
        .zip(outcomes)
        .map(|(channel, outcome)| Delivered { channel, outcome })
        .collect())
}

async fn deliver_one(
    ctx: &AlertContext,
    channel: Option<Arc<dyn Channel>>,
    claim: Claim,
) -> (ChannelName, DeliveryOutcome) {
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
    audit(ctx, &claim, &outcome, recipient);
    (claim.channel, outcome)
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

fn audit(ctx: &AlertContext, claim: &Claim, outcome: &DeliveryOutcome, recipient: String) {
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
    let entry = AuditEntry {
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
    };
    if let Err(e) = ctx.audit.record(&entry) {
        error!(alert_id = %claim.alert_id, error = %e, "Cannot write the audit log; the outcome is still recorded in alert_logs.");
    }
}

fn kind(e: &DeliveryError) -> &'static str {
    if e.is_transient() {
        "transient"
    } else {
        "permanent"
    }
}
