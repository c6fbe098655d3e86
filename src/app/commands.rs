//! One function per command of the CLI.

use std::process::ExitCode;
use std::sync::Arc;

use migration::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;

use super::{
    AppError, build_context, delivery_exit_code, keep_unwritten_audit, migrate_up, open_audit,
    open_store, stdout_console, write_audit_backlog,
};
use crate::application::check_account::{BalanceAlert, ChannelResult, CheckReport};
use crate::application::sweep::BulkBalanceAlert;
use crate::cli::{Command, MigrateAction};
use crate::config::{LoadedConfig, Sources};
use crate::daemon::{Daemon, signals};
use crate::domain::policy::{Source, local_datetime};
use crate::domain::{
    Account, AccountId, AccountPolicy, AlertStatus, BadSetting, Currency, Decision, Money,
};
use crate::infrastructure::audit::NoAuditLog;
use crate::infrastructure::clock::SystemClock;
use crate::infrastructure::db::{self, SeaOrmStore};
use crate::infrastructure::notify;

/// Runs one command with a loaded configuration (`demo` is handled before loading).
pub async fn dispatch(
    command: Command,
    config: LoadedConfig,
    sources: Sources,
) -> Result<ExitCode, AppError> {
    if matches!(
        command,
        Command::Run | Command::Sweep { .. } | Command::Check { .. } | Command::Migrate { .. }
    ) {
        super::ownership::refuse_root_on_service_files(&config)?;
    }
    match command {
        Command::Run => run(config, sources).await,
        Command::Sweep {
            json,
            dry_run: true,
        } => dry_run(&config, json).await,
        Command::Sweep { json, .. } => sweep(&config, json).await,
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
    let (audit, flush_on_drop) = open_audit(&config)?;
    let clock = Arc::new(SystemClock);
    let daemon = Daemon::build(config, sources, audit.clone(), stdout_console(), clock).await?;
    let store = daemon.store();
    write_audit_backlog(&store, audit.as_ref()).await?;
    let stopped = daemon.run_until_stopped(control).await;
    drop(flush_on_drop);
    keep_unwritten_audit(&store, audit.as_ref()).await;
    stopped?;
    Ok(ExitCode::SUCCESS)
}

async fn sweep(config: &LoadedConfig, json: bool) -> Result<ExitCode, AppError> {
    let (audit, flush_on_drop) = open_audit(config)?;
    let store = open_store(config).await?;
    write_audit_backlog(&store, audit.as_ref()).await?;
    let ctx = build_context(config, store.clone(), audit.clone(), stdout_console())?;
    let swept = BulkBalanceAlert::new(ctx).execute().await;
    // Every queued line written (or failed, and then kept) before the verdict.
    drop(flush_on_drop);
    keep_unwritten_audit(&store, audit.as_ref()).await;
    store.finish().await;
    let summary = swept?;
    if json {
        let line = serde_json::to_string(&summary).map_err(anyhow::Error::from)?;
        println!("{line}");
    } else {
        println!("{summary}");
    }
    if let Some(failure) = audit.failure() {
        return Err(AppError::Runtime(anyhow::anyhow!(
            "{failure}; the outcomes are recorded in alert_logs"
        )));
    }
    Ok(delivery_exit_code(summary.failed > 0))
}

/// `sweep --dry-run`: who a sweep would alert now, on which channel; writes nothing anywhere
/// (no audit file, no claim, no migration: the database stays byte-identical).
async fn dry_run(config: &LoadedConfig, json: bool) -> Result<ExitCode, AppError> {
    let settings = &config.settings.database;
    let read_only = db::connect_read_only(settings).await?;
    let conn = read_only.connection();
    // Read by hand: sea-orm-migration's own status query first creates its table.
    let applied: std::collections::HashSet<String> = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await
        .map_err(|e| {
            AppError::Runtime(anyhow::anyhow!(e).context(format!(
                "cannot read the schema of {} (run `balance-alertd migrate up` first)",
                settings.display_url()
            )))
        })?
        .iter()
        .filter_map(|row| row.try_get::<String>("", "version").ok())
        .collect();
    let pending: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect();
    if !pending.is_empty() {
        read_only.close().await;
        return Err(AppError::Runtime(anyhow::anyhow!(
            "{}: {} migration(s) not applied; a dry run changes nothing, so run \
             `balance-alertd migrate up` first",
            settings.display_url(),
            pending.len()
        )));
    }
    let store = SeaOrmStore::new(conn.clone(), settings.display_url());
    let ctx = build_context(config, store, Arc::new(NoAuditLog), stdout_console())?;
    let previewed = BulkBalanceAlert::new(ctx)
        .preview(|claim| {
            let (balance, threshold) = (
                claim.currency.decimal(claim.account.balance),
                claim.currency.decimal(claim.threshold),
            );
            if json {
                let line = serde_json::json!({
                    "account_id": claim.account.id,
                    "channel": claim.channel,
                    "balance": balance,
                    "threshold": threshold,
                    "currency": claim.currency.code(),
                });
                println!("{line}");
            } else {
                println!(
                    "would alert {} {} balance={balance} threshold={threshold}",
                    claim.account.id, claim.channel
                );
            }
        })
        .await;
    // Closed before exit: the last SQLite connection removes the -wal/-shm files it opened.
    read_only.close().await;
    let summary = previewed?;
    if json {
        let line = serde_json::to_string(&summary).map_err(anyhow::Error::from)?;
        println!("{line}");
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(config: &LoadedConfig, account_id: &AccountId) -> Result<ExitCode, AppError> {
    let (audit, flush_on_drop) = open_audit(config)?;
    let store = open_store(config).await?;
    write_audit_backlog(&store, audit.as_ref()).await?;
    let ctx = build_context(config, store.clone(), audit.clone(), stdout_console())?;
    // The row as the check starts, for the explanation (the check reads it again under
    // its lock and decides on that).
    let account = ctx.store.find_account(account_id).await?;
    let checked = BalanceAlert::new(ctx).execute(account_id).await;
    drop(flush_on_drop);
    keep_unwritten_audit(&store, audit.as_ref()).await;
    store.finish().await;
    let outcome = checked?;
    let basis = account.as_ref().map(|a| Basis::of(a, config));
    let say = |text: &str| println!("check: account {account_id}: {text}");
    match (&outcome, &basis) {
        (CheckReport::NotFound, _) | (_, None) => say("not found"),
        (CheckReport::AboveThreshold { balance, .. }, Some(basis)) => {
            say(&match basis.threshold {
                Some(threshold) => format!(
                    "balance {} is not below {} ({}); no alert",
                    basis.currency.format(*balance),
                    basis.currency.format(threshold),
                    basis.threshold_from
                ),
                None => format!(
                    "balance {}: no threshold applies ({}); never alerted",
                    basis.currency.format(*balance),
                    basis.threshold_from
                ),
            });
        }
        (CheckReport::Evaluated(_), Some(basis)) if basis.threshold.is_none() => {
            say("changed while checked; run the check again");
        }
        (CheckReport::Evaluated(channels), Some(basis)) => {
            if let (Some(account), Some(threshold)) = (&account, basis.threshold) {
                say(&format!(
                    "balance {} is below {} ({})",
                    basis.currency.format(account.balance),
                    basis.currency.format(threshold),
                    basis.threshold_from
                ));
            }
            say(&basis.policy_line());
            for (channel, result) in channels {
                say(&format!("{channel}: {}", explain(result, basis)));
            }
            // Configured channels the account's own list leaves out.
            if let Some(list) = account
                .as_ref()
                .and_then(|a| a.settings.alert_channels.as_deref())
            {
                let notify = &config.settings.notify;
                let digest = notify.slack.mode == crate::config::SlackMode::Digest;
                for kind in &notify.channels {
                    let per_alert = !(digest && *kind == crate::config::ChannelKind::Slack);
                    if per_alert && !channels.iter().any(|(c, _)| c.as_str() == kind.as_str()) {
                        say(&format!(
                            "{}: not among the account's channels ({list:?}, accounts.alert_channels); not sent",
                            kind.as_str()
                        ));
                    }
                }
            }
        }
    }
    if let Some(failure) = audit.failure() {
        return Err(AppError::Runtime(anyhow::anyhow!(
            "{failure}; the outcomes are recorded in alert_logs"
        )));
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
    // Closed before exit: SQLite's last connection copies the WAL into the database file; a
    // PostgreSQL session cut by the exit is logged by the server as a connection reset.
    conn.close().await.ok();
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

/// The settings a check decided with, and where each came from.
struct Basis {
    /// The effective threshold; `None` when neither the account nor its currency has one.
    threshold: Option<Money>,
    threshold_from: String,
    /// What the account's amounts count.
    currency: Arc<Currency>,
    /// `once`: the balance that re-arms the account (threshold + `alert.rearm_margin`).
    rearm_at: String,
    policy: AccountPolicy,
    policy_from: &'static str,
    zone_from: &'static str,
    quiet_from: &'static str,
    bad: Option<BadSetting>,
}

impl Basis {
    fn of(account: &Account, config: &LoadedConfig) -> Self {
        let thresholds = &config.rules.thresholds;
        let (policy, bad_policy) = config.rules.policy.for_account(account);
        let (currency, bad_currency) = thresholds.currency_of(account);
        let from = |own: bool, column: &'static str, key: &'static str| {
            if own { column } else { key }
        };
        let s = &account.settings;
        let threshold = account.effective_threshold(thresholds);
        let rearm_at = account
            .rearm_at(thresholds, config.rules.rearm_margin)
            .map_or_else(
                || "an unreachable amount".to_owned(),
                |rearm| currency.format(rearm),
            );
        let code = s.currency.as_deref();
        Self {
            rearm_at,
            threshold,
            threshold_from: if account.threshold_override.is_some() {
                "the account's own alert_threshold_minor".to_owned()
            } else {
                thresholds.source(code)
            },
            currency,
            policy_from: match policy.policy_from {
                Source::Account => "accounts.alert_policy",
                Source::Config => "alert.policy",
            },
            zone_from: from(s.timezone.is_some(), "accounts.timezone", "alert.timezone"),
            quiet_from: from(
                s.quiet_hours.is_some(),
                "accounts.quiet_hours",
                "alert.quiet_hours",
            ),
            policy,
            bad: bad_currency.or(bad_policy),
        }
    }

    fn policy_line(&self) -> String {
        let p = &self.policy;
        let quiet = p
            .quiet_hours
            .map_or_else(|| "none".to_owned(), |q| q.to_string());
        let mut line = format!(
            "policy {} ({}), time zone {} ({}), quiet hours {quiet} ({})",
            p.policy, self.policy_from, p.timezone, self.zone_from, self.quiet_from
        );
        if let Some(bad) = &self.bad {
            line.push_str(&format!("; cannot be honoured: {bad}"));
        }
        line
    }
}

/// One channel's result of a check, in plain words.
fn explain(result: &ChannelResult, basis: &Basis) -> String {
    match result {
        ChannelResult::Delivered(o) => {
            let error = o.error.as_deref().unwrap_or_default();
            match o.status {
                AlertStatus::Sent => format!("sent (alert {})", o.alert_id),
                AlertStatus::Retry => format!(
                    "failed (alert {}): {error}; retried by the next sweep",
                    o.alert_id
                ),
                AlertStatus::Expired => format!(
                    "failed (alert {}): {error}; given up (delivery.give_up_after)",
                    o.alert_id
                ),
                _ => format!(
                    "failed (alert {}): {error}; not retried until the contact details change",
                    o.alert_id
                ),
            }
        }
        ChannelResult::NotDue(decision) => match decision {
            Decision::InCooldown { since } => format!(
                "repeat: in cooldown since the alert of {} (alert.cooldown); not sent",
                since.format("%Y-%m-%d %H:%M UTC")
            ),
            Decision::NotRearmed { since } => format!(
                "once: not re-armed since the alert of {}; not sent until a sweep sees the \
                 balance at {} or above (threshold + alert.rearm_margin)",
                since.format("%Y-%m-%d %H:%M UTC"),
                basis.rearm_at
            ),
            Decision::AlreadyToday { since } => format!(
                "daily: already alerted today in {zone} (at {}); not sent before midnight there",
                local_datetime(basis.policy.timezone, *since).format("%Y-%m-%d %H:%M"),
                zone = basis.policy.timezone
            ),
            Decision::Deferred { quiet_hours } => format!(
                "inside quiet hours {quiet_hours} {zone}: deferred until {} {zone}; the first \
                 sweep after them sends it if still due",
                quiet_hours.end.format("%H:%M"),
                zone = basis.policy.timezone
            ),
            Decision::InFlight { .. } => "being delivered by another sweep".into(),
            Decision::Parked { alert_id } => format!(
                "failed permanently on these contact details (alert {alert_id}); \
                 not retried until they change"
            ),
            Decision::Expire { alert_id, .. } => {
                format!("given up (alert {alert_id}): still failing after delivery.give_up_after")
            }
            Decision::New | Decision::Retry { .. } => "claimed by another sweep meanwhile".into(),
        },
        ChannelResult::NotAttempted => {
            "claimed, but its lease ran short before an attempt; retried later".into()
        }
    }
}
