//! The bulk alert job (the *sweep*): every account below its threshold, in stages —
//! the store claims due deliveries batch by batch (reading, locking, re-reading and deciding
//! under its lock, running ahead of the deliveries), [`deliver`] sends and records them, and
//! the lease on every claim is renewed until its outcome is recorded.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use futures::stream;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::AlertContext;
use super::deliver::{self, DeliveryTally};
use crate::domain::ports::{
    AccountCounts, AuditEntry, ClaimBatch, StoreError, SweepClaims, SweepDigest,
};
use crate::domain::{AlertStatus, Claim, ClaimTally, Lease, Outcome};

/// Why a sweep did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stopped at shutdown; the summary covers what was done.
    #[error("sweep abandoned at shutdown: {0}")]
    Abandoned(SweepSummary),
}

/// What one sweep did (SPEC §4). `sent`/`failed`/`retry`/`expired` count deliveries
/// (account x channel); the others count accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    /// Accounts strictly below their effective threshold when the sweep started.
    pub below_threshold: u64,
    /// Accounts that got at least one delivery claimed by this sweep.
    pub eligible: u64,
    pub sent: u64,
    /// Deliveries attempted that did not get through (`retry` + permanently `failed` +
    /// `expired` after an attempt).
    pub failed: u64,
    /// Below the threshold with nothing due: every channel blocked by the policy (cooldown,
    /// `once` not re-armed, `daily` already alerted today), in flight in another sweep, or
    /// parked after a permanent failure. Skipped and deferred accounts are not counted here.
    /// It is the remainder of `below_threshold`: an account that was below when the sweep
    /// started and left before the sweep listed its page is on no page and lands here (an
    /// exact count would take a second scan of the accounts; README "What it does").
    pub in_cooldown: u64,
    /// Due but inside the account's quiet hours: not claimed; the first sweep after the
    /// window sends them if they are still due then.
    pub deferred: u64,
    pub duration_ms: u64,
    /// Transient failures, due again at the next sweep.
    pub retry: u64,
    /// Alerts given up after `delivery.give_up_after` (at an attempt or without one).
    pub expired: u64,
    /// Accounts left alone because they changed under the sweep: locked by another sweep,
    /// topped up or re-thresholded, or deleted.
    pub skipped: u64,
    /// `sweep --dry-run`: nothing was claimed, sent or written; `sent` counts the deliveries
    /// a sweep would make, `failed` those it would fail (a setting it cannot honour).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Accounts never alerted because neither they nor their currency have a threshold
    /// (`--json` only: the summary line's keys are fixed by SPEC §4).
    pub without_threshold: u64,
}

impl fmt::Display for SweepSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sweep finished: below_threshold={} eligible={} sent={} failed={} in_cooldown={} \
             deferred={} duration_ms={} retry={} expired={} skipped={}",
            self.below_threshold,
            self.eligible,
            self.sent,
            self.failed,
            self.in_cooldown,
            self.deferred,
            self.duration_ms,
            self.retry,
            self.expired,
            self.skipped,
        )?;
        if self.dry_run {
            f.write_str(" dry_run=true")?;
        }
        Ok(())
    }
}

impl SweepSummary {
    fn new(
        counts: &AccountCounts,
        claimed: &ClaimTally,
        delivered: &DeliveryTally,
        expired_unsent: u64,
    ) -> Self {
        let eligible = claimed.claimed;
        let skipped = claimed.skipped();
        let below_threshold = counts.below_threshold;
        Self {
            below_threshold,
            without_threshold: counts.without_threshold_total(),
            eligible,
            sent: delivered.sent,
            failed: delivered.unsuccessful(),
            in_cooldown: below_threshold.saturating_sub(eligible + skipped + claimed.deferred),
            deferred: claimed.deferred,
            duration_ms: 0,
            retry: delivered.retry,
            expired: delivered.expired + expired_unsent,
            skipped,
            dry_run: false,
        }
    }
}

/// What the claim stage has seen so far.
#[derive(Default)]
struct Claimed {
    tally: ClaimTally,
    expired: u64,
    /// The first few claims, for a digest.
    first: Vec<Claim>,
    unconfigured: BTreeSet<String>,
    error: Option<StoreError>,
}

/// The reference's `BulkBalanceAlertService`, set-based (see the module doc).
pub struct BulkBalanceAlert {
    ctx: AlertContext,
}

