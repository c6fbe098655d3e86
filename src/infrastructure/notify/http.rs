//! What the HTTP channels (Slack, webhook) share: one pooled client, and the rule that turns
//! a response or an error into a delivery outcome (SPEC §2).

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, StatusCode};

use crate::domain::DeliveryError;

/// A client with keep-alive connections and timeouts on every call.
pub fn client(timeout: Duration, max_idle: usize) -> Result<Client, reqwest::Error> {
    // Only ring is compiled in; installing it explicitly keeps rustls from guessing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(max_idle)
        // A 3xx is a failure, not a hop: a redirect could carry the signed alert (a
        // customer's e-mail and balance) to a host nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("balance-alertd/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// POSTs `body` and classifies the outcome. Error texts never contain the URL (a secret).
pub async fn post(
    client: &Client,
    url: &reqwest::Url,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Result<(), DeliveryError> {
    let request = client
        .post(url.clone())
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    send(request).await
}

/// Sends a built request and classifies the outcome (2xx sent; 408, 429, 5xx transient with
/// `Retry-After`; anything else, redirects included, permanent).
pub async fn send(request: reqwest::RequestBuilder) -> Result<(), DeliveryError> {
    let response = request.send().await.map_err(request_error)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    let snippet: String = text.chars().take(200).collect();
    let message = format!("HTTP {status}: {}", snippet.trim());
    if is_transient(status) {
        Err(DeliveryError {
            retry_after,
            ..DeliveryError::transient(message)
        })
    } else {
        Err(DeliveryError::permanent(message))
    }
}

/// 408, 429 and 5xx are worth another attempt; any other 4xx is not.
pub fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn request_error(e: reqwest::Error) -> DeliveryError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // reqwest's message would otherwise carry the URL, which is a secret.
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    DeliveryError::transient(redact_url_in(&text))
}

/// Belt and braces for error sources that quote the URL anyway.
fn redact_url_in(text: &str) -> String {
    text.split_whitespace()
        .map(|word| if word.contains("://") { "[url]" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn classifies_statuses() {
        for transient in [408, 429, 500, 502, 503, 504] {
            assert!(
                is_transient(StatusCode::from_u16(transient).unwrap()),
                "{transient}"
            );
        }
        for permanent in [400, 401, 403, 404, 410, 422] {
            assert!(
                !is_transient(StatusCode::from_u16(permanent).unwrap()),
                "{permanent}"
            );
        }
    }

    #[test]
    fn reads_retry_after_in_seconds_or_as_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::TimeDelta::seconds(30)).to_rfc2822();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let parsed = retry_after(&headers).unwrap();
        assert!(
            parsed > Duration::from_secs(25) && parsed <= Duration::from_secs(30),
            "{parsed:?}"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn urls_in_error_texts_are_redacted() {
        assert_eq!(
            redact_url_in("error for https://hooks.slack.com/services/T/B/SECRET x"),
            "error for [url] x"
        );
    }
}
