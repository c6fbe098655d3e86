//! systemd notifications (`Type=notify`): READY, RELOADING, STOPPING, WATCHDOG, STATUS and
//! EXTEND_TIMEOUT_USEC (start-up work and a drain that outlast the unit's timeouts extend
//! them instead of being killed).
//!
//! Messages go through a small queue to a thread of their own, because `sd_notify` sends on
//! a blocking socket: when nobody reads NOTIFY_SOCKET (a stuck or misconfigured manager),
//! a send blocks — and a test that stopped reading it froze the whole daemon, sweep and
//! signal handling included. A full queue drops the message (a STATUS update at worst)
//! instead. Without NOTIFY_SOCKET (not under systemd) every call is a no-op.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// Messages waiting for the notifier thread.
const QUEUE: usize = 64;

/// How often start-up work renews its extension of the start timeout (each for three times
/// this, so one late renewal does not end it).
const EXTEND_EVERY: Duration = Duration::from_secs(10);

fn extend_timeout(by: Duration) -> String {
    format!("EXTEND_TIMEOUT_USEC={}", by.as_micros())
}

/// Talks to the service manager through `NOTIFY_SOCKET`, never blocking the caller.
#[derive(Debug, Clone)]
pub struct Systemd {
    queue: Option<SyncSender<Message>>,
}

#[derive(Debug)]
enum Message {
    Lines(Vec<String>),
    /// Answered once everything queued before it was sent.
    Flush(SyncSender<()>),
}

impl Systemd {
    /// Starts the notifier thread when running under systemd.
    pub fn connect() -> Self {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Self { queue: None };
        }
        let (queue, messages) = sync_channel::<Message>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for message in messages {
                    match message {
                        Message::Lines(lines) => {
                            let states: Vec<NotifyState<'_>> =
                                lines.iter().map(|l| NotifyState::Custom(l)).collect();
                            if let Err(e) = sd_notify::notify(&states) {
                                debug!(error = %e, "Cannot notify systemd.");
                            }
                        }
                        Message::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Self { queue: Some(queue) },
            Err(e) => {
                debug!(error = %e, "Cannot start the systemd notifier thread.");
                Self { queue: None }
            }
        }
    }

    fn send(&self, lines: Vec<String>) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Message::Lines(lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(lines)) => debug!(
                ?lines,
                "systemd is not reading NOTIFY_SOCKET; message dropped."
            ),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits (at most `limit`) until the queued messages are sent: before the process exits.
    pub fn flush(&self, limit: Duration) {
        let Some(queue) = &self.queue else { return };
        let (done, sent) = sync_channel(1);
        if queue.try_send(Message::Flush(done)).is_ok() {
            let _ = sent.recv_timeout(limit);
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(vec!["READY=1".into(), format!("STATUS={status}")]);
    }

    /// Before re-reading the configuration; [`Self::ready`] follows.
    pub fn reloading(&self) {
        let mut lines = vec!["RELOADING=1".to_owned()];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            lines.push(now.to_string());
        }
        lines.push("STATUS=reloading configuration".into());
        self.send(lines);
    }

    /// Shutdown has begun and may take up to `drain`: systemd's stop timeout is extended to
    /// that (whatever `TimeoutStopSec` says), so `shutdown.grace` is honoured, not cut short.
    pub fn stopping(&self, drain: Duration) {
        self.send(vec![
            "STOPPING=1".into(),
            extend_timeout(drain),
            "STATUS=stopping".into(),
        ]);
    }

    /// Runs `work` (start-up: connecting, migrating), extending systemd's start timeout every
    /// [`EXTEND_EVERY`] while it runs, so a long migration is not killed by `TimeoutStartSec`.
    pub async fn extend_during<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        if self.queue.is_none() {
            return work.await;
        }
        let mut work = std::pin::pin!(work);
        let mut every = tokio::time::interval(EXTEND_EVERY);
        loop {
            tokio::select! {
                // The first tick is immediate: the extension is sent before any work.
                biased;
                _ = every.tick() => {
                    self.send(vec![extend_timeout(EXTEND_EVERY * 3), "STATUS=starting: connecting and migrating".into()]);
                }
                done = &mut work => return done,
            }
        }
    }

    pub fn status(&self, status: &str) {
        self.send(vec![format!("STATUS={status}")]);
    }

    pub fn watchdog(&self) {
        self.send(vec!["WATCHDOG=1".into()]);
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, when systemd set one for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        sd_notify::watchdog_enabled()
            .map(|timeout| timeout / 2)
            .filter(|d| !d.is_zero())
    }
}
