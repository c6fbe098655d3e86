//! Recording delivery outcomes in `alert_logs`: `sent` (with the time and attempts) or
//! `failed` (with the error), in batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sea_orm::sea_query::{
    Expr, ExprTrait, PostgresQueryBuilder, Query, QueryBuilder, SimpleExpr, SqliteQueryBuilder,
    UpdateStatement,
};
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Connection, Postgres, Sqlite};
use sea_orm::{ColumnTrait, DatabaseConnectionType, DbErr, RuntimeErr};
use sea_query_sqlx::{SqlxBinder, SqlxValues};

use super::claim::{ROWS_PER_CASE, by_id};
use super::convert::{attempts_column, status_literal};
use super::entities::alert_logs;
use super::store::{IDS_PER_QUERY, SeaOrmStore};
use crate::domain::ports::{OutcomeRecorder, StoreError};
use crate::domain::{AlertStatus, DeliveryOutcome};

use alert_logs::Column as L;

/// `last_error` is for people; keep it readable and bounded.
const MAX_ERROR_CHARS: usize = 1000;

/// How long the recorder keeps its connection at most before giving it back at the next
/// batch. On SQLite the held connection is the process's single writer, which the next
/// page's claim is waiting for.
const HOLD_AT_MOST: Duration = Duration::from_millis(100);

/// [`OutcomeRecorder`] on the store's writer, keeping one connection from batch to batch.
///
/// sqlx tests every connection given back to its pool with a round trip (`ping`: a message to
/// SQLite's worker thread and back, a network round trip to PostgreSQL), and a large sweep
/// records thousands of small batches (at most `notify.concurrency` rows each: they bound the
/// duplicates a crash can cause). Keeping the connection saves that round trip per batch.
/// It is given back when the deliveries pause ([`OutcomeRecorder::release`]), after
/// [`HOLD_AT_MOST`], and when the recorder is dropped.
pub(super) struct HeldOutcomeRecorder {
    store: SeaOrmStore,
    held: Option<(Held, Instant)>,
}

/// The connection kept between batches, of the writer's kind.
enum Held {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl HeldOutcomeRecorder {
    pub(super) fn new(store: SeaOrmStore) -> Self {
        Self { store, held: None }
    }

    async fn acquire(&self) -> Result<Held, sqlx::Error> {
        let writer = &self.store.writer;
        match &writer.inner {
            // `get_*_connection_pool` panics only for another kind of connection, which
            // the match rules out.
            DatabaseConnectionType::SqlxSqlitePoolConnection(_) => Ok(Held::Sqlite(
                writer.get_sqlite_connection_pool().acquire().await?,
            )),
            DatabaseConnectionType::SqlxPostgresPoolConnection(_) => Ok(Held::Postgres(
                writer.get_postgres_connection_pool().acquire().await?,
            )),
            // The store is only ever built on a SQLite or PostgreSQL pool (super::connect).
            _ => Err(sqlx::Error::Configuration(
                "alert_logs can only be written through a SQLite or PostgreSQL pool".into(),
            )),
        }
    }
}

#[async_trait]
impl OutcomeRecorder for HeldOutcomeRecorder {
    async fn record(&mut self, outcomes: &[DeliveryOutcome]) -> Result<(), StoreError> {
        let statements = outcome_updates(outcomes);
        if statements.is_empty() {
            return Ok(());
        }
        let (held, since) = match self.held.take() {
            Some(held) => self.held.insert(held),
            None => {
                let held = self
                    .acquire()
                    .await
                    .map_err(|e| self.store.err("cannot connect")(sqlx_err(e)))?;
                self.held.insert((held, Instant::now()))
            }
        };
        let result = match held {
            Held::Sqlite(conn) => {
                execute::<Sqlite, SqliteQueryBuilder>(conn, &statements, "BEGIN IMMEDIATE").await
            }
            Held::Postgres(conn) => {
                execute::<Postgres, PostgresQueryBuilder>(conn, &statements, "BEGIN").await
            }
        };
        let expired = since.elapsed() >= HOLD_AT_MOST;
        if result.is_err() || expired {
            // After an error the pool's check decides whether the connection is still usable.
            self.held = None;
        }
        result.map_err(|(e, what)| self.store.err(what)(sqlx_err(e)))?;
        self.store.count_commit();
        Ok(())
    }

