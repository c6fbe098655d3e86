//! `console`: one line per alert on stdout in the reference wording (SPEC §6).

use async_trait::async_trait;

use super::ConsoleOut;
use crate::domain::ports::Channel;
use crate::domain::{AlertMessage, ChannelName, DeliveryError};

pub struct ConsoleChannel {
    name: ChannelName,
    out: ConsoleOut,
}

impl ConsoleChannel {
    pub fn new(out: ConsoleOut) -> Self {
        Self {
            name: ChannelName::new("console"),
            out,
        }
    }

    /// `📧 Email -> alice@example.com: Hi Alice, your balance ($49.00) is below $50.00`
    pub fn render(&self, message: &AlertMessage) -> Result<String, DeliveryError> {
        Ok(format!(
            "📧 Email -> {}: Hi {}, your balance ({}) is below {}\n",
            message.email()?,
            super::template::display_name(message),
            message.currency.format(message.balance),
            message.currency.format(message.threshold),
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
