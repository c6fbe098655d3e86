//! Currency per account (SPEC §2): what an account's `currency` column means, and the default
//! threshold each currency has.
//!
//! An account's `balance_minor` and `alert_threshold_minor` count the minor units of its
//! currency (null = `currency.code`). The minor digits of every other currency come from ISO
//! 4217 (the `iso_currency` crate), never from config, so a yen balance of 4900 is ¥4900 and a
//! dinar balance of 4900 is 4.900. The configured default currency keeps `currency.symbol` and
//! `currency.minor_digits`, which `config::load` checks against ISO 4217 when the code is one.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::account::Account;
use super::money::{Currency, Money};
use super::policy::BadSetting;

/// The ISO 4217 definition of `code` (uppercase alphabetic code), with its symbol; `None` when
/// ISO 4217 has no such currency or gives it no minor unit (gold, SDR, "no currency").
pub fn iso_currency(code: &str) -> Option<Currency> {
    let iso = iso_currency::Currency::from_code(code)?;
    let digits = u32::from(iso.exponent()?);
    let symbol = iso.symbol().symbol;
    // A few ISO entries have no symbol of their own: the code reads better than nothing.
    let symbol = if symbol.trim().is_empty() || symbol == "¤" {
        format!("{code} ")
    } else {
        symbol
    };
    Currency::new(code, symbol, digits).ok()
}

/// The deployment's currencies and their default thresholds: `alert.threshold` for
/// `currency.code` and `alert.thresholds.<CODE>` for the others (the latter wins for the
/// default currency when both are set: it is the more specific key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    default_currency: Arc<Currency>,
    /// Every currency with a default threshold, the default currency included.
    by_code: BTreeMap<String, (Arc<Currency>, Money)>,
    /// `alert.thresholds.<currency.code>` replaced `alert.threshold`.
    default_from_table: bool,
}

impl Thresholds {
    /// `default_threshold` applies to accounts in `default_currency` (or with none).
    pub fn new(default_currency: Currency, default_threshold: Money) -> Self {
        let default_currency = Arc::new(default_currency);
        let by_code = BTreeMap::from([(
            default_currency.code().to_owned(),
            (default_currency.clone(), default_threshold),
        )]);
        Self {
            default_currency,
            by_code,
            default_from_table: false,
        }
    }

    /// Adds (or replaces) the default threshold of `currency`. For the default currency's
    /// code, the deployment's definition (symbol, digits) is kept.
    pub fn with(mut self, currency: Currency, threshold: Money) -> Self {
        let currency = if currency.code() == self.default_currency.code() {
            self.default_from_table = true;
            self.default_currency.clone()
        } else {
            Arc::new(currency)
        };
        self.by_code
            .insert(currency.code().to_owned(), (currency, threshold));
        self
    }

    pub fn default_currency(&self) -> &Arc<Currency> {
        &self.default_currency
    }

    /// The default currency's default threshold (`alert.threshold`, or
    /// `alert.thresholds.<currency.code>` when set).
    pub fn default_threshold(&self) -> Money {
        self.by_code
            .get(self.default_currency.code())
            .map_or(Money::ZERO, |(_, threshold)| *threshold)
    }

    /// The default threshold of accounts whose `currency` column holds `code`.
    pub fn for_code(&self, code: Option<&str>) -> Option<Money> {
        let code = code.unwrap_or(self.default_currency.code());
        self.by_code.get(code).map(|(_, threshold)| *threshold)
    }

    /// The config key the default threshold of accounts with currency `code` comes from, or
    /// why there is none.
    pub fn source(&self, code: Option<&str>) -> String {
        let code = code.unwrap_or(self.default_currency.code());
        let from_table = code != self.default_currency.code() || self.default_from_table;
        match (self.by_code.contains_key(code), from_table) {
            (true, true) => format!("alert.thresholds.{code}"),
            (true, false) => "alert.threshold".to_owned(),
            (false, _) => format!(
                "currency {code} has no alert.thresholds.{code} and the account no \
                 alert_threshold_minor"
            ),
        }
    }

