//! Issue 12's findings that need no service manager: journal priorities, an operator's
//! command run as root against the service's files, the unit's honest reload, metrics and
//! health endpoints.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{Backend, NewAccount, TestApp, http_get, promtool, sample};
use crate::process::{BIN, DaemonProcess};

/// Runs `sweep` with stdout going to a file that `$JOURNAL_STREAM` names (`matching`) or
/// names wrongly, as systemd sets it for a service logging to the journal; returns stdout.
async fn sweep_with_journal_stream(matching: bool) -> String {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    app.insert_account(NewAccount::new("ok@example.com", 100))
        .await;
    app.insert_account(NewAccount::new("not-an-address", 100))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[log]\ndir = \"{}\"\n",
            app.db.url,
            dir.path().join("logs").display()
        ),
    )
    .unwrap();
    let out_path = dir.path().join("stdout");
    let out = std::fs::File::create(&out_path).unwrap();
    let meta = out.metadata().unwrap();
    let stream = format!(
        "{}:{}",
        meta.dev(),
        if matching { meta.ino() } else { meta.ino() + 1 }
    );
    let status = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("JOURNAL_STREAM", stream)
        .args(["-c", config.to_str().unwrap(), "sweep"])
        .stdout(Stdio::from(out))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "one delivery fails");
    std::fs::read_to_string(out_path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_each_log_line_carries_its_priority_and_no_second_timestamp() {
    let text = sweep_with_journal_stream(true).await;
    let warn = text
        .lines()
        .find(|l| l.contains("Alert delivery failed"))
        .unwrap_or_else(|| panic!("no failed-delivery warning in:\n{text}"));
    assert!(warn.starts_with("<4> WARN "), "{warn}");
    let info = text
        .lines()
        .find(|l| l.contains("Sweep finished."))
        .unwrap_or_else(|| panic!("no summary log line in:\n{text}"));
    assert!(info.starts_with("<6> INFO "), "{info}");
    assert!(
        !text.lines().any(|l| l.starts_with("<") && l.contains("Z ")),
        "journald stamps lines itself: {text}"
    );
    // The product's own output (console alerts, the summary) is not a log line: no prefix.
    assert!(text.contains("\nsweep finished: ") || text.starts_with("sweep finished: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_journald_log_lines_are_unchanged() {
    let text = sweep_with_journal_stream(false).await;
    let warn = text
        .lines()
        .find(|l| l.contains("Alert delivery failed"))
        .unwrap_or_else(|| panic!("no failed-delivery warning in:\n{text}"));
    assert!(!warn.starts_with('<'), "{warn}");
    assert!(
        warn.split_whitespace()
            .next()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
        "a timestamp first: {warn}"
    );
}

/// SPEC §4: root running `sweep` against the service's directories (owned by the service's
/// user) refuses and names the command to use; nothing is created. Needs root (CI runs as
/// root); reported as skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_refuses_to_create_files_in_the_service_directories() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: root_refuses_to_create_files_in_the_service_directories needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, logs) = (dir.path().join("state"), dir.path().join("logs"));
    for d in [&state, &logs] {
        std::fs::create_dir(d).unwrap();
        // nobody: a user that is not root, as the service's own user is.
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}/alerts.db?mode=rwc\"\n[log]\ndir = \"{}\"\n",
            state.display(),
            logs.display()
        ),
    )
    .unwrap();
    for command in [
        &["sweep"][..],
        &["migrate"],
        &["check", "11111111-1111-4111-8111-111111111111"],
        &["run"],
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .env_clear()
            .arg("-c")
            .arg(&config)
            .args(command)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(err.contains("refusing to run as root"), "{err}");
        assert!(
            err.contains("sudo -u nobody "),
            "names the command to use: {err}"
        );
    }
    for d in [&state, &logs] {
        assert_eq!(
            std::fs::read_dir(d).unwrap().count(),
            0,
            "{} was written to",
            d.display()
        );
    }
    // Root's own directories stay usable by root.
    for d in [&state, &logs] {
        std::os::unix::fs::chown(d, Some(0), Some(0)).unwrap();
    }
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .arg("-c")
        .arg(&config)
        .arg("sweep")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit checks the configuration before it signals: `systemctl reload` fails on a file
/// the daemon would reject. The check command, run as the unit runs it, must exit non-zero
/// on exactly what a reload rejects.
#[test]
fn the_unit_checks_the_configuration_before_it_signals_a_reload() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/balance-alertd.service"
    ))
    .unwrap();
    let reloads: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(
        reloads,
        [
            "/usr/bin/balance-alertd --config /etc/balance-alert/config.toml config --check",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[alert]\nthreshold = \"abc\"\n").unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .arg("--config")
        .arg(&config)
        .args(["config", "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("alert.threshold"));
}

/// SPEC §8b: the counters equal what the sweeps did; the page passes `promtool check
/// metrics`; the shipped rules pass `promtool check rules`; /healthz and /readyz answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_sweeps_did_and_pass_promtool() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    for i in 0..3 {
        app.insert_account(NewAccount::new(&format!("ok{i}@example.com"), 100))
            .await;
    }
    for i in 0..2 {
        app.insert_account(NewAccount::new(&format!("broken-{i}"), 100))
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = crate::channels::free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[log]\ndir = \"{}\"\n[schedule]\ncron = \"* * * * * *\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            app.db.url,
            dir.path().join("logs").display()
        ),
    )
    .unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", Duration::from_secs(10));
    daemon.wait_for_output("Sweep finished.", 2, Duration::from_secs(10));
    let base = format!("http://127.0.0.1:{port}");

    let (status, page) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let series = |s: &str| sample(&page, s).unwrap_or_else(|| panic!("no {s} in:\n{page}"));
    assert_eq!(
        series("balance_alertd_deliveries_total{channel=\"console\",outcome=\"sent\"}"),
        3.0
    );
    assert_eq!(
        series("balance_alertd_deliveries_total{channel=\"console\",outcome=\"failed\"}"),
        2.0,
        "permanent failures, counted once: later sweeps do not attempt them"
    );
    assert!(series("balance_alertd_sweeps_total{result=\"success\"}") >= 2.0);
    assert_eq!(series("balance_alertd_accounts_below_threshold"), 5.0);
    assert!(series("balance_alertd_last_sweep_success_timestamp_seconds") > 1.7e9);
    assert_eq!(series("balance_alertd_config_last_reload_successful"), 1.0);
    assert!(page.contains("balance_alertd_sweep_duration_seconds_count"));
    assert!(page.contains("balance_alertd_deferred_total"));
    assert!(page.contains("balance_alertd_build_info{version=\""));

    assert_eq!(http_get(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(http_get(&format!("{base}/readyz")).await.0, 200);

    // A rejected reload shows.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}[alert]\nthreshold = \"abc\"\n")).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_output("Reload rejected", 1, Duration::from_secs(5));
    let (_, page) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(&page, "balance_alertd_config_last_reload_successful"),
        Some(0.0)
    );

    if let Some(promtool) = promtool() {
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut check.stdin.take().unwrap(), page.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/systemd/balance-alertd.rules.yml"
        );
        let out = Command::new(&promtool)
            .args(["check", "rules", rules])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    daemon.stop();
}

