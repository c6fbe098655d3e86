//! `alert_logs`, one row per alert; written only by the daemon.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "alert_logs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub account_id: String,
    pub channel: String,
    pub threshold_minor: i64,
    pub balance_at_alert_minor: i64,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub claimed_at: DateTimeUtc,
    pub sent_at: Option<DateTimeUtc>,
    /// The lease holder of a `pending` claim.
    pub claimed_by: Option<String>,
    /// `failed` rows: the contact details the delivery failed on (parked until the
    /// account's differ). Null on other rows.
    pub contact: Option<String>,
    pub currency: Option<String>,
    pub resolved_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::accounts::Entity",
        from = "Column::AccountId",
        to = "super::accounts::Column::Id"
    )]
    Account,
}

impl Related<super::accounts::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Account.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
