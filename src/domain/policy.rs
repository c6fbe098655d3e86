//! How often a below account is alerted (SPEC §2): the alert policy, quiet hours and the
//! time zone they are read in, from config with per-account overrides.
//!
//! Local time is a wall clock: quiet hours compare the account's local time of day with the
//! window, and `daily` compares local calendar dates, so days of 23 or 25 hours and windows
//! that start inside a skipped hour need no special case. The IANA database is compiled in
//! (chrono-tz), so a host without tzdata behaves the same.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use super::account::Account;

/// `repeat`, `once` or `daily` (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// At most one alert per cooldown; a reminder after each cooldown while below.
    #[default]
    Repeat,
    /// One alert per dip: re-armed only when a sweep sees the balance recovered.
    Once,
    /// At most one alert per calendar day in the account's time zone while below.
    Daily,
}

impl Policy {
    pub const ALL: [Self; 3] = [Self::Repeat, Self::Once, Self::Daily];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Repeat => "repeat",
            Self::Once => "once",
            Self::Daily => "daily",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a policy (expected repeat, once or daily)"))
    }
}

/// A daily window of local time, `"HH:MM-HH:MM"`; it crosses midnight when the end is
/// earlier than the start (`"22:00-07:00"`). Start inclusive, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// `""` (or blanks) = no quiet hours.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || format!("{text:?} is not a window like \"22:00-07:00\" (HH:MM-HH:MM)");
        let (start, end) = text.split_once('-').ok_or_else(bad)?;
        let time = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| bad());
        let (start, end) = (time(start)?, time(end)?);
        if start == end {
            return Err(format!(
                "{text:?} starts and ends at the same time; use \"\" for no quiet hours"
            ));
        }
        Ok(Some(Self { start, end }))
    }

    /// Whether the local time of day `t` is inside the window.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

/// An IANA time zone name, as chrono-tz knows it.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone name (like \"Europe/Paris\")"))
}

/// The configured defaults an account's own settings override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDefaults {
    pub policy: Policy,
    pub timezone: Tz,
    pub quiet_hours: Option<QuietHours>,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        Self {
            policy: Policy::Repeat,
            timezone: Tz::UTC,
            quiet_hours: None,
        }
    }
}

/// Where an effective setting came from, for `check` to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Account,
    Config,
}

/// One account's effective policy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountPolicy {
    pub policy: Policy,
    pub policy_from: Source,
    pub timezone: Tz,
    pub quiet_hours: Option<QuietHours>,
}

/// A per-account setting the daemon cannot honour: that account's deliveries fail
/// permanently with this message (it names the column and the value), the others go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("accounts.{column} = {value:?}: {reason}")]
pub struct BadSetting {
    pub column: &'static str,
    pub value: String,
    pub reason: String,
}

impl PolicyDefaults {
    /// The account's settings over these defaults. A bad value in the row is an error naming
    /// its column; the policy then falls back to the default so the caller can still tell
    /// whether an alert is due at all.
    pub fn for_account(&self, account: &Account) -> (AccountPolicy, Option<BadSetting>) {
        let s = &account.settings;
        let mut bad = None;
        let mut note = |column, value: &str, reason| {
            bad.get_or_insert(BadSetting {
                column,
                value: value.to_owned(),
                reason,
            });
        };
        let (policy, policy_from) = match s.alert_policy.as_deref() {
            None => (self.policy, Source::Config),
            Some(text) => match text.trim().parse() {
                Ok(policy) => (policy, Source::Account),
                Err(reason) => {
                    note("alert_policy", text, reason);
                    (self.policy, Source::Config)
                }
            },
        };
        let timezone = match s.timezone.as_deref() {
            None => self.timezone,
            Some(text) => parse_timezone(text).unwrap_or_else(|reason| {
                note("timezone", text, reason);
                self.timezone
            }),
        };
        let quiet_hours = match s.quiet_hours.as_deref() {
            None => self.quiet_hours,
            Some(text) => QuietHours::parse(text).unwrap_or_else(|reason| {
                note("quiet_hours", text, reason);
                None
            }),
        };
        (
            AccountPolicy {
                policy,
                policy_from,
                timezone,
                quiet_hours,
            },
            bad,
        )
    }
}

impl AccountPolicy {
    /// The quiet window `now` falls in, if any.
    pub fn quiet_now(&self, now: DateTime<Utc>) -> Option<QuietHours> {
        let local = local_datetime(self.timezone, now).time();
        self.quiet_hours.filter(|q| q.contains(local))
    }

