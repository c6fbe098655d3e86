//! Process logs on stdout (journald under systemd), as text or JSON. The audit log is
//! separate: see [`crate::infrastructure::audit`].
//!
//! Under journald (stdout is the stream `$JOURNAL_STREAM` names) every line starts with its
//! syslog priority as `<N>` (sd-daemon(3); journald strips it and files the line at that
//! priority, so `journalctl -p warning` shows exactly the warnings and errors), and text lines
//! carry no timestamp of their own: journald stamps each one.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Crates whose INFO is noise for operators (every statement, every scheduler tick).
const QUIET: &[&str] = &[
    "sqlx=warn",
    "sea_orm=warn",
    "sea_orm_migration=warn",
    "tokio_cron_scheduler=warn",
];

/// Installs the global subscriber. `level` is `log.level` (already validated); `RUST_LOG`,
/// when set, wins for troubleshooting.
pub fn init(level: &str, format: LogFormat) {
    // Non-ASCII filters are refused: tracing-subscriber 0.3 panics on some of them.
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| d.is_ascii())
        .unwrap_or_else(|| level.to_owned());
    let mut filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    for quiet in QUIET {
        let target = quiet.split('=').next().unwrap_or_default();
        if directives.contains(target) {
            continue; // the operator asked for this crate explicitly
        }
        // Constant, valid directives: parsing cannot fail.
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let journal = stdout_is_the_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stdout { journal })
        .with_span_events(FmtSpan::NONE);
    // A second init (tests, repeated calls) keeps the first subscriber.
    let _ = match (format, journal) {
        (LogFormat::Text, false) => builder.with_ansi(false).try_init(),
        (LogFormat::Text, true) => builder.with_ansi(false).without_time().try_init(),
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
    };
}

/// Whether stdout is connected to journald: `$JOURNAL_STREAM` (set by systemd for a service
/// whose output goes to the journal) holds the `device:inode` of that stream, which must be
/// our stdout's, not one inherited through a child's redirected output.
fn stdout_is_the_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The syslog priority of a level: err, warning, info, debug.
fn priority(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"<3>",
        Level::WARN => b"<4>",
        Level::INFO => b"<6>",
        _ => b"<7>",
    }
}

/// Stdout, with each event's priority prefixed under journald.
#[derive(Clone, Copy)]
struct Stdout {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            out: io::stdout().lock(),
            prefix: None,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EventWriter {
            out: io::stdout().lock(),
            prefix: self.journal.then(|| priority(meta.level())),
        }
    }
}

/// One event's writer: holds stdout's lock so that the prefix and the line it belongs to are
/// never split by another thread's output; writes the prefix before the first byte.
struct EventWriter {
    out: io::StdoutLock<'static>,
    prefix: Option<&'static [u8]>,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(prefix) = self.prefix.take() {
            self.out.write_all(prefix)?;
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(priority(&Level::ERROR), b"<3>");
        assert_eq!(priority(&Level::WARN), b"<4>");
        assert_eq!(priority(&Level::INFO), b"<6>");
        assert_eq!(priority(&Level::DEBUG), b"<7>");
    }
}
