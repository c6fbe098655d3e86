//! Alert policies and quiet hours (SPEC §2) on real databases, step by step with the fake
//! clock: what a customer whose balance dips, stays low, recovers and dips again receives.
//! The clock starts at 2026-11-27 12:00 UTC (13:00 in Paris, 07:00 in New York).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use balance_alertd::infrastructure::notify::ConsoleChannel;

use balance_alertd::domain::{AccountId, Money, Policy};
use sea_orm::Value;

use crate::helpers::{Backend, FlakyOut, HOUR, NewAccount, TestApp};
use crate::on_both_backends;

on_both_backends!(
    repeat_reminds_after_each_cooldown_while_below,
    once_alerts_once_per_dip_and_rearms_only_above_the_margin,
    a_recovery_leaves_an_alert_not_yet_sent_to_be_sent_once,
    daily_alerts_once_per_local_calendar_day,
    daily_with_the_configured_time_zone_is_decided_in_sql_and_domain_alike,
    quiet_hours_defer_and_the_first_sweep_after_them_sends_with_the_balance_then,
    a_bad_time_zone_or_window_fails_that_account_only_and_a_fix_retries_it,
    switching_an_accounts_policy_applies_at_the_next_sweep_with_its_history,
    history_is_skipped_but_an_old_alert_that_still_blocks_is_not,
    accounts_choose_their_channels_opt_out_and_unknown_names_are_ignored,
    sms_reaches_the_phone_with_form_fields_and_basic_auth_and_skips_accounts_without_one,
);

const MINUTE: Duration = Duration::from_secs(60);

async fn sweep_with(
    ctx: balance_alertd::application::AlertContext,
) -> balance_alertd::application::sweep::SweepSummary {
    balance_alertd::application::sweep::BulkBalanceAlert::new(ctx)
        .execute()
        .await
        .expect("sweep")
}

async fn set(app: &TestApp, id: &AccountId, column: &str, value: Value) {
    app.exec(
        &format!("UPDATE accounts SET {column} = $1 WHERE id = $2"),
        vec![value, id.as_str().into()],
    )
    .await;
}

async fn balance(app: &TestApp, id: &AccountId, minor: i64) {
    set(app, id, "balance_minor", minor.into()).await;
}

async fn low_account(app: &TestApp) -> AccountId {
    app.insert_account(NewAccount::new("dip@example.com", 4_000))
        .await
}

async fn repeat_reminds_after_each_cooldown_while_below(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let _id = low_account(&app).await;
    assert_eq!(app.sweep().await.sent, 1, "the dip");
    app.clock.advance(23 * HOUR);
    let s = app.sweep().await;
    assert_eq!((s.sent, s.in_cooldown), (0, 1), "within the cooldown");
    app.clock.advance(2 * HOUR);
    assert_eq!(app.sweep().await.sent, 1, "a reminder after the cooldown");
}

async fn once_alerts_once_per_dip_and_rearms_only_above_the_margin(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    app.rules.policy.policy = Policy::Once;
    app.rules.rearm_margin = Money::from_minor(1_000); // re-armed at 60.00
    let id = low_account(&app).await;
    assert_eq!(app.sweep().await.sent, 1, "the dip is alerted");

    app.clock.advance(3 * 24 * HOUR);
    let s = app.sweep().await;
    assert_eq!((s.sent, s.in_cooldown), (0, 1), "still low: no reminder");

    balance(&app, &id, 5_500).await; // above the threshold, below threshold + margin
    app.sweep().await;
    balance(&app, &id, 4_000).await;
    app.clock.advance(MINUTE);
    assert_eq!(
        app.sweep().await.sent,
        0,
        "hovering under the margin does not re-arm"
    );
    assert!(app.alert_rows(&id).await[0].resolved_at.is_none());

    balance(&app, &id, 6_000).await; // recovered: at threshold + margin
    app.clock.advance(MINUTE);
    let recovered_at = app.clock_now();
    assert_eq!(app.sweep().await.below_threshold, 0);
    let rows = app.alert_rows(&id).await;
    let resolved = rows[0].resolved_at.expect("the recovery is recorded");
    assert_eq!(resolved.timestamp_micros(), recovered_at.timestamp_micros());

    balance(&app, &id, 3_000).await; // the second dip, well within the 24 h cooldown
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 1, "the next dip is alerted at once");
    let rows = app.alert_rows(&id).await;
    assert_eq!(rows.len(), 2);
    assert_ne!(rows[0].id, rows[1].id, "a new alert for the new dip");
    assert_eq!(rows[1].balance_at_alert_minor, 3_000);
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 0, "and once only");
}

