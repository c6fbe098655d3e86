//! Exact money: integer minor units (cents) end to end, decimal strings at the edges.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// An amount of money in the currency's minor units (cents for USD). May be negative.
///
/// There is deliberately no conversion from or to floating point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money {
    minor: i64,
}

/// Why a decimal string is not an amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{input:?} is not a decimal amount (expected digits like \"50.00\")")]
    NotANumber { input: String },
    #[error("{input:?} has {found} fractional digits; the currency allows at most {allowed}")]
    TooManyDigits {
        input: String,
        found: u32,
        allowed: u32,
    },
    #[error("{input:?} is too large to store in minor units")]
    OutOfRange { input: String },
}

impl Money {
    pub const ZERO: Self = Self::from_minor(0);

    pub const fn from_minor(minor: i64) -> Self {
        Self { minor }
    }

    pub const fn minor(self) -> i64 {
        self.minor
    }

    /// Parses a decimal string such as `"50.00"`, `"-3.5"` or `"12"` exactly.
    ///
    /// Rejects anything that is not a plain decimal number and any amount with more
    /// fractional digits than `minor_digits` (`"50.001"` for a 2-digit currency), so that a
    /// typo never silently rounds a threshold.
    pub fn parse(input: &str, minor_digits: u32) -> Result<Self, MoneyError> {
        // Check the shape first: rust_decimal alone would also accept `+5`, `1_000` and `5.`,
        // which a bank's configuration should not.
        let unsigned = input.strip_prefix('-').unwrap_or(input);
        let (int, frac) = match unsigned.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (unsigned, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
            return Err(MoneyError::NotANumber {
                input: input.to_owned(),
            });
        }
        let found = frac.map_or(0, str::len);
        if found > minor_digits as usize {
            return Err(MoneyError::TooManyDigits {
                input: input.to_owned(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                allowed: minor_digits,
            });
        }
        let out_of_range = || MoneyError::OutOfRange {
            input: input.to_owned(),
        };
        // The shape is valid, so the only way left to fail is size.
        let decimal = Decimal::from_str(input).map_err(|_| out_of_range())?;
        let factor = 10i64.checked_pow(minor_digits).ok_or_else(out_of_range)?;
        decimal
            .checked_mul(Decimal::from(factor))
            .and_then(|scaled| i64::try_from(scaled).ok())
            .map(Self::from_minor)
            .ok_or_else(out_of_range)
    }

    /// The amount for people: `"$49.00"`, `"-$5.00"`.
    /// The same amount counted with `to` minor digits instead of `from`, rounded up to a
    /// whole minor unit and saturating (`alert.rearm_margin` in another currency's units).
    pub fn rescaled(self, from: u32, to: u32) -> Money {
        let scale = |digits: u32| 10_i128.checked_pow(digits).unwrap_or(i128::MAX);
        let minor = i128::from(self.minor);
        let rescaled = if to >= from {
            minor.saturating_mul(scale(to - from))
        } else {
            let divisor = scale(from - to);
            minor.div_euclid(divisor) + i128::from(minor.rem_euclid(divisor) != 0)
        };
        let clamped = rescaled.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        // In range after the clamp.
        Money::from_minor(i64::try_from(clamped).unwrap_or_default())
    }

    pub fn display(self, currency: &Currency) -> DisplayMoney<'_> {
        DisplayMoney {
            money: self,
            currency,
        }
    }

    fn as_decimal(self, currency: &Currency) -> Decimal {
        // `Currency` guarantees minor_digits <= 18, far below rust_decimal's limit of 28 at
        // which `Decimal::new` would panic.
        Decimal::new(self.minor, currency.minor_digits)
    }
}

/// [`Money`] formatted with a currency symbol, from [`Money::display`].
pub struct DisplayMoney<'a> {
    money: Money,
    currency: &'a Currency,
}

impl fmt::Display for DisplayMoney<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.money.as_decimal(self.currency).abs();
        let sign = if self.money.minor < 0 { "-" } else { "" };
        write!(f, "{sign}{}{magnitude}", self.currency.symbol)
    }
}

/// A currency: its ISO 4217 code, the symbol messages show and its minor digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    code: String,
    symbol: String,
    minor_digits: u32,
}

/// Why a currency definition is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("minor_digits is {0}; at most {max} fit exact 64-bit minor units", max = Currency::MAX_MINOR_DIGITS)]
    TooManyMinorDigits(u32),
    #[error("code must be 3 uppercase letters (ISO 4217), got {0:?}")]
    InvalidCode(String),
}

impl Currency {
    /// The largest number of fractional digits whose scale factor (10^n) fits an `i64`.
    pub const MAX_MINOR_DIGITS: u32 = 18;