fn audit_entry(i: usize) -> balance_alertd::domain::ports::AuditEntry {
    use balance_alertd::domain::ports::{AuditEntry, AuditEvent};
    use balance_alertd::domain::{AccountId, AlertId, ChannelName};
    AuditEntry {
        timestamp: chrono::Utc::now(),
        event: AuditEvent::AlertSent,
        alert_id: AlertId::from_stored(format!("alert-{i:05}")),
        account_id: AccountId::new(format!("account-{i:05}")),
        channel: ChannelName::new("console"),
        recipient: "a@example.com".into(),
        threshold: "50.00".into(),
        balance: "1.00".into(),
        currency: "USD".into(),
        attempts: 1,
        error: None,
    }
}

/// SPEC §7 / issue 12 finding 4: `tail -F audit.log` keeps following across a daily rotation
/// (at UTC midnight of a fake clock): every line seen once, none lost, none twice.
#[test]
fn tail_f_follows_audit_log_across_a_rotation_without_losing_or_repeating_a_line() {
    use balance_alertd::domain::ports::AuditLog;
    use balance_alertd::infrastructure::audit::JsonLinesAuditLog;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let time = Arc::new(Mutex::new(
        "2026-12-01T23:59:58Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(),
    ));
    let now = {
        let time = time.clone();
        Arc::new(move || *time.lock().unwrap())
    };
    let (log, guard) = JsonLinesAuditLog::open_with_clock(
        dir.path(),
        balance_alertd::config::LogRotation::Daily,
        30,
        now,
    )
    .unwrap();
    let mut tail = Command::new("tail")
        .args(["-F", "-n", "+1", "-s", "0.1"])
        .arg(dir.path().join("audit.log"))
        // A file, not a pipe: 400 lines overflow a pipe nobody reads until the end.
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("tail.out")).unwrap(),
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..400 {
        if i == 200 {
            // Past midnight: the next line rotates audit.log to audit.2026-12-01.log.
            std::thread::sleep(Duration::from_millis(300));
            *time.lock().unwrap() = "2026-12-02T00:00:01Z".parse().unwrap();
        }
        log.record(&[audit_entry(i)]).unwrap();
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(guard); // flush
    std::thread::sleep(Duration::from_millis(1500));
    tail.kill().unwrap();
    tail.wait().unwrap();
    let text = std::fs::read_to_string(dir.path().join("tail.out")).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["alert_id"].to_string())
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 400, "tail -F saw {} lines", ids.len());
    assert_eq!(unique.len(), 400, "a line seen twice");
    let rotated = std::fs::read_to_string(dir.path().join("audit.2026-12-01.log")).unwrap();
    let current = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert_eq!(
        (rotated.lines().count(), current.lines().count()),
        (200, 200)
    );
}

