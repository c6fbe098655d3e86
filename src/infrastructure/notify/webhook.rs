//! `webhook`: a JSON `POST` per alert (SPEC §6), signed per the Standard Webhooks
//! specification (`webhook-id`, `webhook-timestamp`, `webhook-signature`), so receivers verify
//! it with an off-the-shelf library and reject replays outside their tolerance; with
//! `Idempotency-Key: <alert_id>` so the receiver can drop the duplicates at-least-once delivery
//! may cause. Redirects are not followed (the client refuses them): a 3xx is a failure.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;

use super::{ChannelBuildError, http};
use crate::config::LoadedConfig;
use crate::config::redact::mask_url;
use crate::domain::ports::{Channel, Clock};
use crate::domain::{AlertMessage, ChannelName, DeliveryError};
use crate::infrastructure::clock::SystemClock;

pub struct WebhookChannel {
    name: ChannelName,
    client: reqwest::Client,
    url: reqwest::Url,
    recipient: String,
    /// The HMAC keys, one signature each (several while a secret is rotated).
    keys: Vec<SigningKey>,
    /// The first configured secret as written, for the legacy `X-Signature-256`.
    legacy_secret: Option<SecretString>,
    /// The signing time (`webhook-timestamp`): the system clock, or a test's.
    clock: Arc<dyn Clock>,
}

/// An HMAC key, kept out of `Debug` output.
struct SigningKey(secrecy::SecretBox<Vec<u8>>);

impl SigningKey {
    /// `whsec_<base64>` is the Standard Webhooks form (the key is the decoded bytes); any other
    /// string is the key itself (a receiver then verifies with `whsec_` + its base64).
    fn parse(secret: &str) -> Result<Self, String> {
        use base64::Engine;
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("a whsec_ secret must be base64 after the prefix: {e}"))?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err("a signing secret must not be empty".into());
        }
        Ok(Self(secrecy::SecretBox::new(Box::new(key))))
    }
}

/// The body: money as decimal strings, never floats.
#[derive(Serialize)]
struct Payload<'a> {
    /// The event type receivers dispatch on (Standard Webhooks convention).
    #[serde(rename = "type")]
    kind: &'static str,
    alert_id: &'a str,
    account_id: &'a str,
    owner_email: &'a str,
    owner_name: Option<&'a str>,
    balance: String,
    threshold: String,
    currency: &'a str,
    created_at: String,
}

impl WebhookChannel {
    pub fn build(config: &LoadedConfig) -> Result<Self, ChannelBuildError> {
        Self::build_with_clock(config, Arc::new(SystemClock))
    }

    /// [`Self::build`], signing with `clock`'s time (a test replays an old request).
    pub fn build_with_clock(
        config: &LoadedConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ChannelBuildError> {
        let settings = &config.settings.notify.webhook;
        let fail = |reason: &str| ChannelBuildError {
            channel: "webhook",
            reason: reason.to_owned(),
        };
        let raw = settings
            .url
            .as_ref()
            .ok_or_else(|| fail("notify.webhook.url is required"))?
            .expose_secret();
        let url = reqwest::Url::parse(raw)
            .map_err(|e| fail(&format!("notify.webhook.url is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if settings.allow_insecure_http || is_loopback(&url) => {}
            "http" => {
                return Err(fail(
                    "notify.webhook.url: plain http:// to a non-loopback host is refused; \
                     use https:// or set notify.webhook.allow_insecure_http = true",
                ));
            }
            other => {
                return Err(fail(&format!(
                    "notify.webhook.url: unsupported scheme {other:?}"
                )));
            }
        }
        let client = http::client(
            config.settings.delivery.timeout,
            config.settings.notify.concurrency,
        )
        .map_err(|e| fail(&format!("cannot build the HTTP client: {e}")))?;
        let keys = settings
            .secret
            .0
            .iter()
            .map(|secret| SigningKey::parse(secret.expose_secret()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&format!("notify.webhook.secret: {e}")))?;
        Ok(Self {
            name: ChannelName::new("webhook"),
            client,
            recipient: mask_url(raw),
            url,
            keys,
            legacy_secret: settings.secret.0.first().cloned(),
            clock,
        })
    }

    fn body(&self, m: &AlertMessage) -> Result<Vec<u8>, DeliveryError> {
        let payload = Payload {
            kind: "balance.low",
            alert_id: m.alert_id.as_str(),
            account_id: m.account_id.as_str(),
            owner_email: m.email()?.as_str(),
            owner_name: m.owner_name.as_deref(),
            balance: m.currency.decimal(m.balance),
            threshold: m.currency.decimal(m.threshold),
            currency: m.currency.code(),
            created_at: m
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        };
        serde_json::to_vec(&payload)
            .map_err(|e| DeliveryError::permanent(format!("cannot encode the payload: {e}")))
    }
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` per
/// key, space-separated.
fn standard_signature(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    keys.iter()
        .map(|key| {
            // HMAC accepts keys of any length, so this cannot fail.
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.0.expose_secret())
                .unwrap_or_else(|_| unreachable!());
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(tag)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Legacy `X-Signature-256: sha256=<hex HMAC-SHA256 of the exact body>`, keyed with the first
/// secret as written (receivers built before Standard Webhooks keep working).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    fn recipient(&self, _message: &AlertMessage) -> String {
        self.recipient.clone()
    }

    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError> {
        let body = self.body(message)?;
        let mut headers = HeaderMap::new();
        let key = HeaderValue::from_str(message.alert_id.as_str())
            .map_err(|_| DeliveryError::permanent("alert id is not a valid header value"))?;
        headers.insert(HeaderName::from_static("idempotency-key"), key.clone());
        headers.insert(HeaderName::from_static("webhook-id"), key);
        // This attempt's time: a retry is signed anew, so it passes the receiver's tolerance.
        let timestamp = self.clock.now().timestamp();
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        );
        if !self.keys.is_empty() {
            let signatures =
                standard_signature(&self.keys, message.alert_id.as_str(), timestamp, &body);
            // "v1," and base64: always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&signatures) {
                headers.insert(HeaderName::from_static("webhook-signature"), value);
            }
        }
        if let Some(secret) = &self.legacy_secret {
            let signature = signature(secret.expose_secret().as_bytes(), &body);
            // Hex and "sha256=": always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&signature) {
                headers.insert(HeaderName::from_static("x-signature-256"), value);
            }
        }
        http::post(&self.client, &self.url, headers, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_with_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn knows_loopback_hosts() {
        for (url, loopback) in [
            ("http://127.0.0.1:8080/x", true),
            ("http://localhost/x", true),
            ("http://[::1]/x", true),
            ("http://10.0.0.1/x", false),
            ("http://example.com/x", false),
        ] {
            assert_eq!(
                is_loopback(&reqwest::Url::parse(url).unwrap()),
                loopback,
                "{url}"
            );
        }
    }
}
