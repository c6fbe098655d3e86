//! Unix signals as [`Control`] events: SIGTERM and SIGINT stop, SIGHUP reloads.

use futures::{Stream, StreamExt};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use super::Control;

/// Registers the handlers now (so a signal during start-up is not lost) and returns them
/// as a stream of control events.
pub fn control_events() -> std::io::Result<impl Stream<Item = Control> + Unpin> {
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    Ok(signals.map(|signal| {
        if signal == SIGHUP {
            Control::Reload
        } else {
            Control::Shutdown
        }
    }))
}