/// The recovery check reads `idx_alert_logs_unresolved`, which on SQLite holds every alert not
/// resolved, from its claim on (migration 10): it must resolve only alerts sent or given up.
/// A `retry` resolved by a recovery would, once sent, no longer block its dip.
async fn a_recovery_leaves_an_alert_not_yet_sent_to_be_sent_once(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    app.rules.policy.policy = Policy::Once;
    let id = low_account(&app).await;
    let failing = Arc::new(Mutex::new(FlakyOut {
        failures: 3, // every attempt of the sweep (max_attempts 3): a transient failure
        inner: app.console.clone(),
    }));
    let s = sweep_with(app.context_with(vec![Arc::new(ConsoleChannel::new(failing))])).await;
    assert_eq!((s.sent, s.failed), (0, 1));

    balance(&app, &id, 9_000).await; // recovered while its alert waits to be retried
    app.clock.advance(MINUTE);
    app.sweep().await;
    let rows = app.alert_rows(&id).await;
    assert_eq!(rows[0].status.as_str(), "retry");
    assert!(
        rows[0].resolved_at.is_none(),
        "only sent alerts are resolved"
    );

    balance(&app, &id, 4_000).await; // dips again: the waiting alert goes out
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 1);
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 0, "one alert for the dip");
    assert_eq!(app.alert_rows(&id).await.len(), 1);
}

async fn daily_alerts_once_per_local_calendar_day(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    app.rules.policy.policy = Policy::Daily;
    let id = low_account(&app).await;
    set(&app, &id, "timezone", "America/New_York".into()).await;
    // 07:00 in New York.
    assert_eq!(app.sweep().await.sent, 1);
    app.clock.advance(16 * HOUR + 59 * MINUTE); // 23:59 the same day in New York
    let s = app.sweep().await;
    assert_eq!((s.sent, s.in_cooldown), (0, 1), "one per local day");
    app.clock.advance(MINUTE); // midnight in New York, 5 h after midnight UTC
    assert_eq!(app.sweep().await.sent, 1, "a new local day");
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 0);
}

async fn daily_with_the_configured_time_zone_is_decided_in_sql_and_domain_alike(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    app.rules.policy.policy = Policy::Daily;
    app.rules.policy.timezone = "Asia/Tokyo".parse().expect("zone");
    let _id = low_account(&app).await; // no zone of its own: alert.timezone applies
    // 21:00 in Tokyo.
    assert_eq!(app.sweep().await.sent, 1);
    app.clock.advance(2 * HOUR + 59 * MINUTE); // 23:59 in Tokyo
    let s = app.sweep().await;
    assert_eq!((s.sent, s.in_cooldown), (0, 1));
    app.clock.advance(MINUTE); // midnight in Tokyo, 15:00 UTC
    assert_eq!(app.sweep().await.sent, 1, "a new day in Tokyo");
}

async fn quiet_hours_defer_and_the_first_sweep_after_them_sends_with_the_balance_then(
    backend: Backend,
) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    app.rules.policy.quiet_hours =
        balance_alertd::domain::QuietHours::parse("22:00-07:00").expect("window");
    let quiet = low_account(&app).await;
    set(&app, &quiet, "timezone", "Europe/Paris".into()).await;
    let other = app
        .insert_account(NewAccount::new("nyc@example.com", 4_500))
        .await;
    set(&app, &other, "timezone", "America/New_York".into()).await;
    set(&app, &other, "quiet_hours", "".into()).await; // opted out of quiet hours

    app.clock.advance(10 * HOUR); // 22:00 UTC = 23:00 in Paris
    let s = app.sweep().await;
    assert_eq!((s.sent, s.deferred, s.in_cooldown), (1, 1, 0), "{s}");
    assert!(
        app.alert_rows(&quiet).await.is_empty(),
        "deferred: not even claimed"
    );

    balance(&app, &quiet, 1_234).await; // changes during the night
    app.clock.advance(7 * HOUR + 59 * MINUTE); // 06:59 in Paris
    assert_eq!(app.sweep().await.deferred, 1);
    app.clock.advance(MINUTE); // 07:00 in Paris: the window is over
    let s = app.sweep().await;
    assert_eq!((s.sent, s.deferred), (1, 0), "{s}");
    let rows = app.alert_rows(&quiet).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].balance_at_alert_minor, 1_234,
        "the balance read after the window"
    );
}

