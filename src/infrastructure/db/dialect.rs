//! The one place where SQLite and PostgreSQL differ for the store: transactions, locks,
//! parallelism and planner fences. Everything else is written once, in SeaQuery.

use sea_orm::sea_query::{LockBehavior, LockType, SelectStatement};
use sea_orm::{DbBackend, QuerySelect, SqliteTransactionMode, TransactionOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub(super) fn of(backend: DbBackend) -> Self {
        match backend {
            DbBackend::Postgres => Self::Postgres,
            _ => Self::Sqlite,
        }
    }

    /// Write transactions. SQLite: `BEGIN IMMEDIATE` takes the database's single write lock
    /// first, which serializes claimers across processes and queues on the busy timeout
    /// instead of failing with SQLITE_BUSY when a read would later upgrade to a write.
    pub(super) fn write_transaction(self) -> TransactionOptions {
        match self {
            Self::Sqlite => TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            },
            Self::Postgres => TransactionOptions::default(),
        }
    }

    /// The same, as SQL, for a connection held outside SeaORM.
    pub(super) fn begin(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }

    /// Locks the selected account rows for the claim's transaction. PostgreSQL: row locks
    /// (`SKIP LOCKED` leaves accounts a concurrent claimer holds to it; waiting is for a
    /// single-account check). SQLite: nothing to add, the immediate transaction already
    /// excludes every other writer.
    pub(super) fn lock_rows<Q: QuerySelect>(self, select: Q, wait: bool) -> Q {
        match (self, wait) {
            (Self::Sqlite, _) => select,
            (Self::Postgres, true) => select.lock(LockType::Update),
            (Self::Postgres, false) => {
                select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            }
        }
    }

    /// Whether the writer pool is one connection, which its users take turns on.
    pub(super) fn single_writer(self) -> bool {
        self == Self::Sqlite
    }

    /// Claim transactions one sweep runs at once. SQLite has one writer: a second claim would
    /// only queue behind the first (and the outcomes being recorded behind both). A server
    /// runs two on two cores while this process delivers: a claim's backend idles between
    /// its statements (README "Performance": a third gained nothing).
    pub(super) fn parallel_claims(self) -> usize {
        match self {
            Self::Sqlite => 1,
            Self::Postgres => 2,
        }
    }

    /// Whether the listing reads each page's accounts ahead of its claim, with a count of the
    /// changes to `accounts` (migration 11), so that the claim reads them again only if
    /// something changed: where one writer serves every claim and outcome (SQLite), it should
    /// not scan the accounts too. A server's claims lock and re-read their rows in parallel.
    pub(super) fn reads_pages_ahead(self) -> bool {
        self == Self::Sqlite
    }

    /// An optimization fence on the candidate query's per-channel `NOT EXISTS`: PostgreSQL
    /// keeps it a per-account index probe (`OFFSET 0`) instead of a join it may plan as a
    /// nested loop over every claim while `alert_logs` has no statistics yet. SQLite plans the
    /// probe anyway (and rejects OFFSET without LIMIT).
    pub(super) fn fence(self, subquery: &mut SelectStatement) {
        if self == Self::Postgres {
            subquery.offset(0);
        }
    }
}
