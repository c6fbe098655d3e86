//! Hostile input, generated: money, e-mail and configuration parsers never panic, and every
//! rejection says what is wrong.

use std::collections::HashMap;

use balance_alertd::config::{self, Sources};
use balance_alertd::domain::{Currency, EmailAddress, Money, MoneyError};
use proptest::prelude::*;

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
}
