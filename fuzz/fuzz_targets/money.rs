//! Money parsing and formatting: never a panic; whatever parses formats back to itself.
#![no_main]

use balance_alertd::domain::{Currency, Money};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for digits in 0..=20 {
        if let Ok(money) = Money::parse(text, digits)
            && let Ok(currency) = Currency::new("XTS", "¤", digits)
        {
            assert_eq!(currency.parse_amount(&currency.decimal(money)), Ok(money));
        }
    }
});
