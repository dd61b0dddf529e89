//! `Repository`: a Git repository apps are built from; its queries and mutations.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Object, ResultExt, SimpleObject};
use entity::repository;

use super::app::{App, AppFilterInput, AppOrder};
use super::auth::{Require, audited};
use super::connection::{Cursor, Order, OrderDirection, SortKey, page_args};
use super::error::{OrInternal, not_found};
use super::ids::{NodeType, decode_as};
use super::loaders::{AppCount, AppsOfRepository, RepositoryId};
use super::total_count::TotalCount;
use super::{api, loaders, nested_connection, page_complexity, root_connection};
use crate::domain::access::Capability;
use crate::domain::repositories::{self, NewRepository, RepositoryChanges};
use crate::store::filters::RepositoryFilter;

/// A Git repository that apps are built from.
pub struct Repository(pub repository::Model);

/// A Git repository that apps are built from.
#[Object]
impl Repository {
    /// Opaque global ID (see `node`).
    pub async fn id(&self) -> ID {
        NodeType::Repository.id(self.0.id)
    }

    /// The primary key in Keystone's database.
    async fn database_id(&self) -> i64 {
        self.0.id
    }

    /// A display name (not necessarily unique).
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// Where runners clone from: `https://`, `ssh://`, `git://` or `user@host:path`.
    async fn git_url(&self) -> &str {
        &self.0.git_url
    }

    /// The branch deployments build.
    async fn default_branch(&self) -> &str {
        &self.0.default_branch
    }

    /// The apps built from this repository.
    #[graphql(complexity = "page_complexity(first, last, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn apps(
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
            AppFilterInput,
        >,
        #[graphql(
            desc = "The order of the items; the ID breaks ties. Cursors only work with the order they came from."
        )]
        order_by: Option<AppOrder>,
    ) -> async_graphql::Result<Connection<Cursor, App, TotalCount>> {
        let page = page_args(
            first,
            after,
            last,
            before,
            order_by.unwrap_or_default().into(),
        )?;
        let filter = filter.unwrap_or_default().into_filter(None);
        let key = AppsOfRepository {
            repo_id: self.0.id,
            filter: filter.clone(),
            page: page.clone(),
        };
        let count = TotalCount::AppsOfRepository(AppCount {
            repo_id: self.0.id,
            filter,
        });
        nested_connection::<_, entity::app::Entity, _>(ctx, key, &page, count, App::from).await
    }
}

/// What repositories can be ordered by.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RepositoryOrderField {
    #[default]
    /// Creation order.
    Id,
    /// Name, in byte order.
    Name,
}

/// How to order repositories.
#[derive(InputObject, Clone, Copy, Debug, Default)]
pub struct RepositoryOrder {
    /// What to order by.
    field: RepositoryOrderField,
    #[graphql(default)]
    /// Ascending (the default) or descending.
    direction: OrderDirection,
}

impl From<RepositoryOrder> for Order {
    fn from(order: RepositoryOrder) -> Self {
        let key = match order.field {
            RepositoryOrderField::Id => SortKey::Id,
            RepositoryOrderField::Name => SortKey::Name,
        };
        super::connection::order(key, order.direction)
    }
}

/// Which repositories to list.
#[derive(InputObject, Default)]
#[graphql(name = "RepositoryFilter")]
pub struct RepositoryFilterInput {
    /// Only repositories whose name contains this text.
    name_contains: Option<String>,
}

#[derive(Default)]
pub struct RepositoryQuery;

#[Object]
impl RepositoryQuery {
    /// All repositories, paginated (default 20, at most 100 per page).
    #[graphql(
        guard = "Require(Capability::Read)",
        complexity = "page_complexity(first, last, child_complexity)"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn repositories(
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
            RepositoryFilterInput,
        >,
        #[graphql(
            desc = "The order of the items; the ID breaks ties. Cursors only work with the order they came from."
        )]
        order_by: Option<RepositoryOrder>,
    ) -> async_graphql::Result<Connection<Cursor, Repository, TotalCount>> {
        let page = page_args(
            first,
            after,
            last,
            before,
            order_by.unwrap_or_default().into(),
        )?;
        let filter = RepositoryFilter {
            name_contains: filter.and_then(|f| f.name_contains),
        };
        root_connection::<repository::Entity, _, _>(
            ctx,
            page,
            filter,
            TotalCount::Repositories,
            Repository,
        )
        .await
    }

    /// One repository by its ID.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn repository(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The repository's global ID.")] id: ID,
    ) -> async_graphql::Result<Option<Repository>> {
        let database_id = decode_as(&id, NodeType::Repository, "id")?;
        match loaders(ctx)?
            .load_one(RepositoryId(database_id))
            .await
            .or_internal()?
        {
            Some(model) => Ok(Some(Repository(model))),
            None => Err(not_found(
                "id",
                format!("repository {database_id} does not exist"),
            )),
        }
    }
}