    /// Each distinct default threshold with the codes it applies to and whether accounts
    /// without a currency (the default currency) are among them, for the candidate query.
    pub fn groups(&self) -> Vec<ThresholdGroup> {
        let mut groups: Vec<ThresholdGroup> = Vec::new();
        for (code, (_, threshold)) in &self.by_code {
            let index = match groups.iter().position(|g| g.threshold == *threshold) {
                Some(index) => index,
                None => {
                    groups.push(ThresholdGroup {
                        threshold: *threshold,
                        codes: Vec::new(),
                        with_null: false,
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[index];
            group.codes.push(code.clone());
            group.with_null |= *code == self.default_currency.code();
        }
        groups
    }

    /// `margin`, an amount in the default currency's minor units, in the account's currency
    /// (`alert.rearm_margin` means the same decimal amount in every currency).
    pub fn margin_for(&self, account: &Account, margin: Money) -> Money {
        let digits = self.currency_of(account).0.minor_digits();
        margin.rescaled(self.default_currency.minor_digits(), digits)
    }

    /// The ISO 4217 codes whose minor digits differ from the default currency's, by digits:
    /// the `once` recovery query rescales `alert.rearm_margin` for them.
    pub fn other_digits(&self) -> BTreeMap<u32, Vec<&'static str>> {
        use iso_currency::IntoEnumIterator;
        let mut by_digits: BTreeMap<u32, Vec<&'static str>> = BTreeMap::new();
        for iso in iso_currency::Currency::iter() {
            let (code, Some(digits)) = (iso.code(), iso.exponent()) else {
                continue;
            };
            let digits = u32::from(digits);
            if digits != self.default_currency.minor_digits()
                && code != self.default_currency.code()
            {
                by_digits.entry(digits).or_default().push(code);
            }
        }
        by_digits
    }

    /// The codes with a default threshold (the default currency's included).
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.by_code.keys().map(String::as_str)
    }

    /// The account's currency: the default one when its column is null (or names the default
    /// code), else the configured or ISO 4217 definition. A code that is neither is a bad
    /// setting naming the column; the default currency stands in so that the rejected
    /// delivery can still be recorded.
    pub fn currency_of(&self, account: &Account) -> (Arc<Currency>, Option<BadSetting>) {
        let Some(code) = account.settings.currency.as_deref() else {
            return (self.default_currency.clone(), None);
        };
        if let Some((currency, _)) = self.by_code.get(code) {
            return (currency.clone(), None);
        }
        match iso_currency(code) {
            Some(currency) => (Arc::new(currency), None),
            None => (
                self.default_currency.clone(),
                Some(BadSetting {
                    column: "currency",
                    value: code.to_owned(),
                    reason: "not an ISO 4217 currency code with minor units (e.g. \"EUR\")".into(),
                }),
            ),
        }
    }
}

/// Accounts on one default threshold: those whose `currency` is one of `codes`, and those
/// without one when `with_null`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdGroup {
    pub threshold: Money,
    pub codes: Vec<String>,
    pub with_null: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccountSettings;

    fn account(currency: Option<&str>) -> Account {
        Account {
            settings: AccountSettings {
                currency: currency.map(str::to_owned),
                ..AccountSettings::default()
            },
            ..Account::default()
        }
    }

    fn thresholds() -> Thresholds {
        Thresholds::new(Currency::usd(), Money::from_minor(5000))
            .with(iso_currency("EUR").unwrap(), Money::from_minor(4000))
            .with(iso_currency("KWD").unwrap(), Money::from_minor(5000))
    }

    #[test]
    fn minor_digits_come_from_iso_4217() {
        let digits = |code| iso_currency(code).map(|c| c.minor_digits());
        assert_eq!(digits("EUR"), Some(2));
        assert_eq!(digits("JPY"), Some(0));
        assert_eq!(digits("KWD"), Some(3));
        assert_eq!(digits("XAU"), None, "gold has no minor unit");
        assert_eq!(digits("ZZZ"), None);
        assert_eq!(digits("eur"), None);
        let yen = iso_currency("JPY").unwrap();
        assert_eq!(yen.format(Money::from_minor(4900)), "¥4900");
        let dinar = iso_currency("KWD").unwrap();
        assert_eq!(dinar.decimal(Money::from_minor(4900)), "4.900");
    }

    #[test]
    fn each_currency_has_its_default_threshold_or_none() {
        let t = thresholds();
        assert_eq!(t.for_code(None), Some(Money::from_minor(5000)));
        assert_eq!(t.for_code(Some("USD")), Some(Money::from_minor(5000)));
        assert_eq!(t.for_code(Some("EUR")), Some(Money::from_minor(4000)));
        assert_eq!(t.for_code(Some("JPY")), None);
        assert_eq!(
            t.groups(),
            vec![
                ThresholdGroup {
                    threshold: Money::from_minor(4000),
                    codes: vec!["EUR".into()],
                    with_null: false,
                },
                ThresholdGroup {
                    threshold: Money::from_minor(5000),
                    codes: vec!["KWD".into(), "USD".into()],
                    with_null: true,
                },
            ]
        );
    }

    #[test]
    fn an_account_currency_resolves_or_names_its_column() {
        let t = thresholds();
        assert_eq!(t.currency_of(&account(None)).0.code(), "USD");
        assert_eq!(t.currency_of(&account(Some("EUR"))).0.symbol(), "€");
        let (yen, bad) = t.currency_of(&account(Some("JPY")));
        assert_eq!((yen.minor_digits(), bad), (0, None));
        let (fallback, bad) = t.currency_of(&account(Some("EURO")));
        assert_eq!(fallback.code(), "USD");
        let bad = bad.unwrap().to_string();
        assert!(bad.starts_with("accounts.currency = \"EURO\""), "{bad}");
    }

    #[test]
    fn the_default_currency_keeps_its_configured_definition() {
        let custom = Currency::new("USD", "US$", 2).unwrap();
        let t = Thresholds::new(custom, Money::from_minor(5000))
            .with(iso_currency("USD").unwrap(), Money::from_minor(7000));
        assert_eq!(t.default_threshold(), Money::from_minor(7000));
        assert_eq!(t.currency_of(&account(Some("USD"))).0.symbol(), "US$");
    }
}
