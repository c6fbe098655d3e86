//! `email`: SMTP through lettre (tokio, rustls; `smtp://`, `smtps://`, STARTTLS with
//! `?tls=required`), pooled connections, `Message-ID` derived from the alert id (SPEC §6).

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::ChannelBuildError;
use super::template::{self, Templates, no_escape};
use crate::config::{ChannelKind, LoadedConfig};
use crate::domain::ports::Channel;
use crate::domain::{AlertMessage, ChannelName, DeliveryError};

const SUBJECT: &str = "notify.email.subject";
const BODY: &str = "notify.email.body";

pub struct EmailChannel {
    name: ChannelName,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The right-hand side of Message-IDs: the sender's domain.
    id_domain: String,
    templates: Templates,
}

impl EmailChannel {
    pub fn build(config: &LoadedConfig) -> Result<Self, ChannelBuildError> {
        let settings = &config.settings.notify.email;
        let fail = |reason: String| ChannelBuildError {
            channel: "email",
            reason,
        };
        let url = settings
            .smtp_url
            .as_ref()
            .ok_or_else(|| fail("notify.email.smtp_url is required".into()))?;
        // lettre's error would quote the URL, which may hold a password: keep only its kind.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret()).map_err(|_| {
            fail("notify.email.smtp_url is not a valid SMTP URL (smtp://host:port, smtps://host:port, ?tls=required for STARTTLS)".into())
        })?;
        if let Some(username) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        let concurrency = u32::try_from(config.settings.notify.concurrency).unwrap_or(u32::MAX);
        let transport = builder
            .timeout(Some(config.settings.delivery.timeout))
            .pool_config(PoolConfig::new().max_size(concurrency.max(1)))
            .build();
        let from: Mailbox = settings.from.parse().map_err(|e| {
            fail(format!(
                "notify.email.from: {:?} is not a mailbox: {e}",
                settings.from
            ))
        })?;
        let templates = Templates::compile(
            ChannelKind::Email,
            &config.currency,
            no_escape,
            &[(SUBJECT, &settings.subject), (BODY, &settings.body)],
        )?;
        Ok(Self {
            name: ChannelName::new("email"),
            transport,
            id_domain: from.email.domain().to_owned(),
            from,
            templates,
        })
    }

    fn message(&self, m: &AlertMessage) -> Result<Message, DeliveryError> {
        let address: Address = m
            .recipient
            .as_str()
            .parse()
            .map_err(|e| DeliveryError::permanent(format!("invalid recipient address: {e}")))?;
        // Header values: no line breaks may come from bank data or templates.
        let one_line = |text: String| text.replace(['\r', '\n'], " ");
        let to = Mailbox::new(Some(template::display_name(m)), address);
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(one_line(self.templates.render(SUBJECT, m)?))
            .message_id(Some(format!("<{}@{}>", m.alert_id, self.id_domain)))
            .header(ContentType::TEXT_PLAIN)
            .body(self.templates.render(BODY, m)?)
            .map_err(|e| DeliveryError::permanent(format!("cannot build the e-mail: {e}")))
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError> {
        let email = self.message(message)?;
        self.transport.send(email).await.map(|_| ()).map_err(|e| {
            // SMTP 5xx is final; 4xx, timeouts and connection trouble may pass.
            if e.is_permanent() {
                DeliveryError::permanent(format!("SMTP: {e}"))
            } else {
                DeliveryError::transient(format!("SMTP: {e}"))
            }
        })
    }
}
