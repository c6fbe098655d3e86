//! Process logs on stdout (journald under systemd), as text or JSON. The audit log is
//! separate: see [`crate::infrastructure::audit`].

use tracing_subscriber::EnvFilter;
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
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_owned());
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_span_events(FmtSpan::NONE);
    // A second init (tests, repeated calls) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
