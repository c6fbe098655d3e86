//! The binary as operators and the bank's systems use it: exit codes, output, errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use balance_alertd::domain::AccountId;
use sea_orm::ConnectionTrait;

use crate::helpers::{Backend, NewAccount, TestApp, TestDb, read_json_lines};
use crate::on_both_backends;

const BIN: &str = env!("CARGO_BIN_EXE_balance-alertd");

/// The binary in `dir`, with a clean environment plus `env`.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run balance-alertd")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A config file pointing at `url`, with the audit log in `dir/logs`.
fn write_config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[database]\nurl = \"{url}\"\n[log]\ndir = \"{}\"\n{extra}\n",
        dir.join("logs").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn demo_prints_the_reference_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["demo"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "Email -> alice@example.com: Hi Alice, your balance ($49.00) is below $50.00"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Email -> carol@example.com: Hi Carol, your balance ($25.00) is below $50.00"
        ),
        "{text}"
    );
    assert!(!text.contains("bob@example.com"));
    assert_eq!(text.trim_end().lines().last(), Some("Total alerts sent: 2"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "demo left files behind"
    );
}

on_both_backends!(
    sweep_prints_the_summary_line_last_and_exits_3_on_a_failed_delivery,
    check_reports_each_outcome,
    a_dry_run_writes_nothing_and_lists_what_the_sweep_then_sends,
);

