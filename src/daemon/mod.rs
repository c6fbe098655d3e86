//! The long-running daemon (`run`): a tokio-cron-scheduler job fires sweeps on
//! `schedule.cron` (UTC) without overlap; SIGHUP reloads settings; SIGTERM/SIGINT drain the
//! running sweep within `shutdown.grace`; systemd is told about each step (`Type=notify`).
//!
//! Shutdown is a stream passed in (mini-redis style) so tests drive the daemon directly.

mod http;
mod runner;
pub mod signals;
mod systemd;

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::{error, info, warn};
use uuid::Uuid;

pub use runner::{RunnerStats, SweepRunner};
pub use systemd::Systemd;

use crate::app::{AppError, build_context_with_clock, open_store};
use crate::config::{self, LoadedConfig, Sources};
use crate::domain::ports::{AuditLog, Clock};
use crate::infrastructure::db::SeaOrmStore;
use crate::infrastructure::metrics::{MeteredAuditLog, Metrics};
use crate::infrastructure::notify::ConsoleOut;
use tokio_util::sync::CancellationToken;

/// What the outside world asks of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM / SIGINT: drain and stop; a second one stops at once.
    Shutdown,
    /// SIGHUP: re-read configuration files and environment.
    Reload,
}

/// After abandoning a sweep, how long it may take to record the outcomes it has.
const ABANDON_RECORD_LIMIT: Duration = Duration::from_secs(1);

/// The adapters that outlive a reload.
struct Adapters {
    store: SeaOrmStore,
    audit: Arc<dyn AuditLog>,
    console: ConsoleOut,
    clock: Arc<dyn Clock>,
}

pub struct Daemon {
    sources: Sources,
    config: LoadedConfig,
    adapters: Adapters,
    runner: Arc<SweepRunner>,
    scheduler: JobScheduler,
    job: Uuid,
    systemd: Systemd,
    metrics: Arc<Metrics>,
    /// Stops the metrics endpoint once the daemon has drained.
    stop_serving: CancellationToken,
}

impl Daemon {
    /// Connects, migrates (when `database.auto_migrate`), builds the channels and the
    /// schedule. Nothing runs until [`Self::run_until_stopped`].
    pub async fn build(
        config: LoadedConfig,
        sources: Sources,
        audit: Arc<dyn AuditLog>,
        console: ConsoleOut,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AppError> {
        let systemd = Systemd::connect();
        let store = systemd.extend_during(open_store(&config)).await?;
        let metrics = Arc::new(
            Metrics::new(&config.settings.notify.channels)
                .map_err(|e| AppError::Runtime(anyhow::anyhow!("cannot set up metrics: {e}")))?,
        );
        let adapters = Adapters {
            store,
            audit: Arc::new(MeteredAuditLog::new(audit, metrics.clone())),
            console,
            clock,
        };
        let context = adapters.context(&config)?;
        let runner = Arc::new(SweepRunner::new(context, systemd.clone(), metrics.clone()));
        let scheduler = JobScheduler::new().await.map_err(scheduler_error)?;
        let job = scheduler
            .add(sweep_job(&config.settings.schedule.cron, &runner)?)
            .await
            .map_err(scheduler_error)?;
        Ok(Self {
            sources,
            config,
            adapters,
            runner,
            scheduler,
            job,
            systemd,
            metrics,
            stop_serving: CancellationToken::new(),
        })
    }

    /// The store (a handle on the same pool).
    pub fn store(&self) -> SeaOrmStore {
        self.adapters.store.clone()
    }

    /// The sweep runner, for tests that watch sweeps.
    pub fn runner(&self) -> Arc<SweepRunner> {
        self.runner.clone()
    }

    /// Runs until `control` yields [`Control::Shutdown`] (or ends), then drains.
    pub async fn run_until_stopped(
        mut self,
        mut control: impl Stream<Item = Control> + Unpin,
    ) -> Result<(), AppError> {
        self.serve_metrics().await;
        self.scheduler.start().await.map_err(scheduler_error)?;
        if self.config.settings.schedule.run_on_start {
            self.runner.trigger("start-up");
        }
        let schedule = &self.config.settings.schedule.cron;
        info!(%schedule, database = %self.config.settings.database.display_url(), "Daemon ready.");
        self.systemd
            .ready(&format!("waiting for schedule {schedule}"));
        let watchdog = self.systemd.watchdog_interval();
        let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                event = control.next() => match event {
                    Some(Control::Reload) => self.reload().await,
                    Some(Control::Shutdown) | None => break,
                },
                _ = ping.tick(), if watchdog.is_some() => self.systemd.watchdog(),
            }
        }
        self.drain(control).await;
        Ok(())
    }

    /// Starts `/metrics`, `/healthz`, `/readyz` when `metrics.listen` is set. An address that
    /// cannot be bound is an ERROR, not a failed start: alerts matter more than monitoring,
    /// and Prometheus sees the target down.
    async fn serve_metrics(&self) {
        let Some(addr) = self.config.settings.metrics.address() else {
            return;
        };
        match http::bind(addr).await {
            Ok(listener) => http::spawn(
                listener,
                self.metrics.clone(),
                self.adapters.store.clone(),
                self.adapters.audit.clone(),
                self.stop_serving.clone(),
            ),
            Err(e) => error!(
                %addr,
                error = %e,
                "Cannot serve metrics (metrics.listen); running without /metrics, /healthz and /readyz."
            ),
        }
    }

    async fn drain(mut self, mut control: impl Stream<Item = Control> + Unpin) {
        let grace = self.config.settings.shutdown.grace;
        // The grace, the time to record an abandoned sweep's outcomes, and a margin to flush.
        self.systemd
            .stopping(grace + ABANDON_RECORD_LIMIT + Duration::from_secs(5));
        info!(grace = %humantime::format_duration(grace), "Shutting down: no new sweeps; the running one may finish within the grace period.");
        self.runner.close();
        if let Err(e) = self.scheduler.shutdown().await {
            warn!(error = %e, "Scheduler did not shut down cleanly.");
        }
        let finished = tokio::select! {
            () = self.runner.wait() => true,
            () = tokio::time::sleep(grace) => {
                warn!("Grace period over; abandoning the running sweep.");
                false
            }
            _ = wait_for_shutdown(&mut control) => {
                warn!("Second stop signal; abandoning the running sweep now.");
                false
            }
        };
        if !finished {
            self.runner.abandon();
            if tokio::time::timeout(ABANDON_RECORD_LIMIT, self.runner.wait())
                .await
                .is_err()
            {
                warn!(
                    "The abandoned sweep did not stop in time; its claims expire and are retried."
                );
            }
        }
        self.stop_serving.cancel();
        info!("Stopped.");
        self.systemd.flush(Duration::from_millis(500));
    }

    /// Applies a new configuration, or keeps the running one if the new one is invalid.
    async fn reload(&mut self) {
        self.systemd.reloading();
        // Whatever the new configuration holds: logrotate's postrotate relies on it.
        self.adapters.audit.reopen();
        info!("Reloading configuration and reopening the audit log.");
        let result = self.try_reload().await;
        self.metrics.reloaded(result.is_ok());
        match result {
            Ok(()) => info!(
                threshold = %self.config.settings.alert.threshold,
                cooldown = %humantime::format_duration(self.config.settings.alert.cooldown),
                schedule = %self.config.settings.schedule.cron,
                "Configuration reloaded."
            ),
            Err(e) => {
                error!(error = %describe(&e), "Reload rejected; the running configuration stays in force.")
            }
        }
        self.systemd.ready(&format!(
            "waiting for schedule {}",
            self.config.settings.schedule.cron
        ));
    }

    async fn try_reload(&mut self) -> Result<(), AppError> {
        let new = config::load(&self.sources)?;
        for warning in &new.warnings {
            warn!("{warning}");
        }
        warn_about_restart_only_changes(&self.config, &new);
        let context = self.adapters.context(&new)?;
        if new.settings.schedule.cron != self.config.settings.schedule.cron {
            let job = sweep_job(&new.settings.schedule.cron, &self.runner)?;
            let id = self.scheduler.add(job).await.map_err(scheduler_error)?;
            if let Err(e) = self.scheduler.remove(&self.job).await {
                // Keep a single schedule: undo the addition.
                let _ = self.scheduler.remove(&id).await;
                return Err(scheduler_error(e));
            }
            self.job = id;
        }
        self.runner.replace_context(context);
        self.metrics.add_channels(&new.settings.notify.channels);
        self.config = new;
        Ok(())
    }
}

