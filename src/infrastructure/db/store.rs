//! [`AlertStore`] on SQLite or PostgreSQL through SeaORM: the port's verbs, and how they are
//! run — candidate pages listed ahead of their claims (on SQLite, read whole with the
//! `accounts_changes` counter so that the one writer re-reads a page only when accounts
//! changed), claimed in parallel where the database has more than one writer, outcomes
//! recorded on a held connection, the WAL checkpointed when idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::SQLITE_CHECKPOINT_WHEN_IDLE;
use super::backlog;
use super::candidates::{self, Listing, Page, Part};
use super::claim::{self, ClaimTxn, Scope};
use super::conn::Conns;
use super::dialect::Dialect;
use super::entities::accounts;
use super::record::Recorder;
use super::recovery;
use crate::domain::ports::{AccountCounts, AlertStore, ClaimBatch, Clock, StoreError, SweepClaims};
use crate::domain::{
    Account, AccountId, AlertId, AlertRules, ChannelName, Lease, LeaseHolder, Outcome,
};

/// How long [`SeaOrmStore::finish`] waits for the PostgreSQL sessions to close.
const CLOSE_AT_MOST: std::time::Duration = std::time::Duration::from_secs(5);

/// [`AlertStore`] on SQLite or PostgreSQL through SeaORM.
#[derive(Clone)]
pub struct SeaOrmStore {
    conns: Arc<Conns>,
    recorder: Arc<Recorder>,
    /// Whether listing a page takes turns with the recorder: on SQLite without a writer of
    /// its own the pool may be a single connection (an in-memory database).
    lists_taking_turns: bool,
    /// Stops the background WAL checkpoints when the last clone of the store is dropped.
    _checkpointer: Option<Arc<DropGuard>>,
}

impl SeaOrmStore {
    /// A store whose writes go through the pool.
    pub fn new(db: DatabaseConnection, label: impl Into<Arc<str>>) -> Self {
        Self::with_writer(db, None, label)
    }

    /// A store whose write transactions run on `writer` (SQLite's one writer connection,
    /// [`super::connect_writer`]), checkpointing the WAL in the background while it lives.
    pub fn with_writer(
        db: DatabaseConnection,
        writer: Option<DatabaseConnection>,
        label: impl Into<Arc<str>>,
    ) -> Self {
        let checkpoint = writer.is_some() && tokio::runtime::Handle::try_current().is_ok();
        let lists_taking_turns =
            writer.is_none() && Dialect::of(db.get_database_backend()).single_writer();
        let conns = Arc::new(Conns {
            dialect: Dialect::of(db.get_database_backend()),
            writer: writer.unwrap_or_else(|| db.clone()),
            db,
            commits: AtomicU64::new(0),
            label: label.into(),
        });
        Self {
            recorder: Arc::new(Recorder::new(conns.clone())),
            lists_taking_turns,
            _checkpointer: checkpoint.then(|| Arc::new(spawn_checkpointer(conns.clone()))),
            conns,
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.conns.db
    }

    /// Ends a one-shot command's use of the database, as the process exits next; every
    /// transaction is committed by then.
    ///
    /// SQLite: the connections are left open. Closing the last one starts a checkpoint (an
    /// fsync of the WAL, then copying it into the database file), which the exit abandoned
    /// half-way or never began, at random — and when it had begun, the exit waited for the
    /// fsync. Left open, the WAL is checkpointed as after a daemon's sweep: by the daemon
    /// when idle, else by SQLite's autocheckpoint in a later writer (README "Performance").
    ///
    /// PostgreSQL: every session is closed with its goodbye, within [`CLOSE_AT_MOST`]; a
    /// session cut by the exit made the server log "could not receive data from client:
    /// Connection reset by peer".
    pub async fn finish(self) {
        if self.conns.dialect.single_writer() {
            std::mem::forget(self);
            return;
        }
        self.recorder.release().await;
        let close = self.conns.db.clone().close();
        if tokio::time::timeout(CLOSE_AT_MOST, close).await.is_err() {
            debug!(database = %self.conns.label, "Connections not closed in time; the exit ends them.");
        }
    }

    /// Whether the database answers (`/readyz`); the error names the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.conns
            .db
            .ping()
            .await
            .map_err(self.conns.err("cannot reach the database"))
    }
}