    /// `minor_digits` is 2 for USD and EUR, 0 for JPY, 3 for KWD.
    pub fn new(
        code: impl Into<String>,
        symbol: impl Into<String>,
        minor_digits: u32,
    ) -> Result<Self, CurrencyError> {
        let code = code.into();
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CurrencyError::InvalidCode(code));
        }
        if minor_digits > Self::MAX_MINOR_DIGITS {
            return Err(CurrencyError::TooManyMinorDigits(minor_digits));
        }
        Ok(Self {
            code,
            symbol: symbol.into(),
            minor_digits,
        })
    }

    /// US dollars, the built-in default.
    pub fn usd() -> Self {
        Self {
            code: "USD".into(),
            symbol: "$".into(),
            minor_digits: 2,
        }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    pub fn minor_digits(&self) -> u32 {
        self.minor_digits
    }

    pub fn parse_amount(&self, input: &str) -> Result<Money, MoneyError> {
        Money::parse(input, self.minor_digits)
    }

    /// `"$49.00"`: for messages to people.
    pub fn format(&self, money: Money) -> String {
        money.display(self).to_string()
    }

    /// `"49.00"`: the plain decimal string used in the audit log and machine payloads.
    pub fn decimal(&self, money: Money) -> String {
        money.as_decimal(self).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescaling_keeps_the_amount_and_rounds_up() {
        let m = Money::from_minor;
        assert_eq!(m(550).rescaled(2, 3), m(5500));
        assert_eq!(m(550).rescaled(2, 0), m(6));
        assert_eq!(m(500).rescaled(2, 0), m(5));
        assert_eq!(m(0).rescaled(2, 0), m(0));
        assert_eq!(m(i64::MAX).rescaled(0, 18), m(i64::MAX));
        assert_eq!(m(7).rescaled(2, 2), m(7));
    }

    #[test]
    fn parses_whole_and_fractional_amounts_exactly() {
        assert_eq!(Money::parse("50.00", 2), Ok(Money::from_minor(5000)));
        assert_eq!(Money::parse("50", 2), Ok(Money::from_minor(5000)));
        assert_eq!(Money::parse("0.5", 2), Ok(Money::from_minor(50)));
        assert_eq!(Money::parse("-3.25", 2), Ok(Money::from_minor(-325)));
        assert_eq!(Money::parse("1000", 0), Ok(Money::from_minor(1000)));
        assert_eq!(Money::parse("1.234", 3), Ok(Money::from_minor(1234)));
    }

    #[test]
    fn rejects_more_fractional_digits_than_the_currency_has() {
        assert!(matches!(
            Money::parse("50.001", 2),
            Err(MoneyError::TooManyDigits {
                found: 3,
                allowed: 2,
                ..
            })
        ));
        assert!(matches!(
            Money::parse("50.100", 2),
            Err(MoneyError::TooManyDigits { .. })
        ));
        assert!(matches!(
            Money::parse("1.5", 0),
            Err(MoneyError::TooManyDigits { .. })
        ));
    }

    #[test]
    fn rejects_anything_that_is_not_a_plain_decimal() {
        for input in [
            "", "abc", "1e3", "+5", "1_000", " 5", "5 ", "5.", ".5", "--5", "5.-1", "NaN", "$5",
            "-",
        ] {
            assert!(
                matches!(Money::parse(input, 2), Err(MoneyError::NotANumber { .. })),
                "{input:?} was accepted"
            );
        }
    }

    #[test]
    fn rejects_amounts_beyond_i64_minor_units() {
        assert!(matches!(
            Money::parse("92233720368547758.08", 2),
            Err(MoneyError::OutOfRange { .. })
        ));
        assert_eq!(
            Money::parse("92233720368547758.07", 2),
            Ok(Money::from_minor(i64::MAX))
        );
        assert_eq!(
            Money::parse("-92233720368547758.08", 2),
            Ok(Money::from_minor(i64::MIN))
        );
    }

    #[test]
    fn formats_with_symbol_and_sign() {
        let usd = Currency::usd();
        assert_eq!(usd.format(Money::from_minor(4900)), "$49.00");
        assert_eq!(usd.format(Money::from_minor(5)), "$0.05");
        assert_eq!(usd.format(Money::from_minor(-500)), "-$5.00");
        assert_eq!(
            usd.format(Money::from_minor(i64::MIN)),
            "-$92233720368547758.08"
        );
        assert_eq!(usd.decimal(Money::from_minor(-1)), "-0.01");
        let yen = Currency::new("JPY", "¥", 0).unwrap();
        assert_eq!(yen.format(Money::from_minor(1200)), "¥1200");
    }

    #[test]
    fn rejects_currencies_whose_minor_units_do_not_fit_i64() {
        assert!(Currency::new("XXX", "x", 19).is_err());
        assert!(Currency::new("usd", "$", 2).is_err());
        assert!(Currency::new("XXX", "x", 18).is_ok());
    }

    #[test]
    fn decimal_strings_round_trip() {
        for minor in [0, 1, -1, 99, 100, 4999, 5000, -123_456, i64::MAX, i64::MIN] {
            let money = Money::from_minor(minor);
            let text = Currency::usd().decimal(money);
            assert_eq!(Money::parse(&text, 2), Ok(money), "{text}");
        }
    }
}
