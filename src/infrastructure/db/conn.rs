//! The store's connections: the pool, the writer (on SQLite the one connection every write
//! goes through), the dialect, and the label used in error messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};

use super::dialect::Dialect;
use super::map_db_err;
use crate::domain::ports::StoreError;

pub(super) struct Conns {
    pub(super) db: DatabaseConnection,
    /// Where write transactions run: `db` itself, or on SQLite one dedicated connection.
    pub(super) writer: DatabaseConnection,
    pub(super) dialect: Dialect,
    /// Write transactions committed so far (the WAL checkpointer waits for a quiet moment).
    pub(super) commits: AtomicU64,
    /// The database URL with its password masked.
    pub(super) label: Arc<str>,
}

impl Conns {
    pub(super) fn err(&self, action: &str) -> impl FnOnce(DbErr) -> StoreError + '_ {
        let action = action.to_owned();
        move |e| map_db_err(&self.label, &action, e)
    }

    pub(super) async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        self.writer
            .begin_with_options(self.dialect.write_transaction())
            .await
            .map_err(self.err("cannot begin a transaction"))
    }

    pub(super) async fn commit_write(
        &self,
        txn: DatabaseTransaction,
        what: &str,
    ) -> Result<(), StoreError> {
        txn.commit().await.map_err(self.err(what))?;
        self.count_commit();
        Ok(())
    }

    pub(super) fn count_commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}
