//! Deciding what to claim for accounts read under the claim's lock: the one rule every store
//! applies (the SQL candidate query only pre-filters with the same [`Cutoffs`]).

use std::collections::BTreeSet;

use serde::Serialize;

use super::account::{Account, AccountId};
use super::alert::{
    AlertId, AlertRecord, AlertRules, AlertsByPair, ChannelName, Claim, Cutoffs, Decision,
};

/// What a claim found, in accounts. `claimed + nothing_due + locked + changed + gone` is the
/// number of accounts the claim looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClaimTally {
    /// At least one delivery claimed.
    pub claimed: u64,
    /// Below the threshold, but every channel of the account not due (blocked by its
    /// policy, in flight elsewhere or parked), or the account opted out of every channel.
    pub nothing_due: u64,
    /// Locked by another claimer at that moment (a check's account; see `changed` for pages).
    pub locked: u64,
    /// No longer below the threshold when read under the lock (topped up, re-thresholded).
    /// For a sweep's page also every listed account the lock no longer finds: deleted, or
    /// (PostgreSQL) locked by another claimer.
    pub changed: u64,
    /// Deleted since it was listed.
    pub gone: u64,
    /// Due on a channel but inside quiet hours (and nothing claimed): deferred.
    pub deferred: u64,
}

impl ClaimTally {
    pub fn add(&mut self, other: &ClaimTally) {
        self.claimed += other.claimed;
        self.nothing_due += other.nothing_due;
        self.locked += other.locked;
        self.changed += other.changed;
        self.gone += other.gone;
        self.deferred += other.deferred;
    }

    /// Accounts listed as candidates but left alone because they changed under the sweep.
    pub fn skipped(&self) -> u64 {
        self.locked + self.changed + self.gone
    }
}

/// What one claim writes, and why.
#[derive(Debug, Default)]
pub struct ClaimPlan {
    /// New alerts (new ids).
    pub new: Vec<Claim>,
    /// Open alerts taken (back) under their ids.
    pub retries: Vec<Claim>,
    /// Alerts due for a retry but past `give_up_after`: to be recorded `expired`.
    pub expire: Vec<Claim>,
    /// Every account and channel with its decision (kept only when asked for: a check
    /// explains itself, a sweep only counts).
    pub decisions: Vec<(AccountId, ChannelName, Decision)>,
    pub tally: ClaimTally,
    /// Channel names accounts asked for (`alert_channels`) that are not configured: ignored,
    /// for the sweep to warn about once.
    pub unconfigured: BTreeSet<String>,
}

/// The configured channels an account is alerted on: all of them when its `alert_channels`
/// is null, those it names otherwise (comma-separated; `''` names none: opted out). Names
/// not configured are added to `unconfigured`.
pub fn channels_for<'c>(
    account: &Account,
    channels: &'c [ChannelName],
    unconfigured: &mut BTreeSet<String>,
) -> Vec<&'c ChannelName> {
    // A channel that needs a contact the account lacks (`sms` without a phone) is skipped.
    let reachable = |c: &&ChannelName| !c.addresses_phone() || account.has_phone();
    let Some(list) = account.settings.alert_channels.as_deref() else {
        return channels.iter().filter(reachable).collect();
    };
    let named: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    for name in &named {
        if !channels.iter().any(|c| c.as_str() == *name) {
            unconfigured.insert((*name).to_owned());
        }
    }
    channels
        .iter()
        .filter(|c| named.contains(&c.as_str()))
        .filter(reachable)
        .collect()
}

/// Plans the claims for `accounts` as read under the lock, with their stored alerts.
/// `locked` and `gone` count the requested accounts the lock did not return.
pub fn plan_claims(
    accounts: &[Account],
    records: &[AlertRecord],
    channels: &[ChannelName],
    rules: &AlertRules,
    cutoffs: &Cutoffs,
    keep_decisions: bool,
) -> ClaimPlan {
    let by_pair = AlertsByPair::new(records);
    let mut plan = ClaimPlan::default();
    for account in accounts {
        let Some(threshold) = account
            .effective_threshold(&rules.thresholds)
            .filter(|threshold| account.balance < *threshold)
        else {
            plan.tally.changed += 1;
            continue;
        };
        let (currency, bad_currency) = rules.thresholds.currency_of(account);
        let (policy, bad_policy) = rules.policy.for_account(account);
        let bad = bad_currency.or(bad_policy);
        // A bad quiet-hours value cannot tell when to send: such an account is rejected.
        let quiet = bad
            .is_none()
            .then(|| policy.quiet_now(cutoffs.now))
            .flatten();
        let (mut claimed, mut deferred) = (false, false);
        for channel in channels_for(account, channels, &mut plan.unconfigured) {
            let contact = account.contact(channel, bad.as_ref());
            let claim = |alert_id: AlertId, prior_attempts, created_at| Claim {
                alert_id,
                channel: channel.clone(),
                account: account.clone(),
                threshold,
                currency: currency.clone(),
                prior_attempts,
                created_at,
                contact: contact.clone(),
                rejected: bad.as_ref().map(ToString::to_string),
            };
            let mut decision = cutoffs.decide(&contact, &policy, by_pair.get(&account.id, channel));
            if let (true, Some(quiet_hours)) = (decision.is_claimable(), quiet) {
                decision = Decision::Deferred { quiet_hours };
            }
            match &decision {
                Decision::New => {
                    plan.new.push(claim(AlertId::generate(), 0, cutoffs.now));
                }
                Decision::Retry {
                    alert_id,
                    attempts,
                    created_at,
                } => plan
                    .retries
                    .push(claim(alert_id.clone(), *attempts, *created_at)),
                Decision::Expire {
                    alert_id,
                    attempts,
                    created_at,
                } => plan
                    .expire
                    .push(claim(alert_id.clone(), *attempts, *created_at)),
                Decision::Deferred { .. } => deferred = true,
                Decision::InCooldown { .. }
                | Decision::NotRearmed { .. }
                | Decision::AlreadyToday { .. }
                | Decision::InFlight { .. }
                | Decision::Parked { .. } => {}
            }
            claimed |= decision.is_claimable();
            if keep_decisions {
                plan.decisions
                    .push((account.id.clone(), channel.clone(), decision));
            }
        }
        if claimed {
            plan.tally.claimed += 1;
        } else if deferred {
            plan.tally.deferred += 1;
        } else {
            plan.tally.nothing_due += 1;
        }
    }
    plan
}
