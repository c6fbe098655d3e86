//! The command line (SPEC §4).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Warns bank account owners when a balance falls below a threshold.
#[derive(Debug, Parser)]
#[command(name = "balance-alertd", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file; repeat for layers, later wins. Without it, $BALANCE_ALERT_CONFIG
    /// names one file. Environment variables BALANCE_ALERT__SECTION__KEY override files.
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Vec<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the daemon: sweep on `schedule.cron` until SIGTERM (the default command)
    Run,
    /// Run the bulk alert job once and exit (exit 3 if a delivery failed)
    Sweep {
        /// Print the summary as one JSON object instead of the text line
        #[arg(long)]
        json: bool,
        /// Claim, send and write nothing: list who would be alerted on which channel, then
        /// the summary (try a threshold or policy before reloading it)
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the single-account check once and exit (exit 3 if a delivery failed)
    Check {
        /// The account's id (a UUID)
        #[arg(value_name = "ACCOUNT_ID", value_parser = parse_account_id)]
        account_id: String,
    },
    /// Manage the database schema (default: up)
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Print the effective configuration with secrets redacted
    Config {
        /// Only validate the configuration (exit 2 naming the offending key if invalid)
        #[arg(long)]
        check: bool,
    },
    /// Show the reference example: three accounts in a throwaway in-memory database, one
    /// sweep at threshold 50.00 on the console channel (never touches the configured database)
    Demo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration
    Up,
    /// Roll back the last applied migration
    Down,
    /// List migrations and whether each is applied
    Status,
    /// Drop every table and apply all migrations again (destroys data)
    Fresh,
}

/// Account ids are UUIDs in text form; the exact text is what gets looked up.
fn parse_account_id(text: &str) -> Result<String, String> {
    uuid::Uuid::try_parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("{text:?} is not a UUID: {e}"))
}

impl Cli {
    /// The files to layer: `--config` flags, else `$BALANCE_ALERT_CONFIG`.
    pub fn config_files(&self, env_config: Option<String>) -> Vec<PathBuf> {
        if self.config.is_empty() {
            env_config
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .into_iter()
                .collect()
        } else {
            self.config.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_flags_win_over_the_environment_variable() {
        let files = |args: &[&str]| Cli::parse_from(args).config_files(Some("env.toml".into()));
        let both = [PathBuf::from("a.toml"), PathBuf::from("b.toml")];
        assert_eq!(
            files(&[
                "balance-alertd",
                "-c",
                "a.toml",
                "--config",
                "b.toml",
                "sweep"
            ]),
            both
        );
        assert_eq!(
            files(&["balance-alertd", "sweep", "-c", "a.toml", "-c", "b.toml"]),
            both
        );
        assert_eq!(files(&["balance-alertd"]), [PathBuf::from("env.toml")]);
        assert!(Cli::parse_from(["balance-alertd"]).command.is_none());
    }

    #[test]
    fn check_requires_a_uuid() {
        assert!(Cli::try_parse_from(["balance-alertd", "check", "not-a-uuid"]).is_err());
        assert!(
            Cli::try_parse_from([
                "balance-alertd",
                "check",
                "5f0c6c8e-6d0a-4c5e-9b1a-2f1d8e1b2c3d"
            ])
            .is_ok()
        );
    }
}
