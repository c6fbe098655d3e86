//! The integration suite: one binary, real SQLite files and a real PostgreSQL server
//! (`$BALANCE_ALERT_TEST_PG_URL`; `scripts/test.sh` starts one).

mod alerting;
mod channels;
mod cli;
mod concurrency;
mod currencies;
mod daemon;
mod faults;
mod field;
mod helpers;
mod hostile;
mod operations;
mod policies;
mod process;
mod properties;
mod receiver;
mod storage;
