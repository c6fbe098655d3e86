//! `slack`: a Slack incoming webhook, `{"text": ...}` (SPEC §6).

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;

use super::template::Templates;
use super::{ChannelBuildError, http};
use crate::config::redact::mask_url;
use crate::config::{ChannelKind, LoadedConfig};
use crate::domain::ports::{Channel, DigestSink, SweepDigest};
use crate::domain::{AlertMessage, ChannelName, DeliveryError};

const TEXT: &str = "notify.slack.text";

pub struct SlackChannel {
    name: ChannelName,
    client: reqwest::Client,
    /// Secret: the path is the credential.
    url: reqwest::Url,
    recipient: String,
    templates: Templates,
}

impl SlackChannel {
    pub fn build(config: &LoadedConfig) -> Result<Self, ChannelBuildError> {
        let settings = &config.settings.notify.slack;
        let fail = |reason: &str| ChannelBuildError {
            channel: "slack",
            reason: reason.to_owned(),
        };
        let raw = settings
            .webhook_url
            .as_ref()
            .ok_or_else(|| fail("notify.slack.webhook_url is required"))?
            .expose_secret();
        let url = reqwest::Url::parse(raw)
            .map_err(|e| fail(&format!("notify.slack.webhook_url is not a URL: {e}")))?;
        if url.scheme() != "https" && !super::webhook::is_loopback(&url) {
            return Err(fail(
                "notify.slack.webhook_url must be https:// (plain http only to loopback)",
            ));
        }
        let templates = Templates::compile(
            ChannelKind::Slack,
            &config.currency,
            escape,
            &[(TEXT, &settings.text)],
        )?;
        let delivery = &config.settings.delivery;
        let client = http::client(delivery.timeout, config.settings.notify.concurrency)
            .map_err(|e| fail(&format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: ChannelName::new("slack"),
            client,
            recipient: mask_url(raw),
            url,
            templates,
        })
    }
}

/// Slack's mrkdwn control characters: bank data must not become links or mentions.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[async_trait]
impl Channel for SlackChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    fn recipient(&self, _message: &AlertMessage) -> String {
        self.recipient.clone()
    }

    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError> {
        let text = self.templates.render(TEXT, message)?;
        let body = serde_json::to_vec(&serde_json::json!({ "text": text })).map_err(|e| {
            DeliveryError::permanent(format!("cannot encode the Slack message: {e}"))
        })?;
        http::post(&self.client, &self.url, HeaderMap::new(), body).await
    }
}

/// Slack in digest mode: one message per sweep (counts and the first few alerts).
pub struct SlackDigest {
    client: reqwest::Client,
    /// Secret: the path is the credential.
    url: reqwest::Url,
}

impl SlackDigest {
    pub fn build(config: &LoadedConfig) -> Result<Self, ChannelBuildError> {
        // The same URL checks and client as the per-alert channel.
        let channel = SlackChannel::build(config)?;
        Ok(Self {
            client: channel.client,
            url: channel.url,
        })
    }

    /// The message: plain words, bank data escaped.
    pub fn text(&self, d: &SweepDigest) -> String {
        let mut text = format!(
            "Balance alert sweep: {} deliveries attempted for {} of {} accounts below their \
             threshold: {} sent, {} failed, {} deferred (quiet hours).",
            d.sent + d.failed,
            d.eligible,
            d.below_threshold,
            d.sent,
            d.failed,
            d.deferred
        );
        for claim in &d.first {
            text.push_str(&format!(
                "\n• {} ({}) on {}: {} < {}",
                escape(claim.account.display_name()),
                escape(&claim.account.owner_email),
                claim.channel,
                claim.currency.format(claim.account.balance),
                claim.currency.format(claim.threshold)
            ));
        }
        let more = (d.sent + d.failed).saturating_sub(d.first.len() as u64);
        if more > 0 {
            text.push_str(&format!("\n… and {more} more."));
        }
        text
    }
}

#[async_trait]
impl DigestSink for SlackDigest {
    fn name(&self) -> &str {
        "slack"
    }

    async fn post(&self, digest: &SweepDigest) -> Result<(), DeliveryError> {
        let body =
            serde_json::to_vec(&serde_json::json!({ "text": self.text(digest) })).map_err(|e| {
                DeliveryError::permanent(format!("cannot encode the Slack message: {e}"))
            })?;
        http::post(&self.client, &self.url, HeaderMap::new(), body).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_slack_control_characters() {
        assert_eq!(
            super::escape("<@U123> & <!channel>"),
            "&lt;@U123&gt; &amp; &lt;!channel&gt;"
        );
    }
}
