//! The composition root: builds adapters from configuration and runs the commands.
//! Exit codes (SPEC §4): 0 success, 1 runtime failure, 2 usage or configuration error,
//! 3 a sweep or check completed but at least one delivery failed.

mod commands;
mod demo;
mod ownership;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};
use tracing_appender::non_blocking::WorkerGuard;

pub use commands::dispatch;
pub use demo::run_demo;

use crate::application::{AlertContext, ChannelLimits, DeliveryPolicy};
use crate::config::{ConfigError, LoadedConfig};
use crate::domain::ChannelName;
use crate::domain::ports::{AlertStore, AuditLog, Clock};
use crate::infrastructure::audit::JsonLinesAuditLog;
use crate::infrastructure::clock::SystemClock;
use crate::infrastructure::db::{self, SeaOrmStore};
use crate::infrastructure::notify::{self, ChannelBuildError, ConsoleOut};

/// How a command ended, mapped to the documented exit codes.
#[derive(Debug)]
pub enum AppError {
    /// Exit 2: the configuration (or a value given on the command line) is unusable.
    Config(String),
    /// Exit 1: the database is unreachable, a migration failed, ...
    Runtime(anyhow::Error),
}

impl From<ConfigError> for AppError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e.to_string())
    }
}

impl From<ChannelBuildError> for AppError {
    fn from(e: ChannelBuildError) -> Self {
        Self::Config(e.to_string())
    }
}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

impl From<crate::application::sweep::SweepError> for AppError {
    fn from(e: crate::application::sweep::SweepError) -> Self {
        Self::Runtime(e.into())
    }
}

impl From<crate::domain::ports::StoreError> for AppError {
    fn from(e: crate::domain::ports::StoreError) -> Self {
        Self::Runtime(e.into())
    }
}

/// Prints the error with its cause chain to stderr and returns the exit code.
pub fn report(result: Result<ExitCode, AppError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(AppError::Config(message)) => {
            eprintln!("error: invalid configuration: {message}");
            ExitCode::from(2)
        }
        Err(AppError::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The exit code of a sweep or check: 3 when a delivery failed.
pub fn delivery_exit_code(any_failed: bool) -> ExitCode {
    if any_failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Stdout for the console channel.
pub fn stdout_console() -> ConsoleOut {
    Arc::new(Mutex::new(std::io::stdout())) as Arc<Mutex<dyn Write + Send>>
}

/// Connects to the configured database and applies pending migrations when
/// `database.auto_migrate` is set.
pub async fn open_store(config: &LoadedConfig) -> Result<SeaOrmStore, AppError> {
    let settings = &config.settings.database;
    let conn = db::connect(settings).await?;
    if settings.auto_migrate {
        migrate_up(&conn).await?;
    }
    let writer = db::connect_writer(settings).await?;
    Ok(SeaOrmStore::with_writer(
        conn,
        writer,
        settings.display_url(),
    ))
}

/// Applies pending migrations in one transaction that first takes a lock (an advisory lock
/// on PostgreSQL, the write lock on SQLite), so instances starting together migrate once.
pub async fn migrate_up(conn: &DatabaseConnection) -> anyhow::Result<()> {
    /// Arbitrary constant identifying balance-alertd's migration lock.
    const MIGRATION_LOCK: i64 = 0x6261_6c61_6c65_7274;
    let txn = match conn.get_database_backend() {
        DbBackend::Sqlite => {
            let options = sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            };
            conn.begin_with_options(options).await
        }
        _ => conn.begin().await,
    }
    .context("cannot begin the migration transaction")?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await
            .context("cannot take the migration lock")?;
    }
    Migrator::up(&txn, None).await.context("migration failed")?;
    txn.commit().await.context("cannot commit migrations")
}

/// Writes the audit lines an earlier process could not (SPEC §7), before any new line. Should
/// they not even queue, they go back to the database.
pub async fn write_audit_backlog(
    store: &dyn AlertStore,
    audit: &dyn AuditLog,
) -> Result<(), AppError> {
    let lines = store.take_audit_backlog().await.map_err(runtime)?;
    if lines.is_empty() {
        return Ok(());
    }
    if let Err(e) = audit.record_lines(&lines) {
        store.keep_audit_backlog(&lines).await.map_err(runtime)?;
        return Err(AppError::Runtime(
            anyhow::Error::new(e).context("cannot queue the audit lines kept in audit_backlog"),
        ));
    }
    tracing::info!(
        lines = lines.len(),
        "Wrote the audit lines an earlier run could not write (kept in audit_backlog)."
    );
    Ok(())
}

/// After the audit log's last flush (its guard dropped): keeps the lines it could not write
/// in the database for the next process, or — the database failing too — prints them on
/// stderr (the journal) as the last place they can go.
pub async fn keep_unwritten_audit(store: &dyn AlertStore, audit: &dyn AuditLog) {
    let lines = audit.unwritten();
    if lines.is_empty() {
        return;
    }
    match store.keep_audit_backlog(&lines).await {
        Ok(()) => tracing::error!(
            lines = lines.len(),
            "Audit lines could not be written before exit; kept in the database table \
             audit_backlog and written to audit.log at the next start."
        ),
        Err(e) => {
            tracing::error!(
                lines = lines.len(),
                error = format!("{e:#}"),
                "Audit lines could not be written to audit.log nor kept in the database; \
                 they follow on stderr."
            );
            let mut stderr = std::io::stderr().lock();
            for line in &lines {
                let _ = writeln!(stderr, "{line}");
            }
        }
    }
}

fn runtime(e: crate::domain::ports::StoreError) -> AppError {
    AppError::Runtime(anyhow::Error::new(e))
}

/// Opens the audit log of `log.dir`; keep the guard until every delivery is done.
pub fn open_audit(config: &LoadedConfig) -> Result<(Arc<dyn AuditLog>, WorkerGuard), AppError> {
    let log = &config.settings.log;
    let (audit, guard) = JsonLinesAuditLog::open(&log.dir, log.rotation, log.max_files)?;
    Ok((Arc::new(audit), guard))
}

/// Wires the use-cases' context from configuration and adapters.
pub fn build_context(
    config: &LoadedConfig,
    store: SeaOrmStore,
    audit: Arc<dyn AuditLog>,
    console: ConsoleOut,
) -> Result<AlertContext, AppError> {
    build_context_with_clock(config, store, audit, console, Arc::new(SystemClock))
}

/// [`build_context`] with a given clock (tests move time by hand).
pub fn build_context_with_clock(
    config: &LoadedConfig,
    store: SeaOrmStore,
    audit: Arc<dyn AuditLog>,
    console: ConsoleOut,
    clock: Arc<dyn Clock>,
) -> Result<AlertContext, AppError> {
    let channels = notify::build_channels(config, console)?;
    let digests = notify::build_digests(config)?;
    Ok(AlertContext {
        store: Arc::new(store),
        channels,
        audit,
        clock,
        rules: config.rules.clone(),
        delivery: delivery_policy(config),
        digests,
    })
}

pub fn delivery_policy(config: &LoadedConfig) -> DeliveryPolicy {
    let d = &config.settings.delivery;
    DeliveryPolicy {
        max_attempts: d.max_attempts,
        timeout: d.timeout,
        initial_backoff: d.retry_initial_backoff,
        max_backoff: d.retry_max_backoff,
        concurrency: config.settings.notify.concurrency,
        batch_size: d.batch_size,
        jitter_seed: None,
        limits: ChannelLimits::new(
            config
                .settings
                .notify
                .channel_concurrency
                .iter()
                .map(|(kind, n)| (ChannelName::new(kind.as_str()), *n)),
        ),
    }
}
