//! Loading the layers (built-in defaults, files, environment) and validating what serde
//! accepts but the domain does not (money digits, cron fields, required channel keys).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ::config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::{ChannelKind, Settings};
use crate::domain::policy::parse_timezone;
use crate::domain::{
    AlertRules, Currency, Money, MoneyError, Policy, PolicyDefaults, QuietHours, Thresholds,
    iso_currency,
};

/// The built-in defaults: the same file operators read, so the two cannot drift.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Environment variables `BALANCE_ALERT__SECTION__KEY` override files.
pub const ENV_PREFIX: &str = "BALANCE_ALERT";

/// Where configuration comes from; kept so SIGHUP can read the same places again.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config` files in order (or `BALANCE_ALERT_CONFIG`), later wins.
    pub files: Vec<PathBuf>,
    /// `None` reads the process environment; tests pass their own variables.
    pub env: Option<HashMap<String, String>>,
}

/// A configuration that passed every check, with the domain values derived from it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub settings: Settings,
    pub currency: Currency,
    pub rules: AlertRules,
    /// Problems that do not stop the daemon but an operator should fix (logged at start).
    pub warnings: Vec<String>,
}

/// A configuration problem; the message names the file or key at fault and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Parse(#[from] ::config::ConfigError),
    #[error("{key}: {message}")]
    Invalid {
        key: Cow<'static, str>,
        message: String,
    },
}

