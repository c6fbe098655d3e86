//! The alert engine on real databases: the reference example's tests, thresholds, money,
//! cooldowns per channel, failures, retries and abandoned claims.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use balance_alertd::application::check_account::{ChannelResult, CheckReport};
use balance_alertd::domain::ports::AlertStore;
use balance_alertd::domain::{
    AccountId, AlertStatus, ChannelName, Currency, Decision, Lease, Money,
};
use balance_alertd::infrastructure::notify::ConsoleChannel;
use chrono::{TimeDelta, Utc};

use crate::helpers::{Backend, FlakyOut, HOUR, NewAccount, TestApp};
use crate::on_both_backends;

on_both_backends!(
    sends_an_alert_when_the_balance_is_below_the_threshold,
    sends_no_alert_at_or_above_the_threshold,
    cooldown_blocks_the_second_alert_until_it_has_passed,
    unknown_account_is_a_no_op,
    one_cent_below_the_threshold_is_eligible_and_equal_is_not,
    negative_and_extreme_balances_are_alerted_exactly,
    per_account_threshold_overrides_the_default,
    cooldown_is_per_channel,
    a_permanent_failure_is_parked_until_the_address_changes_then_keeps_its_id,
    invalid_email_row_does_not_stop_the_sweep,
    abandoned_claim_expires_and_is_retried_under_the_same_id,
    external_insert_without_updated_at_reads_back_correctly,
    transient_failures_are_retried_within_the_sweep,
    sweep_pages_through_every_account_exactly_once,
    audit_log_has_one_complete_line_per_delivery_outcome,
);

async fn sends_an_alert_when_the_balance_is_below_the_threshold(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // Arrange
    let id = app
        .insert_account(NewAccount {
            name: Some("Alice"),
            ..NewAccount::new("alice@example.com", 4_900)
        })
        .await;
    // Act
    let outcome = app.check(&id).await;
    // Assert
    let CheckReport::Evaluated(channels) = outcome else {
        panic!("expected an evaluation, got {outcome:?}")
    };
    let [(channel, ChannelResult::Delivered(sent))] = channels.as_slice() else {
        panic!("expected one sent alert, got {channels:?}")
    };
    let alert_id = &sent.alert_id;
    assert_eq!(sent.status, AlertStatus::Sent);
    assert_eq!(channel.as_str(), "console");
    assert_eq!(
        app.console.lines(),
        ["📧 Email -> alice@example.com: Hi Alice, your balance ($49.00) is below $50.00"]
    );
    let rows = app.alert_rows(&id).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        (row.id.as_str(), row.status.as_str()),
        (alert_id.as_str(), "sent")
    );
    assert_eq!(
        (
            row.threshold_minor,
            row.balance_at_alert_minor,
            row.attempts
        ),
        (5_000, 4_900, 1)
    );
    assert_eq!(row.sent_at, Some(app.clock_now()));
}

async fn sends_no_alert_at_or_above_the_threshold(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let at = app
        .insert_account(NewAccount::new("at@example.com", 5_000))
        .await;
    let above = app
        .insert_account(NewAccount::new("above@example.com", 15_000))
        .await;
    for id in [&at, &above] {
        assert!(matches!(
            app.check(id).await,
            CheckReport::AboveThreshold { .. }
        ));
        assert!(app.alert_rows(id).await.is_empty());
    }
    let summary = app.sweep().await;
    assert_eq!((summary.below_threshold, summary.sent), (0, 0));
    assert!(app.console.lines().is_empty());
}

async fn cooldown_blocks_the_second_alert_until_it_has_passed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = app
        .insert_account(NewAccount::new("bob@example.com", 100))
        .await;
    let first = sent_alert_id(app.check(&id).await);

    assert!(matches!(
        only_outcome(app.check(&id).await),
        ChannelResult::NotDue(Decision::InCooldown { .. })
    ));
    app.clock.advance(23 * HOUR);
    assert_eq!(app.sweep().await.in_cooldown, 1);
    app.clock.advance(HOUR - Duration::from_secs(1));
    assert!(
        matches!(
            only_outcome(app.check(&id).await),
            ChannelResult::NotDue(Decision::InCooldown { .. })
        ),
        "at 23:59:59"
    );
    assert_eq!(app.console.count_for("bob@example.com"), 1);

    app.clock.advance(Duration::from_secs(2));
    let second = sent_alert_id(app.check(&id).await);
    assert_ne!(first, second, "a new window gets a new alert id");
    assert_eq!(app.console.count_for("bob@example.com"), 2);
}

