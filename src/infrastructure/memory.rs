//! [`AlertStore`] in memory: the port's contract without a database, for fast use-case tests
//! (leases, fencing, failure classes with a fake clock). One mutex plays the claim's lock.
//! It applies the same domain rule as the SQL store ([`plan_claims`]); it lists every account
//! below its threshold as a candidate (the SQL pre-filter is an optimization only).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};

use crate::domain::ports::{AccountCounts, AlertStore, ClaimBatch, Clock, StoreError, SweepClaims};
use crate::domain::{
    Account, AccountId, AlertId, AlertRecord, AlertRules, AlertStatus, ChannelName, Claim, Lease,
    LeaseHolder, Outcome, Policy, plan_claims,
};

/// One stored alert, as `alert_logs` holds it.
#[derive(Debug, Clone)]
pub struct StoredAlert {
    pub record: AlertRecord,
    pub claimed_by: Option<String>,
    pub threshold_minor: i64,
    pub balance_minor: i64,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    accounts: BTreeMap<String, Account>,
    alerts: Vec<StoredAlert>,
    audit_backlog: Vec<String>,
}

/// Called before each claim with the page's ids: lets a test change accounts between the
/// listing and the lock, as the bank's systems would.
type BeforeClaim = Box<dyn Fn(&InMemoryStore, &[String]) + Send + Sync>;

#[derive(Clone, Default)]
pub struct InMemoryStore {
    state: Arc<Mutex<State>>,
    before_claim: Arc<Mutex<Option<BeforeClaim>>>,
}

impl InMemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put_account(&self, account: Account) {
        self.lock()
            .accounts
            .insert(account.id.as_str().to_owned(), account);
    }

    pub fn update_account(&self, id: &AccountId, change: impl FnOnce(&mut Account)) {
        if let Some(account) = self.lock().accounts.get_mut(id.as_str()) {
            change(account);
        }
    }

    pub fn delete_account(&self, id: &AccountId) {
        let mut state = self.lock();
        state.accounts.remove(id.as_str());
        state.alerts.retain(|a| &a.record.account_id != id);
    }

    pub fn alerts(&self) -> Vec<StoredAlert> {
        self.lock().alerts.clone()
    }

    pub fn before_each_claim(
        &self,
        hook: impl Fn(&InMemoryStore, &[String]) + Send + Sync + 'static,
    ) {
        *self
            .before_claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(hook));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn claim(
        &self,
        holder: &LeaseHolder,
        ids: &[String],
        channels: &[ChannelName],
        rules: &AlertRules,
        now: DateTime<Utc>,
        keep_decisions: bool,
    ) -> ClaimBatch {
        if let Some(hook) = &*self
            .before_claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            hook(self, ids);
        }
        let mut state = self.lock();
        let accounts: Vec<Account> = ids
            .iter()
            .filter_map(|id| state.accounts.get(id).cloned())
            .collect();
        let gone = (ids.len() - accounts.len()) as u64;
        let records: Vec<AlertRecord> = state
            .alerts
            .iter()
            .filter(|a| ids.contains(&a.record.account_id.as_str().to_owned()))
            .map(|a| a.record.clone())
            .collect();
        let cutoffs = rules.cutoffs(now);
        let mut plan = plan_claims(
            &accounts,
            &records,
            channels,
            rules,
            &cutoffs,
            keep_decisions,
        );
        plan.tally.gone += gone;
        for claim in &plan.new {
            state.alerts.push(StoredAlert {
                record: AlertRecord {
                    id: claim.alert_id.clone(),
                    account_id: claim.account.id.clone(),
                    channel: claim.channel.clone(),
                    status: AlertStatus::Pending,
                    attempts: 0,
                    created_at: now,
                    claimed_at: now,
                    sent_at: None,
                    contact: None,
                    resolved_at: None,
                },
                claimed_by: Some(holder.as_str().to_owned()),
                threshold_minor: claim.threshold.minor(),
                balance_minor: claim.account.balance.minor(),
                last_error: None,
            });
        }
        let take =
            |state: &mut State, claims: &[Claim], change: &dyn Fn(&mut StoredAlert, &Claim)| {
                for claim in claims {
                    if let Some(row) = state
                        .alerts
                        .iter_mut()
                        .find(|a| a.record.id == claim.alert_id)
                    {
                        change(row, claim);
                    }
                }
            };
        take(&mut state, &plan.retries, &|row, claim| {
            row.record.status = AlertStatus::Pending;
            row.record.claimed_at = now;
            row.record.contact = None;
            row.claimed_by = Some(holder.as_str().to_owned());
            row.threshold_minor = claim.threshold.minor();
            row.balance_minor = claim.account.balance.minor();
        });
        take(&mut state, &plan.expire, &|row, _| {
            row.record.status = AlertStatus::Expired;
            row.record.claimed_at = now;
        });
        ClaimBatch {
            claims: plan.new.into_iter().chain(plan.retries).collect(),
            expired: plan.expire,
            tally: plan.tally,
            decisions: plan.decisions,
            unconfigured: plan.unconfigured,
        }
    }
}

fn held_by(row: &StoredAlert, lease: &LeaseHolder) -> bool {
    row.record.status == AlertStatus::Pending && row.claimed_by.as_deref() == Some(lease.as_str())
}

