//! Accounts as the daemon sees them: read-only, written by the bank's systems.

use std::fmt;

use chrono::{DateTime, Utc};

use super::currency::Thresholds;
use super::money::Money;

/// An account id: the text primary key of `accounts` (a UUID in text form by contract, but
/// kept as the exact text an external writer stored so a lookup never misses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One row of `accounts`. The e-mail stays raw here: a bad address is a property of one
/// delivery (it fails, alone), not a reason the account cannot be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub owner_email: String,
    pub owner_name: Option<String>,
    pub balance: Money,
    /// The customer's own threshold; `None` means the configured default applies.
    pub threshold_override: Option<Money>,
    /// When the bank last wrote the row; `None` when the read did not fetch it (the
    /// sweep's candidate scan is index-only and does not need it).
    pub updated_at: Option<DateTime<Utc>>,
    /// E.164 phone number, for the `sms` channel.
    pub owner_phone: Option<String>,
    /// The per-account settings of SPEC §3, as stored; `None` = the configured default.
    pub settings: AccountSettings,
}

/// Per-account columns an operator or the bank may set (SPEC §3), kept as stored text: a bad
/// value is a problem of this account's deliveries, not a reason the account cannot be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountSettings {
    pub currency: Option<String>,
    pub alert_policy: Option<String>,
    pub alert_channels: Option<String>,
    pub timezone: Option<String>,
    pub quiet_hours: Option<String>,
}

impl Account {
    /// The name used to greet the owner: "Customer" when the bank has none on file.
    pub fn display_name(&self) -> &str {
        display_name(self.owner_name.as_deref())
    }

    /// The account's own threshold when it has one, else the configured default of its
    /// currency; `None` when neither exists (such an account is never alerted).
    pub fn effective_threshold(&self, thresholds: &Thresholds) -> Option<Money> {
        self.threshold_override
            .or_else(|| thresholds.for_code(self.settings.currency.as_deref()))
    }

    /// The contact details an alert on `channel` is addressed to: the phone for `sms`, the
    /// e-mail for every other channel (console and e-mail send to it, Slack and webhook carry
    /// it). A permanently failed alert stays parked while they are unchanged (SPEC §2). When a
    /// setting of the account cannot be honoured, that setting is part of them too, so that
    /// fixing it retries the parked alert. Equal to `owner_email` otherwise for the e-mail
    /// channels: the candidate query compares the stored contact with that column.
    pub fn contact(
        &self,
        channel: &super::alert::ChannelName,
        bad: Option<&super::policy::BadSetting>,
    ) -> String {
        let base = if channel.addresses_phone() {
            self.owner_phone.as_deref().unwrap_or_default()
        } else {
            &self.owner_email
        };
        match bad {
            None => base.to_owned(),
            Some(bad) => format!("{base}\n{}={}", bad.column, bad.value),
        }
    }

    /// Whether the account has a phone on file (`sms` skips accounts without one).
    pub fn has_phone(&self) -> bool {
        self.owner_phone
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty())
    }

    /// `once` re-arms at the effective threshold plus `margin` or above (a threshold so
    /// close to the largest amount that the sum overflows cannot be reached). An account
    /// left without any threshold is below nothing: recovered.
    pub fn has_recovered(&self, thresholds: &Thresholds, margin: Money) -> bool {
        self.effective_threshold(thresholds).is_none()
            || self
                .rearm_at(thresholds, margin)
                .is_some_and(|rearm| self.balance >= rearm)
    }

    /// `once`: the balance that re-arms the account, its threshold plus `margin` (an amount
    /// in the default currency, see [`Thresholds::margin_for`]); `None` without a threshold
    /// or when the sum overflows.
    pub fn rearm_at(&self, thresholds: &Thresholds, margin: Money) -> Option<Money> {
        let threshold = self.effective_threshold(thresholds)?;
        let margin = thresholds.margin_for(self, margin);
        threshold
            .minor()
            .checked_add(margin.minor())
            .map(Money::from_minor)
    }

    /// Strictly below: a balance equal to the threshold raises no alert, and an account
    /// without a threshold none either.
    pub fn is_below_threshold(&self, thresholds: &Thresholds) -> bool {
        self.effective_threshold(thresholds)
            .is_some_and(|threshold| self.balance < threshold)
    }
}

/// "Customer" when the bank has no (or a blank) name on file.
pub fn display_name(owner_name: Option<&str>) -> &str {
    match owner_name.map(str::trim) {
        Some(name) if !name.is_empty() => name,
        _ => "Customer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(balance: i64, threshold: Option<i64>) -> Account {
        Account {
            id: AccountId::new("a"),
            owner_email: "a@example.com".into(),
            owner_name: None,
            balance: Money::from_minor(balance),
            threshold_override: threshold.map(Money::from_minor),
            ..Account::default()
        }
    }

    fn default(minor: i64) -> Thresholds {
        Thresholds::new(crate::domain::Currency::usd(), Money::from_minor(minor))
    }

    #[test]
    fn below_threshold_is_strict() {
        let default = &default(5000);
        assert!(account(4999, None).is_below_threshold(default));
        assert!(!account(5000, None).is_below_threshold(default));
        assert!(account(-1, None).is_below_threshold(default));
        assert!(account(i64::MIN, None).is_below_threshold(default));
        assert!(!account(i64::MAX, None).is_below_threshold(default));
    }

    #[test]
    fn own_threshold_overrides_the_default() {
        let default = &default(5000);
        assert!(!account(4999, Some(1000)).is_below_threshold(default));
        assert!(account(9999, Some(10_000)).is_below_threshold(default));
    }

    #[test]
    fn an_account_in_a_currency_without_a_threshold_is_never_below() {
        let mut yen = account(-1_000_000, None);
        yen.settings.currency = Some("JPY".into());
        assert!(!yen.is_below_threshold(&default(5000)));
        assert!(yen.has_recovered(&default(5000), Money::ZERO));
        yen.threshold_override = Some(Money::from_minor(1000));
        assert!(yen.is_below_threshold(&default(5000)));
    }

    #[test]
    fn missing_or_blank_name_reads_customer() {
        let mut a = account(0, None);
        assert_eq!(a.display_name(), "Customer");
        a.owner_name = Some("  ".into());
        assert_eq!(a.display_name(), "Customer");
        a.owner_name = Some("Alice".into());
        assert_eq!(a.display_name(), "Alice");
    }
}
