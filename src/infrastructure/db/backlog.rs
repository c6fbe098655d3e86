//! `audit_backlog`: audit lines kept for a later process when `audit.log` could not take them
//! before this one exited (SPEC §7). Only written on that failure path.

use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ConnectionTrait, DbErr, Statement};

use super::conn::Conns;
use crate::domain::ports::StoreError;

/// Lines per INSERT: one bind each.
const LINES_PER_INSERT: usize = 1000;

pub(super) async fn keep(conns: &Conns, lines: &[String]) -> Result<(), StoreError> {
    let txn = conns.begin_write().await?;
    for chunk in lines.chunks(LINES_PER_INSERT) {
        let mut insert = Query::insert();
        insert
            .into_table(Alias::new("audit_backlog"))
            .columns([Alias::new("line")]);
        for line in chunk {
            insert
                .values([line.as_str().into()])
                .map_err(|e| DbErr::Custom(e.to_string()))
                .map_err(conns.err("cannot keep audit lines in audit_backlog"))?;
        }
        txn.execute(&insert)
            .await
            .map_err(conns.err("cannot keep audit lines in audit_backlog"))?;
    }
    conns
        .commit_write(txn, "cannot keep audit lines in audit_backlog")
        .await
}

pub(super) async fn take(conns: &Conns) -> Result<Vec<String>, StoreError> {
    let backend = conns.writer.get_database_backend();
    // Almost always empty: a read first, so that start-up takes no write lock for nothing
    // (a bank's batch job holding the database must not delay READY).
    let any = conns
        .db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT 1 AS one FROM audit_backlog LIMIT 1",
        ))
        .await
        .map_err(conns.err("cannot read audit_backlog"))?;
    if any.is_none() {
        return Ok(Vec::new());
    }
    let rows = conns
        .writer
        .query_all_raw(Statement::from_string(
            backend,
            "DELETE FROM audit_backlog RETURNING seq, line",
        ))
        .await
        .map_err(conns.err("cannot take audit lines from audit_backlog"))?;
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row
            .try_get("", "seq")
            .map_err(conns.err("cannot read audit_backlog"))?;
        let line: String = row
            .try_get("", "line")
            .map_err(conns.err("cannot read audit_backlog"))?;
        lines.push((seq, line));
    }
    // RETURNING gives no order.
    lines.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(lines.into_iter().map(|(_, line)| line).collect())
}
