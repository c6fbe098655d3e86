//! The real clock.

use chrono::{DateTime, SubsecRound, Utc};

use crate::domain::ports::Clock;

/// Wall-clock UTC, truncated to microseconds: PostgreSQL stores microseconds, so a value
/// written and read back compares equal on every backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}
