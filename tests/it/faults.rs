//! Faults done for real: a killed process, several instances, a database that goes away,
//! a receiver that is down or flaky, signals under load. Each test counts deliveries at the
//! receiver and rows in `alert_logs`, and checks nothing is lost and nothing repeated
//! beyond what the contract allows (SPEC §2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;

use crate::helpers::{Backend, TestApp, http_get, read_json_lines, sample};
use crate::process::{BIN, DaemonProcess};
use crate::receiver::Receiver;

const SECONDS_10: Duration = Duration::from_secs(10);

/// A config file for the binary: webhook channel to `receiver` with `concurrency`, cron
/// every second; `extra` adds other sections.
pub(crate) fn write_config(
    dir: &Path,
    url: &str,
    receiver: &Receiver,
    concurrency: usize,
    extra: &str,
) -> PathBuf {
    write_config_with(dir, url, "", receiver, concurrency, extra)
}

/// [`write_config`] with more `[database]` keys.
fn write_config_with(
    dir: &Path,
    url: &str,
    database: &str,
    receiver: &Receiver,
    concurrency: usize,
    extra: &str,
) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[database]\nurl = \"{url}\"\n{database}\n[schedule]\ncron = \"* * * * * *\"\n\
         [notify]\nchannels = [\"webhook\"]\nconcurrency = {concurrency}\n\
         [notify.webhook]\nurl = \"{}\"\n[log]\ndir = \"{}\"\n{extra}\n",
        receiver.url(),
        dir.join("logs").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `n` accounts inserted in one statement, as a bank's batch job would; `balance` is SQL.
pub(crate) async fn bulk_accounts(app: &TestApp, n: u64, balance: &str) {
    let sql = match app.conn.get_database_backend() {
        sea_orm::DbBackend::Postgres => format!(
            "INSERT INTO accounts (id, owner_email, owner_name, balance_minor) \
             SELECT gen_random_uuid()::text, 'o' || i || '@example.com', 'Owner ' || i, {balance} \
             FROM generate_series(1, {n}) AS i"
        ),
        _ => format!(
            "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}) \
             INSERT INTO accounts (id, owner_email, owner_name, balance_minor) \
             SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) \
             || '-a' || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))), \
             'o' || i || '@example.com', 'Owner ' || i, {balance} FROM seq"
        ),
    };
    app.conn
        .execute_unprepared(&sql)
        .await
        .expect("bulk insert");
}

pub(crate) fn sweep(dir: &Path, config: &Path) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .env_clear()
        .args(["-c", config.to_str().unwrap(), "sweep"])
        .output()
        .unwrap()
}

pub(crate) async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sweep_loses_nothing_and_repeats_at_most_the_in_flight_deliveries() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(40));
    bulk_accounts(&app, 300, "100").await;
    let dir = tempfile::tempdir().unwrap();
    let concurrency = 8;
    let extra = "[delivery]\ntimeout = \"1s\"\nclaim_timeout = \"3s\"\nbatch_size = 100";
    let config = write_config(dir.path(), &app.db.url, &receiver, concurrency, extra);

    // Kill -9 in the middle of delivering.
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .args(["-c", config.to_str().unwrap(), "sweep"])
        .spawn()
        .unwrap();
    wait_until("deliveries to start", SECONDS_10, || {
        receiver.total_delivered() >= 60
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let pending = app
        .count("SELECT COUNT(*) AS n FROM alert_logs WHERE status = 'pending'")
        .await;
    assert!(pending > 0, "the crash left claims behind");

    // Right away, live claims are in flight: not taken over. After claim_timeout, they are.
    assert_eq!(sweep(dir.path(), &config).status.code(), Some(0));
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM alert_logs WHERE status = 'pending'")
            .await,
        pending,
        "a sweep right after the crash left the dead holder's live claims alone"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sweep(dir.path(), &config).status.code(), Some(0));

    let delivered = receiver.delivered();
    assert_eq!(
        delivered.len(),
        300,
        "every eligible account delivered at least once"
    );
    let twice = delivered.values().filter(|n| **n == 2).count();
    assert!(delivered.values().all(|n| *n <= 2));
    assert!(
        twice <= concurrency,
        "{twice} repeated deliveries > notify.concurrency {concurrency}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM alert_logs WHERE status <> 'sent'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM alert_logs").await,
        300,
        "one alert id per account"
    );
    eprintln!(
        "crash test: {pending} claims pending after kill -9, {twice} accounts delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_one_postgres_database_alert_each_account_once_as_balances_drop_in_waves()
{
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let receiver = Receiver::start().await;
    bulk_accounts(&app, 300, "100000").await;
    let mut daemons = Vec::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        let config = write_config(
            dir.path(),
            &app.db.url,
            &receiver,
            16,
            "[delivery]\nbatch_size = 10",
        );
        daemons.push(DaemonProcess::start(dir.path(), &config, &[]));
    }
    for daemon in &mut daemons {
        daemon.wait_for_note("READY=1", SECONDS_10);
    }
    for wave in 0..3u64 {
        app.conn
            .execute_unprepared(&format!(
                "UPDATE accounts SET balance_minor = 100 WHERE id IN \
                 (SELECT id FROM accounts ORDER BY id LIMIT 100 OFFSET {})",
                wave * 100
            ))
            .await
            .unwrap();
        wait_until("the wave's alerts", Duration::from_secs(20), || {
            receiver.total_delivered() >= (wave + 1) * 100
        })
        .await;
    }
    // A few more ticks on every instance: nothing is delivered again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 300);
    assert!(
        delivered.values().all(|n| *n == 1),
        "an account was alerted twice"
    );
    let mut per_instance = Vec::new();
    for (daemon, dir) in daemons.iter_mut().zip(&dirs) {
        daemon.signal("TERM");
        assert_eq!(daemon.wait_exit(SECONDS_10).and_then(|s| s.code()), Some(0));
        per_instance.push(read_json_lines(dir.path().join("logs/audit.log")).len());
    }
    assert_eq!(
        per_instance.iter().sum::<usize>(),
        300,
        "audit lines across instances"
    );
    eprintln!("three instances: deliveries per instance {per_instance:?}");
}

