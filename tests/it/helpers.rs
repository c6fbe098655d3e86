//! Test harness: each test gets its own fresh database (a SQLite file in a temp dir, or a
//! new database on the PostgreSQL server named by $BALANCE_ALERT_TEST_PG_URL), a fake clock,
//! a console channel writing into a buffer and an audit log in a temp dir.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balance_alertd::app::migrate_up;
use balance_alertd::application::check_account::{BalanceAlert, CheckReport};
use balance_alertd::application::sweep::{BulkBalanceAlert, SweepSummary};
use balance_alertd::application::{AlertContext, DeliveryPolicy};
use balance_alertd::config::DatabaseSettings;
use balance_alertd::domain::ports::{AuditLog, Channel, Clock};
use balance_alertd::domain::{AccountId, AlertRules, Currency, Money, Thresholds};
use balance_alertd::infrastructure::audit::JsonLinesAuditLog;
use balance_alertd::infrastructure::db::entities::alert_logs;
use balance_alertd::infrastructure::db::{self, SeaOrmStore};
use balance_alertd::infrastructure::notify::{ConsoleChannel, ConsoleOut};
use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, Statement, Value,
};
use secrecy::SecretString;
use tempfile::TempDir;
use tracing_appender::non_blocking::WorkerGuard;

pub const PG_URL_VAR: &str = "BALANCE_ALERT_TEST_PG_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `sqlite` and `postgres` tests calling `fn $name(backend: Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}

/// A fresh, migrated database of one backend.
pub struct TestDb {
    pub url: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A PostgreSQL test without a configured server fails ([`pg_admin_url`]): a test that
    /// returned early would be reported as passed. (The `Option` is kept for the callers'
    /// `let Some(..) else` shape.)
    pub async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Some(Self {
                    url,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let admin_url = pg_admin_url()?;
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                let admin = sea_orm::Database::connect(&admin_url)
                    .await
                    .expect("connect to the test PostgreSQL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.expect("close admin connection");
                let base = admin_url.rsplit_once('/').expect("URL with a database").0;
                Some(Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                })
            }
        }
    }

    pub fn settings(&self, max_connections: u32) -> DatabaseSettings {
        DatabaseSettings {
            url: SecretString::from(self.url.clone()),
            max_connections,
            auto_migrate: true,
            connect_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(10),
        }
    }

    /// The SQLite database file (`None` on PostgreSQL).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self._dir.as_ref().map(|dir| dir.path().join("test.db"))
    }

    /// A new pool (as a separate process would have), with the schema migrated.
    pub async fn connect(&self) -> DatabaseConnection {
        let conn = db::connect(&self.settings(4)).await.expect("connect");
        migrate_up(&conn).await.expect("migrate");
        conn
    }
}

pub fn pg_admin_url() -> Option<String> {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        // Failing, not passing: a test that returns early would report a PostgreSQL
        // behaviour as checked when it was not. scripts/test.sh starts a server.
        _ => panic!(
            "PostgreSQL test NOT RUN: {PG_URL_VAR} is not set; run scripts/test.sh, which \
             starts a throwaway server, or point {PG_URL_VAR} at one"
        ),
    }
}

/// A clock the test moves by hand.
pub struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    pub fn new() -> Self {
        let start = DateTime::parse_from_rfc3339("2026-11-27T12:00:00.123456Z").expect("valid");
        Self(Mutex::new(start.with_timezone(&Utc)))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().expect("clock") += TimeDelta::from_std(by).expect("small duration");
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock")
    }
}

/// Console output captured from the console channel.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn out(&self) -> ConsoleOut {
        self.0.clone()
    }

    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("console buffer").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many alerts were delivered to `email`.
    pub fn count_for(&self, email: &str) -> usize {
        let needle = format!("Email -> {email}:");
        self.lines().iter().filter(|l| l.contains(&needle)).count()
    }
}

/// A terminal or pipe that takes `delay` per line: a real slow stdout, in-process.
pub struct SlowConsole {
    pub delay: Duration,
    pub inner: Captured,
}

impl Write for SlowConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.delay);
        self.inner.out().lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fields of an account row an external writer inserts.
pub struct NewAccount<'a> {
    pub email: &'a str,
    pub name: Option<&'a str>,
    pub balance_minor: i64,
    pub threshold_minor: Option<i64>,
}

impl<'a> NewAccount<'a> {
    pub fn new(email: &'a str, balance_minor: i64) -> Self {
        Self {
            email,
            name: Some("Owner"),
            balance_minor,
            threshold_minor: None,
        }
    }
}

pub struct TestApp {
    pub db: TestDb,
    pub conn: DatabaseConnection,
    pub store: SeaOrmStore,
    pub clock: Arc<FakeClock>,
    pub console: Captured,
    pub rules: AlertRules,
    pub delivery: DeliveryPolicy,
    pub audit_dir: TempDir,
    audit: Arc<JsonLinesAuditLog>,
    audit_guard: Option<WorkerGuard>,
}

