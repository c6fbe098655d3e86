//! The bulk alert job (the *sweep*): every account below its threshold, page by page.

use std::collections::HashSet;
use std::fmt;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{AlertContext, dispatch, plan_requests};
use crate::domain::ports::{LockWait, StoreError};

/// Why a sweep did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stopped at shutdown; the summary covers what was done.
    #[error("sweep abandoned at shutdown: {0}")]
    Abandoned(SweepSummary),
}

/// What one sweep did. `sent`/`failed` count deliveries (account x channel); the others
/// count accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    /// Accounts strictly below their effective threshold.
    pub below_threshold: u64,
    /// Of those, accounts that got at least one delivery claimed by this sweep.
    pub eligible: u64,
    pub sent: u64,
    pub failed: u64,
    /// Below threshold but nothing to deliver now: every channel in cooldown or in flight
    /// (possibly claimed by a concurrent sweep). `below_threshold = eligible + in_cooldown`.
    pub in_cooldown: u64,
    pub duration_ms: u64,
}

impl fmt::Display for SweepSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sweep finished: below_threshold={} eligible={} sent={} failed={} in_cooldown={} duration_ms={}",
            self.below_threshold,
            self.eligible,
            self.sent,
            self.failed,
            self.in_cooldown,
            self.duration_ms
        )
    }
}

/// The reference's `BulkBalanceAlertService`, set-based: accounts are read in keyset pages,
/// each page is claimed in one transaction, delivered concurrently and recorded in one
/// batch, so memory stays flat and the database sees a few statements per page.
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
        let mut summary = SweepSummary::default();
        let mut pages = ctx
            .store
            .accounts_below_threshold(ctx.policy.default_threshold, ctx.delivery.batch_size);
        while let Some(page) = pages.try_next().await? {
            if abandon.is_cancelled() {
                return Err(SweepError::Abandoned(summary));
            }
            let now = ctx.clock.now();
            let ids: Vec<_> = page.iter().map(|a| a.id.clone()).collect();
            let records = ctx
                .store
                .open_and_recent_alerts(&ids, ctx.policy.cooldown_cutoff(now))
                .await?;
            let (requests, _) = plan_requests(ctx, &page, &records, now);
            let claims = ctx
                .store
                .claim(&requests, &ctx.policy, now, LockWait::Skip)
                .await?;
            let eligible = claims
                .iter()
                .map(|c| &c.account.id)
                .collect::<HashSet<_>>()
                .len() as u64;
            let page_len = page.len() as u64;
            summary.below_threshold += page_len;
            summary.eligible += eligible;
            summary.in_cooldown += page_len - eligible;
            let claimed = claims.len();
            let delivered = dispatch::deliver_claims(ctx, claims, abandon).await?;
            let complete = delivered.len() == claimed;
            for delivered in delivered {
                match delivered.outcome.result {
                    Ok(_) => summary.sent += 1,
                    Err(_) => summary.failed += 1,
                }
            }
            if !complete {
                return Err(SweepError::Abandoned(summary));
            }
        }
        summary.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(
            below_threshold = summary.below_threshold,
            eligible = summary.eligible,
            sent = summary.sent,
            failed = summary.failed,
            in_cooldown = summary.in_cooldown,
            duration_ms = summary.duration_ms,
            "Sweep finished."
        );
        Ok(summary)
    }
}