impl BulkBalanceAlert {
    pub fn new(ctx: AlertContext) -> Self {
        Self { ctx }
    }

    /// Runs one sweep to the end.
    pub async fn execute(&self) -> Result<SweepSummary, SweepError> {
        self.execute_until(&CancellationToken::new()).await
    }

    /// Runs one sweep; when `abandon` fires it stops at once, records the outcomes it
    /// already has and returns [`SweepError::Abandoned`] (unsent claims expire and are
    /// retried by a later sweep).
    pub async fn execute_until(
        &self,
        abandon: &CancellationToken,
    ) -> Result<SweepSummary, SweepError> {
        let started = Instant::now();
        let ctx = &self.ctx;
        // Recoveries first: an account re-armed now is alerted by this sweep if it dipped.
        let resolved = ctx
            .store
            .resolve_recovered(&ctx.rules, ctx.clock.now())
            .await?;
        if resolved > 0 {
            tracing::debug!(resolved, "Recovered accounts re-armed (policy once).");
        }
        let counts = ctx.store.count_accounts(&ctx.rules).await?;
        warn_without_threshold(&counts);
        let lease = Arc::new(Lease::new(ctx.rules.claim_timeout));
        let _renewer = deliver::spawn_renewer(ctx, lease.clone());
        let batches = ctx.store.claim_due(
            SweepClaims {
                lease: lease.clone(),
                channels: ctx.channel_names(),
                rules: ctx.rules.clone(),
                page_size: ctx.delivery.batch_size,
            },
            ctx.clock.clone(),
        );
        let claimed = Arc::new(Mutex::new(Claimed::default()));
        let claims = {
            let (ctx, claimed) = (ctx.clone(), claimed.clone());
            batches
                .take_until(abandon.clone().cancelled_owned())
                .map(move |batch| stream::iter(take_claims(&ctx, &claimed, batch)))
                .flatten()
        };
        let (delivered, _) = deliver::deliver(ctx, lease, claims, abandon, false).await?;
        let claimed = std::mem::take(&mut *claimed.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(e) = claimed.error {
            return Err(e.into());
        }
        warn_unconfigured(&claimed.unconfigured);
        let mut summary = SweepSummary::new(&counts, &claimed.tally, &delivered, claimed.expired);
        summary.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if abandon.is_cancelled() {
            return Err(SweepError::Abandoned(summary));
        }
        if delivered.abandoned > 0 {
            tracing::warn!(
                abandoned = delivered.abandoned,
                "Claims not attempted: their lease could not be renewed in time; they expire and are retried."
            );
        }
        post_digests(ctx, &summary, claimed.first).await;
        info!(
            below_threshold = summary.below_threshold,
            eligible = summary.eligible,
            sent = summary.sent,
            failed = summary.failed,
            in_cooldown = summary.in_cooldown,
            deferred = summary.deferred,
            retry = summary.retry,
            expired = summary.expired,
            skipped = summary.skipped,
            duration_ms = summary.duration_ms,
            "Sweep finished."
        );
        Ok(summary)
    }
}

impl BulkBalanceAlert {
    /// `sweep --dry-run`: decides exactly as [`Self::execute`] would now, on the same
    /// candidates, and hands each delivery it would make to `would_send`; claims, sends and
    /// writes nothing. (A `once` recovery seen now only re-arms accounts that are not below,
    /// so skipping its write changes no decision.)
    pub async fn preview(
        &self,
        mut would_send: impl FnMut(&Claim),
    ) -> Result<SweepSummary, StoreError> {
        let started = Instant::now();
        let ctx = &self.ctx;
        let counts = ctx.store.count_accounts(&ctx.rules).await?;
        warn_without_threshold(&counts);
        let mut batches = ctx.store.preview_due(
            ctx.channel_names(),
            ctx.rules.clone(),
            ctx.delivery.batch_size,
            ctx.clock.now(),
        );
        let (mut tally, mut delivered, mut expired) =
            (ClaimTally::default(), DeliveryTally::default(), 0);
        let mut unconfigured = BTreeSet::new();
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            tally.add(&batch.tally);
            expired += batch.expired.len() as u64;
            unconfigured.extend(batch.unconfigured);
            for claim in &batch.claims {
                if claim.rejected.is_some() {
                    delivered.failed += 1;
                } else {
                    delivered.sent += 1;
                    would_send(claim);
                }
            }
        }
        warn_unconfigured(&unconfigured);
        let mut summary = SweepSummary::new(&counts, &tally, &delivered, expired);
        summary.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        summary.dry_run = true;
        Ok(summary)
    }
}

