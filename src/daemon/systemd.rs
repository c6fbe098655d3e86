//! systemd notifications (`Type=notify`): READY, RELOADING, STOPPING, WATCHDOG and STATUS.
//! Every call is a no-op when `NOTIFY_SOCKET` is not set (not running under systemd).

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// Talks to the service manager through `NOTIFY_SOCKET`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Systemd;

impl Systemd {
    fn send(self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            // systemd would kill us for a missing READY=1 or WATCHDOG=1; say why it may happen.
            debug!(error = %e, "Cannot notify systemd.");
        }
    }

    pub fn ready(self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Before re-reading the configuration; [`Self::ready`] follows.
    pub fn reloading(self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading configuration"),
            ]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn status(self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, when systemd set one for us.
    pub fn watchdog_interval(self) -> Option<Duration> {
        sd_notify::watchdog_enabled()
            .map(|timeout| timeout / 2)
            .filter(|d| !d.is_zero())
    }
}