/// Copies the WAL into the database file once no write transaction has committed for
/// [`SQLITE_CHECKPOINT_WHEN_IDLE`] since the last copy, until the returned guard is dropped.
fn spawn_checkpointer(conns: Arc<Conns>) -> DropGuard {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SQLITE_CHECKPOINT_WHEN_IDLE);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut seen, mut checkpointed) = (0, 0);
        loop {
            tokio::select! {
                () = stopped.cancelled() => break,
                _ = every.tick() => {}
            }
            let now = conns.commits.load(Ordering::Relaxed);
            let quiet = now == seen;
            seen = now;
            if !quiet || now == checkpointed {
                continue;
            }
            match conns
                .db
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                Ok(_) => checkpointed = now,
                // Not fatal: tried again at the next quiet moment (SQLite's own
                // autocheckpoint is the backstop).
                Err(e) => debug!(database = %conns.label, error = %e, "WAL checkpoint failed."),
            }
        }
    });
    stop.drop_guard()
}

#[async_trait]
impl AlertStore for SeaOrmStore {
    async fn find_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        let row = accounts::Entity::find_by_id(id.as_str())
            .one(&self.conns.db)
            .await
            .map_err(self.conns.err("cannot read account"))?;
        Ok(row.map(Account::from))
    }

    async fn count_accounts(&self, rules: &AlertRules) -> Result<AccountCounts, StoreError> {
        candidates::count_accounts(&self.conns, &rules.thresholds).await
    }

    fn claim_due(
        &self,
        request: SweepClaims,
        clock: Arc<dyn Clock>,
    ) -> BoxStream<'static, Result<ClaimBatch, StoreError>> {
        let listing = Listing {
            thresholds: request.rules.thresholds.clone(),
            policy: request.rules.policy,
            channels: request.channels.clone(),
            cutoffs: request.rules.cutoffs(clock.now()),
            page_size: request.page_size,
        };
        let sweep = Arc::new(SweepClaiming {
            conns: self.conns.clone(),
            recorder: self.recorder.clone(),
            request: Arc::new(request),
            clock,
        });
        let claims = self
            .pages(listing)
            .map(move |page| {
                let sweep = sweep.clone();
                async move { sweep.claim(page?).await }
            })
            .buffered(self.conns.dialect.parallel_claims())
            .boxed();
        // Claiming runs ahead of the deliveries (a batch waiting, the next ones being taken).
        one_ahead(claims)
    }

    async fn resolve_recovered(
        &self,
        rules: &AlertRules,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let resolve = recovery::resolve(&self.conns, rules, now);
        self.recorder.taking_turns(resolve).await
    }

    fn preview_due(
        &self,
        channels: Vec<ChannelName>,
        rules: AlertRules,
        page_size: u32,
        now: DateTime<Utc>,
    ) -> BoxStream<'static, Result<ClaimBatch, StoreError>> {
        let pages = self.pages(Listing {
            thresholds: rules.thresholds.clone(),
            policy: rules.policy,
            channels: channels.clone(),
            cutoffs: rules.cutoffs(now),
            page_size,
        });
        let conns = self.conns.clone();
        let (channels, rules) = (Arc::new(channels), Arc::new(rules));
        pages
            .then(move |page| {
                let (conns, channels, rules) = (conns.clone(), channels.clone(), rules.clone());
                async move { claim::preview(&conns, &channels, &rules, now, page?).await }
            })
            .boxed()
    }

    async fn claim_account(
        &self,
        lease: &Lease,
        account: &AccountId,
        channels: &[ChannelName],
        rules: &AlertRules,
        now: DateTime<Utc>,
    ) -> Result<ClaimBatch, StoreError> {
        let txn = ClaimTxn {
            lease: lease.holder(),
            channels,
            rules,
            now,
            wait: true,
            keep_decisions: true,
        };
        let ids = [account.as_str().to_owned()];
        let batch = self
            .recorder
            .taking_turns(txn.run(&self.conns, Scope::Ids(&ids)))
            .await?;
        lease.hold(batch.claims.iter().map(|c| &c.alert_id), now);
        Ok(batch)
    }

    async fn renew(
        &self,
        lease: &LeaseHolder,
        alerts: &[AlertId],
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertId>, StoreError> {
        self.recorder.renew(lease, alerts, now).await
    }

    async fn record(&self, lease: &LeaseHolder, outcomes: &[Outcome]) -> Result<u64, StoreError> {
        self.recorder.record(lease, outcomes).await
    }

    async fn keep_audit_backlog(&self, lines: &[String]) -> Result<(), StoreError> {
        let keep = backlog::keep(&self.conns, lines);
        self.recorder.taking_turns(keep).await
    }

    async fn take_audit_backlog(&self) -> Result<Vec<String>, StoreError> {
        self.recorder.taking_turns(backlog::take(&self.conns)).await
    }
}

