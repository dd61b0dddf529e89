//! Filters: what a list argument asks for, as a SQL condition. Hashable, so that nested
//! pages with the same filter are read in one statement.

use entity::Timestamp;
use entity::app::{self, AccessMode, AppStatus};
use entity::deployment::{self, DeploymentStatus};
use entity::{api_token, audit_event, repository};
use sea_orm::{ColumnTrait, Condition};

/// A filter that becomes a SQL condition.
pub trait FilterCondition {
    fn condition(&self) -> Condition;
}

/// Filters on repositories.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RepositoryFilter {
    pub name_contains: Option<String>,
}

impl FilterCondition for RepositoryFilter {
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if let Some(part) = &self.name_contains {
            // `%` and `_` are matched as themselves, not as wildcards.
            let escaped = part
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            condition = condition.add(
                repository::Column::Name
                    .like(sea_orm::sea_query::LikeExpr::new(format!("%{escaped}%")).escape('\\')),
            );
        }
        condition
    }
}

/// Filters on apps (hashable, so pages can be batched by filter).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppFilter {
    pub statuses: Vec<AppStatus>,
    pub access_mode: Option<AccessMode>,
    pub repo_id: Option<i64>,
}

impl FilterCondition for AppFilter {
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if !self.statuses.is_empty() {
            condition = condition.add(app::Column::Status.is_in(self.statuses.clone()));
        }
        if let Some(mode) = self.access_mode {
            condition = condition.add(app::Column::AccessMode.eq(mode));
        }
        if let Some(repo_id) = self.repo_id {
            condition = condition.add(app::Column::RepoId.eq(repo_id));
        }
        condition
    }
}

/// Filters on deployments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeploymentFilter {
    pub statuses: Vec<DeploymentStatus>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub app_id: Option<i64>,
}

impl FilterCondition for DeploymentFilter {
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if !self.statuses.is_empty() {
            condition = condition.add(deployment::Column::Status.is_in(self.statuses.clone()));
        }
        if let Some(after) = self.created_after {
            condition = condition.add(deployment::Column::CreatedAt.gte(after));
        }
        if let Some(before) = self.created_before {
            condition = condition.add(deployment::Column::CreatedAt.lt(before));
        }
        if let Some(app_id) = self.app_id {
            condition = condition.add(deployment::Column::AppId.eq(app_id));
        }
        condition
    }
}

/// Which tokens to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ApiTokenFilter {
    pub role: Option<api_token::Role>,
    pub include_revoked: bool,
}

impl FilterCondition for ApiTokenFilter {
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if let Some(role) = self.role {
            condition = condition.add(api_token::Column::Role.eq(role));
        }
        if !self.include_revoked {
            condition = condition.add(api_token::Column::RevokedAt.is_null());
        }
        condition
    }
}

/// An object audit events name: by its global ID as sent (failed calls, and rows written
/// before the trail stored types and row ids), or by its type and row id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuditObject {
    pub id: String,
    pub row: Option<(audit_event::ObjectType, i64)>,
}

/// Which audit events to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AuditEventFilter {
    pub operation: Option<String>,
    pub token_name: Option<String>,
    pub outcome: Option<audit_event::Outcome>,
    pub object: Option<AuditObject>,
    pub occurred_after: Option<Timestamp>,
    pub occurred_before: Option<Timestamp>,
}

impl FilterCondition for AuditEventFilter {
    fn condition(&self) -> Condition {
        use audit_event::Column;
        let mut condition = Condition::all();
        if let Some(operation) = &self.operation {
            condition = condition.add(Column::Operation.eq(operation.as_str()));
        }
        if let Some(name) = &self.token_name {
            condition = condition.add(Column::TokenName.eq(name.as_str()));
        }
        if let Some(outcome) = self.outcome {
            condition = condition.add(Column::Outcome.eq(outcome));
        }
        if let Some(object) = &self.object {
            let mut named = Condition::any().add(Column::ObjectId.eq(object.id.as_str()));
            if let Some((kind, id)) = object.row {
                named = named.add(
                    Condition::all()
                        .add(Column::ObjectType.eq(kind))
                        .add(Column::ObjectDatabaseId.eq(id)),
                );
            }
            condition = condition.add(named);
        }
        if let Some(after) = self.occurred_after {
            condition = condition.add(Column::OccurredAt.gte(after));
        }
        if let Some(before) = self.occurred_before {
            condition = condition.add(Column::OccurredAt.lt(before));
        }
        condition
    }
}