async fn unknown_account_is_a_no_op(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.insert_account(NewAccount::new("someone@example.com", 1))
        .await;
    let unknown = AccountId::new(uuid::Uuid::new_v4().to_string());
    assert_eq!(app.check(&unknown).await, CheckReport::NotFound);
    assert!(app.console.lines().is_empty());
}

async fn one_cent_below_the_threshold_is_eligible_and_equal_is_not(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let threshold = Currency::usd().parse_amount("50.00").unwrap();
    assert_eq!(threshold, app.rules.thresholds.default_threshold());
    app.insert_account(NewAccount::new("below@example.com", 4_999))
        .await;
    app.insert_account(NewAccount::new("equal@example.com", 5_000))
        .await;
    let summary = app.sweep().await;
    assert_eq!(
        (summary.below_threshold, summary.eligible, summary.sent),
        (1, 1, 1)
    );
    assert_eq!(app.console.count_for("below@example.com"), 1);
    assert_eq!(app.console.count_for("equal@example.com"), 0);
}

async fn negative_and_extreme_balances_are_alerted_exactly(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    app.insert_account(NewAccount::new("overdrawn@example.com", -500))
        .await;
    app.insert_account(NewAccount::new("min@example.com", i64::MIN))
        .await;
    app.insert_account(NewAccount::new("max@example.com", i64::MAX))
        .await;
    app.insert_account(NewAccount {
        threshold_minor: Some(i64::MAX),
        ..NewAccount::new("maxthreshold@example.com", i64::MAX - 1)
    })
    .await;
    let summary = app.sweep().await;
    assert_eq!((summary.sent, summary.failed), (3, 0));
    let lines = app.console.lines();
    assert!(
        lines.contains(
            &"📧 Email -> overdrawn@example.com: Hi Owner, your balance (-$5.00) is below $50.00"
                .to_owned()
        )
    );
    assert!(lines.contains(&"📧 Email -> min@example.com: Hi Owner, your balance (-$92233720368547758.08) is below $50.00".to_owned()));
    assert!(lines.contains(
        &"📧 Email -> maxthreshold@example.com: Hi Owner, your balance ($92233720368547758.06) is below $92233720368547758.07".to_owned()
    ));
    let audit = app.finish_audit();
    let balances: Vec<&str> = audit
        .iter()
        .map(|l| l["balance"].as_str().unwrap())
        .collect();
    assert!(
        balances.contains(&"-5.00") && balances.contains(&"-92233720368547758.08"),
        "{balances:?}"
    );
}

async fn per_account_threshold_overrides_the_default(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // Own threshold 100.00: 90.00 is below it although above the default 50.00.
    let raised = app
        .insert_account(NewAccount {
            threshold_minor: Some(10_000),
            ..NewAccount::new("raised@example.com", 9_000)
        })
        .await;
    // Own threshold 10.00: 20.00 is not below it although below the default.
    app.insert_account(NewAccount {
        threshold_minor: Some(1_000),
        ..NewAccount::new("lowered@example.com", 2_000)
    })
    .await;
    let summary = app.sweep().await;
    assert_eq!((summary.below_threshold, summary.sent), (1, 1));
    assert_eq!(
        app.console.lines(),
        ["📧 Email -> raised@example.com: Hi Owner, your balance ($90.00) is below $100.00"]
    );
    assert_eq!(app.alert_rows(&raised).await[0].threshold_minor, 10_000);
}

async fn cooldown_is_per_channel(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let other_channel = app
        .insert_account(NewAccount::new("email-only@example.com", 100))
        .await;
    let same_channel = app
        .insert_account(NewAccount::new("console-too@example.com", 100))
        .await;
    let an_hour_ago = app.clock_now() - TimeDelta::hours(1);
    for (id, channel) in [(&other_channel, "email"), (&same_channel, "console")] {
        app.exec(
            "INSERT INTO alert_logs (id, account_id, channel, threshold_minor, balance_at_alert_minor, \
             status, attempts, created_at, claimed_at, sent_at) VALUES ($1, $2, $3, 5000, 100, 'sent', 1, $4, $5, $6)",
            vec![
                uuid::Uuid::new_v4().to_string().into(),
                id.as_str().into(),
                channel.into(),
                an_hour_ago.into(),
                an_hour_ago.into(),
                an_hour_ago.into(),
            ],
        )
        .await;
    }
    let summary = app.sweep().await;
    assert_eq!(
        (summary.below_threshold, summary.sent, summary.in_cooldown),
        (2, 1, 1)
    );
    assert_eq!(
        app.console.count_for("email-only@example.com"),
        1,
        "an e-mail alert does not silence the console"
    );
    assert_eq!(app.console.count_for("console-too@example.com"), 0);
}

