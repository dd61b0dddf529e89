//! SeaORM entities, one file per table, no business logic: the three tables the Django
//! version created (`api_repository`, `api_app`, `api_deployment`), exactly as it created
//! them, and Keystone's own `api_token` and `api_audit_event`.
//!
//! Column names, types and lengths must match `../shared/fixtures/` so an existing Django
//! database can be taken over in place; `keystone verify` checks these definitions against
//! the migrated schema.

pub mod api_token;
pub mod app;
pub mod app_env;
pub mod app_placement;
pub mod app_settings;
pub mod app_webhook;
pub mod audit_event;
pub mod deployment;
pub mod deployment_run;
pub mod deployment_status_count;
pub mod repository;
mod timestamp;
pub mod trusted_document;
pub mod webhook_delivery;

pub use timestamp::Timestamp;

pub mod prelude {
    pub use super::api_token::{Entity as ApiToken, Role};
    pub use super::app::{AccessMode, AppStatus, Entity as App};
    pub use super::app_env::Entity as AppEnv;
    pub use super::app_placement::Entity as AppPlacement;
    pub use super::app_settings::Entity as AppSettings;
    pub use super::app_webhook::Entity as AppWebhook;
    pub use super::audit_event::{Entity as AuditEvent, Outcome};
    pub use super::deployment::{DeploymentStatus, Entity as Deployment};
    pub use super::deployment_run::Entity as DeploymentRun;
    pub use super::deployment_status_count::Entity as DeploymentStatusCount;
    pub use super::repository::Entity as Repository;
    pub use super::trusted_document::Entity as TrustedDocument;
    pub use super::webhook_delivery::Entity as WebhookDelivery;
}
