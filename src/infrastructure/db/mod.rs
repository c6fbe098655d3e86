//! The database adapter: connection set-up (with the SQLite pragmas a daemon needs), the
//! SeaORM entities, and the [`AlertStore`](crate::domain::ports::AlertStore) implementation.

mod backlog;
mod candidates;
mod claim;
mod conn;
mod convert;
mod dialect;
pub mod entities;
mod record;
mod recovery;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnAcquireErr, ConnectOptions, Database, DatabaseConnection, DbErr, RuntimeErr};
use secrecy::ExposeSecret;
use tracing::log::LevelFilter;

pub use store::SeaOrmStore;

use crate::config::DatabaseSettings;
use crate::config::redact::mask_url;
use crate::domain::ports::StoreError;

/// SQLite page cache per connection, in KiB (SQLite's own default). A sweep holds three
/// connections (the writer, which claims and records, a reader of candidate pages, one for
/// counts and checkpoints), and every cache fills up once `alert_logs` holds months of
/// history: with 8 MiB a sweep over a month of it peaked at 77–79 MB, over the 64 MB
/// budget; with 2 MiB at 52–53 MB, as fast (the pages come from the OS's page cache), and
/// as fast on an empty `alert_logs` too (README "Performance").
const SQLITE_CACHE_KIB: i64 = 2 * 1024;

/// SQLite: a background task copies the WAL into the database file once the writer has
/// been idle this long (`PRAGMA wal_checkpoint(PASSIVE)` on a pool connection: it never
/// blocks nor waits for a writer). A checkpoint inside a sweep, by the committing writer as
/// SQLite's autocheckpoint does, stalls every claim and outcome behind it, and one running
/// beside the writer slowed it down further; after the sweep it costs the sweep nothing
/// (scripts/bench.sh: a first sweep of 100,000 alerts on a million accounts took 2.4 s with
/// the autocheckpoint every ~40 MB, 1.8 s without, and 3.2 s with background checkpoints
/// every 0.5 s; the 160 MB of WAL it leaves takes ~0.25 s to checkpoint).
pub(crate) const SQLITE_CHECKPOINT_WHEN_IDLE: Duration = Duration::from_secs(1);

/// SQLite's own autocheckpoint stays as a backstop (~400 MB of WAL), for a sweep so large
/// that its WAL would otherwise grow without bound, and for a process without the task. It
/// must stay above the WAL a sweep of 100,000 alerts writes (README "Performance"): fired
/// inside a sweep, it stalls every claim and outcome behind its copy.
const SQLITE_WAL_AUTOCHECKPOINT_PAGES: u32 = 100_000;

/// Once checkpointed and reset, the WAL file is truncated to this size, so a large sweep
/// does not leave a large file behind.
const SQLITE_JOURNAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// Rows the SQLite worker thread may hand over before the reading task takes them (sqlx's
/// default is 50). SQLite runs on a worker thread per connection; with a short buffer a
/// page of 1,000 candidates or re-read alerts went over in many small hand-offs, each a
/// thread wake-up. With a page's worth the worker streams a page in one go: a first sweep of
/// 100,000 alerts on a million accounts used 1.0 s of system CPU instead of 1.2 s and took
/// ~2.2 s instead of ~2.4 s (scripts/bench.sh, repeated runs). At most a page in memory.
const SQLITE_ROW_BUFFER: usize = 1024;

/// Statements slower than this are logged at WARN: an operator should look at them.
const SLOW_STATEMENT: Duration = Duration::from_secs(1);

/// Connects to the configured database. The error names the database (password masked).
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, StoreError> {
    let options = connect_options(settings, settings.max_connections);
    Database::connect(options)
        .await
        .map_err(|e| map_db_err(&settings.display_url(), "cannot connect", e))
}

/// SQLite only: the one connection every write transaction of this process goes through
/// (`None` on PostgreSQL, whose writers run in parallel on the pool).
///
/// SQLite has a single writer anyway. Queueing this process's writers on one pooled
/// connection wakes the next one the moment the previous commits, where separate
/// connections would poll the write lock in SQLite's busy handler (sleeps of 1, 2, 5, 10 ms
/// ...). And a connection keeps its page cache across its own commits, where any other
/// connection's commit makes it drop the whole cache and read the pages again.
/// Other processes still wait for the lock up to `database.busy_timeout`.
pub async fn connect_writer(
    settings: &DatabaseSettings,
) -> Result<Option<DatabaseConnection>, StoreError> {
    if !settings.database_url().starts_with("sqlite:") {
        return Ok(None);
    }
    let mut options = connect_options(settings, 1);
    options
        .min_connections(1)
        // A local file cannot silently drop a connection: no ping before every statement.
        .test_before_acquire(false)
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>);
    Database::connect(options)
        .await
        .map(Some)
        .map_err(|e| map_db_err(&settings.display_url(), "cannot connect", e))
}

