//! The bulk alert job (the *sweep*): every account below its threshold, page by page.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

use super::{AlertContext, dispatch};
use crate::domain::ports::{CandidateQuery, ClaimRequest, LockWait, StoreError};
use crate::domain::{Account, ChannelName, Claim};

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
    /// Accounts strictly below their effective threshold when the sweep started.
    pub below_threshold: u64,
    /// Accounts that got at least one delivery claimed by this sweep.
    pub eligible: u64,
    pub sent: u64,
    pub failed: u64,
    /// Below threshold but nothing to deliver now: every channel in cooldown or in flight
    /// (possibly claimed by a concurrent sweep). `below_threshold - eligible`.
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

/// Reads the next page of candidates while the current one is claimed: the pages are
/// disjoint ranges of account ids, so reading ahead cannot miss a claim. Holds one page.
/// Reading stops after an error, or when the receiver or the returned handle is dropped.
fn read_ahead(
    mut pages: BoxStream<'static, Result<Vec<Account>, StoreError>>,
) -> (
    mpsc::Receiver<Result<Vec<Account>, StoreError>>,
    AbortOnDropHandle<()>,
) {
    let (tx, rx) = mpsc::channel(1);
    let reader = tokio::spawn(async move {
        while let Some(page) = pages.next().await {
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                break;
            }
        }
    });
    (rx, AbortOnDropHandle::new(reader))
}

/// A page being claimed.
type ClaimTask = AbortOnDropHandle<Result<Vec<Claim>, StoreError>>;

/// Deliveries of one page, running while the next page is read and claimed.
type InFlight = JoinHandle<Result<(usize, Vec<dispatch::Delivered>), StoreError>>;

/// The reference's `BulkBalanceAlertService`, set-based: the database picks the candidates
/// (below threshold, not blocked on some channel) in keyset pages of account ids; each page
/// is claimed in one transaction, then delivered concurrently and recorded in small batches
/// while the next pages are claimed (one at a time, or [`parallel_claims`] at once) and the
/// one after them read. Memory holds at most `parallel_claims + 2` pages.
///
/// [`parallel_claims`]: crate::domain::ports::AlertStore::parallel_claims
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
        let now = ctx.clock.now();
        let mut summary = SweepSummary {
            below_threshold: ctx
                .store
                .count_below_threshold(ctx.policy.default_threshold)
                .await?,
            ..SweepSummary::default()
        };
        let channels: Vec<_> = ctx.channels.iter().map(|c| c.name().clone()).collect();
        let pages = ctx.store.claim_candidates(CandidateQuery {
            default_threshold: ctx.policy.default_threshold,
            channels: channels.clone(),
            cooldown_cutoff: ctx.policy.cooldown_cutoff(now),
            claim_expiry: ctx.policy.claim_expiry(now),
            page_size: ctx.delivery.batch_size,
        });
        let (mut pages, _reader) = read_ahead(pages);
        let parallel = ctx.store.parallel_claims().max(1);
        // The claims running, oldest first: each is a task of its own, so its write
        // transaction commits whatever this loop is waiting for.
        let mut claiming: VecDeque<Result<ClaimTask, StoreError>> = VecDeque::new();
        let mut more_pages = true;
        let mut in_flight: Option<InFlight> = None;
        let result = loop {
            while more_pages && claiming.len() < parallel && !abandon.is_cancelled() {
                match pages.recv().await.transpose() {
                    Ok(Some(page)) => claiming.push_back(Ok(self.spawn_claim(page, &channels))),
                    Ok(None) => more_pages = false,
                    // After the pages before it are delivered.
                    Err(e) => {
                        more_pages = false;
                        claiming.push_back(Err(e));
                    }
                }
            }
            let claims = match claiming.pop_front() {
                None => break Ok(()),
                Some(Err(e)) => break Err(SweepError::Store(e)),
                Some(Ok(task)) => match task.await {
                    Ok(Ok(claims)) => claims,
                    Ok(Err(e)) => break Err(SweepError::Store(e)),
                    Err(e) => {
                        break Err(StoreError::Unexpected(anyhow::anyhow!(
                            "claim task failed: {e}"
                        ))
                        .into());
                    }
                },
            };
            summary.eligible += claims
                .iter()
                .map(|c| &c.account.id)
                .collect::<HashSet<_>>()
                .len() as u64;
            if let Some(previous) = in_flight.take()
                && let Err(e) = Self::settle(previous, &mut summary).await
            {
                break Err(e);
            }
            in_flight = Some(self.deliver(claims, abandon));
        };
        if let Some(previous) = in_flight.take() {
            Self::settle(previous, &mut summary).await?;
        }
        result?;
        if abandon.is_cancelled() {
            return Err(SweepError::Abandoned(summary));
        }
        summary.in_cooldown = summary.below_threshold.saturating_sub(summary.eligible);
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

    /// Claims a page in a task of its own (aborted, and its transaction rolled back, if the
    /// sweep ends before it is awaited).
    fn spawn_claim(&self, page: Vec<Account>, channels: &[ChannelName]) -> ClaimTask {
        let ctx = self.ctx.clone();
        let requests: Vec<ClaimRequest> = page
            .into_iter()
            .map(|account| ClaimRequest {
                account,
                channels: channels.to_vec(),
            })
            .collect();
        AbortOnDropHandle::new(tokio::spawn(async move {
            ctx.store
                .claim(&requests, &ctx.policy, ctx.clock.now(), LockWait::Skip)
                .await
        }))
    }

    fn deliver(&self, claims: Vec<Claim>, abandon: &CancellationToken) -> InFlight {
        let (ctx, abandon) = (self.ctx.clone(), abandon.clone());
        tokio::spawn(async move {
            let claimed = claims.len();
            let delivered = dispatch::deliver_claims(&ctx, claims, &abandon).await?;
            Ok((claimed, delivered))
        })
    }

    /// Waits for a page's deliveries and counts them.
    async fn settle(in_flight: InFlight, summary: &mut SweepSummary) -> Result<(), SweepError> {
        let (claimed, delivered) = match in_flight.await {
            Ok(result) => result?,
            // The task panicked: its claims stay pending, expire and are retried.
            Err(e) => {
                return Err(
                    StoreError::Unexpected(anyhow::anyhow!("delivery task failed: {e}")).into(),
                );
            }
        };
        for d in &delivered {
            match d.outcome.result {
                Ok(_) => summary.sent += 1,
                Err(_) => summary.failed += 1,
            }
        }
        if delivered.len() < claimed {
            return Err(SweepError::Abandoned(*summary));
        }
        Ok(())
    }
}
