//! One function per command of the CLI.

use std::process::ExitCode;
use std::sync::Arc;

use migration::{Migrator, MigratorTrait};

use super::{
    AppError, build_context, delivery_exit_code, migrate_up, open_audit, open_store, stdout_console,
};
use crate::application::check_account::{BalanceAlert, ChannelOutcome, Outcome};
use crate::application::sweep::BulkBalanceAlert;
use crate::cli::{Command, MigrateAction};
use crate::config::{LoadedConfig, Sources};
use crate::daemon::{Daemon, signals};
use crate::domain::AccountId;
use crate::infrastructure::clock::SystemClock;
use crate::infrastructure::db;
use crate::infrastructure::notify;

/// Runs one command with a loaded configuration (`demo` is handled before loading).
pub async fn dispatch(
    command: Command,
    config: LoadedConfig,
    sources: Sources,
) -> Result<ExitCode, AppError> {
    match command {
        Command::Run => run(config, sources).await,
        Command::Sweep { json } => sweep(&config, json).await,
        Command::Check { account_id } => check(&config, &AccountId::new(account_id)).await,
        Command::Migrate { action } => migrate(&config, action.unwrap_or(MigrateAction::Up)).await,
        Command::Config { check } => print_config(&config, check),
        Command::Demo => super::run_demo().await,
    }
}

async fn run(config: LoadedConfig, sources: Sources) -> Result<ExitCode, AppError> {
    // Handlers first: a SIGTERM during start-up is then handled, not fatal.
    let control = signals::control_events().map_err(|e| {
        AppError::Runtime(anyhow::Error::new(e).context("cannot install signal handlers"))
    })?;
    let (audit, _flush_on_drop) = open_audit(&config)?;
    let clock = Arc::new(SystemClock);
    let daemon = Daemon::build(config, sources, audit, stdout_console(), clock).await?;
    daemon.run_until_stopped(control).await?;
    Ok(ExitCode::SUCCESS)
}

async fn sweep(config: &LoadedConfig, json: bool) -> Result<ExitCode, AppError> {
    let (audit, _flush_on_drop) = open_audit(config)?;
    let store = open_store(config).await?;
    let ctx = build_context(config, store, audit, stdout_console())?;
    let summary = BulkBalanceAlert::new(ctx).execute().await?;
    if json {
        let line = serde_json::to_string(&summary).map_err(anyhow::Error::from)?;
        println!("{line}");
    } else {
        println!("{summary}");
    }
    Ok(delivery_exit_code(summary.failed > 0))
}

async fn check(config: &LoadedConfig, account_id: &AccountId) -> Result<ExitCode, AppError> {
    let (audit, _flush_on_drop) = open_audit(config)?;
    let store = open_store(config).await?;
    let ctx = build_context(config, store, audit, stdout_console())?;
    let currency = ctx.currency.clone();
    let outcome = BalanceAlert::new(ctx).execute(account_id).await?;
    match &outcome {
        Outcome::NotFound => println!("check: account {account_id}: not found"),
        Outcome::AboveThreshold { balance, threshold } => println!(
            "check: account {account_id}: balance {} is not below {}; no alert",
            currency.format(*balance),
            currency.format(*threshold)
        ),
        Outcome::Evaluated(channels) => {
            for (channel, result) in channels {
                let text = match result {
                    ChannelOutcome::Sent { alert_id } => format!("sent (alert {alert_id})"),
                    ChannelOutcome::Failed { alert_id, error } => {
                        format!("failed (alert {alert_id}): {error}")
                    }
                    ChannelOutcome::InCooldown => "in cooldown; not sent".into(),
                    ChannelOutcome::InFlight => "being delivered by another sweep".into(),
                };
                println!("check: account {account_id}: {channel}: {text}");
            }
        }
    }
    Ok(delivery_exit_code(outcome.any_failed()))
}

async fn migrate(config: &LoadedConfig, action: MigrateAction) -> Result<ExitCode, AppError> {
    let mut settings = config.settings.database.clone();
    // fresh/refresh on a multi-connection SQLite pool leave connections with foreign keys
    // off (PITFALLS); one connection is plenty for schema work anyway.
    settings.max_connections = 1;
    let conn = db::connect(&settings).await?;
    let target = settings.display_url();
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: sea_orm::DbErr| {
            AppError::Runtime(anyhow::anyhow!(e).context(format!("{what} on {target}")))
        }
    };
    match action {
        MigrateAction::Up => {
            migrate_up(&conn).await?;
            println!("migrations applied; schema is up to date");
        }
        MigrateAction::Down => {
            Migrator::down(&conn, Some(1))
                .await
                .map_err(failed("migrate down"))?;
            println!("rolled back the last migration");
        }
        MigrateAction::Fresh => {
            Migrator::fresh(&conn)
                .await
                .map_err(failed("migrate fresh"))?;
            println!("dropped every table and applied all migrations");
        }
        MigrateAction::Status => {
            for m in Migrator::get_migration_with_status(&conn)
                .await
                .map_err(failed("migrate status"))?
            {
                println!("{:<45} {}", m.name(), m.status());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_config(config: &LoadedConfig, check_only: bool) -> Result<ExitCode, AppError> {
    // Building the channels validates what only they can check (templates, URLs).
    notify::build_channels(config, super::stdout_console())?;
    if check_only {
        println!("configuration is valid");
    } else {
        let text = toml::to_string_pretty(&config.settings).map_err(anyhow::Error::from)?;
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