async fn a_bad_time_zone_or_window_fails_that_account_only_and_a_fix_retries_it(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    let bad_zone = low_account(&app).await;
    set(&app, &bad_zone, "timezone", "Mars/Olympus".into()).await;
    let bad_window = app
        .insert_account(NewAccount::new("late@example.com", 4_000))
        .await;
    set(&app, &bad_window, "quiet_hours", "after dinner".into()).await;
    let good = app
        .insert_account(NewAccount::new("good@example.com", 4_000))
        .await;

    let s = app.sweep().await;
    assert_eq!((s.sent, s.failed), (1, 2), "{s}");
    let zone_row = &app.alert_rows(&bad_zone).await[0];
    assert_eq!(zone_row.status, "failed");
    let error = zone_row.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("accounts.timezone = \"Mars/Olympus\""),
        "{error}"
    );
    let window_error = app.alert_rows(&bad_window).await[0].last_error.clone();
    assert!(
        window_error
            .unwrap_or_default()
            .contains("accounts.quiet_hours = \"after dinner\""),
    );
    assert_eq!(app.alert_rows(&good).await[0].status, "sent");

    app.clock.advance(2 * 24 * HOUR);
    let s = app.sweep().await;
    assert_eq!(
        (s.sent, s.failed, s.eligible),
        (1, 0, 1),
        "parked, no nagging: {s}"
    );

    set(&app, &bad_zone, "timezone", "Europe/Paris".into()).await;
    app.clock.advance(MINUTE);
    let s = app.sweep().await;
    assert_eq!((s.sent, s.failed), (1, 0), "{s}");
    let rows = app.alert_rows(&bad_zone).await;
    assert_eq!(rows.len(), 1, "retried under the same id");
    assert_eq!(rows[0].status, "sent");
    let audit = app.finish_audit();
    let failed: Vec<_> = audit
        .iter()
        .filter(|l| l["event"] == "alert_failed")
        .collect();
    assert_eq!(failed.len(), 2);
}

async fn switching_an_accounts_policy_applies_at_the_next_sweep_with_its_history(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = low_account(&app).await;
    assert_eq!(app.sweep().await.sent, 1, "repeat (the default)");
    set(&app, &id, "alert_policy", "once".into()).await;
    app.clock.advance(2 * 24 * HOUR);
    assert_eq!(
        app.sweep().await.sent,
        0,
        "once: the alert of two days ago counts, no reminder"
    );
    balance(&app, &id, 5_000).await;
    app.sweep().await;
    balance(&app, &id, 100).await;
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 1, "recovered, then dipped: alerted");
    set(&app, &id, "alert_policy", "repeat".into()).await;
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 0, "repeat: within the cooldown");
    app.clock.advance(24 * HOUR);
    assert_eq!(app.sweep().await.sent, 1, "repeat: a reminder");
}

/// The sweep skips an account's old sent alerts in `idx_alert_logs_recent` (migration 12),
/// in the eligibility probe and in the claim's read alike. Not a `once` account's: its alert
/// of days ago is still what blocks a reminder, beside a `repeat` account reminded daily on
/// the same page. (Either read alone keeps it blocked: both must skip it to alert it.)
async fn history_is_skipped_but_an_old_alert_that_still_blocks_is_not(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let repeat = low_account(&app).await;
    let once = app
        .insert_account(NewAccount::new("once@example.com", 3_000))
        .await;
    set(&app, &once, "alert_policy", "once".into()).await;
    assert_eq!(app.sweep().await.sent, 2, "both dips");
    for day in 1..=4 {
        app.clock.advance(25 * HOUR);
        let s = app.sweep().await;
        assert_eq!(
            (s.sent, s.in_cooldown),
            (1, 1),
            "day {day}: only the reminder"
        );
    }
    assert_eq!(app.alert_rows(&repeat).await.len(), 5);
    assert_eq!(
        app.alert_rows(&once).await.len(),
        1,
        "once: one alert per dip"
    );
    balance(&app, &once, 9_000).await;
    app.sweep().await;
    balance(&app, &once, 1_000).await;
    app.clock.advance(MINUTE);
    assert_eq!(app.sweep().await.sent, 1, "recovered, then dipped: alerted");
}

