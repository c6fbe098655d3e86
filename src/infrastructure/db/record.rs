//! Recording outcomes (`sent`, `retry`, `failed`, `expired`) and renewing leases: writes
//! fenced on the lease holder, so only the current holder of a claim changes it.
//!
//! A sweep records thousands of small batches (at most `notify.concurrency` rows each: they
//! bound the duplicates a crash can cause). sqlx tests every connection given back to its
//! pool with a round trip, so the recorder keeps one connection from batch to batch. On
//! SQLite it is the single writer: every other user of the writer pool (a claim, a renewal,
//! a check) takes turns with the recorder ([`Recorder::taking_turns`]). The recorder takes a
//! fresh connection when the held one was idle for [`RELEASE_WHEN_IDLE`] (it may have died)
//! or held for [`HOLD_AT_MOST`], checked at the next batch: a timer per batch that released
//! it when idle woke the runtime thousands of times a sweep (README "Performance").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::sea_query::{
    Expr, ExprTrait, PostgresQueryBuilder, Query, QueryBuilder, SqliteQueryBuilder, UpdateStatement,
};
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Connection, Postgres, Sqlite};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnectionType, DbErr, RuntimeErr};
use sea_query_sqlx::{SqlxBinder, SqlxValues};
use tokio::sync::Mutex;

use super::claim::{IDS_PER_QUERY, ROWS_PER_CASE, by_id};
use super::conn::Conns;
use super::convert::{attempts_column, status_literal};
use super::entities::alert_logs;
use crate::domain::ports::StoreError;
use crate::domain::{AlertId, AlertStatus, LeaseHolder, Outcome};

use alert_logs::Column as L;

/// `last_error` is for people; keep it readable and bounded.
const MAX_ERROR_CHARS: usize = 1000;

/// Give the connection back at the next batch after holding it this long.
const HOLD_AT_MOST: Duration = Duration::from_millis(100);

/// Give the connection back at the next batch when none came for this long.
const RELEASE_WHEN_IDLE: Duration = Duration::from_millis(50);

/// The connection kept between batches.
struct HeldConn {
    conn: Held,
    since: Instant,
    last_used: Instant,
}

/// A connection of the writer's kind.
enum Held {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// Records outcome batches on a held connection.
pub(super) struct Recorder {
    conns: Arc<Conns>,
    held: Mutex<Option<HeldConn>>,
}

impl Recorder {
    pub(super) fn new(conns: Arc<Conns>) -> Self {
        Self {
            conns,
            held: Mutex::default(),
        }
    }

    /// Runs `work` — another user of the writer pool — with the held connection given back to
    /// the pool and no batch recorded meanwhile: on SQLite's one-connection writer pool the
    /// two take turns, in the order they asked (tokio's mutex is fair), so neither waits on
    /// the pool for long. On PostgreSQL `work` just runs.
    pub(super) async fn taking_turns<T>(&self, work: impl Future<Output = T>) -> T {
        if !self.conns.dialect.single_writer() {
            return work.await;
        }
        let mut slot = self.held.lock().await;
        *slot = None;
        let result = work.await;
        drop(slot);
        result
    }

    /// Gives the held connection back to the pool (before the pool is closed, which waits
    /// for every connection to come back).
    pub(super) async fn release(&self) {
        *self.held.lock().await = None;
    }

    /// Records a batch; returns how many outcomes were written (the others' claims are no
    /// longer this holder's).
    pub(super) async fn record(
        &self,
        lease: &LeaseHolder,
        outcomes: &[Outcome],
    ) -> Result<u64, StoreError> {
        let statements = outcome_updates(lease, outcomes);
        if statements.is_empty() {
            return Ok(0);
        }
        let mut slot = self.held.lock().await;
        // A connection left idle may have died meanwhile (a database restart): it would fail
        // the batch after its alerts were delivered. Held across batches only while they
        // follow each other; otherwise one from the pool, which tests it first.
        if slot
            .as_ref()
            .is_some_and(|held| held.last_used.elapsed() >= RELEASE_WHEN_IDLE)
        {
            *slot = None;
        }
        let reused = slot.is_some();
        let mut result = self.execute_on(&mut slot, &statements).await;
        if result.is_err() && reused {
            // The held connection failed: once more on a fresh one before giving up on the
            // batch (its alerts were delivered; unrecorded, they would be sent again). If the
            // first attempt did commit, the fence makes the second change nothing.
            result = self.execute_on(&mut slot, &statements).await;
        }
        drop(slot);
        let written = result?;
        self.conns.count_commit();
        Ok(written)
    }

