//! `AuditEvent`: the audit trail as admins read it, newest first.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, InputObject, Object};
use chrono::{DateTime, Utc};
use entity::audit_event::{self, ActorRole};

use super::auth::{Require, Role};
use super::connection::{Cursor, OrderDirection, SortKey, order, page_args};
use super::ids::{NodeType, decode};
use super::total_count::TotalCount;
use super::{page_complexity, root_connection};
use crate::domain::access::Capability;
use crate::store::filters::{AuditEventFilter, AuditObject};

/// How a mutation ended.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::audit_event::Outcome")]
pub enum AuditOutcome {
    /// It ran and succeeded.
    Success,
    /// Refused or failed; see `errorCode` and `errorMessage`.
    Error,
}

/// Who acted.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditActor {
    /// A caller of the API, with its token (`tokenName`, `tokenRole`).
    Token,
    /// A caller refused before any token was accepted.
    Anonymous,
    /// Someone running the `keystone` command on the server (`tokenName` is the
    /// operating-system user), e.g. `keystone token create`.
    Operator,
    /// A Git host's push notification.
    Webhook,
    /// Keystone itself (`tokenName` names the task, e.g. `lease sweeper`).
    System,
}

impl From<ActorRole> for AuditActor {
    fn from(role: ActorRole) -> Self {
        match role {
            ActorRole::Admin | ActorRole::Viewer | ActorRole::Runner => AuditActor::Token,
            ActorRole::Anonymous => AuditActor::Anonymous,
            ActorRole::Operator => AuditActor::Operator,
            ActorRole::Webhook => AuditActor::Webhook,
            ActorRole::System => AuditActor::System,
        }
    }
}

pub struct AuditEvent(pub audit_event::Model);

/// One change (a mutation, a `keystone` command, or Keystone's own), or one refused call, as
/// recorded when it happened. The trail is append-only.
#[Object]
impl AuditEvent {
    /// Opaque global ID.
    async fn id(&self) -> async_graphql::ID {
        NodeType::AuditEvent.id(self.0.id)
    }

    /// The row id in `api_auditevent`.
    async fn database_id(&self) -> i64 {
        self.0.id
    }

    /// When the call was made.
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at.as_utc()
    }

    /// Who acted: a token, or an actor without one.
    async fn actor(&self) -> AuditActor {
        self.0.token_role.into()
    }

    /// The name of the token that called; `(anonymous)` when no token was accepted; for the
    /// other actors, the operating-system user, the webhook or the task.
    async fn token_name(&self) -> &str {
        &self.0.token_name
    }

    /// The token's role at the time; null for an actor without a token.
    async fn token_role(&self) -> Option<Role> {
        self.0.token_role.role().map(Into::into)
    }

    /// The mutation, e.g. `createRepository`; for calls refused before they ran,
    /// `(authentication)` or `(rate limit)`; the command, e.g. `keystone token create`; or
    /// what Keystone did, e.g. `expireLease`.
    async fn operation(&self) -> &str {
        &self.0.operation
    }

    /// The arguments as JSON, with secrets replaced by `[REDACTED]`.
    async fn arguments(&self) -> &str {
        &self.0.arguments
    }

    /// The global ID of the object acted on, when known (for a call refused before it acted,
    /// the ID it named, as sent).
    async fn object_id(&self) -> Option<String> {
        match (self.0.object_type, self.0.object_database_id) {
            (Some(kind), Some(id)) => Some(NodeType::from(kind).id(id).0),
            _ => self.0.object_id.clone(),
        }
    }

    /// Whether it succeeded.
    async fn outcome(&self) -> AuditOutcome {
        self.0.outcome.into()
    }

    /// The error's `extensions.code`, for failed mutations.
    async fn error_code(&self) -> Option<&str> {
        self.0.error_code.as_deref()
    }

    /// Why it failed; null when it succeeded.
    async fn error_message(&self) -> Option<&str> {
        self.0.error_message.as_deref()
    }

    /// The SHA-256 (hex) of the GraphQL document the call ran: with trusted documents, the
    /// stored document's hash (`keystone documents list`). Null for calls refused before
    /// their document was read.
    async fn document_hash(&self) -> Option<&str> {
        self.0.document_hash.as_deref()
    }
}

/// Which audit events to list.
#[derive(InputObject, Default)]
#[graphql(name = "AuditEventFilter")]
pub struct AuditEventFilterInput {
    /// Only this mutation, e.g. `deleteRepository`.
    operation: Option<String>,
    /// Only calls made with this token.
    token_name: Option<String>,
    /// Only calls that ended this way.
    outcome: Option<AuditOutcome>,
    /// Only events about this object (a global ID).
    object_id: Option<async_graphql::ID>,
    /// Only events at or after this instant.
    occurred_after: Option<DateTime<Utc>>,
    /// Only events before this instant.
    occurred_before: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct AuditEventQuery;

#[Object]
impl AuditEventQuery {
    /// The audit trail, newest first (admin only): every change, whoever made it, with its
    /// outcome.
    #[graphql(
        guard = "Require(Capability::Administer)",
        complexity = "page_complexity(first, last, child_complexity)"
    )]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "Returns the first n items (0–100). Without `first` and `last`, the first 20."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "Returns the items after this cursor (an edge's `cursor`, or `pageInfo.endCursor`)."
        )]
        after: Option<String>,
        #[graphql(desc = "Returns the last n items (0–100); pass `before`, not `after`, with it.")]
        last: Option<i32>,
        #[graphql(
            desc = "Returns the items before this cursor (an edge's `cursor`, or `pageInfo.startCursor`)."
        )]
        before: Option<String>,
        #[graphql(desc = "Only the items that match every condition given.")] filter: Option<
            AuditEventFilterInput,
        >,
    ) -> async_graphql::Result<Connection<Cursor, AuditEvent, TotalCount>> {
        let order = order(SortKey::Id, OrderDirection::Desc);
        let page = page_args(first, after, last, before, order)?;
        let filter = filter.unwrap_or_default();
        let filter = AuditEventFilter {
            operation: filter.operation,
            token_name: filter.token_name,
            outcome: filter.outcome.map(Into::into),
            object: filter.object_id.map(|id| AuditObject {
                row: decode(&id, "objectId")
                    .ok()
                    .and_then(|(kind, n)| Some((kind.object_type()?, n))),
                id: id.0,
            }),
            occurred_after: filter.occurred_after.map(Into::into),
            occurred_before: filter.occurred_before.map(Into::into),
        };
        root_connection::<audit_event::Entity, _, _>(
            ctx,
            page,
            filter,
            TotalCount::AuditEvents,
            AuditEvent,
        )
        .await
    }
}
