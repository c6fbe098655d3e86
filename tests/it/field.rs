//! The five field findings of issue 13, as the bank's systems meet them: a slow receiver
//! under two sweeps and two daemons, rows changed between a sweep's read and its claim, a
//! permanently bad address over many sweeps, a receiver down past `give_up_after`, absurd
//! durations. Each runs on both databases where the behaviour is per backend.

use std::process::Command;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, TransactionTrait};

use crate::faults::{sweep, wait_until, write_config};
use crate::helpers::{Backend, NewAccount, TestApp, read_json_lines};
use crate::on_both_backends;
use crate::process::{BIN, DaemonProcess};
use crate::receiver::Receiver;

on_both_backends!(
    a_slow_receiver_is_not_sent_twice_by_a_second_sweep,
    a_slow_receiver_is_not_sent_twice_by_two_daemons,
    rows_changed_between_the_read_and_the_claim_are_skipped_not_alerted_on_stale_data,
    a_bad_address_fails_once_then_is_parked_until_fixed,
    a_receiver_down_past_give_up_after_expires_the_alert_and_stops_trying,
);

/// The settings of the field report: a receiver answering in 1 s, leases of 3 s, one
/// delivery at a time, pages of 5, so every claim waits several seconds for its turn.
const SLOW: &str =
    "[delivery]\ntimeout = \"2500ms\"\nclaim_timeout = \"3s\"\nbatch_size = 5\nmax_attempts = 1";

fn summary_of(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rfind(|l| l.starts_with("sweep finished:"))
        .unwrap_or_default()
        .to_owned()
}

fn audit_events(dir: &std::path::Path) -> Vec<String> {
    read_json_lines(dir.join("logs/audit.log"))
        .iter()
        .map(|l| l["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn a_slow_receiver_is_not_sent_twice_by_a_second_sweep(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_secs(1));
    for i in 0..8 {
        app.insert_account(NewAccount::new(&format!("slow{i}@example.com"), 100))
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, &receiver, 1, SLOW);

    let mut first = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .args(["-c", config.to_str().unwrap(), "sweep"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Past claim_timeout: the claims the first sweep still holds are older than 3 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = sweep(dir.path(), &config);
    assert_eq!(second.status.code(), Some(0), "{}", summary_of(&second));
    assert!(
        summary_of(&second).contains(" sent=0 "),
        "the second sweep took over live claims: {}",
        summary_of(&second)
    );
    assert_eq!(first.wait().unwrap().code(), Some(0));

    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 8, "every account alerted");
    assert!(
        delivered.values().all(|n| *n == 1),
        "an account was alerted twice: {delivered:?}"
    );
    assert_eq!(
        receiver.requests(),
        8,
        "no delivery was even attempted twice"
    );
}

async fn a_slow_receiver_is_not_sent_twice_by_two_daemons(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_secs(1));
    for i in 0..6 {
        app.insert_account(NewAccount::new(&format!("slow{i}@example.com"), 100))
            .await;
    }
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut daemons: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let config = write_config(dir.path(), &app.db.url, &receiver, 1, SLOW);
            DaemonProcess::start(dir.path(), &config, &[])
        })
        .collect();
    for daemon in &mut daemons {
        daemon.wait_for_note("READY=1", Duration::from_secs(10));
    }
    wait_until("every alert", Duration::from_secs(30), || {
        receiver.total_delivered() >= 6
    })
    .await;
    // Several more ticks of both daemons, each past the 3 s lease of a 1 s delivery.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for daemon in &mut daemons {
        daemon.stop();
    }
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 6);
    assert!(
        delivered.values().all(|n| *n == 1),
        "an account was alerted twice: {delivered:?}"
    );
    assert_eq!(receiver.requests(), 6);
    let audited: usize = dirs.iter().map(|d| audit_events(d.path()).len()).sum();
    assert_eq!(
        audited, 6,
        "one audit line per delivery across both daemons"
    );
}

/// Holds what the claim needs while the sweep has already read its candidates: SQLite's
/// write lock, or PostgreSQL's `EXCLUSIVE` lock on `accounts` (plain reads pass, the
/// claim's `FOR UPDATE` waits). The changes made in it are what the claim must see.
async fn block_claims(app: &TestApp) -> sea_orm::DatabaseTransaction {
    match app.conn.get_database_backend() {
        DbBackend::Postgres => {
            let txn = app.conn.begin().await.unwrap();
            txn.execute_unprepared("LOCK TABLE accounts IN EXCLUSIVE MODE")
                .await
                .unwrap();
            txn
        }
        _ => app.hold_write_lock().await,
    }
}