impl Adapters {
    fn context(&self, config: &LoadedConfig) -> Result<crate::application::AlertContext, AppError> {
        build_context_with_clock(
            config,
            self.store.clone(),
            self.audit.clone(),
            self.console.clone(),
            self.clock.clone(),
        )
    }
}

/// The scheduled job: every tick asks the runner for a sweep (skipped if one is running).
fn sweep_job(cron: &str, runner: &Arc<SweepRunner>) -> Result<Job, AppError> {
    config::validate_cron(cron)?;
    let runner = runner.clone();
    Job::new_async_tz(cron, chrono::Utc, move |_id, _scheduler| {
        let runner = runner.clone();
        Box::pin(async move {
            runner.trigger("schedule");
        })
    })
    .map_err(scheduler_error)
}

fn scheduler_error(e: tokio_cron_scheduler::JobSchedulerError) -> AppError {
    AppError::Runtime(anyhow::anyhow!("scheduler: {e}"))
}

async fn wait_for_shutdown(control: &mut (impl Stream<Item = Control> + Unpin)) {
    while let Some(event) = control.next().await {
        if event == Control::Shutdown {
            return;
        }
    }
    // The control stream ended: nobody can ask again; wait for the grace period instead.
    std::future::pending::<()>().await;
}

/// Settings a reload cannot apply: say so instead of silently ignoring them.
fn warn_about_restart_only_changes(old: &LoadedConfig, new: &LoadedConfig) {
    use secrecy::ExposeSecret;
    let (o, n) = (&old.settings, &new.settings);
    if o.database.url.expose_secret() != n.database.url.expose_secret()
        || o.database.max_connections != n.database.max_connections
    {
        warn!("database.* changed; it takes effect at the next restart.");
    }
    if o.log.dir != n.log.dir
        || o.log.rotation != n.log.rotation
        || o.log.level != n.log.level
        || o.log.format != n.log.format
    {
        warn!("log.* changed; it takes effect at the next restart.");
    }
}

fn describe(e: &AppError) -> String {
    match e {
        AppError::Config(message) => format!("invalid configuration: {message}"),
        AppError::Runtime(e) => format!("{e:#}"),
    }
}