async fn accounts_choose_their_channels_opt_out_and_unknown_names_are_ignored(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let server = crate::channels::accepting_receiver().await;
    let url = format!("{}/hook", server.uri());
    let ctx = crate::channels::context(
        &app,
        &[
            ("NOTIFY__CHANNELS", "console,webhook"),
            ("NOTIFY__WEBHOOK__URL", &url),
        ],
    );
    let all = app
        .insert_account(NewAccount::new("all@example.com", 100))
        .await;
    let webhook_only = app
        .insert_account(NewAccount::new("hook@example.com", 100))
        .await;
    set(
        &app,
        &webhook_only,
        "alert_channels",
        " webhook , pager".into(),
    )
    .await;
    let opted_out = app
        .insert_account(NewAccount::new("out@example.com", 100))
        .await;
    set(&app, &opted_out, "alert_channels", "".into()).await;

    let s = sweep_with(ctx.clone()).await;
    assert_eq!((s.sent, s.eligible, s.in_cooldown), (3, 2, 1), "{s}");
    let channels = |rows: Vec<balance_alertd::infrastructure::db::entities::alert_logs::Model>| {
        let mut c: Vec<String> = rows.into_iter().map(|r| r.channel).collect();
        c.sort();
        c
    };
    assert_eq!(channels(app.alert_rows(&all).await), ["console", "webhook"]);
    assert_eq!(channels(app.alert_rows(&webhook_only).await), ["webhook"]);
    assert!(
        app.alert_rows(&opted_out).await.is_empty(),
        "opted out: nothing"
    );
    assert_eq!(app.console.count_for("out@example.com"), 0);
    assert_eq!(app.console.count_for("hook@example.com"), 0);
    let bodies: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert!(!bodies.iter().any(|b| b.contains("out@example.com")));

    // Opting back in (null = every configured channel) takes effect at the next sweep.
    set(&app, &opted_out, "alert_channels", Value::String(None)).await;
    app.clock.advance(MINUTE);
    let s = sweep_with(ctx).await;
    assert_eq!(s.sent, 2, "{s}");
}

async fn sms_reaches_the_phone_with_form_fields_and_basic_auth_and_skips_accounts_without_one(
    backend: Backend,
) {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    let server = MockServer::start().await;
    // AC123:tok-secret, as HTTP basic auth.
    let auth = "Basic QUMxMjM6dG9rLXNlY3JldA==";
    Mock::given(method("POST"))
        .and(path("/2010-04-01/Accounts/AC123/Messages.json"))
        .and(header("authorization", auth))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/2010-04-01/Accounts/AC123/Messages.json"))
        .and(header("authorization", auth))
        .respond_with(ResponseTemplate::new(201))
        .with_priority(2)
        .mount(&server)
        .await;
    let ctx = crate::channels::context(
        &app,
        &[
            ("NOTIFY__CHANNELS", "sms"),
            ("NOTIFY__SMS__API_URL", &server.uri()),
            ("NOTIFY__SMS__ACCOUNT_SID", "AC123"),
            ("NOTIFY__SMS__AUTH_TOKEN", "tok-secret"),
            ("NOTIFY__SMS__FROM", "+15005550006"),
            ("DELIVERY__RETRY_INITIAL_BACKOFF", "10ms"),
        ],
    );
    let phone = app
        .insert_account(NewAccount {
            name: Some("Alice"),
            ..NewAccount::new("alice@example.com", 4_200)
        })
        .await;
    set(&app, &phone, "owner_phone", "+14155550100".into()).await;
    // An address no e-mail could reach: the SMS still goes out.
    let bad_email = app
        .insert_account(NewAccount::new("not-an-address", 100))
        .await;
    set(&app, &bad_email, "owner_phone", "+442071838750".into()).await;
    let no_phone = app
        .insert_account(NewAccount::new("nophone@example.com", 100))
        .await;
    let bad_phone = app
        .insert_account(NewAccount::new("badphone@example.com", 100))
        .await;
    set(&app, &bad_phone, "owner_phone", "555-0100".into()).await;

    let s = sweep_with(ctx.clone()).await;
    assert_eq!((s.sent, s.failed), (2, 1), "{s}");
    assert!(
        app.alert_rows(&no_phone).await.is_empty(),
        "no phone: skipped, not failed"
    );
    let bad = &app.alert_rows(&bad_phone).await[0];
    assert_eq!(bad.status, "failed");
    assert!(
        bad.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("owner_phone"),
        "{:?}",
        bad.last_error
    );
    let requests = server.received_requests().await.unwrap();
    let forms: Vec<std::collections::HashMap<String, String>> = requests
        .iter()
        .map(|r| url::form_urlencoded::parse(&r.body).into_owned().collect())
        .collect();
    assert_eq!(forms.len(), 3, "one 429 retried, then two sent");
    let alice = forms
        .iter()
        .find(|f| f["To"] == "+14155550100")
        .expect("Alice's SMS");
    assert_eq!(alice["From"], "+15005550006");
    assert_eq!(
        alice["Body"],
        "Alice, your balance ($42.00) is below $50.00."
    );
    assert!(forms.iter().any(|f| f["To"] == "+442071838750"));
    // The bank fixes the number: retried under the same id.
    set(&app, &bad_phone, "owner_phone", "+14155550199".into()).await;
    app.clock.advance(MINUTE);
    let s = sweep_with(ctx).await;
    assert_eq!((s.sent, s.failed), (1, 0), "{s}");
    assert_eq!(app.alert_rows(&bad_phone).await.len(), 1);
    let audit = app.finish_audit();
    assert!(
        audit
            .iter()
            .any(|l| l["recipient"] == "+14155550100" && l["event"] == "alert_sent")
    );
}
