//! The configuration tree (SPEC §5): every key, typed; loading and validation live in
//! [`load`], printing with secrets redacted in [`redact`].

mod exposure;
mod load;
pub(crate) mod redact;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use load::{ConfigError, LoadedConfig, Sources, load, validate_cron};

/// Everything `config/default.toml` defines. Field docs are in that file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub alert: AlertSettings,
    pub currency: CurrencySettings,
    pub schedule: ScheduleSettings,
    pub notify: NotifySettings,
    pub delivery: DeliverySettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Secret: may hold a password.
    #[serde(serialize_with = "redact::url")]
    pub url: SecretString,
    pub max_connections: u32,
    pub auto_migrate: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// A decimal string; validated against `currency.minor_digits`.
    #[serde(deserialize_with = "load::decimal_string")]
    pub threshold: String,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// `repeat`, `once` or `daily`.
    pub policy: String,
    /// A decimal string, validated against `currency.minor_digits`.
    #[serde(deserialize_with = "load::decimal_string")]
    pub rearm_margin: String,
    /// An IANA time zone name.
    pub timezone: String,
    /// `"HH:MM-HH:MM"` or `""`.
    pub quiet_hours: String,
    /// Default threshold per ISO 4217 code (decimal strings in that currency).
    #[serde(default, deserialize_with = "load::decimal_map")]
    pub thresholds: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencySettings {
    pub code: String,
    pub symbol: String,
    pub minor_digits: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    pub cron: String,
    pub run_on_start: bool,
}

/// A channel that can be named in `notify.channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Console,
    Email,
    Slack,
    Webhook,
    Sms,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Email => "email",
            Self::Slack => "slack",
            Self::Webhook => "webhook",
            Self::Sms => "sms",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    #[serde(deserialize_with = "load::list_or_comma_separated")]
    pub channels: Vec<ChannelKind>,
    pub concurrency: usize,
    /// A lower cap on one channel's deliveries in flight than `concurrency`.
    #[serde(default)]
    pub channel_concurrency: BTreeMap<ChannelKind, usize>,
    pub email: EmailSettings,
    pub slack: SlackSettings,
    pub webhook: WebhookSettings,
    pub sms: SmsSettings,
}

/// A Twilio-compatible SMS API (SPEC §6).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// The API's base URL (Twilio's by default; a compatible gateway's otherwise).
    pub api_url: String,
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default, serialize_with = "redact::optional_secret")]
    pub auth_token: Option<SecretString>,
    /// The sending number or sender id.
    #[serde(default)]
    pub from: Option<String>,
    /// Template (minijinja).
    pub text: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    #[serde(default, serialize_with = "redact::optional_url")]
    pub smtp_url: Option<SecretString>,
    /// SMTP AUTH user, when not given in `smtp_url`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, serialize_with = "redact::optional_secret")]
    pub password: Option<SecretString>,
    /// Allow plain (or downgradable, `?tls=opportunistic`) SMTP to a host other than loopback.
    pub allow_insecure: bool,
    /// A PEM file of CA certificates trusted for the SMTP server (a bank's private CA).
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub from: String,
    /// Template (minijinja).
    pub subject: String,
    /// Template (minijinja).
    pub body: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    #[serde(default, serialize_with = "redact::optional_url")]
    pub webhook_url: Option<SecretString>,
    /// Template (minijinja); `name` and `email` arrive escaped for Slack (`&`, `<`, `>`).
    pub text: String,
    /// `per_alert`: one message per account; `digest`: one per sweep.
    pub mode: SlackMode,
}

/// How the Slack channel is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlackMode {
    /// A delivery per account, claimed, retried and audited like any channel.
    PerAlert,
    /// One summary message after each sweep that attempted deliveries (for an ops channel:
    /// Slack accepts about one message a second per webhook).
    Digest,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    #[serde(default, serialize_with = "redact::optional_url")]
    pub url: Option<SecretString>,
    /// One signing secret, or a list of them while one is being rotated (each signs).
    #[serde(default, serialize_with = "redact::secrets")]
    pub secret: Secrets,
    /// Allow plain `http://` to a non-loopback host.
    pub allow_insecure_http: bool,
}

/// Secrets given as one string or as a list of strings.
#[derive(Debug, Clone, Default)]
pub struct Secrets(pub Vec<SecretString>);

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        Ok(Self(list.into_iter().map(SecretString::from).collect()))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub claim_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    pub batch_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    Never,
    Daily,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    pub dir: PathBuf,
    pub rotation: LogRotation,
    pub max_files: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `host:port` of `/metrics`, `/healthz`, `/readyz` (the daemon only); `""` disables.
    pub listen: String,
}

impl MetricsSettings {
    /// The address to serve on; `None` when disabled. Validated at load time.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}
