//! `email`: SMTP through lettre (tokio, rustls; `smtp://`, `smtps://`, STARTTLS with
//! `?tls=required`), pooled connections, `Message-ID` derived from the alert id (SPEC §6).

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
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
        let invalid_url = || {
            fail("notify.email.smtp_url is not a valid SMTP URL (smtp://host:port, smtps://host:port, ?tls=required for STARTTLS)".into())
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            .map_err(|_| invalid_url())?;
        let parsed = url::Url::parse(url.expose_secret()).map_err(|_| invalid_url())?;
        let mode = TlsMode::of(&parsed);
        let host = parsed.host_str().unwrap_or_default().to_owned();
        // `smtp:` is not a special scheme to the URL parser: an IP address stays a domain.
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if mode.is_insecure() && !loopback && !settings.allow_insecure {
            return Err(fail(format!(
                "notify.email.smtp_url: plain SMTP to {host} would carry alerts and customer \
                 addresses in clear text; use smtps:// or smtp://...?tls=required (STARTTLS), \
                 or set notify.email.allow_insecure = true for a relay you trust"
            )));
        }
        if let Some(path) = &settings.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                fail(format!(
                    "notify.email.tls_ca_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let certificate = Certificate::from_pem(&pem).map_err(|e| {
                fail(format!(
                    "notify.email.tls_ca_file: {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            let parameters = TlsParameters::builder(host.clone())
                .add_root_certificate(certificate)
                .build()
                .map_err(|e| fail(format!("notify.email.tls_ca_file: {e}")))?;
            builder = match mode {
                TlsMode::Implicit => builder.tls(Tls::Wrapper(parameters)),
                TlsMode::StartTls => builder.tls(Tls::Required(parameters)),
                TlsMode::Opportunistic => builder.tls(Tls::Opportunistic(parameters)),
                // No TLS at all: a CA file has nothing to verify.
                TlsMode::Plain => {
                    return Err(fail(
                        "notify.email.tls_ca_file is set but notify.email.smtp_url uses no TLS \
                         (use smtps:// or ?tls=required)"
                            .into(),
                    ));
                }
            };
        }
        if let Some(username) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        // Connections the pool keeps: no more than deliveries may be in flight on e-mail.
        let notify = &config.settings.notify;
        let in_flight = notify
            .channel_concurrency
            .get(&ChannelKind::Email)
            .copied()
            .unwrap_or(notify.concurrency);
        let concurrency = u32::try_from(in_flight).unwrap_or(u32::MAX);
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
            .email()?
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

/// How the SMTP URL asks for TLS (lettre's URL forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://...?tls=required`: STARTTLS or no delivery.
    StartTls,
    /// `smtp://...?tls=opportunistic`: STARTTLS if offered; an attacker can strip the offer.
    Opportunistic,
    /// `smtp://`: clear text.
    Plain,
}

impl TlsMode {
    fn of(url: &url::Url) -> Self {
        let tls = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v);
        match (url.scheme(), tls.as_deref()) {
            ("smtps", _) => Self::Implicit,
            (_, Some("required")) => Self::StartTls,
            (_, Some("opportunistic")) => Self::Opportunistic,
            _ => Self::Plain,
        }
    }

    fn is_insecure(self) -> bool {
        matches!(self, Self::Plain | Self::Opportunistic)
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
