//! Runs sweeps for the daemon: never two at once, each with the settings it started with,
//! tracked so shutdown can wait for them and abandon them after the grace period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::systemd::Systemd;
use crate::application::AlertContext;
use crate::application::sweep::{BulkBalanceAlert, SweepError, SweepSummary};
use crate::infrastructure::metrics::{Metrics, SweepResult};

pub struct SweepRunner {
    /// The settings the next sweep starts with; SIGHUP swaps them.
    context: RwLock<Arc<AlertContext>>,
    /// Held by the running sweep: a tick that finds it taken is skipped (tokio-cron-scheduler
    /// itself spawns every tick, overlapping or not).
    running: Arc<tokio::sync::Mutex<()>>,
    tracker: TaskTracker,
    abandon: CancellationToken,
    last: Mutex<Option<SweepSummary>>,
    started: AtomicU64,
    skipped: AtomicU64,
    systemd: Systemd,
    metrics: Arc<Metrics>,
}

/// How many sweeps started and how many ticks were skipped because one was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerStats {
    pub started: u64,
    pub skipped: u64,
}

impl SweepRunner {
    pub fn new(context: AlertContext, systemd: Systemd, metrics: Arc<Metrics>) -> Self {
        Self {
            context: RwLock::new(Arc::new(context)),
            running: Arc::new(tokio::sync::Mutex::new(())),
            tracker: TaskTracker::new(),
            abandon: CancellationToken::new(),
            last: Mutex::new(None),
            started: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            systemd,
            metrics,
        }
    }

    /// Starts a sweep unless one is running or shutdown has begun. Returns whether it started.
    pub fn trigger(self: &Arc<Self>, reason: &'static str) -> bool {
        if self.tracker.is_closed() {
            debug!(reason, "Shutting down; no new sweep.");
            return false;
        }
        let Ok(running) = self.running.clone().try_lock_owned() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            info!(reason, "A sweep is still running; skipping this tick.");
            return false;
        };
        self.started.fetch_add(1, Ordering::Relaxed);
        let context = self
            .context
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let this = self.clone();
        self.tracker.spawn(async move {
            let _running = running;
            debug!(reason, "Sweep started.");
            let result = BulkBalanceAlert::new((*context).clone())
                .execute_until(&this.abandon)
                .await;
            this.finished(result);
        });
        true
    }

    fn finished(&self, result: Result<SweepSummary, SweepError>) {
        match result {
            Ok(summary) => {
                self.metrics
                    .sweep_finished(SweepResult::Success, Some(&summary));
                self.systemd.status(&format!("last {summary}"));
                *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(summary);
            }
            Err(SweepError::Abandoned(partial)) => {
                self.metrics
                    .sweep_finished(SweepResult::Abandoned, Some(&partial));
                warn!(%partial, "Sweep abandoned at shutdown; its unsent claims expire and are retried by a later run.");
            }
            Err(SweepError::Store(e)) => {
                self.metrics.sweep_finished(SweepResult::Failure, None);
                error!(
                    error = format!("{e:#}"),
                    "Sweep failed; the next tick tries again."
                );
                self.systemd.status(&format!("last sweep failed: {e}"));
            }
        }
    }

    /// Settings for sweeps that start from now on; a running sweep keeps its own.
    pub fn replace_context(&self, context: AlertContext) {
        *self.context.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(context);
    }

    pub fn stats(&self) -> RunnerStats {
        RunnerStats {
            started: self.started.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }

    pub fn last_summary(&self) -> Option<SweepSummary> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No sweep starts after this.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Waits for the running sweep (if any) after [`Self::close`].
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Makes the running sweep stop delivering and record what it has.
    pub fn abandon(&self) {
        self.abandon.cancel();
    }
}
