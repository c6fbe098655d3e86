//! `sms`: a Twilio-compatible Messages API (SPEC §6): `POST
//! {api_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form fields `To` (the account's
//! `owner_phone`), `From` and `Body`, HTTP basic auth `account_sid:auth_token`. 2xx = sent,
//! 429/5xx transient (with `Retry-After`), other 4xx permanent (a number the gateway refuses).

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::template::{Templates, no_escape};
use super::{ChannelBuildError, http};
use crate::config::{ChannelKind, LoadedConfig};
use crate::domain::ports::Channel;
use crate::domain::{AlertMessage, ChannelName, DeliveryError};

const TEXT: &str = "notify.sms.text";

pub struct SmsChannel {
    name: ChannelName,
    client: reqwest::Client,
    url: reqwest::Url,
    account_sid: String,
    auth_token: SecretString,
    from: String,
    templates: Templates,
}

impl SmsChannel {
    pub fn build(config: &LoadedConfig) -> Result<Self, ChannelBuildError> {
        let settings = &config.settings.notify.sms;
        let fail = |reason: String| ChannelBuildError {
            channel: "sms",
            reason,
        };
        let required = |key: &str| fail(format!("{key} is required"));
        let account_sid = settings
            .account_sid
            .clone()
            .ok_or_else(|| required("notify.sms.account_sid"))?;
        let auth_token = settings
            .auth_token
            .clone()
            .ok_or_else(|| required("notify.sms.auth_token"))?;
        let from = settings
            .from
            .clone()
            .ok_or_else(|| required("notify.sms.from"))?;
        if account_sid.is_empty() || !account_sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(fail(format!(
                "notify.sms.account_sid: {account_sid:?} is not an account id (letters and digits)"
            )));
        }
        let base = reqwest::Url::parse(&settings.api_url)
            .map_err(|e| fail(format!("notify.sms.api_url is not a URL: {e}")))?;
        if base.scheme() != "https" && !super::webhook::is_loopback(&base) {
            return Err(fail(
                "notify.sms.api_url must be https:// (plain http only to loopback)".into(),
            ));
        }
        let path = format!("2010-04-01/Accounts/{account_sid}/Messages.json");
        let url = base
            .join(&path)
            .map_err(|e| fail(format!("notify.sms.api_url: {e}")))?;
        let templates = Templates::compile(
            ChannelKind::Sms,
            &config.currency,
            no_escape,
            &[(TEXT, &settings.text)],
        )?;
        let client = http::client(
            config.settings.delivery.timeout,
            config.settings.notify.concurrency,
        )
        .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: ChannelName::new("sms"),
            client,
            url,
            account_sid,
            auth_token,
            from,
            templates,
        })
    }
}

#[async_trait]
impl Channel for SmsChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    /// The phone number: what the audit log names as the recipient.
    fn recipient(&self, message: &AlertMessage) -> String {
        message
            .phone
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError> {
        let to = message
            .phone
            .as_ref()
            .ok_or_else(|| DeliveryError::permanent("no owner_phone for sms"))?;
        let text = self.templates.render(TEXT, message)?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("To", to.as_str())
            .append_pair("From", &self.from)
            .append_pair("Body", &text)
            .finish();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let request = self
            .client
            .post(self.url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .headers(headers)
            .body(body);
        http::send(request).await
    }
}
