//! Message templates (minijinja) with the alert's values in scope. Templates are compiled
//! and test-rendered when channels are built, so an unknown variable or a syntax error is a
//! configuration error naming the key — never a failure at 3 a.m. in the middle of a sweep.

use minijinja::{Environment, UndefinedBehavior, context};

use super::ChannelBuildError;
use crate::config::ChannelKind;
use crate::domain::{
    AccountId, AlertId, AlertMessage, Currency, DeliveryError, EmailAddress, Money,
};

/// The variables every template may use (documented in config/default.toml).
pub const VARIABLES: &[&str] = &[
    "name",
    "email",
    "account_id",
    "alert_id",
    "balance",
    "threshold",
    "balance_amount",
    "threshold_amount",
    "currency",
    "currency_symbol",
    "created_at",
    "account",
];

/// The templates of one channel, by config key (`notify.email.subject`, ...).
pub struct Templates {
    env: Environment<'static>,
    /// Applied to bank data (name, e-mail) before it enters the template.
    escape: fn(&str) -> String,
}

impl Templates {
    pub fn compile(
        channel: ChannelKind,
        currency: &Currency,
        escape: fn(&str) -> String,
        sources: &[(&'static str, &str)],
    ) -> Result<Self, ChannelBuildError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (key, source) in sources {
            env.add_template_owned(*key, (*source).to_owned())
                .map_err(|e| invalid(channel, key, &e))?;
        }
        let templates = Self { env, escape };
        let sample = sample_message(currency);
        for (key, _) in sources {
            let template = templates
                .env
                .get_template(key)
                .map_err(|e| invalid(channel, key, &e))?;
            let mut unknown: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|name| !VARIABLES.contains(&name.as_str()))
                .collect();
            if !unknown.is_empty() {
                unknown.sort();
                return Err(ChannelBuildError {
                    channel: channel.as_str(),
                    reason: format!(
                        "{key}: unknown template variable {} (known: {})",
                        unknown.join(", "),
                        VARIABLES.join(", ")
                    ),
                });
            }
            // Also catches what only rendering reveals (e.g. a filter applied to the wrong type).
            template
                .render(templates.context(&sample))
                .map_err(|e| invalid(channel, key, &e))?;
        }
        Ok(templates)
    }

    /// Renders `key` for `message`; a failure here is permanent (retrying cannot help).
    pub fn render(&self, key: &str, message: &AlertMessage) -> Result<String, DeliveryError> {
        self.env
            .get_template(key)
            .and_then(|t| t.render(self.context(message)))
            .map_err(|e| DeliveryError::permanent(format!("template {key}: {e}")))
    }

    fn context(&self, m: &AlertMessage) -> minijinja::Value {
        let escape = self.escape;
        let name = escape(&display_name(m));
        let email = escape(m.recipient.as_ref().map_or("", |e| e.as_str()));
        context! {
            name => name.clone(),
            email => email.clone(),
            account_id => m.account_id.as_str(),
            alert_id => m.alert_id.as_str(),
            balance => m.currency.format(m.balance),
            threshold => m.currency.format(m.threshold),
            balance_amount => m.currency.decimal(m.balance),
            threshold_amount => m.currency.decimal(m.threshold),
            currency => m.currency.code(),
            currency_symbol => m.currency.symbol(),
            created_at => m.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            account => context! { id => m.account_id.as_str(), email => email, name => name },
        }
    }
}

/// Longest name put into a message: a greeting, not a data dump (a row held a 10 kB name).
const NAME_CHARS: usize = 100;

/// The owner's name for a message: bank data, so kept on one line (subjects, Slack text,
/// e-mail headers) and bounded in length. The webhook payload carries the name as stored.
pub fn display_name(message: &AlertMessage) -> String {
    let one_line = message.display_name().replace(['\r', '\n', '\t'], " ");
    if one_line.chars().count() > NAME_CHARS {
        one_line.chars().take(NAME_CHARS - 1).chain(['…']).collect()
    } else {
        one_line
    }
}

fn invalid(channel: ChannelKind, key: &str, e: &minijinja::Error) -> ChannelBuildError {
    ChannelBuildError {
        channel: channel.as_str(),
        reason: format!("{key}: invalid template: {e}"),
    }
}

/// Template variables, escaped for nothing (e-mail is plain text).
pub fn no_escape(text: &str) -> String {
    text.to_owned()
}

/// A message in the default currency, to test-render templates with.
fn sample_message(currency: &Currency) -> AlertMessage {
    AlertMessage {
        alert_id: AlertId::from_stored("00000000-0000-7000-8000-000000000000"),
        account_id: AccountId::new("00000000-0000-4000-8000-000000000000"),
        // A constant, valid address: parsing cannot fail.
        recipient: EmailAddress::parse("owner@example.com").ok(),
        phone: None,
        owner_name: Some("Owner".into()),
        balance: Money::from_minor(4_900),
        threshold: Money::from_minor(5_000),
        currency: std::sync::Arc::new(currency.clone()),
        created_at: chrono::DateTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::iso_currency;

    #[test]
    fn templates_show_the_amounts_in_the_messages_currency() {
        let templates = Templates::compile(
            ChannelKind::Sms,
            &Currency::usd(),
            no_escape,
            &[(
                "text",
                "{{ balance }} < {{ threshold }} ({{ balance_amount }} {{ currency }}, \
                 {{ currency_symbol }})",
            )],
        )
        .unwrap();
        let render = |code: &str, balance, threshold| {
            let message = AlertMessage {
                balance: Money::from_minor(balance),
                threshold: Money::from_minor(threshold),
                currency: Arc::new(iso_currency(code).unwrap()),
                ..sample_message(&Currency::usd())
            };
            templates.render("text", &message).unwrap()
        };
        assert_eq!(render("JPY", 4_900, 5_000), "¥4900 < ¥5000 (4900 JPY, ¥)");
        assert_eq!(
            render("EUR", 3_999, 4_000),
            "€39.99 < €40.00 (39.99 EUR, €)"
        );
        assert_eq!(
            render("KWD", 14_900, 15_000),
            "د.ك14.900 < د.ك15.000 (14.900 KWD, د.ك)"
        );
    }
}
