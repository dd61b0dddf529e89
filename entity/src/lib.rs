//! SeaORM entities for Keystone's three tables, exactly as the Django version created them
//! (`api_repository`, `api_app`, `api_deployment`). One file per table; no business logic.
//!
//! Column names, types and lengths must match `../shared/fixtures/` so an existing Django
//! database can be taken over in place; `keystone verify` checks these definitions against
//! the migrated schema.

pub mod app;
pub mod deployment;
pub mod repository;
mod timestamp;

pub use timestamp::Timestamp;

pub mod prelude {
    pub use super::app::{AccessMode, AppStatus, Entity as App};
    pub use super::deployment::{DeploymentStatus, Entity as Deployment};
    pub use super::repository::Entity as Repository;
}