pub const HOUR: Duration = Duration::from_secs(3600);

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        let db = TestDb::create(backend).await?;
        let conn = db.connect().await;
        // As the daemon opens it: on SQLite, writes go through one dedicated connection.
        let writer = db::connect_writer(&db.settings(4))
            .await
            .expect("connect the writer");
        let store = SeaOrmStore::with_writer(conn.clone(), writer, db.url.clone());
        let audit_dir = tempfile::tempdir().expect("temp dir");
        let (audit, guard) = JsonLinesAuditLog::open(
            audit_dir.path(),
            balance_alertd::config::LogRotation::Never,
            1,
        )
        .expect("audit log");
        Some(Self {
            db,
            conn,
            store,
            clock: Arc::new(FakeClock::new()),
            console: Captured::default(),
            rules: AlertRules {
                thresholds: Thresholds::new(Currency::usd(), Money::from_minor(5_000)),
                cooldown: 24 * HOUR,
                claim_timeout: Duration::from_secs(300),
                give_up_after: 24 * HOUR,
                policy: balance_alertd::domain::PolicyDefaults::default(),
                rearm_margin: balance_alertd::domain::Money::from_minor(0),
            },
            delivery: DeliveryPolicy {
                max_attempts: 3,
                timeout: Duration::from_secs(5),
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                concurrency: 8,
                batch_size: 50,
                jitter_seed: Some(7),
                limits: Default::default(),
            },
            audit_dir,
            audit: Arc::new(audit),
            audit_guard: Some(guard),
        })
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The use-cases' context: console channel into [`Self::console`].
    pub fn context(&self) -> AlertContext {
        let channel = ConsoleChannel::new(self.console.out());
        self.context_with(vec![Arc::new(channel)])
    }

    pub fn context_with(&self, channels: Vec<Arc<dyn Channel>>) -> AlertContext {
        AlertContext {
            store: Arc::new(self.store.clone()),
            channels,
            audit: self.audit.clone() as Arc<dyn AuditLog>,
            clock: self.clock.clone(),
            rules: self.rules.clone(),
            delivery: self.delivery.clone(),
            digests: Vec::new(),
        }
    }

    pub async fn sweep(&self) -> SweepSummary {
        BulkBalanceAlert::new(self.context())
            .execute()
            .await
            .expect("sweep")
    }

    pub async fn check(&self, id: &AccountId) -> CheckReport {
        BalanceAlert::new(self.context())
            .execute(id)
            .await
            .expect("check")
    }

    /// Inserts an account the way the bank's systems do: plain SQL, no `updated_at`.
    pub async fn insert_account(&self, account: NewAccount<'_>) -> AccountId {
        let id = uuid::Uuid::new_v4().to_string();
        self.exec(
            "INSERT INTO accounts (id, owner_email, owner_name, balance_minor, alert_threshold_minor) \
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                id.clone().into(),
                account.email.into(),
                account.name.map(str::to_owned).into(),
                account.balance_minor.into(),
                account.threshold_minor.into(),
            ],
        )
        .await;
        AccountId::new(id)
    }

    /// Runs SQL written with `$n` placeholders (in order) on either backend.
    pub async fn exec(&self, sql: &str, values: Vec<Value>) {
        self.conn
            .execute_raw(self.statement(sql, values))
            .await
            .expect("SQL statement");
    }

    pub fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        statement(self.conn.get_database_backend(), sql, values)
    }

    /// The `n` column of a `SELECT COUNT(*) AS n ...`.
    pub async fn count(&self, sql: &str) -> u64 {
        let row = self
            .conn
            .query_one_raw(self.statement(sql, vec![]))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap() as u64
    }

    /// The `id` column of a query's rows.
    pub async fn alert_ids(&self, sql: &str) -> Vec<String> {
        self.conn
            .query_all_raw(self.statement(sql, vec![]))
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get::<String>("", "id").unwrap())
            .collect()
    }

    /// Takes SQLite's write lock, as another writer would, until the transaction ends.
    pub async fn hold_write_lock(&self) -> sea_orm::DatabaseTransaction {
        let options = sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        sea_orm::TransactionTrait::begin_with_options(&self.conn, options)
            .await
            .expect("take the write lock")
    }

    pub async fn alert_rows(&self, account: &AccountId) -> Vec<alert_logs::Model> {
        alert_logs::Entity::find()
            .filter(alert_logs::Column::AccountId.eq(account.as_str()))
            .order_by_asc(alert_logs::Column::CreatedAt)
            .all(&self.conn)
            .await
            .expect("read alert_logs")
    }

    /// Flushes the audit log (as the daemon does at exit) and returns its lines, parsed.
    pub fn finish_audit(&mut self) -> Vec<serde_json::Value> {
        drop(self.audit_guard.take());
        read_json_lines(self.audit_dir.path().join("audit.log"))
    }
}

pub fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        sql.to_owned()
    } else {
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                while chars.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                }
                out.push('?');
            } else {
                out.push(c);
            }
        }
        out
    };
    Statement::from_sql_and_values(backend, sql, values)
}

pub fn read_json_lines(path: PathBuf) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// A console whose writes fail the first `failures` times, as a full disk or closed pipe would.
pub struct FlakyOut {
    pub failures: usize,
    pub inner: Captured,
}

impl Write for FlakyOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(std::io::Error::other("no space left on device"));
        }
        self.inner.0.lock().expect("buffer").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET url` on loopback: status and body (the daemon's /metrics, /healthz, /readyz).
pub async fn http_get(url: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("http client")
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The value of one sample of a Prometheus text page, e.g.
/// `balance_alertd_deliveries_total{channel="console",outcome="sent"}`.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `promtool` from `$PROMTOOL` (scripts/test.sh provides it); `None` (skipped, loudly)
/// outside CI when there is none.
pub fn promtool() -> Option<String> {
    match std::env::var("PROMTOOL") {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PROMTOOL is not set under CI=true (scripts/test.sh sets it)"
            );
            eprintln!("SKIPPED: promtool checks (PROMTOOL not set; scripts/test.sh sets it)");
            None
        }
    }
}
