//! `accounts`, written by the bank's systems.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub owner_email: String,
    pub owner_name: Option<String>,
    pub balance_minor: i64,
    pub alert_threshold_minor: Option<i64>,
    pub updated_at: DateTimeUtc,
    pub currency: Option<String>,
    pub owner_phone: Option<String>,
    pub alert_policy: Option<String>,
    pub alert_channels: Option<String>,
    pub timezone: Option<String>,
    pub quiet_hours: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::alert_logs::Entity")]
    AlertLogs,
}

impl Related<super::alert_logs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AlertLogs.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
