//! The domain: money, accounts, alerts and the ports the application talks through.
//! Nothing here knows about SeaORM, HTTP or SMTP.

pub mod account;
pub mod alert;
pub mod email;
pub mod money;
pub mod ports;

pub use account::{Account, AccountId};
pub use alert::{
    AlertId, AlertMessage, AlertPolicy, AlertRecord, AlertStatus, AlertsByPair, ChannelName, Claim,
    Decision, DeliveryError, DeliveryOutcome, FailureKind,
};
pub use email::{EmailAddress, InvalidEmail};
pub use money::{Currency, CurrencyError, Money, MoneyError};
