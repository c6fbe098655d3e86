//! Adapters: the database, the channels, the audit log and the clock behind the domain ports.

pub mod audit;
pub mod clock;
pub mod db;
pub mod memory;
pub mod metrics;
pub mod notify;
