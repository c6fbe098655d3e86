//! The daemon (`run`) as systemd runs it — a child process with NOTIFY_SOCKET, signals and
//! a config file — and, for the slow-sweep shutdown, driven in-process with a slow console.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balance_alertd::config::{self, Sources};
use balance_alertd::daemon::{Control, Daemon};
use balance_alertd::domain::ports::AuditLog;
use balance_alertd::infrastructure::audit::JsonLinesAuditLog;

use crate::helpers::{Backend, NewAccount, SlowConsole, TestApp, read_json_lines};

use crate::process::{BIN, DaemonProcess};

/// A config with the database, cron every second and the audit log in `dir/logs`; `database`
/// adds keys to `[database]`, `extra` appends other sections.
fn write_config(dir: &Path, url: &str, database: &str, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "{extra}\n[database]\nurl = \"{url}\"\n{database}\n[log]\ndir = \"{}\"\n",
        dir.join("logs").display()
    );
    let text = if extra.contains("[schedule]") {
        text
    } else {
        format!("[schedule]\ncron = \"* * * * * *\"\n{text}")
    };
    std::fs::write(&path, text).unwrap();
    path
}

const SECONDS_5: Duration = Duration::from_secs(5);
const SECONDS_10: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reports_ready_and_alerts_accounts_inserted_while_it_runs() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "", "");
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    // Start-up (connect, migrate) extends systemd's start timeout while it runs.
    daemon.wait_for_note("EXTEND_TIMEOUT_USEC=30000000", SECONDS_10);
    daemon.wait_for_note("READY=1", SECONDS_10);

    app.insert_account(NewAccount::new("late@example.com", 1_000))
        .await;
    daemon.wait_for_output("Email -> late@example.com", 1, SECONDS_5);
    daemon.wait_for_note("STATUS=last sweep finished: below_threshold=1 eligible=1 sent=1 failed=0 in_cooldown=0 deferred=0 duration_ms=", SECONDS_5);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        daemon.count("Email -> late@example.com"),
        1,
        "alerted once, then in cooldown"
    );

    daemon.signal("TERM");
    daemon.wait_for_note("STOPPING=1", SECONDS_5);
    assert!(
        daemon.last_note().contains("EXTEND_TIMEOUT_USEC=36000000"),
        "the stop timeout is extended to shutdown.grace (30 s) + 6 s: {}",
        daemon.last_note()
    );
    let status = daemon.wait_exit(SECONDS_5).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let audit = read_json_lines(dir.path().join("logs/audit.log"));
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["event"], "alert_sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_threshold_and_keeps_running_on_an_invalid_config() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "", "");
    app.insert_account(NewAccount::new("low@example.com", 4_999))
        .await;
    app.insert_account(NewAccount::new("middle@example.com", 7_000))
        .await;
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", SECONDS_10);
    daemon.wait_for_output("Email -> low@example.com", 1, SECONDS_5);

    // Raise the threshold to 100.00 and reload.
    write_config(
        dir.path(),
        &app.db.url,
        "",
        "[alert]\nthreshold = \"100.00\"",
    );
    daemon.signal("HUP");
    daemon.wait_for_note("RELOADING=1", SECONDS_5);
    daemon.wait_for_note("READY=1", SECONDS_5);
    daemon.wait_for_output(
        "Email -> middle@example.com: Hi Owner, your balance ($70.00) is below $100.00",
        1,
        SECONDS_5,
    );

    // An invalid config is rejected; the daemon keeps the 100.00 threshold.
    write_config(
        dir.path(),
        &app.db.url,
        "",
        "[alert]\nthreshold = \"1.001\"",
    );
    daemon.signal("HUP");
    daemon.wait_for_output("Reload rejected", 1, SECONDS_5);
    app.insert_account(NewAccount::new("after@example.com", 9_000))
        .await;
    daemon.wait_for_output(
        "Email -> after@example.com: Hi Owner, your balance ($90.00) is below $100.00",
        1,
        SECONDS_5,
    );
    assert_eq!(
        daemon.count("Email -> low@example.com"),
        1,
        "already alerted: still in cooldown"
    );
    assert_eq!(daemon.count("Email -> middle@example.com"), 1);

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(SECONDS_5).and_then(|s| s.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_during_a_slow_sweep_are_skipped_and_sigterm_stops_within_the_grace() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = "auto_migrate = false\nbusy_timeout = \"60s\"";
    let config = write_config(
        dir.path(),
        &app.db.url,
        database,
        "[shutdown]\ngrace = \"2s\"",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[log]\n", "[log]\nlevel = \"debug\"\n");
    std::fs::write(&config, text).unwrap();
    for i in 0..3 {
        app.insert_account(NewAccount::new(&format!("slow{i}@example.com"), 100))
            .await;
    }
    let lock = app.hold_write_lock().await;
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", SECONDS_10);
    daemon.wait_for_output(
        "A sweep is still running; skipping this tick.",
        2,
        SECONDS_10,
    );
    assert_eq!(daemon.count("Sweep started."), 1, "sweeps never overlap");

    let stop = Instant::now();
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(SECONDS_10)
        .expect("exits after the grace period");
    assert_eq!(status.code(), Some(0), "{}", daemon.output());
    assert!(
        stop.elapsed() < Duration::from_millis(3_500),
        "took {:?} with a 2s grace",
        stop.elapsed()
    );
    assert!(
        daemon
            .output()
            .contains("Grace period over; abandoning the running sweep.")
    );
    lock.rollback().await.unwrap();

    // Nothing was lost: the next run alerts every account, once.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .args(["-c", config.to_str().unwrap(), "sweep"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.matches("Email -> slow").count(), 3, "{stdout}");
    let pending = app
        .count("SELECT COUNT(*) AS n FROM alert_logs WHERE status <> 'sent'")
        .await;
    assert_eq!(pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = "auto_migrate = false\nbusy_timeout = \"60s\"";
    let config = write_config(
        dir.path(),
        &app.db.url,
        database,
        "[shutdown]\ngrace = \"60s\"",
    );
    app.insert_account(NewAccount::new("stuck@example.com", 100))
        .await;
    let lock = app.hold_write_lock().await;
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", SECONDS_10);
    daemon.wait_for_output("A sweep is still running", 1, SECONDS_10);

    daemon.signal("TERM");
    daemon.wait_for_note("STOPPING=1", SECONDS_5);
    assert!(
        daemon.wait_exit(Duration::from_millis(1_500)).is_none(),
        "waits for the running sweep"
    );
    let second = Instant::now();
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(SECONDS_5)
        .expect("exits after the second SIGTERM");
    assert!(
        second.elapsed() < Duration::from_millis(2_000),
        "took {:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    assert!(daemon.output().contains("Second stop signal"));
    drop(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_like_sigterm_and_the_watchdog_is_fed() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &app.db.url,
        "",
        "[schedule]\ncron = \"0 0 0 1 1 *\"",
    );
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[("WATCHDOG_USEC", "400000")]);
    daemon.wait_for_note("READY=1", SECONDS_10);
    for _ in 0..3 {
        daemon.wait_for_note("WATCHDOG=1", Duration::from_secs(2));
    }
    daemon.signal("INT");
    daemon.wait_for_note("STOPPING=1", SECONDS_5);
    assert_eq!(daemon.wait_exit(SECONDS_5).and_then(|s| s.code()), Some(0));
    assert!(daemon.output().contains("Stopped."));
}

/// A daemon driven in-process, its console slowed to 300 ms a line, its audit log in
/// `audit_dir`.
struct InProcess {
    runner: Arc<balance_alertd::daemon::SweepRunner>,
    control: futures::channel::mpsc::UnboundedSender<Control>,
    running: tokio::task::JoinHandle<Result<(), balance_alertd::app::AppError>>,
    _audit_guard: tracing_appender::non_blocking::WorkerGuard,
}

impl InProcess {
    async fn start(app: &TestApp, sources: Sources, audit_dir: &Path) -> Self {
        let loaded = config::load(&sources).expect("config");
        let (audit, guard) =
            JsonLinesAuditLog::open(audit_dir, balance_alertd::config::LogRotation::Never, 1)
                .unwrap();
        let console = Arc::new(Mutex::new(SlowConsole {
            delay: Duration::from_millis(300),
            inner: app.console.clone(),
        }));
        let daemon = Daemon::build(
            loaded,
            sources,
            Arc::new(audit) as Arc<dyn AuditLog>,
            console,
            app.clock.clone(),
        )
        .await
        .expect("daemon");
        let runner = daemon.runner();
        let (control, events) = futures::channel::mpsc::unbounded();
        let running = tokio::spawn(daemon.run_until_stopped(events));
        Self {
            runner,
            control,
            running,
            _audit_guard: guard,
        }
    }

    /// Sends SIGTERM's equivalent and waits for a clean stop; the audit log is then flushed.
    async fn stop(self) {
        self.control.unbounded_send(Control::Shutdown).unwrap();
        self.running.await.unwrap().expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_abandons_a_slow_sweep_after_the_grace_and_a_later_run_delivers_the_rest() {
    let mut app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    for i in 0..20 {
        app.insert_account(NewAccount::new(&format!("s{i}@example.com"), 100))
            .await;
    }
    let env: HashMap<String, String> = [
        ("BALANCE_ALERT__DATABASE__URL", app.db.url.as_str()),
        ("BALANCE_ALERT__SCHEDULE__CRON", "* * * * * *"),
        ("BALANCE_ALERT__SHUTDOWN__GRACE", "1s"),
        ("BALANCE_ALERT__NOTIFY__CONCURRENCY", "1"),
        ("BALANCE_ALERT__DELIVERY__BATCH_SIZE", "4"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let sources = Sources {
        files: Vec::new(),
        env: Some(env),
    };
    let audit_dir = tempfile::tempdir().unwrap();
    let daemon = InProcess::start(&app, sources, audit_dir.path()).await;
    let runner = daemon.runner.clone();

    // The 6 s sweep is not overlapped by the ticks that fire meanwhile.
    let deadline = Instant::now() + SECONDS_10;
    while runner.stats().skipped < 2 {
        assert!(
            Instant::now() < deadline,
            "ticks were not skipped: {:?}",
            runner.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(runner.stats().started, 1);

    let stop = Instant::now();
    daemon.stop().await;
    assert!(
        stop.elapsed() < Duration::from_millis(2_200),
        "grace 1s, took {:?}",
        stop.elapsed()
    );
    let delivered = app.console.lines().len();
    assert!(
        (1..20).contains(&delivered),
        "abandoned mid-sweep, delivered {delivered}"
    );
    let audit = read_json_lines(audit_dir.path().join("audit.log"));
    assert_eq!(
        audit.len(),
        delivered,
        "one complete audit line per delivery"
    );

    // The unsent claims are retried once they expire; nobody is alerted twice.
    app.clock.advance(app.rules.claim_timeout);
    app.sweep().await;
    for i in 0..20 {
        assert_eq!(app.console.count_for(&format!("s{i}@example.com")), 1);
    }
    let _ = app.finish_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_schedule_and_currency() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Once a year: nothing happens until the reload brings a per-second schedule.
    let config = write_config(
        dir.path(),
        &app.db.url,
        "",
        "[schedule]\ncron = \"0 0 0 1 1 *\"",
    );
    app.insert_account(NewAccount::new("euro@example.com", 1_000))
        .await;
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", SECONDS_10);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(daemon.count("Email -> "), 0);

    let extra = "[schedule]\ncron = \"* * * * * *\"\n[currency]\ncode = \"EUR\"\nsymbol = \"€\"\nminor_digits = 2";
    write_config(dir.path(), &app.db.url, "", extra);
    daemon.signal("HUP");
    daemon.wait_for_output(
        "Email -> euro@example.com: Hi Owner, your balance (€10.00) is below €50.00",
        1,
        SECONDS_5,
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(SECONDS_5).and_then(|s| s.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_in_progress_finishes_with_the_settings_it_started_with() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            app.insert_account(NewAccount::new(&format!("r{i}@example.com"), 2_000 + i))
                .await,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // One account per claim, one delivery at a time, each 300 ms: the claims of later
    // accounts happen after the reload, and must still use the settings the sweep began with.
    let settings = "[notify]\nconcurrency = 1\n[delivery]\nbatch_size = 1";
    let config = write_config(dir.path(), &app.db.url, "", settings);
    let sources = Sources {
        files: vec![config.clone()],
        env: Some(HashMap::new()),
    };
    let daemon = InProcess::start(&app, sources, &dir.path().join("logs")).await;
    let runner = daemon.runner.clone();
    let deadline = Instant::now() + SECONDS_10;
    while app.console.lines().is_empty() {
        assert!(Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mid-sweep: lower the threshold to 10.00, which none of the accounts is below.
    write_config(
        dir.path(),
        &app.db.url,
        "",
        &format!("{settings}\n[alert]\nthreshold = \"10.00\""),
    );
    daemon.control.unbounded_send(Control::Reload).unwrap();
    let deadline = Instant::now() + SECONDS_10;
    while runner.last_summary().is_none() {
        assert!(Instant::now() < deadline, "the sweep did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        runner.last_summary().unwrap().sent,
        6,
        "the running sweep kept the 50.00 threshold"
    );
    for id in &ids {
        assert_eq!(app.alert_rows(id).await[0].threshold_minor, 5_000);
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_nobody_reads_never_blocks_the_daemon() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "", "");
    // A watchdog ping every millisecond fills the unread socket within a second.
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[("WATCHDOG_USEC", "2000")]);
    daemon.wait_for_output("Daemon ready.", 1, SECONDS_10);
    std::thread::sleep(Duration::from_secs(2));
    app.insert_account(NewAccount::new("unblocked@example.com", 100))
        .await;
    daemon.wait_for_output("Email -> unblocked@example.com", 1, SECONDS_5);
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(SECONDS_5).and_then(|s| s.code()),
        Some(0),
        "{}",
        daemon.output()
    );
}
