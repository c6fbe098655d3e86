//! A validated e-mail address: the only form in which an owner's address reaches a channel.

use std::fmt;

use email_address::Options;

/// An e-mail address that is syntactically deliverable: RFC 5322 `addr-spec`, a domain with
/// a top-level part, no display name, no domain literal, and no whitespace or control
/// characters (so it can never inject a header or break a log line).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

/// Why a string is not a deliverable e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid e-mail address {address:?}: {reason}")]
pub struct InvalidEmail {
    pub address: String,
    pub reason: String,
}

/// A phone number in E.164 form: `+`, a country code not starting with 0, at most 15 digits
/// in all (`+14155550100`), as SMS gateways take it. Stored numbers are not reformatted:
/// the bank writes them in this form (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(input: &str) -> Result<Self, String> {
        let shown: String = input.chars().take(40).collect();
        let digits = input
            .strip_prefix('+')
            .ok_or_else(|| format!("{shown:?} is not an E.164 number (it must start with +)"))?;
        let valid = (2..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if valid {
            Ok(Self(input.to_owned()))
        } else {
            Err(format!(
                "{shown:?} is not an E.164 number (+, a country code, at most 15 digits)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl EmailAddress {
    /// The longest address SMTP can carry (RFC 5321 path limit minus the angle brackets).
    pub const MAX_LEN: usize = 254;

    pub fn parse(input: &str) -> Result<Self, InvalidEmail> {
        let invalid = |reason: &str| InvalidEmail {
            // Bound what we echo back: a hostile 10 kB value must not flood the logs.
            address: input.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        if input.len() > Self::MAX_LEN {
            return Err(invalid("longer than 254 bytes"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace or control characters"));
        }
        let options = Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        email_address::EmailAddress::parse_with_options(input, options)
            .map(|parsed| Self(parsed.as_str().to_owned()))
            .map_err(|e| invalid(&e.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "alice@example.com",
            "a.b+tag@mail.example.co.uk",
            "x_y@sub.example.org",
        ] {
            assert_eq!(
                EmailAddress::parse(ok).map(|e| e.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn rejects_undeliverable_or_hostile_addresses() {
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "alice@localhost",
            "Alice <alice@example.com>",
            "alice@example.com\r\nBcc: eve@example.com",
            "alice @example.com",
            "alice@[127.0.0.1]",
            "a@@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        let err = EmailAddress::parse(&long).unwrap_err();
        assert!(
            err.address.len() <= 80,
            "error echoes the whole hostile input"
        );
    }
}
