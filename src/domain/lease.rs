//! Leases: a claim belongs to the sweep that took it for as long as that sweep renews it
//! (SPEC §2). Every claim records its holder and when it was last renewed; another sweep may
//! take it over only `claim_timeout` after that, and only the holder may record its outcome.
//!
//! What must stay true: a delivery attempt starts only while its claim stays held for at
//! least the attempt's time limit, so an attempt always ends before anyone else could take the
//! claim over. Renewals run well inside that margin ([`Lease::renew_every`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::alert::{AlertId, after};

/// Who holds a claim: one id per sweep (or check), stored in `alert_logs.claimed_by`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseHolder(String);

impl LeaseHolder {
    /// 64 random bits as 16 hex digits: unique enough among the sweeps whose claims can
    /// meet (a collision needs ~4 billion of them), and 20 bytes shorter than a UUID in every
    /// claimed row.
    pub fn generate() -> Self {
        Self(format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The claims one sweep holds, each with the instant its lease was last taken or renewed.
#[derive(Debug)]
pub struct Lease {
    holder: LeaseHolder,
    claim_timeout: Duration,
    held: Mutex<HashMap<AlertId, DateTime<Utc>>>,
}

impl Lease {
    pub fn new(claim_timeout: Duration) -> Self {
        Self {
            holder: LeaseHolder::generate(),
            claim_timeout,
            held: Mutex::default(),
        }
    }

    pub fn holder(&self) -> &LeaseHolder {
        &self.holder
    }

    /// Claims just written with `claimed_at = at`.
    pub fn hold<'a>(&self, ids: impl IntoIterator<Item = &'a AlertId>, at: DateTime<Utc>) {
        let mut held = self.lock();
        for id in ids {
            held.insert(id.clone(), at);
        }
    }

    /// Claims whose outcome is recorded (or that were given up): no longer renewed.
    pub fn release<'a>(&self, ids: impl IntoIterator<Item = &'a AlertId>) {
        let mut held = self.lock();
        for id in ids {
            held.remove(id);
        }
    }

    /// The claims to renew.
    pub fn held(&self) -> Vec<AlertId> {
        self.lock().keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A renewal written at `at` for `asked` returned `still_held`. An id asked for but not
    /// renewed is no longer ours (taken over after an outage of the renewals): it is dropped,
    /// so no delivery of it starts.
    pub fn renewed(&self, asked: &[AlertId], still_held: &[AlertId], at: DateTime<Utc>) {
        let mut held = self.lock();
        for id in still_held {
            if let Some(since) = held.get_mut(id) {
                *since = (*since).max(at);
            }
        }
        if still_held.len() < asked.len() {
            let kept: std::collections::HashSet<&AlertId> = still_held.iter().collect();
            for id in asked.iter().filter(|id| !kept.contains(id)) {
                held.remove(id);
            }
        }
    }

    /// Whether an attempt limited to `attempt` may start now on this claim: the claim is
    /// held and stays held past the attempt's end.
    pub fn may_start(&self, id: &AlertId, now: DateTime<Utc>, attempt: Duration) -> bool {
        let held = self.lock();
        held.get(id)
            .is_some_and(|since| after(now, attempt) < after(*since, self.claim_timeout))
    }

    /// How often to renew: often enough that a renewed claim always has more than one
    /// attempt's time left (`claim_timeout - attempt`, halved), and at least three times per
    /// `claim_timeout`; not more often than every 50 ms.
    pub fn renew_every(claim_timeout: Duration, attempt: Duration) -> Duration {
        let margin = claim_timeout.saturating_sub(attempt) / 2;
        margin.min(claim_timeout / 3).max(Duration::from_millis(50))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AlertId, DateTime<Utc>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_800_000_000 + seconds)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_attempt_starts_only_if_it_ends_before_the_claim_could_be_taken_over() {
        let lease = Lease::new(3 * SECOND);
        let id = AlertId::from_stored("a");
        lease.hold([&id], t(0));
        assert!(lease.may_start(&id, t(0), 2 * SECOND));
        assert!(
            !lease.may_start(&id, t(1), 2 * SECOND),
            "ends exactly at expiry"
        );
        lease.renewed(std::slice::from_ref(&id), std::slice::from_ref(&id), t(1));
        assert!(lease.may_start(&id, t(1), 2 * SECOND));
    }

    #[test]
    fn a_claim_not_renewed_is_dropped_and_never_started() {
        let lease = Lease::new(3 * SECOND);
        let (a, b) = (AlertId::from_stored("a"), AlertId::from_stored("b"));
        lease.hold([&a, &b], t(0));
        lease.renewed(&[a.clone(), b.clone()], std::slice::from_ref(&a), t(1));
        assert!(lease.may_start(&a, t(1), SECOND));
        assert!(!lease.may_start(&b, t(1), SECOND));
        assert_eq!(lease.held(), vec![a]);
    }

    #[test]
    fn released_claims_are_not_renewed_or_started() {
        let lease = Lease::new(3 * SECOND);
        let id = AlertId::from_stored("a");
        lease.hold([&id], t(0));
        lease.release([&id]);
        assert!(lease.is_empty());
        assert!(!lease.may_start(&id, t(0), SECOND));
    }

    #[test]
    fn renewals_leave_more_than_one_attempt_of_margin() {
        assert_eq!(
            Lease::renew_every(3 * SECOND, Duration::from_millis(2500)),
            Duration::from_millis(250)
        );
        assert_eq!(Lease::renew_every(300 * SECOND, 10 * SECOND), 100 * SECOND);
        assert_eq!(
            Lease::renew_every(SECOND, SECOND),
            Duration::from_millis(50)
        );
    }
}
