//! The `Node` interface: any object by its global ID.

use async_graphql::{Context, ID, Interface, Object};
use futures_util::future::try_join_all;

use crate::domain::access::Capability;

use super::app::App;
use super::auth::Require;
use super::deployment::Deployment;
use super::error::{OrInternal, bad_input};
use super::ids::{NodeType, decode};
use super::loaders;
use super::loaders::{AppId, DeploymentId, RepositoryId};
use super::repository::Repository;

/// An object with a global ID.
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID", desc = "Opaque global ID."))]
pub enum Node {
    Repository(Repository),
    App(App),
    Deployment(Deployment),
}

/// The most IDs `nodes` takes at once.
const MAX_NODES: usize = 100;

async fn load(ctx: &Context<'_>, id: &ID, field: &str) -> async_graphql::Result<Option<Node>> {
    let loaders = loaders(ctx)?;
    Ok(match decode(id, field)? {
        (NodeType::Repository, n) => loaders
            .load_one(RepositoryId(n))
            .await
            .or_internal()?
            .map(|m| Node::Repository(Repository(m))),
        (NodeType::App, n) => loaders
            .load_one(AppId(n))
            .await
            .or_internal()?
            .map(|m| Node::App(m.into())),
        (NodeType::Deployment, n) => loaders
            .load_one(DeploymentId(n))
            .await
            .or_internal()?
            .map(|m| Node::Deployment(Deployment::from(m))),
        // Admin-only objects are not reachable through `node`, which viewers may call.
        (NodeType::ApiToken | NodeType::AuditEvent, _) => {
            return Err(bad_input(
                field,
                "tokens and audit events are listed by apiTokens and auditEvents, not node",
            ));
        }
    })
}

#[derive(Default)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// Any object by its global ID; null when it does not exist.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn node(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A global ID, as any object's `id` field gives it.")] id: ID,
    ) -> async_graphql::Result<Option<Node>> {
        load(ctx, &id, "id").await
    }

    /// Several objects by global ID (at most 100), in the same order; null for each that does
    /// not exist. Batched: one query per type. Each ID counts towards the complexity.
    #[graphql(
        guard = "Require(Capability::Read)",
        complexity = "ids.len().max(1) * child_complexity + 1"
    )]
    async fn nodes(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Global IDs (at most 100).")] ids: Vec<ID>,
    ) -> async_graphql::Result<Vec<Option<Node>>> {
        if ids.len() > MAX_NODES {
            return Err(bad_input(
                "ids",
                format!("at most {MAX_NODES} IDs (got {})", ids.len()),
            ));
        }
        // Concurrently, so the loaders batch them: one query per type.
        try_join_all(ids.iter().map(|id| load(ctx, id, "ids"))).await
    }
}