/// Tells the operations channels (Slack in digest mode) what a sweep that attempted
/// deliveries did. A failure is logged and changes nothing else: not the summary, not the
/// exit code, not a customer's alert.
async fn post_digests(ctx: &AlertContext, summary: &SweepSummary, first: Vec<Claim>) {
    if ctx.digests.is_empty() || summary.sent + summary.failed == 0 {
        return;
    }
    let digest = SweepDigest {
        below_threshold: summary.below_threshold,
        eligible: summary.eligible,
        sent: summary.sent,
        failed: summary.failed,
        deferred: summary.deferred,
        first,
    };
    for sink in &ctx.digests {
        let posted = tokio::time::timeout(ctx.delivery.timeout, sink.post(&digest)).await;
        let error = match posted {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.message,
            Err(_) => format!(
                "timed out after {}",
                humantime::format_duration(ctx.delivery.timeout)
            ),
        };
        tracing::warn!(
            channel = sink.name(),
            error,
            "Cannot post the sweep digest; customer alerts are unaffected."
        );
    }
}

/// Once per sweep (SPEC §2): accounts whose currency has no default threshold and that have
/// none of their own are never alerted; the operator is told which currencies and how many.
fn warn_without_threshold(counts: &AccountCounts) {
    if !counts.without_threshold.is_empty() {
        let by_currency: Vec<String> = counts
            .without_threshold
            .iter()
            .map(|(code, n)| format!("{code}={n}"))
            .collect();
        tracing::warn!(
            accounts = counts.without_threshold_total(),
            by_currency = by_currency.join(","),
            "Accounts in a currency without a default threshold (alert.thresholds.<CODE>) and without their own alert_threshold_minor are never alerted."
        );
    }
}

/// Once per sweep: accounts named channels (`alert_channels`) that are not configured.
fn warn_unconfigured(names: &BTreeSet<String>) {
    if !names.is_empty() {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        tracing::warn!(
            channels = names.join(","),
            "accounts.alert_channels names channels that notify.channels does not configure; ignored for those accounts."
        );
    }
}

/// The claim stage's hand-off: counts the batch, audits the alerts it gave up, and passes its
/// claims on to delivery. A failed batch is kept for the end of the sweep (the deliveries
/// already claimed still go out) and ends the stream.
fn take_claims(
    ctx: &AlertContext,
    claimed: &Mutex<Claimed>,
    batch: Result<ClaimBatch, StoreError>,
) -> Vec<Claim> {
    let mut claimed = claimed.lock().unwrap_or_else(PoisonError::into_inner);
    match batch {
        Ok(batch) => {
            claimed.tally.add(&batch.tally);
            claimed.expired += batch.expired.len() as u64;
            claimed.unconfigured.extend(batch.unconfigured);
            let room = SweepDigest::FIRST.saturating_sub(claimed.first.len());
            claimed
                .first
                .extend(batch.claims.iter().take(room).cloned());
            audit_given_up(ctx, &batch.expired);
            batch.claims
        }
        Err(e) => {
            claimed.error.get_or_insert(e);
            Vec::new()
        }
    }
}

/// Audit lines for alerts the claim gave up without sending (already `expired` in the store).
pub(super) fn audit_given_up(ctx: &AlertContext, expired: &[Claim]) {
    if expired.is_empty() {
        return;
    }
    let now = ctx.clock.now();
    let after = humantime::format_duration(ctx.rules.give_up_after);
    let entries: Vec<AuditEntry> = expired
        .iter()
        .map(|claim| {
            let outcome = Outcome {
                alert_id: claim.alert_id.clone(),
                channel: claim.channel.clone(),
                status: AlertStatus::Expired,
                attempts: 0,
                at: now,
                error: Some(format!(
                    "gave up: still failing {after} after the alert was created (delivery.give_up_after)"
                )),
                contact: None,
            };
            let recipient = claim.account.owner_email.clone();
            deliver::audit_entry(claim.clone(), &outcome, recipient, None)
        })
        .collect();
    if let Err(e) = ctx.audit.record(&entries) {
        tracing::error!(error = %e, "Cannot write the audit log; the expired alerts are recorded in alert_logs.");
    }
}