    /// Runs the statements on the held connection (acquiring one if none is held) and keeps
    /// it for the next batch unless the run failed or it was held for [`HOLD_AT_MOST`].
    async fn execute_on(
        &self,
        slot: &mut Option<HeldConn>,
        statements: &[(UpdateStatement, &'static str)],
    ) -> Result<u64, StoreError> {
        let held = match slot.take() {
            Some(held) => slot.insert(held),
            None => {
                let conn = self
                    .acquire()
                    .await
                    .map_err(|e| self.conns.err("cannot connect")(sqlx_err(e)))?;
                let now = Instant::now();
                slot.insert(HeldConn {
                    conn,
                    since: now,
                    last_used: now,
                })
            }
        };
        let begin = self.conns.dialect.begin();
        let result = match &mut held.conn {
            Held::Sqlite(conn) => {
                execute::<Sqlite, SqliteQueryBuilder>(conn, statements, begin).await
            }
            Held::Postgres(conn) => {
                execute::<Postgres, PostgresQueryBuilder>(conn, statements, begin).await
            }
        };
        held.last_used = Instant::now();
        if result.is_err() || held.since.elapsed() >= HOLD_AT_MOST {
            // After an error the pool's check decides whether the connection is still usable.
            *slot = None;
        }
        result.map_err(|(e, what)| self.conns.err(what)(sqlx_err(e)))
    }

    async fn acquire(&self) -> Result<Held, sqlx::Error> {
        let writer = &self.conns.writer;
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

    /// Renews the lease on `alerts` where `lease` still holds them; returns those renewed.
    pub(super) async fn renew(
        &self,
        lease: &LeaseHolder,
        alerts: &[AlertId],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<AlertId>, StoreError> {
        self.taking_turns(self.renew_now(lease, alerts, now)).await
    }

    async fn renew_now(
        &self,
        lease: &LeaseHolder,
        alerts: &[AlertId],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<AlertId>, StoreError> {
        let mut renewed = Vec::with_capacity(alerts.len());
        for chunk in alerts.chunks(IDS_PER_QUERY) {
            let mut update = Query::update();
            update
                .table(alert_logs::Entity)
                .value(L::ClaimedAt, now)
                .and_where(L::Id.is_in(chunk.iter().map(AlertId::as_str)))
                .and_where(held_by(lease))
                .returning_col(L::Id);
            let rows = self
                .conns
                .writer
                .query_all(&update)
                .await
                .map_err(self.conns.err("cannot renew claims in alert_logs"))?;
            for row in rows {
                let id: String = row
                    .try_get("", "id")
                    .map_err(self.conns.err("cannot renew claims in alert_logs"))?;
                renewed.push(AlertId::from_stored(id));
            }
            self.conns.count_commit();
        }
        Ok(renewed)
    }
}

/// The fence of every write of a claim's holder: still `pending`, still this holder's.
fn held_by(lease: &LeaseHolder) -> Expr {
    still_pending().and(Expr::col(L::ClaimedBy).eq(lease.as_str()))
}

/// `status = 'pending'`, written as the exclusion of every other status (the CHECK
/// constraint lists them all) so that it does not imply the predicate of the partial unique
/// index on open alerts. When it does, PostgreSQL — without statistics on `alert_logs`, as in
/// a fresh database's first sweep — ANDs a scan of that whole index (every open alert) into
/// each fenced write instead of looking the ids up by primary key alone: 2.5 ms per 16-row
/// UPDATE at 20,000 open alerts, and the 1M-account first sweep took 24.7 s instead of 5.2 s.
pub(super) fn still_pending() -> Expr {
    let others = AlertStatus::ALL
        .into_iter()
        .filter(|s| *s != AlertStatus::Pending)
        .map(status_literal);
    Expr::col(L::Status).is_not_in(others)
}

/// Runs a batch's statements and returns the rows they changed. The usual batch (every
/// delivery sent at its first attempt) is one UPDATE, atomic on its own: no BEGIN and COMMIT
/// round trips. Several statements run in one transaction opened with `begin`.
async fn execute<DB, Q>(
    conn: &mut DB::Connection,
    statements: &[(UpdateStatement, &'static str)],
    begin: &'static str,
) -> Result<u64, (sqlx::Error, &'static str)>
where
    DB: sqlx::Database,
    Q: QueryBuilder + Default,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    SqlxValues: for<'q> sqlx::IntoArguments<DB>,
    DB::QueryResult: RowsAffected,
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
    let mut written = 0;
    for (update, what) in statements {
        written += run(&mut *txn, update, Q::default())
            .await
            .map_err(|e| (e, *what))?;
    }
    txn.commit()
        .await
        .map_err(|e| (e, "cannot commit delivery outcomes"))?;
    Ok(written)
}

/// The rows a statement changed, for both drivers.
trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// Runs one statement as SeaORM would: the same SQL, bound by sea-query's sqlx binder.
async fn run<'c, DB, E>(
    conn: E,
    update: &UpdateStatement,
    builder: impl QueryBuilder,
) -> Result<u64, sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    SqlxValues: for<'q> sqlx::IntoArguments<DB>,
    DB::QueryResult: RowsAffected,
{
    let (sql, values) = update.build_sqlx(builder);
    let result = sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
        .execute(conn)
        .await?;
    Ok(result.rows())
}

/// A driver error as SeaORM reports it, so that [`super::map_db_err`] tells an unreachable
/// database from other failures.
fn sqlx_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
}

/// The statements recording a batch of outcomes, each with what it does for error messages.
/// A recorded outcome has no holder any more (a later claim sets its own): the row, kept for
/// years, shrinks back by the holder's bytes.
fn no_holder() -> Expr {
    Expr::Constant(Option::<String>::None.into())
}

fn outcome_updates(
    lease: &LeaseHolder,
    outcomes: &[Outcome],
) -> Vec<(UpdateStatement, &'static str)> {
    let mut statements = Vec::new();
    // Sent rows in a batch share one `sent_at` (the latest delivery of the batch, at most a
    // batch's delivery time after the earliest: the cooldown starts marginally later, never
    // earlier) and are grouped by attempts, so each statement is a plain
    // `UPDATE ... WHERE id IN (...)` instead of a per-row CASE.
    let mut sent: BTreeMap<u32, Vec<&Outcome>> = BTreeMap::new();
    let mut unsuccessful: BTreeMap<&'static str, Vec<&Outcome>> = BTreeMap::new();
    for outcome in outcomes {
        match outcome.status {
            AlertStatus::Sent => sent.entry(outcome.attempts).or_default().push(outcome),
            AlertStatus::Pending => {}
            other => unsuccessful
                .entry(other.as_str())
                .or_default()
                .push(outcome),
        }
    }
    for (attempts, group) in sent {
        let sent_at = group.iter().map(|o| o.at).max();
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
                .value(L::ClaimedBy, no_holder())
                .and_where(L::Id.is_in(chunk.iter().map(|o| o.alert_id.as_str())))
                .and_where(held_by(lease));
            statements.push((update, "cannot mark alerts sent"));
        }
    }
    for (status, group) in unsuccessful {
        for chunk in group.chunks(ROWS_PER_CASE) {
            let attempts = chunk
                .iter()
                .map(|o| (&o.alert_id, Expr::val(attempts_column(o.attempts))));
            let errors = chunk.iter().map(|o| (&o.alert_id, error_text(o)));
            let mut update = Query::update();
            if status == AlertStatus::Failed.as_str() {
                let contacts = chunk
                    .iter()
                    .map(|o| (&o.alert_id, Expr::val(o.contact.clone())));
                update.value(L::Contact, by_id(contacts, L::Contact));
            }
            if status == AlertStatus::Expired.as_str() {
                // When it was given up: the cooldown after it starts there.
                update.value(L::ClaimedAt, chunk.iter().map(|o| o.at).max());
            }
            update
                .table(alert_logs::Entity)
                .value(L::Status, Expr::Constant(status.into()))
                .value(
                    L::Attempts,
                    Expr::col(L::Attempts).add(by_id(attempts, L::Attempts)),
                )
                .value(L::LastError, by_id(errors, L::LastError))
                .value(L::ClaimedBy, no_holder())
                .and_where(L::Id.is_in(chunk.iter().map(|o| o.alert_id.as_str())))
                .and_where(held_by(lease));
            statements.push((update, "cannot record failed deliveries"));
        }
    }
    statements
}

fn error_text(outcome: &Outcome) -> Expr {
    let text = outcome
        .error
        .as_deref()
        .map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>());
    Expr::val(text)
}
