//! Currency per account (SPEC §2) on real databases: each account's amounts count the minor
//! units of its own currency (digits from ISO 4217), its default threshold is its currency's,
//! and every channel, the audit log and `alert_logs` say which currency.

use balance_alertd::application::sweep::BulkBalanceAlert;
use balance_alertd::domain::{AccountId, Money, Policy};
use sea_orm::Value;

use crate::channels::{accepting_receiver, context, env_refs, load_env, webhook_env};
use crate::helpers::{Backend, NewAccount, TestApp};
use crate::on_both_backends;

on_both_backends!(
    each_account_is_alerted_in_its_own_currency_against_its_currencys_threshold,
    once_rearms_at_the_margin_in_each_accounts_currency,
);

async fn account(
    app: &TestApp,
    email: &str,
    balance: i64,
    own_threshold: Option<i64>,
    currency: Option<&str>,
) -> AccountId {
    let id = app
        .insert_account(NewAccount {
            threshold_minor: own_threshold,
            ..NewAccount::new(email, balance)
        })
        .await;
    app.exec(
        "UPDATE accounts SET currency = $1 WHERE id = $2",
        vec![currency.map(str::to_owned).into(), id.as_str().into()],
    )
    .await;
    id
}

async fn each_account_is_alerted_in_its_own_currency_against_its_currencys_threshold(
    backend: Backend,
) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    let server = accepting_receiver().await;
    let mut env = webhook_env(&server);
    env[0].1 = "console,webhook".into();
    // Through the environment, whose keys the config crate lowercases.
    env.push(("ALERT__THRESHOLDS__EUR", "40.00".into()));
    env.push(("ALERT__THRESHOLDS__KWD", "15.000".into()));
    let env = env_refs(&env);
    let loaded = load_env(&env);
    app.rules.thresholds = loaded.rules.thresholds.clone();
    let mut ctx = context(&app, &env);
    ctx.rules = app.rules.clone();

    let usd = account(&app, "usd@example.com", 4_900, None, None).await;
    let eur = account(&app, "eur@example.com", 3_999, None, Some("EUR")).await;
    // Below 50 (the USD default) but not below the EUR one: not alerted.
    let _eur_ok = account(&app, "eur-ok@example.com", 4_500, None, Some("EUR")).await;
    let kwd = account(&app, "kwd@example.com", 14_900, None, Some("KWD")).await;
    let jpy = account(&app, "jpy@example.com", 4_900, Some(5_000), Some("JPY")).await;
    // No JPY default and no threshold of its own: never alerted, counted.
    let _jpy_none = account(&app, "jpy-none@example.com", 1, None, Some("JPY")).await;
    let bad = account(&app, "bad@example.com", 1, Some(100), Some("eur")).await;

    let summary = BulkBalanceAlert::new(ctx).execute().await.expect("sweep");
    assert_eq!(summary.below_threshold, 5, "{summary:?}");
    assert_eq!(summary.without_threshold, 1, "{summary:?}");
    assert_eq!(
        summary.sent, 8,
        "four accounts on two channels: {summary:?}"
    );
    assert_eq!(summary.failed, 2, "the bad currency on both channels");

    let lines = app.console.lines();
    for expected in [
        "usd@example.com: Hi Owner, your balance ($49.00) is below $50.00",
        "eur@example.com: Hi Owner, your balance (€39.99) is below €40.00",
        "jpy@example.com: Hi Owner, your balance (¥4900) is below ¥5000",
        "kwd@example.com: Hi Owner, your balance (د.ك14.900) is below د.ك15.000",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "{expected} not in {lines:#?}"
        );
    }
    assert_eq!(lines.len(), 4, "{lines:#?}");

    let requests = server.received_requests().await.unwrap();
    let payloads: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let payload = |id: &AccountId| {
        let p = payloads
            .iter()
            .find(|p| p["account_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no webhook for {id}"));
        (
            p["balance"].as_str().unwrap().to_owned(),
            p["threshold"].as_str().unwrap().to_owned(),
            p["currency"].as_str().unwrap().to_owned(),
        )
    };
    let strings = |b: &str, t: &str, c: &str| (b.to_owned(), t.to_owned(), c.to_owned());
    assert_eq!(payload(&usd), strings("49.00", "50.00", "USD"));
    assert_eq!(payload(&eur), strings("39.99", "40.00", "EUR"));
    assert_eq!(payload(&jpy), strings("4900", "5000", "JPY"));
    assert_eq!(payload(&kwd), strings("14.900", "15.000", "KWD"));
    assert_eq!(payloads.len(), 4);

    for (id, code) in [(&usd, "USD"), (&eur, "EUR"), (&jpy, "JPY"), (&kwd, "KWD")] {
        let rows = app.alert_rows(id).await;
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter().all(|r| r.currency.as_deref() == Some(code)),
            "{rows:?}"
        );
    }
    let rows = app.alert_rows(&bad).await;
    assert!(rows.iter().all(|r| r.status == "failed"), "{rows:?}");
    let error = rows[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("accounts.currency = \"eur\""), "{error}");

    let audit = app.finish_audit();
    let line = audit
        .iter()
        .find(|l| l["account_id"] == kwd.as_str() && l["channel"] == "console")
        .expect("audit line of the KWD alert");
    assert_eq!(
        (&line["balance"], &line["threshold"], &line["currency"]),
        (
            &serde_json::json!("14.900"),
            &serde_json::json!("15.000"),
            &serde_json::json!("KWD")
        )
    );
}

async fn once_rearms_at_the_margin_in_each_accounts_currency(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    app.rules.policy.policy = Policy::Once;
    app.rules.rearm_margin = Money::from_minor(100); // "1.00": ¥1, 1.000 KWD
    app.rules.thresholds = load_env(&[("ALERT__THRESHOLDS__KWD", "15.000")])
        .rules
        .thresholds;
    let jpy = account(&app, "jpy@example.com", 4_900, Some(5_000), Some("JPY")).await;
    let kwd = account(&app, "kwd@example.com", 14_900, None, Some("KWD")).await;
    assert_eq!(app.sweep().await.sent, 2, "both dips");
    let set = |id: &AccountId, minor: i64| {
        let values: Vec<Value> = vec![minor.into(), id.as_str().into()];
        app.exec(
            "UPDATE accounts SET balance_minor = $1 WHERE id = $2",
            values,
        )
    };

    // At threshold + margin minus one minor unit: not recovered.
    set(&jpy, 5_000).await;
    set(&kwd, 15_999).await;
    app.sweep().await;
    set(&jpy, 4_000).await;
    set(&kwd, 14_000).await;
    let s = app.sweep().await;
    assert_eq!((s.sent, s.in_cooldown), (0, 2), "not re-armed: {s:?}");

    // At threshold + margin: recovered, so the next dip is alerted at once.
    set(&jpy, 5_001).await;
    set(&kwd, 16_000).await;
    app.sweep().await;
    set(&jpy, 4_000).await;
    set(&kwd, 14_000).await;
    assert_eq!(
        app.sweep().await.sent,
        2,
        "re-armed in each currency's units"
    );
}
