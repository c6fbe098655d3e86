//! `once` re-arming (SPEC §2): a sweep that sees an account recovered — balance at or above
//! its effective threshold plus `alert.rearm_margin` — records it in `resolved_at` on the
//! account's alerts sent or given up, so the next dip is alerted at once. One set-based
//! UPDATE per sweep, for accounts whose policy is `once` only.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, Func, Query, SimpleExpr};
use sea_orm::{Condition, ConnectionTrait};

use super::candidates::{in_group, policy_is};
use super::conn::Conns;
use super::convert::status_literal;
use super::entities::{accounts, alert_logs};
use crate::domain::ports::StoreError;
use crate::domain::{AlertRules, AlertStatus, Money, Policy, Thresholds};

/// The configured default threshold of the account's currency; NULL for a currency without
/// one.
fn default_threshold(thresholds: &Thresholds) -> SimpleExpr {
    thresholds
        .groups()
        .iter()
        .fold(CaseStatement::new(), |case, group| {
            case.case(in_group(group), Expr::val(group.threshold.minor()))
        })
        .finally(Expr::val(Option::<i64>::None))
        .into()
}

/// `alert.rearm_margin` in the account's minor units: the default currency's count, rescaled
/// for currencies with other minor digits.
fn margin(rules: &AlertRules) -> SimpleExpr {
    let margin = Ord::max(rules.rearm_margin, Money::ZERO);
    if margin == Money::ZERO {
        return Expr::val(0_i64);
    }
    let from = rules.thresholds.default_currency().minor_digits();
    rules
        .thresholds
        .other_digits()
        .into_iter()
        .fold(CaseStatement::new(), |case, (digits, codes)| {
            case.case(
                Expr::col((accounts::Entity, accounts::Column::Currency)).is_in(codes),
                Expr::val(margin.rescaled(from, digits).minor()),
            )
        })
        .finally(Expr::val(margin.minor()))
        .into()
}

/// `balance >= effective threshold + margin`, without an integer overflow on a threshold
/// near the largest bigint (PostgreSQL would fail the statement): such a threshold cannot be
/// reached anyway. An account left without any threshold is recovered.
fn recovered(rules: &AlertRules) -> SimpleExpr {
    use accounts::Column as A;
    let margin = margin(rules);
    let threshold = || {
        let parts: [SimpleExpr; 2] = [
            Expr::col((accounts::Entity, A::AlertThresholdMinor)),
            default_threshold(&rules.thresholds),
        ];
        SimpleExpr::from(Func::coalesce(parts))
    };
    Expr::case(threshold().is_null(), Expr::val(true))
        .case(
            threshold().gt(Expr::val(i64::MAX).sub(margin.clone())),
            Expr::val(false),
        )
        .finally(Expr::col((accounts::Entity, A::BalanceMinor)).gte(threshold().add(margin)))
        .into()
}

/// Resolves the open-ended alerts of every recovered `once` account; returns how many.
pub(super) async fn resolve(
    conns: &Conns,
    rules: &AlertRules,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    use alert_logs::Column as L;
    // Implies the predicate of `idx_alert_logs_unresolved` on both databases (migrations 8
    // and 10), then the account's recovery.
    let mut due = Condition::all()
        .add(Expr::col(L::ResolvedAt).is_null())
        .add(Expr::col(L::Status).is_in([
            status_literal(AlertStatus::Sent),
            status_literal(AlertStatus::Expired),
        ]));
    let recovered_once = Condition::all()
        .add(policy_is(Policy::Once, &rules.policy))
        .add(recovered(rules));
    if rules.policy.policy == Policy::Once {
        // Most accounts are `once`: walk the unresolved alerts, look each account up.
        let account = Query::select()
            .expr(Expr::val(1))
            .from(accounts::Entity)
            .and_where(
                Expr::col((accounts::Entity, accounts::Column::Id))
                    .equals((alert_logs::Entity, L::AccountId)),
            )
            .cond_where(recovered_once)
            .to_owned();
        due = due.add(Expr::exists(account));
    } else {
        // Only accounts with `alert_policy = 'once'` of their own (`idx_accounts_own_policy`).
        let accounts = Query::select()
            .column(accounts::Column::Id)
            .from(accounts::Entity)
            .cond_where(recovered_once)
            .to_owned();
        due = due.add(Expr::col(L::AccountId).in_subquery(accounts));
    }
    // Almost always nothing to resolve: a read first, so that a sweep takes SQLite's write
    // lock only when it has something to write (a bank's batch job may hold it).
    let any = Query::select()
        .expr(Expr::val(1))
        .from(alert_logs::Entity)
        .cond_where(due.clone())
        .limit(1)
        .to_owned();
    let found = conns
        .db
        .query_one(&any)
        .await
        .map_err(conns.err("cannot read alert_logs"))?;
    if found.is_none() {
        return Ok(0);
    }
    let update = Query::update()
        .table(alert_logs::Entity)
        .value(L::ResolvedAt, now)
        .cond_where(due)
        .to_owned();
    let resolved = conns
        .writer
        .execute(&update)
        .await
        .map_err(conns.err("cannot record recoveries in alert_logs"))?
        .rows_affected();
    Ok(resolved)
}