#[async_trait]
impl AlertStore for InMemoryStore {
    async fn find_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        Ok(self.lock().accounts.get(id.as_str()).cloned())
    }

    async fn count_accounts(&self, rules: &AlertRules) -> Result<AccountCounts, StoreError> {
        let state = self.lock();
        let mut counts = AccountCounts::default();
        let mut without: BTreeMap<String, u64> = BTreeMap::new();
        for account in state.accounts.values() {
            counts.below_threshold += u64::from(account.is_below_threshold(&rules.thresholds));
            if account.effective_threshold(&rules.thresholds).is_none() {
                let code = account.settings.currency.clone().unwrap_or_default();
                *without.entry(code).or_default() += 1;
            }
        }
        counts.without_threshold = without.into_iter().collect();
        Ok(counts)
    }

    async fn resolve_recovered(
        &self,
        rules: &AlertRules,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let State {
            accounts, alerts, ..
        } = &mut *state;
        let mut resolved = 0;
        for alert in alerts.iter_mut() {
            let r = &mut alert.record;
            let closed = matches!(r.status, AlertStatus::Sent | AlertStatus::Expired);
            let Some(account) = accounts.get(r.account_id.as_str()) else {
                continue;
            };
            if closed
                && r.resolved_at.is_none()
                && rules.policy.for_account(account).0.policy == Policy::Once
                && account.has_recovered(&rules.thresholds, rules.rearm_margin)
            {
                r.resolved_at = Some(now);
                resolved += 1;
            }
        }
        Ok(resolved)
    }

    fn preview_due(
        &self,
        channels: Vec<ChannelName>,
        rules: AlertRules,
        _page_size: u32,
        now: DateTime<Utc>,
    ) -> BoxStream<'static, Result<ClaimBatch, StoreError>> {
        let state = self.lock();
        let accounts: Vec<Account> = state
            .accounts
            .values()
            .filter(|a| a.is_below_threshold(&rules.thresholds))
            .cloned()
            .collect();
        let records: Vec<AlertRecord> = state.alerts.iter().map(|a| a.record.clone()).collect();
        let mut plan = plan_claims(
            &accounts,
            &records,
            &channels,
            &rules,
            &rules.cutoffs(now),
            false,
        );
        plan.new.append(&mut plan.retries);
        let batch = ClaimBatch {
            claims: plan.new,
            expired: plan.expire,
            tally: plan.tally,
            decisions: Vec::new(),
            unconfigured: plan.unconfigured,
        };
        stream::iter([Ok(batch)]).boxed()
    }

    fn claim_due(
        &self,
        request: SweepClaims,
        clock: Arc<dyn Clock>,
    ) -> BoxStream<'static, Result<ClaimBatch, StoreError>> {
        let ids: Vec<String> = {
            let state = self.lock();
            let below = state.accounts.values();
            below
                .filter(|a| a.is_below_threshold(&request.rules.thresholds))
                .map(|a| a.id.as_str().to_owned())
                .collect()
        };
        let pages: Vec<Vec<String>> = ids
            .chunks(request.page_size.max(1) as usize)
            .map(<[String]>::to_vec)
            .collect();
        // Every page is claimed at once, before any delivery: the longest any claim can wait
        // for its delivery, which is what the lease renewals must cover.
        let batches: Vec<_> = pages
            .iter()
            .map(|page| {
                let now = clock.now();
                let batch = self.claim(
                    request.lease.holder(),
                    page,
                    &request.channels,
                    &request.rules,
                    now,
                    false,
                );
                request
                    .lease
                    .hold(batch.claims.iter().map(|c| &c.alert_id), now);
                Ok(batch)
            })
            .collect();
        stream::iter(batches).boxed()
    }

    async fn claim_account(
        &self,
        lease: &Lease,
        account: &AccountId,
        channels: &[ChannelName],
        rules: &AlertRules,
        now: DateTime<Utc>,
    ) -> Result<ClaimBatch, StoreError> {
        let ids = [account.as_str().to_owned()];
        let batch = self.claim(lease.holder(), &ids, channels, rules, now, true);
        lease.hold(batch.claims.iter().map(|c| &c.alert_id), now);
        Ok(batch)
    }

    async fn renew(
        &self,
        lease: &LeaseHolder,
        alerts: &[AlertId],
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertId>, StoreError> {
        let mut state = self.lock();
        let mut renewed = Vec::new();
        for row in state.alerts.iter_mut() {
            if alerts.contains(&row.record.id) && held_by(row, lease) {
                row.record.claimed_at = now;
                renewed.push(row.record.id.clone());
            }
        }
        Ok(renewed)
    }

    async fn record(&self, lease: &LeaseHolder, outcomes: &[Outcome]) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut recorded = 0;
        for outcome in outcomes {
            let Some(row) = state
                .alerts
                .iter_mut()
                .find(|a| a.record.id == outcome.alert_id && held_by(a, lease))
            else {
                continue;
            };
            row.record.status = outcome.status;
            row.claimed_by = None;
            if outcome.status == AlertStatus::Failed {
                row.record.contact = outcome.contact.clone();
            }
            row.record.attempts += outcome.attempts;
            row.last_error = outcome.error.clone();
            match outcome.status {
                AlertStatus::Sent => row.record.sent_at = Some(outcome.at),
                AlertStatus::Expired => row.record.claimed_at = outcome.at,
                _ => {}
            }
            recorded += 1;
        }
        Ok(recorded)
    }

    async fn keep_audit_backlog(&self, lines: &[String]) -> Result<(), StoreError> {
        self.lock().audit_backlog.extend_from_slice(lines);
        Ok(())
    }

    async fn take_audit_backlog(&self) -> Result<Vec<String>, StoreError> {
        Ok(std::mem::take(&mut self.lock().audit_backlog))
    }
}