    /// The account's local calendar date at `at`.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        local_datetime(self.timezone, at).date()
    }
}

/// The wall-clock time in `tz` at `at`. chrono's `with_timezone(..).date_naive()` panics when
/// the offset carries the instant past chrono's last representable date (a clock or fake
/// clock near year 262143); this keeps the UTC wall clock there instead, so no instant the
/// clock can return panics.
pub fn local_datetime(tz: Tz, at: DateTime<Utc>) -> NaiveDateTime {
    let utc = at.naive_utc();
    utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())
        .unwrap_or(utc)
}

/// The first instant of `now`'s local calendar day in `tz` (midnight, or the first minute
/// after it that exists where a DST change skips midnight).
pub fn start_of_day(tz: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
    let date = local_datetime(tz, now).date();
    (0..24 * 60)
        .find_map(|minute| {
            let time = NaiveTime::from_num_seconds_from_midnight_opt(minute * 60, 0)?;
            tz.from_local_datetime(&date.and_time(time)).earliest()
        })
        .map_or(now, |start| start.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccountSettings;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn policy(tz: &str, quiet: &str) -> AccountPolicy {
        AccountPolicy {
            policy: Policy::Repeat,
            policy_from: Source::Config,
            timezone: parse_timezone(tz).unwrap(),
            quiet_hours: QuietHours::parse(quiet).unwrap(),
        }
    }

    #[test]
    fn local_time_at_the_ends_of_the_calendar_does_not_panic() {
        // Found by the property test: Kiritimati (+14) at chrono's last instant overflowed
        // inside `date_naive()`.
        for zone in ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Paris"] {
            let tz = parse_timezone(zone).unwrap();
            for now in [DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC] {
                let account = AccountPolicy {
                    policy: Policy::Daily,
                    policy_from: Source::Config,
                    timezone: tz,
                    quiet_hours: QuietHours::parse("22:00-07:00").unwrap(),
                };
                let _ = account.quiet_now(now);
                let _ = account.local_date(now);
                assert!(start_of_day(tz, now) <= now || now == DateTime::<Utc>::MIN_UTC);
            }
        }
    }

    #[test]
    fn quiet_hours_parse_and_reject_what_is_not_a_window() {
        assert_eq!(QuietHours::parse("").unwrap(), None);
        let q = QuietHours::parse("22:00-07:00").unwrap().unwrap();
        assert_eq!(q.to_string(), "22:00-07:00");
        for bad in [
            "22-07",
            "25:00-07:00",
            "22:00",
            "abc",
            "07:00-07:00",
            "22:00-07:00-08:00",
        ] {
            assert!(QuietHours::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_across_midnight_holds_late_evening_and_early_morning() {
        let q = QuietHours::parse("22:00-07:00").unwrap().unwrap();
        let t = |s| NaiveTime::parse_from_str(s, "%H:%M").unwrap();
        assert!(q.contains(t("22:00")) && q.contains(t("23:59")) && q.contains(t("00:00")));
        assert!(q.contains(t("06:59")));
        assert!(!q.contains(t("07:00")) && !q.contains(t("21:59")) && !q.contains(t("12:00")));
        let day = QuietHours::parse("09:00-17:00").unwrap().unwrap();
        assert!(day.contains(t("09:00")) && !day.contains(t("17:00")) && !day.contains(t("08:59")));
    }

    #[test]
    fn quiet_hours_follow_paris_across_both_dst_changes() {
        let p = policy("Europe/Paris", "22:00-07:00");
        // 2026-03-29: clocks jump 02:00 -> 03:00 (UTC+1 -> UTC+2).
        assert!(p.quiet_now(at("2026-03-29T04:59:00Z")).is_some()); // 06:59 CEST
        assert!(p.quiet_now(at("2026-03-29T05:00:00Z")).is_none()); // 07:00 CEST
        assert!(p.quiet_now(at("2026-03-28T20:59:00Z")).is_none()); // 21:59 CET
        assert!(p.quiet_now(at("2026-03-28T21:00:00Z")).is_some()); // 22:00 CET
        // 2026-10-25: clocks fall back 03:00 -> 02:00 (UTC+2 -> UTC+1).
        assert!(p.quiet_now(at("2026-10-25T05:59:00Z")).is_some()); // 06:59 CET
        assert!(p.quiet_now(at("2026-10-25T06:00:00Z")).is_none()); // 07:00 CET
        assert!(p.quiet_now(at("2026-10-24T19:59:00Z")).is_none()); // 21:59 CEST
        assert!(p.quiet_now(at("2026-10-24T20:00:00Z")).is_some()); // 22:00 CEST
    }

    #[test]
    fn a_window_starting_in_the_skipped_hour_starts_when_the_clock_jumps_past_it() {
        // New York 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 never happens.
        let p = policy("America/New_York", "02:30-05:00");
        assert!(p.quiet_now(at("2026-03-08T06:59:00Z")).is_none()); // 01:59 EST
        assert!(p.quiet_now(at("2026-03-08T07:00:00Z")).is_some()); // 03:00 EDT
        assert!(p.quiet_now(at("2026-03-08T08:59:00Z")).is_some()); // 04:59 EDT
        assert!(p.quiet_now(at("2026-03-08T09:00:00Z")).is_none()); // 05:00 EDT
        // 2026-11-01: 02:00 EDT becomes 01:00 EST; the window holds once, in EST.
        assert!(p.quiet_now(at("2026-11-01T07:29:00Z")).is_none()); // 02:29 EST
        assert!(p.quiet_now(at("2026-11-01T07:30:00Z")).is_some()); // 02:30 EST
    }

    #[test]
    fn local_days_are_23_and_25_hours_long_at_the_dst_changes() {
        let paris = parse_timezone("Europe/Paris").unwrap();
        let spring = start_of_day(paris, at("2026-03-29T12:00:00Z"));
        let next = start_of_day(paris, at("2026-03-30T12:00:00Z"));
        assert_eq!(spring, at("2026-03-28T23:00:00Z"));
        assert_eq!((next - spring).num_hours(), 23);
        let autumn = start_of_day(paris, at("2026-10-25T12:00:00Z"));
        let after = start_of_day(paris, at("2026-10-26T12:00:00Z"));
        assert_eq!((after - autumn).num_hours(), 25);
        let ny = parse_timezone("America/New_York").unwrap();
        let fall = start_of_day(ny, at("2026-11-01T12:00:00Z"));
        assert_eq!(fall, at("2026-11-01T04:00:00Z"));
        assert_eq!(
            (start_of_day(ny, at("2026-11-02T12:00:00Z")) - fall).num_hours(),
            25
        );
    }

    #[test]
    fn a_zone_whose_midnight_is_skipped_starts_its_day_at_the_first_existing_minute() {
        // America/Santiago 2026-09-06: 00:00 becomes 01:00 (UTC-4 -> UTC-3).
        let santiago = parse_timezone("America/Santiago").unwrap();
        let start = start_of_day(santiago, at("2026-09-06T15:00:00Z"));
        assert_eq!(start, at("2026-09-06T04:00:00Z")); // 01:00 -03
    }

    #[test]
    fn account_settings_override_the_defaults_and_bad_ones_name_their_column() {
        let defaults = PolicyDefaults::default();
        let mut account = Account::default();
        let (p, bad) = defaults.for_account(&account);
        assert_eq!(
            (p.policy, p.policy_from, bad),
            (Policy::Repeat, Source::Config, None)
        );
        account.settings = AccountSettings {
            alert_policy: Some("once".into()),
            timezone: Some("Europe/Paris".into()),
            quiet_hours: Some("".into()),
            ..AccountSettings::default()
        };
        let (p, bad) = defaults.for_account(&account);
        assert_eq!((p.policy, p.policy_from), (Policy::Once, Source::Account));
        assert_eq!(
            (p.timezone, p.quiet_hours, bad),
            (Tz::Europe__Paris, None, None)
        );
        account.settings.timezone = Some("Mars/Olympus".into());
        let (_, bad) = defaults.for_account(&account);
        let bad = bad.unwrap();
        assert_eq!(bad.column, "timezone");
        assert!(
            bad.to_string()
                .starts_with("accounts.timezone = \"Mars/Olympus\""),
            "{bad}"
        );
        account.settings.timezone = None;
        account.settings.quiet_hours = Some("late".into());
        assert_eq!(
            defaults.for_account(&account).1.unwrap().column,
            "quiet_hours"
        );
        account.settings.alert_policy = Some("weekly".into());
        assert_eq!(
            defaults.for_account(&account).1.unwrap().column,
            "alert_policy"
        );
    }
}