fn invalid(key: impl Into<Cow<'static, str>>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Reads every layer and validates the result.
pub fn load(sources: &Sources) -> Result<LoadedConfig, ConfigError> {
    let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    for path in &sources.files {
        // Checked here for a clear message; the config crate's own "not found" is vaguer.
        std::fs::metadata(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
    }
    let env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .source(sources.env.clone());
    let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
    let mut config = validate(settings)?;
    config.warnings = sources
        .files
        .iter()
        .filter_map(|path| super::exposure::warning(path))
        .collect();
    Ok(config)
}

fn validate(settings: Settings) -> Result<LoadedConfig, ConfigError> {
    let c = &settings.currency;
    let currency = Currency::new(&c.code, &c.symbol, c.minor_digits).map_err(|e| {
        let key = match e {
            crate::domain::CurrencyError::InvalidCode(_) => "currency.code",
            crate::domain::CurrencyError::TooManyMinorDigits(_) => "currency.minor_digits",
        };
        invalid(key, e.to_string())
    })?;
    let default_threshold: Money =
        currency
            .parse_amount(&settings.alert.threshold)
            .map_err(|e| {
                let mut message = e.to_string();
                // Either key may be the one to change (e.g. minor_digits = 0 with the default
                // threshold "50.00"): name both.
                if matches!(e, MoneyError::TooManyDigits { .. }) {
                    message.push_str(&format!(
                        " (set by currency.minor_digits = {})",
                        c.minor_digits
                    ));
                }
                invalid("alert.threshold", message)
            })?;
    // The default currency's digits are configurable for a code ISO 4217 does not know;
    // for one it knows they must agree, or accounts stored with that code and accounts
    // without one would count different units.
    if let Some(iso) = iso_currency(currency.code())
        && iso.minor_digits() != currency.minor_digits()
    {
        return Err(invalid(
            "currency.minor_digits",
            format!(
                "{} disagrees with ISO 4217, which gives {} {} minor digits",
                currency.minor_digits(),
                currency.code(),
                iso.minor_digits()
            ),
        ));
    }
    let thresholds = validate_thresholds(&currency, default_threshold, &settings.alert)?;
    validate_database(&settings)?;
    validate_cron(&settings.schedule.cron)?;
    validate_notify(&settings)?;
    validate_delivery(&settings)?;
    let listen = &settings.metrics.listen;
    if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            "metrics.listen",
            format!(
                "{listen:?} is not an address and port like \"127.0.0.1:9464\" (\"\" disables)"
            ),
        ));
    }
    // tracing-subscriber 0.3 panics (slicing inside a character) on some non-ASCII filters;
    // a level or filter is ASCII anyway.
    if !settings.log.level.is_ascii() {
        return Err(invalid(
            "log.level",
            format!(
                "{:?} is not a level or filter (ASCII, like \"info\" or \"info,sqlx=warn\")",
                settings.log.level
            ),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(&settings.log.level).map_err(|e| {
        invalid(
            "log.level",
            format!("{:?} is not a level or filter: {e}", settings.log.level),
        )
    })?;
    if settings.log.max_files == 0 {
        return Err(invalid("log.max_files", "must be at least 1"));
    }
    validate_bounds(&settings)?;
    let rules = AlertRules {
        thresholds,
        cooldown: settings.alert.cooldown,
        claim_timeout: settings.delivery.claim_timeout,
        give_up_after: settings.delivery.give_up_after,
        policy: validate_policy(&settings.alert)?,
        rearm_margin: validate_rearm_margin(&currency, &settings.alert.rearm_margin)?,
    };
    Ok(LoadedConfig {
        settings,
        currency,
        rules,
        warnings: Vec::new(),
    })
}

/// `alert.thresholds.<CODE>`: each code an ISO 4217 currency (or the default one), each amount
/// within that currency's minor digits (codes arrive uppercased: [`decimal_map`]).
fn validate_thresholds(
    currency: &Currency,
    default_threshold: Money,
    alert: &super::AlertSettings,
) -> Result<Thresholds, ConfigError> {
    let mut thresholds = Thresholds::new(currency.clone(), default_threshold);
    for (code, text) in &alert.thresholds {
        let name = format!("alert.thresholds.{code}");
        let this = if code == currency.code() {
            currency.clone()
        } else {
            iso_currency(code).ok_or_else(|| {
                invalid(
                    name.clone(),
                    format!(
                        "{code:?} is not an ISO 4217 currency code with minor units (e.g. EUR)"
                    ),
                )
            })?
        };
        let amount = this.parse_amount(text).map_err(|e| {
            invalid(
                name.clone(),
                format!("{e} ({code} has {} minor digits)", this.minor_digits()),
            )
        })?;
        thresholds = thresholds.with(this, amount);
    }
    Ok(thresholds)
}

fn validate_policy(alert: &super::AlertSettings) -> Result<PolicyDefaults, ConfigError> {
    Ok(PolicyDefaults {
        policy: alert
            .policy
            .parse::<Policy>()
            .map_err(|e| invalid("alert.policy", e))?,
        timezone: parse_timezone(&alert.timezone).map_err(|e| invalid("alert.timezone", e))?,
        quiet_hours: QuietHours::parse(&alert.quiet_hours)
            .map_err(|e| invalid("alert.quiet_hours", e))?,
    })
}

fn validate_rearm_margin(currency: &Currency, text: &str) -> Result<Money, ConfigError> {
    let margin = currency
        .parse_amount(text)
        .map_err(|e| invalid("alert.rearm_margin", e.to_string()))?;
    if margin < Money::from_minor(0) {
        return Err(invalid(
            "alert.rearm_margin",
            format!(
                "{text:?} is negative; the margin is how far above the threshold a balance must get"
            ),
        ));
    }
    Ok(margin)
}

fn validate_database(settings: &Settings) -> Result<(), ConfigError> {
    use secrecy::ExposeSecret;
    let url = settings.database.url.expose_secret();
    // Name only the scheme: the rest of the URL may hold a password.
    let scheme = url.split(':').next().unwrap_or_default();
    if !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
        return Err(invalid(
            "database.url",
            format!("unsupported scheme {scheme:?} (expected sqlite: or postgres://)"),
        ));
    }
    if settings.database.max_connections == 0 {
        return Err(invalid("database.max_connections", "must be at least 1"));
    }
    Ok(())
}

/// tokio-cron-scheduler reports any bad pattern as an opaque `ParseSchedule`; say what is wrong.
pub fn validate_cron(cron: &str) -> Result<(), ConfigError> {
    let fields = cron.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(invalid(
            "schedule.cron",
            format!(
                "{cron:?} has {fields} fields; expected 6 (sec min hour day month weekday) \
                 or 7 (with year), e.g. \"0 */5 * * * *\""
            ),
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true) // as tokio-cron-scheduler parses it
        .build()
        .parse(cron)
        .map(|_| ())
        .map_err(|e| {
            invalid(
                "schedule.cron",
                format!("{cron:?} is not a valid cron pattern: {e}"),
            )
        })
}

fn validate_notify(settings: &Settings) -> Result<(), ConfigError> {
    let notify = &settings.notify;
    if notify.channels.is_empty() {
        return Err(invalid("notify.channels", "must name at least one channel"));
    }
    for (kind, n) in &notify.channel_concurrency {
        if *n == 0 || *n > notify.concurrency {
            return Err(invalid(
                format!("notify.channel_concurrency.{}", kind.as_str()),
                format!(
                    "is {n}; must be at least 1 and at most notify.concurrency ({}), which \
                     caps every channel together",
                    notify.concurrency
                ),
            ));
        }
    }
    for (i, kind) in notify.channels.iter().enumerate() {
        if notify.channels[..i].contains(kind) {
            return Err(invalid(
                "notify.channels",
                format!("{:?} is listed twice", kind.as_str()),
            ));
        }
        let (key, missing) = match kind {
            ChannelKind::Console => continue,
            ChannelKind::Email => ("notify.email.smtp_url", notify.email.smtp_url.is_none()),
            ChannelKind::Slack => (
                "notify.slack.webhook_url",
                notify.slack.webhook_url.is_none(),
            ),
            ChannelKind::Webhook => ("notify.webhook.url", notify.webhook.url.is_none()),
            ChannelKind::Sms => match () {
                () if notify.sms.account_sid.is_none() => ("notify.sms.account_sid", true),
                () if notify.sms.auth_token.is_none() => ("notify.sms.auth_token", true),
                () => ("notify.sms.from", notify.sms.from.is_none()),
            },
        };
        if missing {
            return Err(invalid(
                key,
                format!("required when {:?} is in notify.channels", kind.as_str()),
            ));
        }
    }
    if notify.concurrency == 0 {
        return Err(invalid("notify.concurrency", "must be at least 1"));
    }
    Ok(())
}

fn validate_delivery(settings: &Settings) -> Result<(), ConfigError> {
    let d = &settings.delivery;
    if d.max_attempts == 0 {
        return Err(invalid("delivery.max_attempts", "must be at least 1"));
    }
    if d.timeout.is_zero() {
        return Err(invalid("delivery.timeout", "must be longer than 0s"));
    }
    if d.claim_timeout <= d.timeout {
        return Err(invalid(
            "delivery.claim_timeout",
            "must be longer than delivery.timeout, or live claims would be taken over",
        ));
    }
    if d.retry_max_backoff < d.retry_initial_backoff {
        return Err(invalid(
            "delivery.retry_max_backoff",
            "must not be shorter than delivery.retry_initial_backoff",
        ));
    }
    if !(1..=10_000).contains(&d.batch_size) {
        return Err(invalid(
            "delivery.batch_size",
            "must be between 1 and 10000",
        ));
    }
    Ok(())
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Windows of the alert rules: ten years is longer than any bank keeps an alert pending,
/// and far inside what timestamps can compute with.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Every duration and number has an upper bound the daemon can compute with (timestamps,
/// timers, allocations): a value beyond it is exit 2 naming the key, never a panic later.
fn validate_bounds(settings: &Settings) -> Result<(), ConfigError> {
    let (d, n) = (&settings.delivery, &settings.notify);
    let durations: [(&'static str, Duration, Duration); 9] = [
        ("alert.cooldown", settings.alert.cooldown, TEN_YEARS),
        ("delivery.claim_timeout", d.claim_timeout, TEN_YEARS),
        ("delivery.give_up_after", d.give_up_after, TEN_YEARS),
        ("delivery.timeout", d.timeout, DAY),
        (
            "delivery.retry_initial_backoff",
            d.retry_initial_backoff,
            DAY,
        ),
        ("delivery.retry_max_backoff", d.retry_max_backoff, DAY),
        (
            "database.connect_timeout",
            settings.database.connect_timeout,
            DAY,
        ),
        ("database.busy_timeout", settings.database.busy_timeout, DAY),
        ("shutdown.grace", settings.shutdown.grace, DAY),
    ];
    for (key, value, max) in durations {
        if value > max {
            return Err(invalid(
                key,
                format!(
                    "{} is too long (at most {})",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ),
            ));
        }
    }
    if settings.database.connect_timeout < SECOND / 10 {
        return Err(invalid(
            "database.connect_timeout",
            "must be at least 100ms",
        ));
    }
    if d.give_up_after.is_zero() {
        return Err(invalid("delivery.give_up_after", "must be longer than 0s"));
    }
    let numbers: [(&'static str, u64, u64); 5] = [
        ("notify.concurrency", n.concurrency as u64, 10_000),
        ("delivery.max_attempts", u64::from(d.max_attempts), 100),
        (
            "database.max_connections",
            u64::from(settings.database.max_connections),
            1_000,
        ),
        ("log.max_files", settings.log.max_files as u64, 100_000),
        ("delivery.batch_size", u64::from(d.batch_size), 10_000),
    ];
    for (key, value, max) in numbers {
        if value > max {
            return Err(invalid(
                key,
                format!("{value} is too large (at most {max})"),
            ));
        }
    }
    Ok(())
}

/// Money in config is a decimal string; an integer is exact too, a float never is.
pub(super) fn decimal_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct DecimalVisitor;
    impl Visitor<'_> for DecimalVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal string such as \"50.00\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(DecimalVisitor)
}

/// A table of decimal strings (or integers) by currency code: `alert.thresholds`.
pub(super) fn decimal_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct Amount(#[serde(deserialize_with = "decimal_string")] String);
    let map = BTreeMap::<String, Amount>::deserialize(d)?;
    // Currency codes are uppercase; the config crate lowercases keys from the environment.
    Ok(map
        .into_iter()
        .map(|(code, Amount(text))| (code.to_ascii_uppercase(), text))
        .collect())
}

/// A TOML array, or (from the environment) a comma-separated string.
pub(super) fn list_or_comma_separated<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of names or a comma-separated string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| T::deserialize(de::value::StrDeserializer::<E>::new(s)))
                .collect()
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListVisitor(std::marker::PhantomData))
}