async fn a_permanent_failure_is_parked_until_the_address_changes_then_keeps_its_id(
    backend: Backend,
) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = app
        .insert_account(NewAccount::new("not-an-address", 100))
        .await;

    let first = app.sweep().await;
    assert_eq!((first.sent, first.failed), (0, 1));
    let rows = app.alert_rows(&id).await;
    let alert_id = rows[0].id.clone();
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("failed", 1),
        "permanent: not retried"
    );
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("owner_email"),
        "{:?}",
        rows[0].last_error
    );

    for _ in 0..3 {
        app.clock.advance(Duration::from_secs(3600));
        let again = app.sweep().await;
        assert_eq!(
            (again.eligible, again.sent, again.failed),
            (0, 0, 0),
            "a permanent failure is parked, not attempted again on the same address"
        );
    }
    // `check` takes no candidate listing: the claim itself reads the contact the alert
    // failed on and decides on it.
    assert!(matches!(
        only_outcome(app.check(&id).await),
        ChannelResult::NotDue(Decision::Parked { .. })
    ));
    let rows = app.alert_rows(&id).await;
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 1));
    app.exec(
        "UPDATE accounts SET owner_email = 'fixed@example.com' WHERE id = $1",
        vec![id.as_str().into()],
    )
    .await;
    app.clock.advance(Duration::from_secs(60));
    assert_eq!(app.sweep().await.sent, 1);

    let rows = app.alert_rows(&id).await;
    assert_eq!(rows.len(), 1, "every retry reuses the alert");
    assert_eq!(
        (
            rows[0].id.as_str(),
            rows[0].status.as_str(),
            rows[0].attempts
        ),
        (alert_id.as_str(), "sent", 2)
    );
    assert_eq!(rows[0].last_error, None);
    assert_eq!(app.console.count_for("fixed@example.com"), 1);
    assert_eq!(
        app.sweep().await.in_cooldown,
        1,
        "sent now starts the cooldown"
    );
    let events: Vec<_> = app
        .finish_audit()
        .iter()
        .map(|line| line["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        events,
        ["alert_failed", "alert_sent"],
        "the parked sweeps wrote nothing"
    );
}

async fn invalid_email_row_does_not_stop_the_sweep(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.insert_account(NewAccount::new("first@example.com", 1))
        .await;
    app.insert_account(NewAccount {
        name: None,
        ..NewAccount::new("bad\r\nBcc: eve@example.com", 2)
    })
    .await;
    app.insert_account(NewAccount {
        name: None,
        ..NewAccount::new("third@example.com", 3)
    })
    .await;
    let summary = app.sweep().await;
    assert_eq!(
        (summary.below_threshold, summary.sent, summary.failed),
        (3, 2, 1)
    );
    assert_eq!(app.console.count_for("first@example.com"), 1);
    assert!(
        app.console.lines().contains(
            &"📧 Email -> third@example.com: Hi Customer, your balance ($0.03) is below $50.00"
                .to_owned()
        )
    );
    assert!(app.console.lines().iter().all(|l| !l.contains("eve@")));
}

async fn abandoned_claim_expires_and_is_retried_under_the_same_id(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = app
        .insert_account(NewAccount::new("crash@example.com", 100))
        .await;
    // A sweep claims the delivery and crashes before sending.
    let crashed = Lease::new(app.rules.claim_timeout);
    let batch = app
        .store
        .claim_account(
            &crashed,
            &id,
            &[ChannelName::new("console")],
            &app.rules,
            app.clock_now(),
        )
        .await
        .unwrap();
    let [claim] = batch.claims.as_slice() else {
        panic!("expected one claim, got {batch:?}")
    };

    app.clock.advance(Duration::from_secs(299));
    let summary = app.sweep().await;
    assert_eq!(
        (summary.sent, summary.in_cooldown),
        (0, 1),
        "a live claim is in flight"
    );

    app.clock.advance(Duration::from_secs(1));
    assert_eq!(app.sweep().await.sent, 1, "the abandoned claim is retried");
    let rows = app.alert_rows(&id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].status.as_str()),
        (claim.alert_id.as_str(), "sent")
    );
    assert_eq!(app.console.count_for("crash@example.com"), 1);
}

async fn external_insert_without_updated_at_reads_back_correctly(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = app
        .insert_account(NewAccount::new("ext@example.com", 12_345))
        .await;
    app.exec(
        "UPDATE accounts SET balance_minor = 4321 WHERE id = $1",
        vec![id.as_str().into()],
    )
    .await;
    let account = app.store.find_account(&id).await.unwrap().expect("account");
    assert_eq!(account.balance, Money::from_minor(4_321));
    let updated_at = account.updated_at.expect("find_account reads updated_at");
    let age = Utc::now() - updated_at;
    assert!(
        age.abs() < TimeDelta::minutes(2),
        "updated_at {updated_at} is not the database's now"
    );
}