impl SeaOrmStore {
    /// The candidate pages of `listing`, each a disjoint range of account ids, listed one page
    /// ahead of the consumer in a task of its own; dropping the stream stops the listing.
    fn pages(&self, listing: Listing) -> BoxStream<'static, Result<Page, StoreError>> {
        let (conns, recorder) = (self.conns.clone(), self.recorder.clone());
        let takes_turns = self.lists_taking_turns;
        let listing = Arc::new(listing);
        let start = Some((Part::FIRST, None::<String>));
        let scan = stream::try_unfold(start, move |mut scan| {
            let (conns, recorder, listing) = (conns.clone(), recorder.clone(), listing.clone());
            async move {
                while let Some((part, after)) = scan {
                    let list = candidates::next_page(&conns, &listing, part, after);
                    // On a one-connection database the recorder may hold the connection until
                    // its next batch, which waits for the claims of this page.
                    let page = if takes_turns {
                        recorder.taking_turns(list).await
                    } else {
                        list.await
                    }
                    .map_err(conns.err("cannot read accounts"))?;
                    let next_part = part.next().map(|part| (part, None));
                    let Some(page) = page else {
                        scan = next_part;
                        continue;
                    };
                    scan = if page.full(listing.page_size) {
                        Some((part, Some(page.last.clone())))
                    } else {
                        next_part
                    };
                    return Ok(Some((page, scan)));
                }
                Ok(None)
            }
        });
        one_ahead(scan.boxed())
    }
}

/// Runs `stream` in a task of its own, one item ahead of its consumer; it ends after an
/// error, and dropping the returned stream aborts the task.
fn one_ahead<T: Send + 'static>(
    mut stream: BoxStream<'static, Result<T, StoreError>>,
) -> BoxStream<'static, Result<T, StoreError>> {
    let (tx, rx) = mpsc::channel(1);
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    }));
    stream::unfold((rx, task), |(mut rx, task)| async move {
        rx.recv().await.map(|item| (item, (rx, task)))
    })
    .boxed()
}

/// What the claims of one sweep share.
struct SweepClaiming {
    conns: Arc<Conns>,
    recorder: Arc<Recorder>,
    request: Arc<SweepClaims>,
    clock: Arc<dyn Clock>,
}

impl SweepClaiming {
    /// Claims `page` in a task of its own, taking turns with the recorder.
    fn claim(
        self: &Arc<Self>,
        page: Page,
    ) -> impl Future<Output = Result<ClaimBatch, StoreError>> + use<> {
        let this = self.clone();
        claim_task(async move {
            let claim = claim_page(&this.conns, &this.request, this.clock.now(), page);
            this.recorder.taking_turns(claim).await
        })
    }
}

/// Runs a claim as a task of its own, so that its write transaction commits whatever the
/// consumer is doing; dropping the future aborts it.
fn claim_task<T: Send + 'static>(
    claim: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> impl Future<Output = Result<T, StoreError>> {
    let task = AbortOnDropHandle::new(tokio::spawn(claim));
    async move {
        task.await.unwrap_or_else(|e| {
            Err(StoreError::Unexpected(anyhow::anyhow!(
                "claim task failed: {e}"
            )))
        })
    }
}

/// Claims one page of a sweep; the claims join the sweep's lease as soon as they are
/// committed, so they are renewed while they wait for delivery.
async fn claim_page(
    conns: &Conns,
    request: &SweepClaims,
    now: DateTime<Utc>,
    page: Page,
) -> Result<ClaimBatch, StoreError> {
    let txn = ClaimTxn {
        lease: request.lease.holder(),
        channels: &request.channels,
        rules: &request.rules,
        now,
        wait: false,
        keep_decisions: false,
    };
    let batch = txn.run(conns, Scope::Page(page)).await?;
    request
        .lease
        .hold(batch.claims.iter().map(|c| &c.alert_id), now);
    Ok(batch)
}