/// A PostgreSQL server of the test's own, so it can be stopped and started again.
struct OwnServer {
    root: String,
    url: String,
}

impl OwnServer {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh");

    fn start() -> Option<Self> {
        crate::helpers::pg_admin_url()?;
        let out = Command::new(Self::SCRIPT).arg("start").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exports = String::from_utf8(out.stdout).unwrap();
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap()
                .to_owned()
        };
        Some(Self {
            root: value("PG_TEST_ROOT"),
            url: value("BALANCE_ALERT_TEST_PG_URL"),
        })
    }

    fn run(&self, action: &str) {
        let status = Command::new(Self::SCRIPT)
            .args([action, &self.root])
            .status()
            .unwrap();
        assert!(status.success(), "pg.sh {action}");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(Self::SCRIPT)
            .args(["stop", &self.root])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_reported_survived_and_recovered_without_loss_or_duplicates() {
    let Some(server) = OwnServer::start() else {
        return;
    };
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::channels::free_port();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let extra = format!(
        "[delivery]\ntimeout = \"1s\"\nclaim_timeout = \"3s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\""
    );
    let config = write_config_with(
        dir.path(),
        &server.url,
        "connect_timeout = \"1s\"",
        &receiver,
        8,
        &extra,
    );
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", SECONDS_10);
    assert_eq!(http_get(&ready).await.0, 200);
    let insert = |n: u64| {
        let url = server.url.clone();
        async move {
            let conn = sea_orm::Database::connect(&url).await.unwrap();
            conn.execute_unprepared(&format!(
                "INSERT INTO accounts (id, owner_email, balance_minor) \
                 SELECT gen_random_uuid()::text, 'w' || i || '@example.com', 100 FROM generate_series(1, {n}) AS i"
            ))
            .await
            .unwrap();
            conn.close().await.unwrap();
        }
    };
    insert(30).await;
    wait_until("the first wave", SECONDS_10, || {
        receiver.total_delivered() == 30
    })
    .await;

    server.run("pause");
    let database = server
        .url
        .trim_start_matches("postgres://postgres@")
        .to_owned();
    daemon.wait_for_output("database unavailable", 1, SECONDS_10);
    let (status, reason) = http_get(&ready).await;
    assert_eq!(status, 503, "/readyz while the database is down: {reason}");
    assert!(
        reason.contains(&database),
        "the reason names the database: {reason}"
    );
    let (_, page) = http_get(&ready.replace("readyz", "metrics")).await;
    assert!(
        sample(&page, "balance_alertd_sweeps_total{result=\"failure\"}").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
    assert!(
        daemon.output().contains(&database),
        "the error names the database:\n{}",
        daemon.output()
    );
    let out = sweep(dir.path(), &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&database),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        daemon.wait_exit(Duration::from_millis(10)).is_none(),
        "the daemon keeps running"
    );

    server.run("resume");
    wait_until_ready(&ready).await;
    insert(30).await;
    wait_until(
        "the second wave after recovery",
        Duration::from_secs(20),
        || receiver.total_delivered() == 60,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 60);
    assert!(
        delivered.values().all(|n| *n == 1),
        "nothing delivered twice"
    );
    daemon.signal("TERM");
    let status = daemon.wait_exit(SECONDS_10);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        daemon.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_database_waits_for_the_busy_timeout_then_fails_cleanly() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start().await;
    bulk_accounts(&app, 5, "100").await;
    let dir = tempfile::tempdir().unwrap();
    let database = "busy_timeout = \"1s\"\nauto_migrate = false";
    let config = write_config_with(dir.path(), &app.db.url, database, &receiver, 4, "");
    let lock = app.hold_write_lock().await;

    let started = Instant::now();
    let out = sweep(dir.path(), &config);
    let waited = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    lock.rollback().await.unwrap();

    assert_eq!(sweep(dir.path(), &config).status.code(), Some(0));
    assert_eq!(receiver.total_delivered(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_several_sweeps_gets_each_alert_exactly_once_when_back() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.set_down(true);
    bulk_accounts(&app, 50, "100").await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[delivery]\nmax_attempts = 2\nretry_initial_backoff = \"5ms\"\nretry_max_backoff = \"10ms\"";
    let config = write_config(dir.path(), &app.db.url, &receiver, 8, extra);
    for _ in 0..3 {
        assert_eq!(
            sweep(dir.path(), &config).status.code(),
            Some(3),
            "deliveries failed"
        );
    }
    assert_eq!(receiver.requests(), 50 * 2 * 3);
    let ids_before = app
        .count("SELECT COUNT(DISTINCT id) AS n FROM alert_logs")
        .await;

    receiver.set_down(false);
    assert_eq!(sweep(dir.path(), &config).status.code(), Some(0));
    assert_eq!(sweep(dir.path(), &config).status.code(), Some(0));
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 50);
    assert!(delivered.values().all(|n| *n == 1));
    assert_eq!(ids_before, 50, "one alert per account through the outage");
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM alert_logs WHERE status = 'sent' AND attempts = 7")
            .await,
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_percent_of_100000_deliveries_failing_at_random_all_arrive_exactly_once() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.set_fail_percent(5);
    bulk_accounts(&app, 100_000, "100").await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[delivery]\nmax_attempts = 3\nretry_initial_backoff = \"5ms\"\nretry_max_backoff = \"20ms\"";
    let config = write_config(dir.path(), &app.db.url, &receiver, 64, extra);
    let mut sweeps = 0;
    while app
        .count("SELECT COUNT(*) AS n FROM alert_logs WHERE status = 'sent'")
        .await
        < 100_000
    {
        sweeps += 1;
        assert!(sweeps <= 4, "still undelivered after {sweeps} sweeps");
        let out = sweep(dir.path(), &config);
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 100_000);
    assert!(
        delivered.values().all(|n| *n == 1),
        "a delivery was repeated"
    );
    assert!(
        receiver.requests() > 100_000 + 4_000,
        "about 5% of requests failed and were retried"
    );
    eprintln!(
        "5% failures: {} requests, {sweeps} sweeps",
        receiver.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_and_sigterm_during_a_100000_delivery_sweep_keep_every_count_equal() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let receiver = Receiver::start().await;
    bulk_accounts(&app, 100_000, "100").await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[shutdown]\ngrace = \"120s\"";
    let config = write_config(dir.path(), &app.db.url, &receiver, 64, extra);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "cron = \"* * * * * *\"",
        "cron = \"0 0 0 1 1 *\"\nrun_on_start = true",
    );
    std::fs::write(&config, text).unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", SECONDS_10);
    wait_until("10,000 deliveries", Duration::from_secs(60), || {
        receiver.total_delivered() >= 10_000
    })
    .await;
    daemon.signal("HUP");
    daemon.wait_for_output("Configuration reloaded.", 1, SECONDS_10);
    wait_until("30,000 deliveries", Duration::from_secs(60), || {
        receiver.total_delivered() >= 30_000
    })
    .await;
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(120))
        .expect("exits once the sweep has finished");
    assert_eq!(status.code(), Some(0));

    let sent = app
        .count("SELECT COUNT(*) AS n FROM alert_logs WHERE status = 'sent'")
        .await;
    let audit = read_json_lines(dir.path().join("logs/audit.log"));
    assert_eq!(sent, 100_000);
    assert_eq!(audit.len(), 100_000, "one complete audit line per delivery");
    assert!(audit.iter().all(|l| l["event"] == "alert_sent"));
    assert_eq!(receiver.total_delivered(), 100_000);
    assert_eq!(receiver.delivered().len(), 100_000);
}

async fn wait_until_ready(url: &str) {
    let deadline = Instant::now() + SECONDS_10;
    while http_get(url).await.0 != 200 {
        assert!(Instant::now() < deadline, "{url} did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
