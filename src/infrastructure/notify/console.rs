//! `console`: one line per alert on stdout in the reference wording (SPEC §6).

use async_trait::async_trait;

use super::ConsoleOut;
use crate::domain::ports::Channel;
use crate::domain::{AlertMessage, ChannelName, Currency, DeliveryError};

pub struct ConsoleChannel {
    name: ChannelName,
    currency: Currency,
    out: ConsoleOut,
}

impl ConsoleChannel {
    pub fn new(currency: Currency, out: ConsoleOut) -> Self {
        Self {
            name: ChannelName::new("console"),
            currency,
            out,
        }
    }

    /// `📧 Email -> alice@example.com: Hi Alice, your balance ($49.00) is below $50.00`
    pub fn render(&self, message: &AlertMessage) -> Result<String, DeliveryError> {
        Ok(format!(
            "📧 Email -> {}: Hi {}, your balance ({}) is below {}\n",
            message.email()?,
            super::template::display_name(message),
            self.currency.format(message.balance),
            self.currency.format(message.threshold),
        ))
    }
}

#[async_trait]
impl Channel for ConsoleChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    async fn send(&self, message: &AlertMessage) -> Result<(), DeliveryError> {
        let line = self.render(message)?;
        let mut out = self
            .out
            .lock()
            .map_err(|_| DeliveryError::permanent("console output lock poisoned"))?;
        out.write_all(line.as_bytes())
            .map_err(|e| DeliveryError::transient(format!("cannot write to stdout: {e}")))
    }
}