    fn release(&mut self) {
        self.held = None;
    }
}

/// Runs a batch's statements. The usual batch (every delivery sent at its first attempt) is
/// one UPDATE, atomic on its own: no BEGIN and COMMIT round trips. On PostgreSQL, with two
/// claims at a time, a 1,000,000-account first sweep went from ~4.4 s to ~3.75 s (medians of
/// three runs). On SQLite the statement takes the write lock as a transaction would, waiting
/// up to the busy timeout. Several statements run in one transaction opened with `begin`
/// (`BEGIN IMMEDIATE` on SQLite, so that it queues for the write lock instead of failing when
/// it upgrades from read to write).
async fn execute<DB, Q>(
    conn: &mut DB::Connection,
    statements: &[(UpdateStatement, &'static str)],
    begin: &'static str,
) -> Result<(), (sqlx::Error, &'static str)>
where
    DB: sqlx::Database,
    Q: QueryBuilder + Default,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    SqlxValues: for<'q> sqlx::IntoArguments<DB>,
{
    if let [(update, what)] = statements {
        return run(&mut *conn, update, Q::default())
            .await
            .map_err(|e| (e, *what));
    }
    let mut txn = conn
        .begin_with(sqlx::AssertSqlSafe(begin))
        .await
        .map_err(|e| (e, "cannot begin a transaction"))?;
    for (update, what) in statements {
        run(&mut *txn, update, Q::default())
            .await
            .map_err(|e| (e, *what))?;
    }
    txn.commit()
        .await
        .map_err(|e| (e, "cannot commit delivery outcomes"))
}

/// Runs one statement as SeaORM would: the same SQL, bound by sea-query's sqlx binder.
async fn run<'c, DB, E>(
    conn: E,
    update: &UpdateStatement,
    builder: impl QueryBuilder,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    SqlxValues: for<'q> sqlx::IntoArguments<DB>,
{
    let (sql, values) = update.build_sqlx(builder);
    sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
        .execute(conn)
        .await?;
    Ok(())
}

/// A driver error as SeaORM reports it, so that [`super::map_db_err`] tells an unreachable
/// database from other failures.
fn sqlx_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
}

/// The statements recording a batch of outcomes, each with what it does for error messages.
fn outcome_updates(outcomes: &[DeliveryOutcome]) -> Vec<(UpdateStatement, &'static str)> {
    let (sent, failed): (Vec<_>, Vec<_>) = outcomes.iter().partition(|o| o.result.is_ok());
    let mut statements = Vec::new();
    // Sent rows in a batch share one `sent_at` (the latest delivery of the batch, at most a
    // batch's delivery time after the earliest: the cooldown starts marginally later, never
    // earlier) and are grouped by attempts, so each statement is a plain
    // `UPDATE ... WHERE id IN (...)` instead of a per-row CASE.
    let mut by_attempts: BTreeMap<u32, Vec<&DeliveryOutcome>> = BTreeMap::new();
    for outcome in &sent {
        by_attempts
            .entry(outcome.attempts)
            .or_default()
            .push(outcome);
    }
    for (attempts, group) in by_attempts {
        let sent_at = group
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .max()
            .copied();
        for chunk in group.chunks(IDS_PER_QUERY) {
            let mut update = Query::update();
            update
                .table(alert_logs::Entity)
                .value(L::Status, status_literal(AlertStatus::Sent))
                .value(L::SentAt, sent_at)
                .value(
                    L::Attempts,
                    Expr::col(L::Attempts).add(attempts_column(attempts)),
                )
                .value(L::LastError, Expr::Constant(Option::<String>::None.into()))
                .and_where(L::Id.is_in(chunk.iter().map(|o| o.alert_id.as_str())))
                // A row already sent keeps its first sent_at.
                .and_where(Expr::col(L::Status).ne(status_literal(AlertStatus::Sent)));
            statements.push((update, "cannot mark alerts sent"));
        }
    }
    for chunk in failed.chunks(ROWS_PER_CASE) {
        let mut update = Query::update();
        update
            .table(alert_logs::Entity)
            .value(L::Status, AlertStatus::Failed.as_str())
            .value(L::Attempts, attempts_added(chunk))
            .value(
                L::LastError,
                by_id(
                    chunk.iter().map(|o| (&o.alert_id, error_text(o))),
                    L::LastError,
                ),
            )
            .and_where(L::Id.is_in(chunk.iter().map(|o| o.alert_id.as_str())))
            // Never overwrite `sent`: a competitor that took over an expired claim may have
            // delivered it meanwhile.
            .and_where(Expr::col(L::Status).eq(status_literal(AlertStatus::Pending)));
        statements.push((update, "cannot mark alerts failed"));
    }
    statements
}

fn attempts_added(chunk: &[&DeliveryOutcome]) -> SimpleExpr {
    let added = chunk
        .iter()
        .map(|o| (&o.alert_id, Expr::val(attempts_column(o.attempts))));
    Expr::col(L::Attempts).add(by_id(added, L::Attempts))
}

fn error_text(outcome: &DeliveryOutcome) -> Expr {
    let text = outcome
        .result
        .as_ref()
        .err()
        .map(|e| e.message.chars().take(MAX_ERROR_CHARS).collect::<String>());
    Expr::val(text)
}
