//! Hostile input, generated: money, e-mail and configuration parsers never panic, and every
//! rejection says what is wrong.

use std::collections::HashMap;

use balance_alertd::config::{self, Sources};
use balance_alertd::domain::policy::{
    AccountPolicy, Policy, QuietHours, Source, parse_timezone, start_of_day,
};
use balance_alertd::domain::{
    AccountId, AlertId, AlertRecord, AlertStatus, ChannelName, Currency, EmailAddress, Lease,
    Money, MoneyError,
};
use chrono::{DateTime, Utc};
use proptest::prelude::*;

/// Any instant chrono can represent, with a third of the cases within 20 years of either
/// end of its range, where date arithmetic overflows.
fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
    const TWENTY_YEARS: i64 = 20 * 366 * 86_400;
    let (min, max) = (
        DateTime::<Utc>::MIN_UTC.timestamp(),
        DateTime::<Utc>::MAX_UTC.timestamp(),
    );
    prop_oneof![
        min..=max,
        min..=min + TWENTY_YEARS,
        max - TWENTY_YEARS..=max,
    ]
    .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap_or_default())
}

fn any_status() -> impl Strategy<Value = AlertStatus> {
    prop::sample::select(vec![
        AlertStatus::Pending,
        AlertStatus::Sent,
        AlertStatus::Retry,
        AlertStatus::Failed,
        AlertStatus::Expired,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn money_parsing_never_panics_and_errors_quote_the_input(input in any::<String>(), digits in 0u32..=20) {
        match Money::parse(&input, digits) {
            Ok(_) => {}
            Err(MoneyError::NotANumber { input: quoted })
            | Err(MoneyError::TooManyDigits { input: quoted, .. })
            | Err(MoneyError::OutOfRange { input: quoted }) => prop_assert_eq!(quoted, input),
        }
    }

    #[test]
    fn decimal_like_strings_parse_or_say_why(int in "-?[0-9]{1,22}", frac in proptest::option::of("[0-9]{0,4}")) {
        let input = match &frac { Some(f) => format!("{int}.{f}"), None => int.clone() };
        match Money::parse(&input, 2) {
            Ok(money) => {
                // Exact: formatting gives back the same amount.
                prop_assert_eq!(Money::parse(&Currency::usd().decimal(money), 2), Ok(money));
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains(&input) || text.contains(&format!("{input:?}")), "{}", text);
            }
        }
    }

    #[test]
    fn every_minor_amount_formats_and_parses_back_exactly(minor in any::<i64>(), digits in 0u32..=18) {
        let currency = Currency::new("XTS", "¤", digits).unwrap();
        let money = Money::from_minor(minor);
        prop_assert_eq!(currency.parse_amount(&currency.decimal(money)), Ok(money));
        prop_assert!(currency.format(money).contains('¤'));
    }

    #[test]
    fn email_parsing_never_panics_and_never_accepts_control_characters(input in any::<String>()) {
        match EmailAddress::parse(&input) {
            Ok(address) => {
                prop_assert!(!address.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
                prop_assert!(address.as_str().contains('@'));
            }
            Err(e) => prop_assert!(e.to_string().starts_with("invalid e-mail address")),
        }
    }

    #[test]
    fn configuration_values_never_panic_and_errors_name_the_key(
        key in prop::sample::select(vec![
            "ALERT__THRESHOLD", "ALERT__COOLDOWN", "CURRENCY__MINOR_DIGITS", "CURRENCY__CODE",
            "SCHEDULE__CRON", "NOTIFY__CHANNELS", "NOTIFY__CONCURRENCY", "DELIVERY__MAX_ATTEMPTS",
            "DELIVERY__TIMEOUT", "DELIVERY__BATCH_SIZE", "LOG__LEVEL", "LOG__FORMAT", "DATABASE__URL",
        ]),
        value in any::<String>(),
    ) {
        let env = HashMap::from([(format!("BALANCE_ALERT__{key}"), value)]);
        if let Err(e) = config::load(&Sources { files: Vec::new(), env: Some(env) }) {
            let dotted = key.to_lowercase().replace("__", ".");
            let text = e.to_string();
            prop_assert!(text.contains(&dotted), "{} does not name {}", text, dotted);
        }
    }

    /// Issue 13, finding 5: `COOLDOWN=300000y` passed the check and then panicked the sweep.
    /// Any duration the loader accepts, at any instant, through every date computation a
    /// sweep makes (cutoffs, the claim decision, give-up, the lease) never panics.
    #[test]
    fn every_accepted_duration_is_safe_at_any_instant(
        key in prop::sample::select(vec![
            "ALERT__COOLDOWN", "DELIVERY__CLAIM_TIMEOUT", "DELIVERY__GIVE_UP_AFTER",
            "DELIVERY__TIMEOUT", "DELIVERY__RETRY_INITIAL_BACKOFF", "DELIVERY__RETRY_MAX_BACKOFF",
            "SHUTDOWN__GRACE", "DATABASE__BUSY_TIMEOUT",
        ]),
        amount in prop_oneof![0u64..1000, any::<u64>()],
        unit in prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "w", "M", "y"]),
        now in any_instant(),
        created_at in any_instant(),
        claimed_at in any_instant(),
        status in any_status(),
    ) {
        let env = HashMap::from([(format!("BALANCE_ALERT__{key}"), format!("{amount}{unit}"))]);
        match config::load(&Sources { files: Vec::new(), env: Some(env) }) {
            Ok(loaded) => {
                let cutoffs = loaded.rules.cutoffs(now);
                let record = AlertRecord {
                    id: AlertId::from_stored("a"),
                    account_id: AccountId::new("b"),
                    channel: ChannelName::new("console"),
                    status,
                    attempts: 1,
                    created_at,
                    claimed_at,
                    sent_at: Some(claimed_at),
                    contact: Some("x@example.com".into()),
                    resolved_at: None,
                };
                // Every policy, in zones at both ends of the offsets, with a window.
                for zone in ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Paris"] {
                    for policy in Policy::ALL {
                        let account = AccountPolicy {
                            policy,
                            policy_from: Source::Config,
                            timezone: parse_timezone(zone).expect("zone"),
                            quiet_hours: QuietHours::parse("22:00-07:00").expect("window"),
                        };
                        let _ = cutoffs.decide("x@example.com", &account, [&record]);
                        let _ = account.quiet_now(now);
                        let _ = start_of_day(account.timezone, now);
                    }
                }
                let _ = cutoffs.after_transient_failure(created_at);
                let timeout = loaded.settings.delivery.timeout;
                let lease = Lease::new(loaded.settings.delivery.claim_timeout);
                lease.hold([&record.id], claimed_at);
                let _ = lease.may_start(&record.id, now, timeout);
                let _ = Lease::renew_every(loaded.settings.delivery.claim_timeout, timeout);
            }
            Err(e) => {
                let dotted = key.to_lowercase().replace("__", ".");
                prop_assert!(e.to_string().contains(&dotted), "{} does not name {}", e, dotted);
            }
        }
    }
}