async fn transient_failures_are_retried_within_the_sweep(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = app
        .insert_account(NewAccount::new("flaky@example.com", 10))
        .await;
    let flaky = |failures| {
        let out = Arc::new(Mutex::new(FlakyOut {
            failures,
            inner: app.console.clone(),
        }));
        app.context_with(vec![Arc::new(ConsoleChannel::new(out))])
    };
    use balance_alertd::application::sweep::BulkBalanceAlert;
    // Fails 3 times with max_attempts 3: failed, retried by the next sweep.
    let summary = BulkBalanceAlert::new(flaky(3)).execute().await.unwrap();
    assert_eq!((summary.sent, summary.failed), (0, 1));
    assert_eq!(app.alert_rows(&id).await[0].attempts, 3);
    // Fails twice, then succeeds on the third attempt of the same sweep.
    let summary = BulkBalanceAlert::new(flaky(2)).execute().await.unwrap();
    assert_eq!((summary.sent, summary.failed), (1, 0));
    let rows = app.alert_rows(&id).await;
    assert_eq!(
        (rows.len(), rows[0].status.as_str(), rows[0].attempts),
        (1, "sent", 6)
    );
    assert_eq!(app.console.count_for("flaky@example.com"), 1);
}

async fn sweep_pages_through_every_account_exactly_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // batch_size is 50: several pages of each kind, with equal balances across page breaks.
    let mut expected = Vec::new();
    for i in 0..130_i64 {
        let email = format!("d{i}@example.com");
        app.insert_account(NewAccount::new(&email, 4_990 + i % 3))
            .await;
        expected.push(email);
    }
    for i in 0..60_i64 {
        let email = format!("o{i}@example.com");
        let own = NewAccount {
            threshold_minor: Some(20_000),
            ..NewAccount::new(&email, 10_000 + i)
        };
        app.insert_account(own).await;
        expected.push(email);
    }
    for i in 0..40_i64 {
        app.insert_account(NewAccount::new(&format!("rich{i}@example.com"), 50_000 + i))
            .await;
    }
    let summary = app.sweep().await;
    assert_eq!(
        (summary.below_threshold, summary.eligible, summary.sent),
        (190, 190, 190)
    );
    for email in &expected {
        assert_eq!(app.console.count_for(email), 1, "{email}");
    }
    assert_eq!(app.console.lines().len(), 190);
    let again = app.sweep().await;
    assert_eq!(
        (again.below_threshold, again.in_cooldown, again.sent),
        (190, 190, 0)
    );
}

async fn audit_log_has_one_complete_line_per_delivery_outcome(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    let good = app
        .insert_account(NewAccount::new("good@example.com", 4_999))
        .await;
    let bad = app.insert_account(NewAccount::new("bad@", 10)).await;
    app.sweep().await;
    let lines = app.finish_audit();
    assert_eq!(lines.len(), 2);
    let sent = lines
        .iter()
        .find(|l| l["event"] == "alert_sent")
        .expect("alert_sent line");
    let good_row = &app.alert_rows(&good).await[0];
    assert_eq!(sent["alert_id"], good_row.id.as_str());
    assert_eq!(sent["account_id"], good.as_str());
    assert_eq!(sent["channel"], "console");
    assert_eq!(sent["recipient"], "good@example.com");
    assert_eq!(
        (sent["threshold"].as_str(), sent["balance"].as_str()),
        (Some("50.00"), Some("49.99"))
    );
    assert_eq!(sent["attempts"], 1);
    assert!(sent.get("error").is_none());
    let ts = sent["timestamp"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
        "{ts}"
    );
    let failed = lines
        .iter()
        .find(|l| l["event"] == "alert_failed")
        .expect("alert_failed line");
    assert_eq!(failed["account_id"], bad.as_str());
    assert!(failed["error"].as_str().unwrap().contains("owner_email"));
}

fn sent_alert_id(outcome: CheckReport) -> String {
    match only_outcome(outcome) {
        ChannelResult::Delivered(o) if o.status == AlertStatus::Sent => o.alert_id.to_string(),
        other => panic!("expected sent, got {other:?}"),
    }
}

fn only_outcome(outcome: CheckReport) -> ChannelResult {
    match outcome {
        CheckReport::Evaluated(mut channels) if channels.len() == 1 => channels.remove(0).1,
        other => panic!("expected one channel outcome, got {other:?}"),
    }
}