/// SPEC §7: with `rotation = "never"` SIGHUP reopens `audit.log`, so logrotate's
/// `create` + `postrotate` (systemd/balance-alertd.logrotate) works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_audit_log_after_logrotate_moved_it() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[log]\ndir = \"{}\"\nrotation = \"never\"\n\
             [schedule]\ncron = \"* * * * * *\"\n[metrics]\nlisten = \"\"\n",
            app.db.url,
            dir.path().join("logs").display()
        ),
    )
    .unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", Duration::from_secs(10));
    app.insert_account(NewAccount::new("first@example.com", 100))
        .await;
    daemon.wait_for_output("Email -> first@example.com", 1, Duration::from_secs(5));
    let logs = dir.path().join("logs");
    // logrotate: move the file away, then postrotate signals the daemon.
    std::fs::rename(logs.join("audit.log"), logs.join("audit.log.1")).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_output("Configuration reloaded.", 1, Duration::from_secs(5));
    app.insert_account(NewAccount::new("second@example.com", 100))
        .await;
    daemon.wait_for_output("Email -> second@example.com", 1, Duration::from_secs(5));
    daemon.stop();
    let moved = std::fs::read_to_string(logs.join("audit.log.1")).unwrap();
    let current = std::fs::read_to_string(logs.join("audit.log")).unwrap_or_default();
    assert!(moved.contains("first@example.com") && !moved.contains("second@example.com"));
    assert!(
        current.contains("second@example.com"),
        "the reopened audit.log: {current:?}"
    );
}