async fn rows_changed_between_the_read_and_the_claim_are_skipped_not_alerted_on_stale_data(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let untouched = app
        .insert_account(NewAccount::new("untouched@example.com", 2500))
        .await;
    let topped_up = app
        .insert_account(NewAccount::new("topped-up@example.com", 2500))
        .await;
    let rethresholded = app
        .insert_account(NewAccount::new("rethresholded@example.com", 2500))
        .await;
    let deleted = app
        .insert_account(NewAccount::new("deleted@example.com", 2500))
        .await;

    let txn = block_claims(&app).await;
    let change = async {
        // The sweep counts and reads its candidates (plain reads), then waits on the lock.
        tokio::time::sleep(Duration::from_millis(700)).await;
        for (sql, id) in [
            (
                "UPDATE accounts SET balance_minor = 999999 WHERE id = $1",
                &topped_up,
            ),
            (
                "UPDATE accounts SET alert_threshold_minor = 100 WHERE id = $1",
                &rethresholded,
            ),
            ("DELETE FROM accounts WHERE id = $1", &deleted),
        ] {
            txn.execute_raw(app.statement(sql, vec![id.as_str().into()]))
                .await
                .unwrap();
        }
        txn.commit().await.unwrap();
    };
    let (summary, ()) = tokio::join!(app.sweep(), change);

    assert_eq!(
        (summary.below_threshold, summary.eligible, summary.sent),
        (4, 1, 1),
        "{summary}"
    );
    assert_eq!(
        summary.skipped, 3,
        "changed and deleted rows are counted: {summary}"
    );
    assert_eq!(summary.in_cooldown, 0, "nothing was in cooldown: {summary}");
    assert_eq!(summary.failed, 0);
    assert_eq!(app.console.lines().len(), 1, "{:?}", app.console.lines());
    assert_eq!(app.console.count_for("untouched@example.com"), 1);
    for id in [&topped_up, &rethresholded, &deleted] {
        assert!(app.alert_rows(id).await.is_empty(), "claimed {id}");
    }
    assert_eq!(
        app.alert_rows(&untouched).await[0].balance_at_alert_minor,
        2500
    );
}

async fn a_bad_address_fails_once_then_is_parked_until_fixed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let id = app
        .insert_account(NewAccount::new("not-an-address", 100))
        .await;
    let dir = tempfile::tempdir().unwrap();
    // The e-mail channel judges the address; the address is what the bank fixes.
    let config = write_config(dir.path(), &app.db.url, &receiver, 4, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("channels = [\"webhook\"]", "channels = [\"console\"]");
    std::fs::write(&config, text).unwrap();

    let first = sweep(dir.path(), &config);
    assert_eq!(first.status.code(), Some(3), "{}", summary_of(&first));
    for _ in 0..3 {
        let again = sweep(dir.path(), &config);
        assert_eq!(
            again.status.code(),
            Some(0),
            "a parked alert exits 0: {}",
            summary_of(&again)
        );
        assert!(
            summary_of(&again).contains(" failed=0 "),
            "{}",
            summary_of(&again)
        );
    }
    let rows = app.alert_rows(&id).await;
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 1));
    assert_eq!(audit_events(dir.path()), ["alert_failed"], "no nagging");

    app.exec(
        "UPDATE accounts SET owner_email = 'fixed@example.com' WHERE id = $1",
        vec![id.as_str().into()],
    )
    .await;
    let fixed = sweep(dir.path(), &config);
    assert_eq!(fixed.status.code(), Some(0));
    assert!(
        summary_of(&fixed).contains(" sent=1 "),
        "{}",
        summary_of(&fixed)
    );
    let rows = app.alert_rows(&id).await;
    assert_eq!(rows.len(), 1, "the same alert, retried under its id");
    assert_eq!(rows[0].status, "sent");
    assert_eq!(audit_events(dir.path()), ["alert_failed", "alert_sent"]);
}

async fn a_receiver_down_past_give_up_after_expires_the_alert_and_stops_trying(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.set_down(true);
    let id = app
        .insert_account(NewAccount::new("down@example.com", 100))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[delivery]\nmax_attempts = 2\nretry_initial_backoff = \"5ms\"\n\
                 retry_max_backoff = \"10ms\"\ngive_up_after = \"2s\"";
    let config = write_config(dir.path(), &app.db.url, &receiver, 4, extra);

    assert_eq!(sweep(dir.path(), &config).status.code(), Some(3));
    assert_eq!(app.alert_rows(&id).await[0].status, "retry");
    assert_eq!(receiver.requests(), 2);

    tokio::time::sleep(Duration::from_millis(2200)).await;
    receiver.set_down(false);
    let expired = sweep(dir.path(), &config);
    assert_eq!(expired.status.code(), Some(0), "{}", summary_of(&expired));
    assert!(
        summary_of(&expired).contains(" sent=0 ") && summary_of(&expired).contains(" expired=1"),
        "{}",
        summary_of(&expired)
    );
    for _ in 0..2 {
        assert_eq!(sweep(dir.path(), &config).status.code(), Some(0));
    }
    assert_eq!(
        receiver.requests(),
        2,
        "an expired alert is not attempted again"
    );
    let rows = app.alert_rows(&id).await;
    assert_eq!((rows.len(), rows[0].status.as_str()), (1, "expired"));
    assert_eq!(audit_events(dir.path()), ["alert_retry", "alert_expired"]);
}

#[test]
fn absurd_durations_are_refused_naming_the_key_from_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(BIN)
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    };
    for command in [&["config", "--check"][..], &["sweep"][..]] {
        let out = run(command, &[("BALANCE_ALERT__ALERT__COOLDOWN", "300000y")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(err.contains("alert.cooldown"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let file = dir.path().join("absurd.toml");
    for (section, key, value) in [
        ("delivery", "give_up_after", "300000y"),
        ("delivery", "claim_timeout", "99999999999999d"),
        ("delivery", "timeout", "1000y"),
        ("alert", "cooldown", "18446744073709551615s"),
    ] {
        std::fs::write(&file, format!("[{section}]\n{key} = \"{value}\"\n")).unwrap();
        let out = run(&["-c", file.to_str().unwrap(), "sweep"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key} = {value}: {err}");
        assert!(err.contains(&format!("{section}.{key}")), "{err}");
    }
}