/// A repository to register.
#[derive(InputObject)]
pub struct CreateRepositoryInput {
    /// At most 120 characters.
    name: String,
    /// `https://`, `ssh://`, `git://` or scp-style `user@host:path`; at most 200 characters.
    git_url: String,
    /// A valid git branch name; `main` when omitted.
    default_branch: Option<String>,
}

/// Changes to a repository; fields left out keep their value.
#[derive(InputObject)]
pub struct UpdateRepositoryInput {
    /// The repository to change.
    id: ID,
    /// A new name (at most 120 characters).
    name: Option<String>,
    /// A new URL (same rules as when creating).
    git_url: Option<String>,
    /// A new branch to deploy from.
    default_branch: Option<String>,
}

/// The repository to delete, with its apps and their deployments.
#[derive(InputObject)]
pub struct DeleteRepositoryInput {
    /// The repository's ID.
    id: ID,
}

/// The repository registered.
#[derive(SimpleObject)]
pub struct CreateRepositoryPayload {
    /// The new repository.
    repository: Repository,
}

/// The repository changed.
#[derive(SimpleObject)]
pub struct UpdateRepositoryPayload {
    /// The repository as it is now.
    repository: Repository,
}

/// What was deleted.
#[derive(SimpleObject)]
pub struct DeleteRepositoryPayload {
    /// The ID the repository had.
    deleted_repository_id: ID,
    /// How many apps were deleted with it.
    deleted_app_count: i64,
    /// How many deployments were deleted with it.
    deleted_deployment_count: i64,
}

#[derive(Default)]
pub struct RepositoryMutation;

#[Object]
impl RepositoryMutation {
    /// Registers a Git repository.
    async fn create_repository(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: CreateRepositoryInput,
    ) -> async_graphql::Result<CreateRepositoryPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let api = api(ctx)?;
            let created = repositories::create(
                &api.db,
                audit,
                NewRepository {
                    name: input.name,
                    git_url: input.git_url,
                    default_branch: input.default_branch,
                },
                api.git_hosts,
            )
            .await
            .extend()?;
            Ok(CreateRepositoryPayload {
                repository: Repository(created),
            })
        })
        .await
    }

    /// Changes a repository's name, URL or default branch.
    async fn update_repository(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: UpdateRepositoryInput,
    ) -> async_graphql::Result<UpdateRepositoryPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = decode_as(&input.id, NodeType::Repository, "id")?;
            let api = api(ctx)?;
            let updated = repositories::update(
                &api.db,
                audit,
                id,
                RepositoryChanges {
                    name: input.name,
                    git_url: input.git_url,
                    default_branch: input.default_branch,
                },
                api.git_hosts,
            )
            .await
            .extend()?;
            Ok(UpdateRepositoryPayload {
                repository: Repository(updated),
            })
        })
        .await
    }

    /// Deletes a repository with its apps and their deployments. Refused (`CONFLICT`) while
    /// one of those deployments is running.
    async fn delete_repository(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: DeleteRepositoryInput,
    ) -> async_graphql::Result<DeleteRepositoryPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = decode_as(&input.id, NodeType::Repository, "id")?;
            let api = api(ctx)?;
            let deleted = repositories::delete(&api.db, audit, &api.events, &api.runners.logs, id)
                .await
                .extend()?;
            Ok(DeleteRepositoryPayload {
                deleted_repository_id: NodeType::Repository.id(deleted.id),
                deleted_app_count: deleted.apps as i64,
                deleted_deployment_count: deleted.deployments as i64,
            })
        })
        .await
    }
}
