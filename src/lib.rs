//! `balance-alertd`: warns bank account owners when a balance falls below a threshold.
//!
//! The binary (`src/main.rs`) and the integration tests use this library. Layers point
//! inward: [`infrastructure`] and [`application`] depend on [`domain`], which depends on
//! nothing of ours; only [`app`] wires adapters together.
#![forbid(unsafe_code)]

pub mod app;
pub mod application;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod infrastructure;
pub mod telemetry;
