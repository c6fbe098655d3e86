//! Prometheus metrics (SPEC §8b). Deliveries are counted where their audit lines are
//! written ([`MeteredAuditLog`]): one line per outcome, so the counters equal what the audit
//! log says happened. Sweep-level series are set by the daemon's runner after each sweep.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::application::sweep::SweepSummary;
use crate::config::ChannelKind;
use crate::domain::ports::{AuditEntry, AuditEvent, AuditLog};

/// How a sweep ended, the `result` label of `sweeps_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepResult {
    Success,
    Failure,
    Abandoned,
}

impl SweepResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Abandoned => "abandoned",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    sweeps: IntCounterVec,
    last_success: Gauge,
    duration: Histogram,
    deliveries: IntCounterVec,
    below_threshold: IntGauge,
    without_threshold: IntGauge,
    deferred: IntCounter,
    reload_ok: IntGauge,
}

const OUTCOMES: [&str; 4] = ["sent", "failed", "retry", "expired"];

impl Metrics {
    /// Registers every series; `channels` get their delivery series at 0 so that rules on
    /// them see a value before the first failure.
    pub fn new(channels: &[ChannelKind]) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("balance_alertd".into()), None)?;
        let sweeps = IntCounterVec::new(
            Opts::new("sweeps_total", "Sweeps run, by how they ended."),
            &["result"],
        )?;
        let last_success = Gauge::new(
            "last_sweep_success_timestamp_seconds",
            "Unix time at which the last successful sweep finished.",
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new("sweep_duration_seconds", "Duration of finished sweeps.").buckets(
                vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                ],
            ),
        )?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "deliveries_total",
                "Delivery outcomes by channel: sent, failed (permanent), retry (transient), expired (given up).",
            ),
            &["channel", "outcome"],
        )?;
        let below_threshold = IntGauge::new(
            "accounts_below_threshold",
            "Accounts below their threshold at the last successful sweep.",
        )?;
        let without_threshold = IntGauge::new(
            "accounts_without_threshold",
            "Accounts never alerted at the last successful sweep: no threshold of their own and none for their currency (alert.thresholds.<CODE>).",
        )?;
        let deferred = IntCounter::new(
            "deferred_total",
            "Deliveries deferred by quiet hours (sent by a later sweep).",
        )?;
        let reload_ok = IntGauge::new(
            "config_last_reload_successful",
            "1 if the last configuration reload was applied, 0 if it was rejected.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "The running version; always 1."),
            &["version"],
        )?;
        registry.register(Box::new(sweeps.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(below_threshold.clone()))?;
        registry.register(Box::new(without_threshold.clone()))?;
        registry.register(Box::new(deferred.clone()))?;
        registry.register(Box::new(reload_ok.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        reload_ok.set(1);
        for result in [
            SweepResult::Success,
            SweepResult::Failure,
            SweepResult::Abandoned,
        ] {
            sweeps.with_label_values(&[result.label()]);
        }
        let metrics = Self {
            registry,
            sweeps,
            last_success,
            duration,
            deliveries,
            below_threshold,
            without_threshold,
            deferred,
            reload_ok,
        };
        metrics.add_channels(channels);
        Ok(metrics)
    }

    /// Gives `channels` their delivery series (at 0 until something happens).
    pub fn add_channels(&self, channels: &[ChannelKind]) {
        for channel in channels {
            for outcome in OUTCOMES {
                self.deliveries
                    .with_label_values(&[channel.as_str(), outcome]);
            }
        }
    }

    pub fn sweep_finished(&self, result: SweepResult, summary: Option<&SweepSummary>) {
        self.sweeps.with_label_values(&[result.label()]).inc();
        if let Some(summary) = summary {
            self.duration
                .observe(Duration::from_millis(summary.duration_ms).as_secs_f64());
            if result == SweepResult::Success {
                self.below_threshold
                    .set(i64::try_from(summary.below_threshold).unwrap_or(i64::MAX));
                self.without_threshold
                    .set(i64::try_from(summary.without_threshold).unwrap_or(i64::MAX));
                self.deferred.inc_by(summary.deferred);
                self.last_success
                    .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
            }
        }
    }

    pub fn reloaded(&self, applied: bool) {
        self.reload_ok.set(i64::from(applied));
    }

    fn delivered(&self, entries: &[AuditEntry]) {
        for entry in entries {
            let outcome = match entry.event {
                AuditEvent::AlertSent => "sent",
                AuditEvent::AlertFailed => "failed",
                AuditEvent::AlertRetry => "retry",
                AuditEvent::AlertExpired => "expired",
            };
            self.deliveries
                .with_label_values(&[entry.channel.as_str(), outcome])
                .inc();
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }

    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

/// An audit log that counts the outcomes it records.
pub struct MeteredAuditLog {
    inner: Arc<dyn AuditLog>,
    metrics: Arc<Metrics>,
}

impl MeteredAuditLog {
    pub fn new(inner: Arc<dyn AuditLog>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl AuditLog for MeteredAuditLog {
    fn record(&self, entries: &[AuditEntry]) -> Result<(), std::io::Error> {
        self.inner.record(entries)?;
        self.metrics.delivered(entries);
        Ok(())
    }

    fn reopen(&self) {
        self.inner.reopen();
    }

    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    fn record_lines(&self, lines: &[String]) -> Result<(), std::io::Error> {
        self.inner.record_lines(lines)
    }

    fn unwritten(&self) -> Vec<String> {
        self.inner.unwritten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_spec_names_is_exposed_with_the_prefix() {
        let metrics = Metrics::new(&[ChannelKind::Console]).unwrap();
        metrics.sweep_finished(SweepResult::Success, Some(&SweepSummary::default()));
        let text = metrics.encode().unwrap();
        for name in [
            "balance_alertd_sweeps_total{result=\"success\"} 1",
            "balance_alertd_last_sweep_success_timestamp_seconds ",
            "balance_alertd_sweep_duration_seconds_bucket",
            "balance_alertd_deliveries_total{channel=\"console\",outcome=\"failed\"} 0",
            "balance_alertd_accounts_below_threshold 0",
            "balance_alertd_accounts_without_threshold 0",
            "balance_alertd_deferred_total 0",
            "balance_alertd_config_last_reload_successful 1",
            "balance_alertd_build_info{version=\"",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