/// Everything a dry run could have changed: the SQLite files' bytes, or on PostgreSQL every
/// row of both tables.
async fn database_state(app: &TestApp) -> String {
    if let Some(path) = app.db.sqlite_path() {
        let mut state = String::new();
        for suffix in ["", "-wal"] {
            let file = format!("{}{suffix}", path.display());
            let bytes = std::fs::read(&file).unwrap_or_default();
            state.push_str(&format!("{file}: {:x}\n", md5_like(&bytes)));
        }
        return state;
    }
    let rows = app
        .conn
        .query_all_raw(app.statement(
            "SELECT CAST(a.* AS text) AS r FROM accounts a UNION ALL \
             SELECT CAST(l.* AS text) FROM alert_logs l ORDER BY 1",
            vec![],
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get::<String>("", "r").unwrap() + "\n")
        .collect()
}

/// A content hash good enough to tell two files apart (std's SipHash over the bytes).
fn md5_like(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

async fn a_dry_run_writes_nothing_and_lists_what_the_sweep_then_sends(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "");
    let config = config.to_str().unwrap();
    let alerted = app
        .insert_account(NewAccount::new("alerted@example.com", 100))
        .await;
    let out = run(dir.path(), &["-c", config, "sweep"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::remove_dir_all(dir.path().join("logs")).unwrap();
    let low = app
        .insert_account(NewAccount::new("low@example.com", 4_999))
        .await;
    let between = app
        .insert_account(NewAccount::new("between@example.com", 7_000))
        .await;
    app.insert_account(NewAccount::new("rich@example.com", 20_000))
        .await;
    let before = database_state(&app).await;

    let out = run(dir.path(), &["-c", config, "sweep", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("would alert {low} console balance=49.99 threshold=50.00"),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].starts_with(
            "sweep finished: below_threshold=2 eligible=1 sent=1 failed=0 in_cooldown=1 deferred=0"
        ) && lines[1].ends_with(" dry_run=true"),
        "{text}"
    );

    // "What if the threshold were 75.00?"
    let out = run(
        dir.path(),
        &["-c", config, "sweep", "--dry-run", "--json"],
        &[("BALANCE_ALERT__ALERT__THRESHOLD", "75.00")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let objects: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut would: Vec<String> = objects[..objects.len() - 1]
        .iter()
        .map(|o| {
            assert_eq!(o["channel"], "console");
            assert_eq!(o["threshold"], "75.00");
            o["account_id"].as_str().unwrap().to_owned()
        })
        .collect();
    would.sort();
    let mut expected = vec![low.to_string(), between.to_string()];
    expected.sort();
    assert_eq!(would, expected);
    let summary = objects.last().unwrap();
    assert_eq!(
        (summary["sent"].as_u64(), summary["dry_run"].as_bool()),
        (Some(2), Some(true))
    );

    assert_eq!(
        database_state(&app).await,
        before,
        "the database is unchanged"
    );
    assert!(
        !dir.path().join("logs").exists(),
        "no audit file or directory created"
    );
    assert!(app.alert_rows(&low).await.is_empty(), "nothing claimed");

    // The real sweep with the same override sends exactly the listed deliveries.
    let out = run(
        dir.path(),
        &["-c", config, "sweep"],
        &[("BALANCE_ALERT__ALERT__THRESHOLD", "75.00")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut sent: Vec<String> = read_json_lines(dir.path().join("logs/audit.log"))
        .iter()
        .map(|l| l["account_id"].as_str().unwrap().to_owned())
        .collect();
    sent.sort();
    assert_eq!(sent, expected);
    assert_eq!(app.alert_rows(&alerted).await.len(), 1);
}

/// A `sweep` exits without checkpointing its WAL, so the next process to close the database
/// last would copy it into the database file. A dry run that found the WAL leaves it there.
#[tokio::test]
async fn a_dry_run_after_a_sweep_leaves_the_sqlite_files_byte_identical() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let path = db.sqlite_path().unwrap();
    let conn = db.connect().await;
    for (email, balance) in [("low@example.com", 100), ("rich@example.com", 20_000)] {
        conn.execute_unprepared(&format!(
            "INSERT INTO accounts (id, owner_email, owner_name, balance_minor) \
             VALUES ('{}', '{email}', NULL, {balance})",
            uuid::Uuid::new_v4()
        ))
        .await
        .unwrap();
    }
    conn.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &db.url, "");
    let config = config.to_str().unwrap();
    let out = run(dir.path(), &["-c", config, "sweep"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let files = |suffix: &str| std::fs::read(format!("{}{suffix}", path.display()));
    let (db_before, wal_before) = (files("").unwrap(), files("-wal").unwrap());
    assert!(
        !wal_before.is_empty(),
        "the sweep's WAL is left for its writer"
    );

    let out = run(dir.path(), &["-c", config, "sweep", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("eligible=0 sent=0 failed=0 in_cooldown=1"),
        "the dry run read the sweep's alert from the WAL: {}",
        stdout(&out)
    );
    assert!(files("").unwrap() == db_before, "database file unchanged");
    assert!(files("-wal").unwrap() == wal_before, "WAL unchanged");
}

/// A one-shot command ends its PostgreSQL sessions with a goodbye. A session cut by the
/// process exit is counted by the server as abandoned and logged ("could not receive data
/// from client: Connection reset by peer"), once per cron-run command in a bank's server log.
#[tokio::test]
async fn one_shot_commands_close_their_postgresql_sessions() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &db.url, "");
    let config = config.to_str().unwrap();
    let out = run(dir.path(), &["-c", config, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let conn = sea_orm::Database::connect(&db.url).await.unwrap();
    let id = uuid::Uuid::new_v4();
    conn.execute_unprepared(&format!(
        "INSERT INTO accounts (id, owner_email, owner_name, balance_minor) \
         VALUES ('{id}', 'low@example.com', NULL, 100)"
    ))
    .await
    .unwrap();
    conn.close().await.unwrap();
    let id = id.to_string();
    for args in [
        &["migrate", "status"][..],
        &["sweep"],
        &["sweep", "--dry-run"],
        &["check", &id],
        &["sweep", "--json"],
    ] {
        let out = run(dir.path(), &[&["-c", config][..], args].concat(), &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }

    let mut options = sea_orm::ConnectOptions::new(db.url.clone());
    options.max_connections(1);
    let observer = sea_orm::Database::connect(options).await.unwrap();
    let others = "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                  AND backend_type = 'client backend' AND pid <> pg_backend_pid()";
    let abandoned = "SELECT sessions_abandoned AS n FROM pg_stat_database \
                     WHERE datname = current_database()";
    let number = |sql: &'static str| {
        let observer = &observer;
        async move {
            let row = observer
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    sql,
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<i64>("", "n").unwrap()
        }
    };
    // A backend counts its session's end as it exits, just after the client went away.
    for _ in 0..100 {
        if number(others).await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(number(others).await, 0, "every command's sessions ended");
    assert_eq!(
        number(abandoned).await,
        0,
        "sessions ended by a reset instead of a goodbye"
    );
}

async fn sweep_prints_the_summary_line_last_and_exits_3_on_a_failed_delivery(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "");
    let config = config.to_str().unwrap();
    app.insert_account(NewAccount::new("one@example.com", 100))
        .await;
    app.insert_account(NewAccount::new("two@example.com", 200))
        .await;
    app.insert_account(NewAccount::new("rich@example.com", 20_000))
        .await;

    let out = run(dir.path(), &["--config", config, "sweep"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let last = text.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("sweep finished: below_threshold=2 eligible=2 sent=2 failed=0 in_cooldown=0 deferred=0 duration_ms="),
        "{last}"
    );
    assert_eq!(text.matches("📧 Email -> ").count(), 2);
    assert_eq!(read_json_lines(dir.path().join("logs/audit.log")).len(), 2);

    app.insert_account(NewAccount::new("broken-address", 300))
        .await;
    let out = run(dir.path(), &["-c", config, "sweep", "--json"], &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a failed delivery exits 3: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    let summary: serde_json::Value =
        serde_json::from_str(text.trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(summary["below_threshold"], 3);
    assert_eq!(summary["eligible"], 1);
    assert_eq!(summary["sent"], 0);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["in_cooldown"], 2);
    assert!(summary["duration_ms"].is_u64());
    let audit = read_json_lines(dir.path().join("logs/audit.log"));
    assert_eq!(
        audit.len(),
        3,
        "the audit log is appended to, flushed before exit"
    );
}

async fn check_reports_each_outcome(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "");
    let config = config.to_str().unwrap();
    let low = app
        .insert_account(NewAccount::new("low@example.com", 100))
        .await;
    let high = app
        .insert_account(NewAccount::new("high@example.com", 10_000))
        .await;
    let bad = app.insert_account(NewAccount::new("bad", 100)).await;
    let check = |id: &AccountId| run(dir.path(), &["-c", config, "check", id.as_str()], &[]);

    let out = check(&low);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Email -> low@example.com"));
    assert!(
        stdout(&out).contains("console: sent (alert "),
        "{}",
        stdout(&out)
    );
    let out = check(&low);
    assert!(
        stdout(&out).contains("console: repeat: in cooldown since the alert of "),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("balance $1.00 is below $50.00 (alert.threshold)"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains(
            "policy repeat (alert.policy), time zone UTC (alert.timezone), quiet hours none \
             (alert.quiet_hours)"
        ),
        "{}",
        stdout(&out)
    );
    let out = check(&high);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("balance $100.00 is not below $50.00 (alert.threshold); no alert"),
        "{}",
        stdout(&out)
    );

    // once, in the account's own zone, and quiet hours in it.
    let set = |column: &str, value: &str, id: &AccountId| {
        let sql = format!("UPDATE accounts SET {column} = $1 WHERE id = $2");
        (sql, value.to_owned(), id.clone())
    };
    for (sql, value, id) in [
        set("alert_policy", "once", &low),
        set("timezone", "Europe/Paris", &low),
    ] {
        app.exec(&sql, vec![value.into(), id.as_str().into()]).await;
    }
    let out = check(&low);
    let text = stdout(&out);
    assert!(
        text.contains(
            "policy once (accounts.alert_policy), time zone Europe/Paris (accounts.timezone)"
        ),
        "{text}"
    );
    assert!(
        text.contains("console: once: not re-armed since the alert of "),
        "{text}"
    );
    let quiet = app
        .insert_account(NewAccount::new("night@example.com", 100))
        .await;
    let (sql, _, _) = set("quiet_hours", "", &quiet);
    app.exec(&sql, vec!["00:00-23:59".into(), quiet.as_str().into()])
        .await;
    let (sql, _, _) = set("timezone", "", &quiet);
    app.exec(&sql, vec!["America/New_York".into(), quiet.as_str().into()])
        .await;
    let out = check(&quiet);
    let text = stdout(&out);
    assert!(
        text.contains(
            "console: inside quiet hours 00:00-23:59 America/New_York: deferred until 23:59 \
             America/New_York"
        ) || text.contains("console: sent"),
        "{text}"
    );
    assert_eq!(check(&bad).status.code(), Some(3));
    let unknown = AccountId::new(uuid::Uuid::new_v4().to_string());
    let out = check(&unknown);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("not found"));
    let out = run(dir.path(), &["-c", config, "check", "not-a-uuid"], &[]);
    assert_eq!(out.status.code(), Some(2), "usage error: {}", stderr(&out));
}

/// Each bad value exits 2 with a message that names the key (or file) and why.
#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("[alert]\nthreshold = \"50.001\"", "alert.threshold"),
        ("[alert]\nthreshold = \"fifty\"", "alert.threshold"),
        ("[alert]\nthreshold = 50.5", "decimal string"),
        ("[alert]\ncooldown = \"a while\"", "alert.cooldown"),
        ("[alert]\ncooldown = 24", "alert.cooldown"),
        ("[alert]\npolicy = \"weekly\"", "alert.policy"),
        ("[notify]\nchannels = [\"sms\"]", "notify.sms.account_sid"),
        (
            "[notify]\nchannels = [\"sms\"]\n[notify.sms]\naccount_sid = \"AC1\"\nfrom = \"+15005550006\"",
            "notify.sms.auth_token",
        ),
        ("[alert]\ntimezone = \"Mars/Olympus\"", "alert.timezone"),
        ("[alert]\ntimezone = \"CEST\"", "alert.timezone"),
        ("[alert]\nquiet_hours = \"22-7\"", "alert.quiet_hours"),
        (
            "[alert]\nquiet_hours = \"25:00-07:00\"",
            "alert.quiet_hours",
        ),
        ("[alert]\nrearm_margin = \"-1.00\"", "alert.rearm_margin"),
        ("[alert]\nrearm_margin = \"1.001\"", "alert.rearm_margin"),
        ("[schedule]\ncron = \"*/5 * * * *\"", "schedule.cron"),
        ("[schedule]\ncron = \"0 99 * * * *\"", "schedule.cron"),
        ("[alert]\nthresold = \"1.00\"", "thresold"),
        ("[nonsense]\nkey = 1", "nonsense"),
        ("[notify]\nchannels = [\"pager\"]", "pager"),
        (
            "[notify]\nchannels = [\"slack\"]",
            "notify.slack.webhook_url",
        ),
        ("[delivery]\nmax_attempts = 0", "delivery.max_attempts"),
        (
            "[delivery]\nmax_attempts = \"three\"",
            "delivery.max_attempts",
        ),
        ("[currency]\nminor_digits = 30", "currency.minor_digits"),
        (
            "[alert.thresholds]\nEUR = \"40.001\"",
            "alert.thresholds.EUR",
        ),
        ("[alert.thresholds]\nJPY = \"50.5\"", "alert.thresholds.JPY"),
        ("[alert.thresholds]\nZZZ = \"1.00\"", "alert.thresholds.ZZZ"),
        ("[alert.thresholds]\nEUR = 40.5", "decimal string"),
        (
            "[currency]\ncode = \"JPY\"\nsymbol = \"¥\"\n[alert]\nthreshold = \"5000\"",
            "currency.minor_digits",
        ),
        // Valid alone, but the default threshold "50.00" has two fractional digits.
        ("[currency]\nminor_digits = 0", "currency.minor_digits = 0"),
        (
            "[database]\nurl = \"mysql://u:hunter2@h/db\"",
            "database.url",
        ),
        ("[log]\nformat = \"xml\"", "log.format"),
        (
            "[notify]\nchannels = [\"webhook\"]\n[notify.webhook]\nurl = \"http://10.0.0.1/hook\"",
            "notify.webhook.url",
        ),
        (
            "[notify]\nchannels = [\"email\"]\n[notify.email]\nsmtp_url = \"smtps://h\"\nbody = \"{{ balanse }}\"",
            "notify.email.body",
        ),
        (
            "[notify]\nchannels = [\"slack\"]\n[notify.slack]\nwebhook_url = \"https://h/x\"\ntext = \"{% if %}\"",
            "notify.slack.text",
        ),
    ];
    for (toml, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = run(
            dir.path(),
            &["--config", path.to_str().unwrap(), "config", "--check"],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{toml}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(key),
            "{toml}: stderr does not name {key}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("hunter2"), "a secret was printed");
    }
    let out = run(
        dir.path(),
        &["--config", "/nonexistent/balance.toml", "sweep"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/balance.toml"),
        "{}",
        stderr(&out)
    );
    let env = [("BALANCE_ALERT__ALERT__THRESHOLD", "12.345")];
    let out = run(dir.path(), &["config", "--check"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("alert.threshold"), "{}", stderr(&out));
}

#[test]
fn config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[database]\nurl = \"postgres://app:hunter2@db.internal/bank\"\n[alert]\nthreshold = \"75.00\"\n")
        .unwrap();
    let env = [
        ("BALANCE_ALERT_CONFIG", path.to_str().unwrap()),
        ("BALANCE_ALERT__ALERT__COOLDOWN", "2h"),
        (
            "BALANCE_ALERT__NOTIFY__WEBHOOK__SECRET",
            "s3cr3t-signing-key",
        ),
    ];
    let out = run(dir.path(), &["config"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let printed: toml::Table = toml::from_str(&text).expect("config prints TOML");
    assert_eq!(
        printed["alert"]["threshold"].as_str(),
        Some("75.00"),
        "file layer applied"
    );
    assert_eq!(
        printed["alert"]["cooldown"].as_str(),
        Some("2h"),
        "environment layer applied"
    );
    assert_eq!(
        printed["database"]["url"].as_str(),
        Some("postgres://app:***@db.internal/bank")
    );
    assert_eq!(
        printed["notify"]["webhook"]["secret"].as_str(),
        Some("[redacted]")
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t"),
        "{text}"
    );
}

#[test]
fn unreachable_database_exits_1_naming_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "BALANCE_ALERT__DATABASE__URL",
            "postgres://app:hunter2@127.0.0.1:1/bank",
        ),
        ("BALANCE_ALERT__DATABASE__CONNECT_TIMEOUT", "2s"),
    ];
    let out = run(dir.path(), &["sweep"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("127.0.0.1:1/bank"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_reports_status_and_rolls_back() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [("BALANCE_ALERT__DATABASE__URL", db.url.as_str())];
    let status = |env| stdout(&run(dir.path(), &["migrate", "status"], env));
    let all = <migration::Migrator as migration::MigratorTrait>::migrations().len();
    assert_eq!(status(&env).matches("Pending").count(), all);
    assert_eq!(run(dir.path(), &["migrate"], &env).status.code(), Some(0));
    assert_eq!(status(&env).matches("Applied").count(), all);
    assert_eq!(
        run(dir.path(), &["migrate", "down"], &env).status.code(),
        Some(0)
    );
    assert_eq!(status(&env).matches("Applied").count(), all - 1);
    assert_eq!(
        run(dir.path(), &["migrate", "fresh"], &env).status.code(),
        Some(0)
    );
    assert_eq!(status(&env).matches("Applied").count(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweep_processes_on_one_sqlite_file_alert_each_account_once() {
    sweep_processes_alert_each_account_once(Backend::Sqlite, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sweep_processes_on_one_postgres_database_alert_each_account_once() {
    sweep_processes_alert_each_account_once(Backend::Postgres, 4).await;
}

async fn sweep_processes_alert_each_account_once(backend: Backend, processes: usize) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "[delivery]\nbatch_size = 5");
    for i in 0..200 {
        app.insert_account(NewAccount::new(&format!("p{i}@example.com"), i))
            .await;
    }
    let children: Vec<_> = (0..processes)
        .map(|_| {
            tokio::process::Command::new(BIN)
                .current_dir(dir.path())
                .env_clear()
                .args(["-c", config.to_str().unwrap(), "sweep"])
                .output()
        })
        .collect();
    let mut lines = Vec::new();
    for child in children {
        let out = child.await.expect("sweep process");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        lines.extend(
            stdout(&out)
                .lines()
                .filter(|l| l.contains("Email -> "))
                .map(str::to_owned),
        );
    }
    assert_eq!(lines.len(), 200, "deliveries across all processes");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 200, "no account was alerted twice");
}

/// Secrets set in config appear in no log line, no audit line, no `config` output and no
/// error message, even when every channel fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_audit_config_output_or_errors() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secrets = [
        "SMTPPASSWORD1",
        "SLACKTOKEN2",
        "WEBHOOKPATH3",
        "QUERYTOKEN4",
        "SIGNINGSECRET5",
        "DBPASSWORD6",
    ];
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[notify]\nchannels = [\"email\", \"slack\", \"webhook\"]\n\
         [notify.email]\nsmtp_url = \"smtp://alerts:SMTPPASSWORD1@127.0.0.1:{closed_port}\"\n\
         [notify.slack]\nwebhook_url = \"{uri}/services/T0/B0/SLACKTOKEN2\"\n\
         [notify.webhook]\nurl = \"{uri}/hooks/WEBHOOKPATH3?token=QUERYTOKEN4\"\nsecret = \"SIGNINGSECRET5\"\n\
         [delivery]\nmax_attempts = 2\nretry_initial_backoff = \"10ms\"\nretry_max_backoff = \"20ms\"\n\
         [log]\nlevel = \"debug\"",
        uri = server.uri()
    );
    let config = dir.path().join("config.toml");
    let text = format!(
        "[database]\nurl = \"{}\"\n{}\ndir = \"{}\"\n",
        app.db.url,
        extra,
        dir.path().join("logs").display()
    );
    std::fs::write(&config, text).unwrap();
    app.insert_account(NewAccount::new("leak@example.com", 100))
        .await;

    let out = run(dir.path(), &["-c", config.to_str().unwrap(), "sweep"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let audit = std::fs::read_to_string(dir.path().join("logs/audit.log")).unwrap();
    assert_eq!(audit.lines().count(), 3, "three failed deliveries audited");
    let printed = run(dir.path(), &["-c", config.to_str().unwrap(), "config"], &[]);
    assert_eq!(printed.status.code(), Some(0));
    let bad_url = run(
        dir.path(),
        &["config", "--check"],
        &[
            (
                "BALANCE_ALERT__DATABASE__URL",
                "postgresql://u:DBPASSWORD6@127.0.0.1:1/x",
            ),
            ("BALANCE_ALERT__NOTIFY__CHANNELS", "email"),
            (
                "BALANCE_ALERT__NOTIFY__EMAIL__SMTP_URL",
                "smtq://u:SMTPPASSWORD1@h",
            ),
        ],
    );
    assert_eq!(bad_url.status.code(), Some(2));
    let everything = [
        stdout(&out),
        stderr(&out),
        audit,
        stdout(&printed),
        stderr(&printed),
        stderr(&bad_url),
    ]
    .join("\n");
    assert!(
        everything.contains("Alert delivery failed"),
        "the failures were logged: {everything}"
    );
    for secret in secrets {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
}

#[test]
fn a_config_file_with_secrets_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[notify.webhook]\nsecret = \"hunter2\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        dir.path(),
        &["-c", path.to_str().unwrap(), "config", "--check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains("readable by other users") && text.contains("notify.webhook.secret"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run(
        dir.path(),
        &["-c", path.to_str().unwrap(), "config", "--check"],
        &[],
    );
    assert!(!(stdout(&out) + &stderr(&out)).contains("readable by other users"));
}

/// Only SQLite can store a value its column's type cannot decode (the bank's systems wrote
/// text into an integer column): the error names the table and the row, so that an operator
/// can find and fix it, and nothing panics.
#[tokio::test]
async fn an_undecodable_account_row_is_named_in_the_error() {
    let app = TestApp::spawn(Backend::Sqlite).await.expect("SQLite");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db.url, "");
    let garbled = app
        .insert_account(NewAccount::new("garbled@example.com", 100))
        .await;
    // Text sorts above every integer in SQLite, so the row is below its "own threshold".
    app.exec(
        "UPDATE accounts SET alert_threshold_minor = 'lots' WHERE id = $1",
        vec![garbled.as_str().into()],
    )
    .await;
    let out = run(dir.path(), &["-c", config.to_str().unwrap(), "sweep"], &[]);
    let row = format!("accounts row {}", garbled.as_str());
    assert!(stderr(&out).contains(&row), "{}", stderr(&out));
    assert_ne!(out.status.code(), Some(101), "panicked: {}", stderr(&out));
}