/// A 64 KiB tmpfs mounted at a new directory `at` (root only), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path) -> Self {
        std::fs::create_dir(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount a 64 KiB tmpfs at {}", at.display());
        Self(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Issue 12 finding 6 (SPEC §7): `log.dir` on a 64 KiB filesystem. A write that fails is an
/// ERROR naming the file, no new delivery starts, and `sweep` exits 1 saying so. Needs root
/// for the mount (CI runs as root); reported as skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_is_an_error_stops_deliveries_and_fails_the_sweep() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: a_full_audit_disk_... needs root to mount a small tmpfs");
        return;
    }
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    crate::faults::bulk_accounts(&app, 2000, "100").await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let _disk = SmallDisk::mount(&logs);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[log]\ndir = \"{}\"\n[notify]\nconcurrency = 4\n",
            app.db.url,
            logs.display()
        ),
    )
    .unwrap();
    let out = crate::faults::sweep(dir.path(), &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot write the audit log {}",
            logs.join("audit.log").display()
        )),
        "{err}"
    );
    assert!(err.contains("No space left"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Audit log write failed"),
        "an ERROR in the process log"
    );
    let sent = app
        .count("SELECT COUNT(*) AS n FROM alert_logs WHERE status = 'sent'")
        .await;
    assert!(
        sent < 2000,
        "deliveries went on after the audit log failed: {sent} sent"
    );
    assert!(
        stdout.contains("kept in the database table audit_backlog"),
        "{stdout}"
    );
    let kept = app.count("SELECT COUNT(*) AS n FROM audit_backlog").await;
    assert!(kept > 0, "the unwritten lines are kept");

    // Room again: the next process writes the kept lines first, each once (SPEC §7).
    let status = Command::new("mount")
        .args(["-o", "remount,size=8m"])
        .arg(&logs)
        .status()
        .unwrap();
    assert!(status.success());
    let out = crate::faults::sweep(dir.path(), &config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM audit_backlog").await,
        0
    );
    let lines = crate::helpers::read_json_lines(logs.join("audit.log"));
    let mut in_log: Vec<String> = lines
        .iter()
        .map(|l| l["alert_id"].as_str().unwrap().to_owned())
        .collect();
    in_log.sort();
    let mut recorded: Vec<String> = app
        .alert_ids("SELECT id FROM alert_logs WHERE status <> 'pending'")
        .await;
    recorded.sort();
    assert_eq!(
        in_log.len(),
        recorded.len(),
        "one line per recorded outcome, none twice"
    );
    assert_eq!(in_log, recorded, "every recorded outcome has its line");
    eprintln!(
        "audit disk full: {sent} of 2000 delivered before deliveries stopped, \
         {kept} lines kept in audit_backlog and written by the next sweep"
    );
}

/// SPEC §7: while the audit disk is full the daemon delivers nothing and `/readyz` says why;
/// once there is room, the kept-back lines are written and deliveries resume: every alert
/// delivered once with exactly one audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_audit_disk_frees_up_every_line_is_written_once_and_deliveries_resume() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: after_a_full_audit_disk_... needs root to mount a small tmpfs");
        return;
    }
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let _disk = SmallDisk::mount(&logs);
    // Fill the disk but for a few lines.
    let filler = logs.join("filler");
    std::fs::write(&filler, vec![b'x'; 60 * 1024]).unwrap();
    let port = crate::channels::free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[log]\ndir = \"{}\"\n[schedule]\ncron = \"* * * * * *\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n[delivery]\nclaim_timeout = \"3s\"\ntimeout = \"1s\"\n",
            app.db.url,
            logs.display()
        ),
    )
    .unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &config, &[]);
    daemon.wait_for_note("READY=1", Duration::from_secs(10));
    crate::faults::bulk_accounts(&app, 60, "100").await;
    daemon.wait_for_output("Audit log write failed", 1, Duration::from_secs(10));
    let (status, reason) = http_get(&format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("No space left"), "{reason}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = daemon.count("📧 Email -> ");
    assert!(stalled < 60, "deliveries went on: {stalled}");

    std::fs::remove_file(&filler).unwrap();
    daemon.wait_for_output(
        "The audit log is writable again.",
        1,
        Duration::from_secs(10),
    );
    crate::faults::wait_until("every alert delivered", Duration::from_secs(20), || {
        daemon.count("📧 Email -> ") >= 60
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop();
    assert_eq!(
        daemon.count("📧 Email -> "),
        60,
        "each account alerted once"
    );
    let lines = crate::helpers::read_json_lines(logs.join("audit.log"));
    let ids: std::collections::HashSet<_> =
        lines.iter().map(|l| l["alert_id"].to_string()).collect();
    assert_eq!(
        (lines.len(), ids.len()),
        (60, 60),
        "one audit line per alert"
    );
    eprintln!("audit disk full: {stalled} delivered while full, all 60 lines written after");
}
