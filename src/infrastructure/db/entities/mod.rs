//! SeaORM entities of the tables the migrations create.

pub mod accounts;
pub mod alert_logs;