/// A connection that cannot write (`sweep --dry-run`): it never creates the database, never
/// changes its journal mode, and refuses writes (SQLite `query_only`, PostgreSQL read-only
/// transactions). SQLite is opened read-write all the same: a read-only connection leaves
/// the `-wal`/`-shm` files behind, a read-write one removes them when it closes last
/// ([`ReadOnlyConnection::close`]).
pub async fn connect_read_only(
    settings: &DatabaseSettings,
) -> Result<ReadOnlyConnection, StoreError> {
    let url = settings.database_url();
    // Before connecting: the connection itself creates the files.
    let found_wal = sqlite_file(url).is_some_and(|file| {
        let mut wal = file.into_os_string();
        wal.push("-wal");
        PathBuf::from(wal).exists()
    });
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(2)
        .connect_timeout(settings.connect_timeout)
        .acquire_timeout(settings.connect_timeout)
        .sqlx_logging(true)
        .sqlx_logging_level(LevelFilter::Debug);
    let busy_timeout = settings.busy_timeout;
    options.map_sqlx_sqlite_opts(move |o| {
        o.create_if_missing(false)
            .busy_timeout(busy_timeout)
            .pragma("query_only", "1")
            .row_buffer_size(SQLITE_ROW_BUFFER)
    });
    options.map_sqlx_postgres_opts(|o| {
        o.options([
            ("enable_seqscan", "off"),
            ("jit", "off"),
            ("default_transaction_read_only", "on"),
        ])
    });
    let conn = Database::connect(options)
        .await
        .map_err(|e| map_db_err(&settings.display_url(), "cannot connect", e))?;
    Ok(ReadOnlyConnection { conn, found_wal })
}

/// A [`connect_read_only`] connection, which leaves the database's files as it found them.
pub struct ReadOnlyConnection {
    conn: DatabaseConnection,
    /// A SQLite WAL was there before this connection: left by a process that still runs or
    /// that exited without closing (a `sweep`, a crash), with transactions not yet copied
    /// into the database file.
    found_wal: bool,
}

impl ReadOnlyConnection {
    pub fn connection(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// Closes the connection, unless it found a WAL: closing SQLite's last connection copies
    /// the WAL into the database file (a checkpoint) and removes it, and a dry run must leave
    /// that file byte-identical; the WAL stays for its writer. Without a WAL beforehand the
    /// close removes the empty `-wal`/`-shm` files this connection created.
    pub async fn close(self) {
        if !self.found_wal {
            self.conn.clone().close().await.ok();
        }
    }
}

impl Drop for ReadOnlyConnection {
    /// Also on an early return: a dropped pool closes its connections in the background.
    fn drop(&mut self) {
        if self.found_wal {
            std::mem::forget(self.conn.clone());
        }
    }
}

/// The file of a `sqlite:` URL; `None` for other databases and in-memory SQLite.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

fn connect_options(settings: &DatabaseSettings, max_connections: u32) -> ConnectOptions {
    let url = settings.database_url();
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .connect_timeout(settings.connect_timeout)
        .acquire_timeout(settings.connect_timeout)
        // Every statement at DEBUG (RUST_LOG=sqlx=debug shows them), slow ones at WARN.
        .sqlx_logging(true)
        .sqlx_logging_level(LevelFilter::Debug)
        .sqlx_slow_statements_logging_settings(LevelFilter::Warn, SLOW_STATEMENT);
    let busy_timeout = settings.busy_timeout;
    options.map_sqlx_sqlite_opts(move |o| {
        o.journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            .pragma(
                "wal_autocheckpoint",
                SQLITE_WAL_AUTOCHECKPOINT_PAGES.to_string(),
            )
            .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
            .row_buffer_size(SQLITE_ROW_BUFFER)
            .pragma(
                "journal_size_limit",
                SQLITE_JOURNAL_SIZE_LIMIT_BYTES.to_string(),
            )
    });
    // Every statement of the daemon is built for index access (partial indexes, lookups by
    // key). Until autovacuum first analyzes alert_logs (a new deployment, or right after a
    // large sweep), PostgreSQL's statistics say it is empty and the planner picks sequential
    // scans of it for the claim re-read and for marking outcomes by id: a first sweep of
    // 100,000 alerts on a fresh database took 12.2 s instead of ~5 s (scripts/bench.sh).
    // Making sequential scans a last resort keeps the planned access paths, whatever the
    // statistics say. (The candidate query also carries an OFFSET 0 fence for the same reason.)
    // JIT compilation pays off for long analytic queries, never for these short ones: it added
    // ~10 ms to each candidate page (EXPLAIN ANALYZE, 1M accounts).
    options.map_sqlx_postgres_opts(|o| o.options([("enable_seqscan", "off"), ("jit", "off")]));
    options
}

/// A private in-memory SQLite database: one connection that is never recycled, because the
/// database disappears with its last connection (PITFALLS).
pub async fn connect_in_memory() -> Result<DatabaseConnection, StoreError> {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false)
        .map_sqlx_sqlite_pool_opts(|o| o.idle_timeout(None).max_lifetime(None));
    Database::connect(options)
        .await
        .map_err(|e| map_db_err("sqlite::memory:", "cannot open", e))
}

impl DatabaseSettings {
    /// The URL with its secret exposed: only for handing to the driver.
    fn database_url(&self) -> &str {
        self.url.expose_secret()
    }

    /// The URL safe to print.
    pub fn display_url(&self) -> String {
        mask_url(self.url.expose_secret())
    }
}

/// Translates a SeaORM error into the port's error, telling "the database is unreachable"
/// (an operator's problem, retried on the next tick) from everything else.
pub(crate) fn map_db_err(database: &str, action: &str, err: DbErr) -> StoreError {
    let unavailable = match &err {
        DbErr::Conn(_)
        | DbErr::ConnectionAcquire(ConnAcquireErr::Timeout | ConnAcquireErr::ConnectionClosed) => {
            true
        }
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(
            e.as_ref(),
            sea_orm::sqlx::Error::Io(_)
                | sea_orm::sqlx::Error::PoolTimedOut
                | sea_orm::sqlx::Error::PoolClosed
                | sea_orm::sqlx::Error::Tls(_)
        ),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable {
            message: format!("{action} {database}"),
            source: err.into(),
        }
    } else {
        StoreError::Unexpected(anyhow::Error::new(err).context(format!("{action} ({database})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/balance-alert/alerts.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/balance-alert/alerts.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://alerts.db"),
            Some(PathBuf::from("alerts.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
