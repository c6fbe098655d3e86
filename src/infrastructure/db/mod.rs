//! The database adapter: connection set-up (with the SQLite pragmas a daemon needs), the
//! SeaORM entities, and the [`AlertStore`](crate::domain::ports::AlertStore) implementation.

mod claim;
mod convert;
pub mod entities;
mod outcomes;
mod store;

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnAcquireErr, ConnectOptions, Database, DatabaseConnection, DbErr, RuntimeErr};
use secrecy::ExposeSecret;
use tracing::log::LevelFilter;

pub use store::SeaOrmStore;

use crate::config::DatabaseSettings;
use crate::config::redact::mask_url;
use crate::domain::ports::StoreError;

/// SQLite page cache per connection, in KiB. A sweep keeps up to three connections busy
/// (reading candidates, claiming, recording), so this is kept moderate: 8 MiB measured as
/// fast as 16 MiB on a million accounts within the 64 MB memory budget (scripts/bench.sh).
const SQLITE_CACHE_KIB: i64 = 8 * 1024;

/// Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: a sweep rewrites the same index
/// pages batch after batch, and fewer checkpoints copy (and fsync) each page fewer times.
const SQLITE_WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Statements slower than this are logged at WARN: an operator should look at them.
const SLOW_STATEMENT: Duration = Duration::from_secs(1);

/// Connects to the configured database. The error names the database (password masked).
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, StoreError> {
    let url = settings.database_url();
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(settings.max_connections)
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
    });
    // Every statement of the daemon is built for index access (partial indexes, lookups by
    // key). Until autovacuum first analyzes alert_logs (a new deployment, or right after a
    // large sweep), PostgreSQL's statistics say it is empty and the planner picks sequential
    // scans of it for the claim re-read and for marking outcomes by id: a first sweep of
    // 100,000 alerts on a fresh database took 12.2 s instead of ~5 s (scripts/bench.sh).
    // Making sequential scans a last resort keeps the planned access paths, whatever the
    // statistics say. (The candidate query also carries an OFFSET 0 fence for the same reason.)
    options.map_sqlx_postgres_opts(|o| o.options([("enable_seqscan", "off")]));
    Database::connect(options)
        .await
        .map_err(|e| map_db_err(&mask_url(url), "cannot connect", e))
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
