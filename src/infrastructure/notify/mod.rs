//! Channels, built from config behind the one [`Channel`] port. Adding a channel is one new
//! file and one match arm in [`build_channels`].

mod console;
mod email;
mod http;
mod slack;
mod sms;
mod template;
mod webhook;

use std::io::Write;
use std::sync::{Arc, Mutex};

pub use console::ConsoleChannel;
pub use email::EmailChannel;
pub use slack::{SlackChannel, SlackDigest};
pub use sms::SmsChannel;
pub use webhook::{WebhookChannel, signature};

use crate::config::{ChannelKind, LoadedConfig, SlackMode};
use crate::domain::ports::{Channel, DigestSink};

/// Where the console channel writes; stdout in production, a buffer in tests.
pub type ConsoleOut = Arc<Mutex<dyn Write + Send>>;

/// A channel named in `notify.channels` that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("channel {channel:?}: {reason}")]
pub struct ChannelBuildError {
    pub channel: &'static str,
    pub reason: String,
}

/// Builds the configured channels in `notify.channels` order.
pub fn build_channels(
    config: &LoadedConfig,
    console_out: ConsoleOut,
) -> Result<Vec<Arc<dyn Channel>>, ChannelBuildError> {
    let digest = config.settings.notify.slack.mode == SlackMode::Digest;
    config
        .settings
        .notify
        .channels
        .iter()
        // Slack in digest mode is told once per sweep ([`build_digests`]), not per account.
        .filter(|kind| !(digest && **kind == ChannelKind::Slack))
        .map(|kind| -> Result<Arc<dyn Channel>, ChannelBuildError> {
            match kind {
                ChannelKind::Console => Ok(Arc::new(ConsoleChannel::new(console_out.clone()))),
                ChannelKind::Email => Ok(Arc::new(EmailChannel::build(config)?)),
                ChannelKind::Slack => Ok(Arc::new(SlackChannel::build(config)?)),
                ChannelKind::Webhook => Ok(Arc::new(WebhookChannel::build(config)?)),
                ChannelKind::Sms => Ok(Arc::new(SmsChannel::build(config)?)),
            }
        })
        .collect()
}

/// The operations channels told once per sweep: Slack when `notify.slack.mode = "digest"`.
pub fn build_digests(config: &LoadedConfig) -> Result<Vec<Arc<dyn DigestSink>>, ChannelBuildError> {
    let notify = &config.settings.notify;
    if notify.slack.mode == SlackMode::Digest && notify.channels.contains(&ChannelKind::Slack) {
        Ok(vec![Arc::new(slack::SlackDigest::build(config)?)])
    } else {
        Ok(Vec::new())
    }
}
