//! Serializers that print secrets as `[redacted]` (or a URL with its secret parts masked),
//! so `balance-alertd config` can show the effective configuration safely.

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

pub const REDACTED: &str = "[redacted]";

/// A URL with its password, path and query masked: the scheme, host and port stay visible
/// for troubleshooting, while credentials (database password, the token in a Slack or
/// webhook path) never leave the process. SQLite paths are not secret and stay whole.
pub fn mask_url(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.to_owned();
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // set_password only fails for URLs that cannot have one, not the case here.
                let _ = parsed.set_password(Some("***"));
            }
            let keep_path = matches!(
                parsed.scheme(),
                "postgres" | "postgresql" | "smtp" | "smtps"
            );
            if !keep_path && parsed.path() != "/" && !parsed.path().is_empty() {
                parsed.set_path("/***");
            }
            if parsed.query().is_some() && !keep_path {
                parsed.set_query(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => REDACTED.to_owned(),
    }
}

pub fn url<S: Serializer>(value: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&mask_url(value.expose_secret()))
}

pub fn optional_url<S: Serializer>(
    value: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(secret) => url(secret, serializer),
        None => serializer.serialize_none(),
    }
}

pub fn optional_secret<S: Serializer>(
    value: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_str(REDACTED),
        None => serializer.serialize_none(),
    }
}

pub fn secrets<S: Serializer>(value: &super::Secrets, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    // As written: none, one string, or a list of them.
    match value.0.len() {
        0 => return serializer.serialize_none(),
        1 => return serializer.serialize_str(REDACTED),
        _ => {}
    }
    let mut seq = serializer.serialize_seq(Some(value.0.len()))?;
    for _ in &value.0 {
        seq.serialize_element(REDACTED)?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn masks_passwords_and_webhook_tokens() {
        assert_eq!(
            mask_url("postgres://app:s3cret@db.internal:5432/bank"),
            "postgres://app:***@db.internal:5432/bank"
        );
        assert_eq!(
            mask_url("https://hooks.slack.com/services/T0/B0/XYZ"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            mask_url("https://h.example.com/hook?token=abc"),
            "https://h.example.com/***?***"
        );
        assert_eq!(
            mask_url("smtp://u:pw@mail:587?tls=required"),
            "smtp://u:***@mail:587?tls=required"
        );
        assert_eq!(mask_url("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
        assert_eq!(mask_url("not a url with secret"), "[redacted]");
    }
}
