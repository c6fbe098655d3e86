//! The domain: money, accounts, alerts and the ports the application talks through.
//! Nothing here knows about SeaORM, HTTP or SMTP.

pub mod account;
pub mod alert;
pub mod claiming;
pub mod currency;
pub mod email;
pub mod lease;
pub mod money;
pub mod policy;
pub mod ports;

pub use account::{Account, AccountId, AccountSettings};
pub use alert::{
    AlertId, AlertMessage, AlertRecord, AlertRules, AlertStatus, AlertsByPair, ChannelName, Claim,
    Cutoffs, Decision, DeliveryError, FailureKind, Outcome,
};
pub use claiming::{ClaimPlan, ClaimTally, plan_claims};
pub use currency::{ThresholdGroup, Thresholds, iso_currency};
pub use email::{EmailAddress, InvalidEmail, PhoneNumber};
pub use lease::{Lease, LeaseHolder};
pub use money::{Currency, CurrencyError, Money, MoneyError};
pub use policy::{AccountPolicy, BadSetting, Policy, PolicyDefaults, QuietHours};
