//! `App`: something deployable, built from one repository; its queries and mutations,
//! including `deployApp`.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Object, ResultExt, SimpleObject};
use chrono::{DateTime, Utc};
use entity::app;
use entity::repository;

use super::auth::{Require, audited};
use super::connection::{
    Cursor, Order, OrderDirection, PageArgs, SortKey, node_fields, order, page_args,
};
use super::deployment::{Deployment, DeploymentFilterInput, DeploymentOrder, columns_for};
use super::error::{OrInternal, bad_input, not_found};
use super::ids::{NodeType, decode_as};
use super::loaders::{
    DeploymentCount, DeploymentsOfApp, EnvOfApp, PlacementOfApp, RepositoryId, ServedOfApp,
    SettingsOfApp, WebhookOfApp,
};
use super::repository::Repository;
use super::total_count::TotalCount;
use super::{api, loaders, nested_connection, page_complexity, root_connection};
use crate::domain::access::Capability;
use crate::domain::apps::{self, AppChanges, NewApp};
use crate::domain::env;
use crate::store::filters::{AppFilter, DeploymentFilter};
use crate::store::{self, AppKey};

/// How an app is reached.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::app::AccessMode")]
pub enum AccessMode {
    /// On an allocated host port (9000–9999): `http://<public host>:<port>`.
    Port,
    /// Behind a host name.
    Host,
}

/// An app's lifecycle state.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::app::AppStatus")]
pub enum AppStatus {
    /// Created, never deployed.
    Draft,
    /// A deployment is queued or running.
    Deploying,
    /// The latest deployment succeeded and the app runs.
    Running,
    /// The latest deployment failed.
    Failed,
    /// Stopped on request.
    Stopped,
}

/// Something deployable, built from one repository.
pub struct App {
    model: app::Model,
    /// The repository, when it was read together with the app (saves a statement).
    repository: Option<repository::Model>,
}

impl App {
    async fn placement(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<entity::app_placement::Model>> {
        loaders(ctx)?
            .load_one(PlacementOfApp(self.model.id))
            .await
            .or_internal()
    }
}

impl From<app::Model> for App {
    fn from(model: app::Model) -> Self {
        Self {
            model,
            repository: None,
        }
    }
}

/// Something deployable: an app built from one repository, deployed by runners.
#[Object]
impl App {
    /// Opaque global ID (see `node`).
    pub async fn id(&self) -> ID {
        NodeType::App.id(self.model.id)
    }

    /// The primary key in Keystone's database.
    async fn database_id(&self) -> i64 {
        self.model.id
    }

    /// Unique; a DNS label (it names containers, directories and host names).
    async fn name(&self) -> &str {
        &self.model.name
    }

    /// The repository the app is built from.
    async fn repository(&self, ctx: &Context<'_>) -> async_graphql::Result<Repository> {
        if let Some(repository) = &self.repository {
            return Ok(Repository(repository.clone()));
        }
        loaders(ctx)?
            .load_one(RepositoryId(self.model.repo_id))
            .await
            .or_internal()?
            .map(Repository)
            .ok_or_else(|| {
                super::error::internal(format!("app {} has no repository", self.model.id))
            })
    }

    /// How the app is reached: on a host port or behind a host name.
    async fn access_mode(&self) -> AccessMode {
        self.model.access_mode.into()
    }

    /// The host port the app listens on, for PORT apps that have one.
    async fn current_port(&self) -> Option<i32> {
        self.model.current_port
    }

    /// What the runner's health check requests before traffic moves to a new version (empty:
    /// no HTTP check).
    async fn health_check_path(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(loaders(ctx)?
            .load_one(SettingsOfApp(self.model.id))
            .await
            .or_internal()?
            .and_then(|settings| settings.health_check_path)
            .unwrap_or_else(|| apps::DEFAULT_HEALTH_CHECK_PATH.to_owned()))
    }

    /// The runner the app is placed on (the first that ran it; its later deployments go to
    /// the same runner). Admins only.
    async fn runner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(self.placement(ctx).await?.map(|placed| placed.runner_name))
    }

    /// Its push webhook, when it has one (admins only; see `rotateAppWebhook`).
    async fn webhook(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<AppWebhook>> {
        Ok(loaders(ctx)?
            .load_one(WebhookOfApp(self.model.id))
            .await
            .or_internal()?
            .map(|webhook| AppWebhook {
                path: webhook_path(&self.model.name),
                created_at: webhook.created_at.as_utc(),
                pending_commit: webhook.pending_commit,
            }))
    }

    /// Its config vars: names and when each was set (values are write-only).
    async fn env(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AppEnvVar>> {
        Ok(loaders(ctx)?
            .load_one(EnvOfApp(self.model.id))
            .await
            .or_internal()?
            .unwrap_or_default()
            .into_iter()
            .map(|(name, updated_at)| AppEnvVar {
                name,
                updated_at: updated_at.as_utc(),
            })
            .collect())
    }

    /// Where the app is in its lifecycle.
    async fn status(&self) -> AppStatus {
        self.model.status.into()
    }

    /// Where the app is reached: `http://<public host>:<port>` for PORT apps with a port,
    /// `http://<name>.<apps domain>` for HOST apps when an apps domain is configured; `null`
    /// until one of its deployments has become healthy (nothing answers there before).
    async fn url(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        let config = api(ctx)?;
        let served = match self.model.status {
            app::AppStatus::Running | app::AppStatus::Stopped => true,
            app::AppStatus::Draft => false,
            app::AppStatus::Deploying | app::AppStatus::Failed => loaders(ctx)?
                .load_one(ServedOfApp(self.model.id))
                .await
                .or_internal()?
                .unwrap_or(false),
        };
        if !served {
            return Ok(None);
        }
        Ok(
            match (
                self.model.access_mode,
                self.model.current_port,
                &config.apps_domain,
            ) {
                (app::AccessMode::Port, Some(port), _) => {
                    // The host its runner advertises, else the server's.
                    let advertised = self.placement(ctx).await?.and_then(|p| p.public_host);
                    let host = advertised.as_deref().unwrap_or(&config.public_host);
                    Some(format!("http://{host}:{port}"))
                }
                (app::AccessMode::Host, _, Some(domain)) => {
                    Some(format!("http://{}.{domain}", self.model.name))
                }
                _ => None,
            },
        )
    }

    /// The app's deployments, newest first unless `orderBy` says otherwise.
    #[graphql(complexity = "page_complexity(first, last, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn deployments(
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
            DeploymentFilterInput,
        >,
        #[graphql(
            desc = "The order of the items; the ID breaks ties. Cursors only work with the order they came from."
        )]
        order_by: Option<DeploymentOrder>,
    ) -> async_graphql::Result<Connection<Cursor, Deployment, TotalCount>> {
        let page = page_args(
            first,
            after,
            last,
            before,
            order_by.unwrap_or_default().into(),
        )?;
        let filter = filter.unwrap_or_default().into_filter(None);
        let key = DeploymentsOfApp {
            app_id: self.model.id,
            filter: filter.clone(),
            page: page.clone(),
            columns: columns_for(&node_fields(ctx)),
        };
        let count = TotalCount::DeploymentsOfApp(DeploymentCount {
            app_id: self.model.id,
            filter,
        });
        nested_connection::<_, entity::deployment::Entity, _>(
            ctx,
            key,
            &page,
            count,
            Deployment::from,
        )
        .await
    }

    /// The most recently created deployment, if any.
    async fn latest_deployment(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<Deployment>> {
        let key = DeploymentsOfApp {
            app_id: self.model.id,
            filter: DeploymentFilter::default(),
            page: PageArgs::first(1, order(SortKey::CreatedAt, OrderDirection::Desc)),
            columns: columns_for(&ctx.field().selection_set().collect::<Vec<_>>()),
        };
        let page = loaders(ctx)?.load_one(key).await.or_internal()?;
        Ok(page
            .and_then(|page| page.rows.first().cloned())
            .map(Deployment::from))
    }
}

/// What apps can be ordered by.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AppOrderField {
    #[default]
    /// Creation order.
    Id,
    /// Name, in byte order.
    Name,
}

/// How to order apps.
#[derive(InputObject, Clone, Copy, Debug, Default)]
pub struct AppOrder {
    /// What to order by.
    field: AppOrderField,
    #[graphql(default)]
    /// Ascending (the default) or descending.
    direction: OrderDirection,
}

impl From<AppOrder> for Order {
    fn from(order: AppOrder) -> Self {
        let key = match order.field {
            AppOrderField::Id => SortKey::Id,
            AppOrderField::Name => SortKey::Name,
        };
        super::connection::order(key, order.direction)
    }
}

/// Which apps to list.
#[derive(InputObject, Default)]
#[graphql(name = "AppFilter")]
pub struct AppFilterInput {
    /// Only apps in one of these states.
    status: Option<Vec<AppStatus>>,
    /// Only apps reached this way.
    access_mode: Option<AccessMode>,
}

impl AppFilterInput {
    pub fn into_filter(self, repo_id: Option<i64>) -> AppFilter {
        AppFilter {
            statuses: self
                .status
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
            access_mode: self.access_mode.map(Into::into),
            repo_id,
        }
    }
}

#[derive(Default)]
pub struct AppQuery;

#[Object]
impl AppQuery {
    /// All apps, paginated (default 20, at most 100 per page).
    #[graphql(
        guard = "Require(Capability::Read)",
        complexity = "page_complexity(first, last, child_complexity)"
    )]
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
        #[graphql(desc = "Only the apps of this repository.")] repository_id: Option<ID>,
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
        let repo_id = repository_id
            .map(|id| decode_as(&id, NodeType::Repository, "repositoryId"))
            .transpose()?;
        let filter = filter.unwrap_or_default().into_filter(repo_id);
        root_connection::<app::Entity, _, _>(ctx, page, filter, TotalCount::Apps, App::from).await
    }

    /// One app, by ID or by name (exactly one of them).
    #[graphql(guard = "Require(Capability::Read)")]
    async fn app(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The app's global ID.")] id: Option<ID>,
        #[graphql(desc = "The app's name.")] name: Option<String>,
    ) -> async_graphql::Result<Option<App>> {
        let (key, field, missing) = match (&id, &name) {
            (Some(id), None) => {
                let database_id = decode_as(id, NodeType::App, "id")?;
                (
                    AppKey::Id(database_id),
                    "id",
                    format!("app {database_id} does not exist"),
                )
            }
            (None, Some(name)) => (
                AppKey::Name(name),
                "name",
                format!("no app is named {name:?}"),
            ),
            _ => return Err(bad_input("id", "pass exactly one of id and name")),
        };
        // When the repository is selected, it is read in the same statement.
        let with_repository = ctx.look_ahead().field("repository").exists();
        let found = store::app(&api(ctx)?.db, key, with_repository)
            .await
            .or_internal()?
            .map(|(model, repository)| App { model, repository });
        found.map(Some).ok_or_else(|| not_found(field, missing))
    }
}

/// A new app.
#[derive(InputObject)]
pub struct CreateAppInput {
    /// Unique; a DNS label: 1–63 lowercase letters, digits and hyphens.
    name: String,
    /// The repository to build it from.
    repository_id: ID,
    /// `PORT` when omitted.
    access_mode: Option<AccessMode>,
    /// What the runner's health check requests before traffic moves to a new version (`/`
    /// when omitted; empty: no HTTP check, only "still running after 10 s and accepting
    /// TCP").
    health_check_path: Option<String>,
}

/// Changes to an app; fields left out keep their value.
#[derive(InputObject)]
pub struct UpdateAppInput {
    /// The app to change.
    app_id: Option<ID>,
    /// The app to change (the old name of `appId`).
    #[graphql(
        deprecation = "Use `appId` (the name every app mutation takes); `id` goes in the next release."
    )]
    id: Option<ID>,
    /// A new name (a DNS label, unique).
    name: Option<String>,
    /// Build it from another repository from the next deployment on.
    repository_id: Option<ID>,
    /// Switching to `HOST` releases the app's port.
    access_mode: Option<AccessMode>,
    /// Takes effect at the next deployment.
    health_check_path: Option<String>,
}

/// The app to delete, with its deployments and logs.
#[derive(InputObject)]
pub struct DeleteAppInput {
    /// The app's ID.
    app_id: Option<ID>,
    /// The app's ID (the old name of `appId`).
    #[graphql(
        deprecation = "Use `appId` (the name every app mutation takes); `id` goes in the next release."
    )]
    id: Option<ID>,
}

/// The app a mutation names: `appId`, or `id`, its deprecated name (not both).
fn app_named(app_id: Option<&ID>, id: Option<&ID>) -> async_graphql::Result<i64> {
    match (app_id, id) {
        (Some(app_id), None) => decode_as(app_id, NodeType::App, "appId"),
        (None, Some(id)) => decode_as(id, NodeType::App, "id"),
        (Some(_), Some(_)) => Err(bad_input(
            "appId",
            "give `appId` only (`id` is its deprecated name)",
        )),
        (None, None) => Err(bad_input("appId", "`appId` is required")),
    }
}

/// The app to deploy.
#[derive(InputObject)]
pub struct DeployAppInput {
    /// The app's ID.
    app_id: ID,
    /// The commit to deploy (40 hex digits); the head of the branch when not given.
    commit_sha: Option<String>,
    /// The branch to deploy; the repository's default branch when not given.
    branch: Option<String>,
}

/// The app to stop.
#[derive(InputObject)]
pub struct StopAppInput {
    /// The app's ID.
    app_id: Option<ID>,
    /// The app's ID (the old name of `appId`).
    #[graphql(
        deprecation = "Use `appId` (the name every app mutation takes); `id` goes in the next release."
    )]
    id: Option<ID>,
}

/// The stopped app.
#[derive(SimpleObject)]
pub struct StopAppPayload {
    /// The app, now `STOPPED`.
    app: App,
}

/// The app created.
#[derive(SimpleObject)]
pub struct CreateAppPayload {
    /// The app, `DRAFT` until its first deployment.
    app: App,
}

/// The app changed.
#[derive(SimpleObject)]
pub struct UpdateAppPayload {
    /// The app as it is now.
    app: App,
}

/// What was deleted.
#[derive(SimpleObject)]
pub struct DeleteAppPayload {
    /// The ID the app had.
    deleted_app_id: ID,
}

/// Where an app's push webhook is posted, relative to the server's URL.
fn webhook_path(app: &str) -> String {
    format!("/hooks/git/{app}")
}

/// An app's push webhook: a Git host that posts push events there, signed with its secret,
/// deploys each push to the app's branch.
#[derive(SimpleObject)]
pub struct AppWebhook {
    /// Where to post, relative to the server's URL: `/hooks/git/<app>`.
    path: String,
    /// When its secret was made.
    created_at: DateTime<Utc>,
    /// A pushed commit waiting for the running deployment to end.
    pending_commit: Option<String>,
}

/// The app whose webhook secret to make (or replace).
#[derive(InputObject)]
pub struct RotateAppWebhookInput {
    /// The app's ID.
    app_id: ID,
}

/// The webhook and its new secret, shown this once.
#[derive(SimpleObject)]
pub struct RotateAppWebhookPayload {
    /// The app's ID.
    app_id: ID,
    /// Where to post, relative to the server's URL: `/hooks/git/<app>`.
    path: String,
    /// The secret Git hosts sign with (GitHub, Gitea, Forgejo and the generic form: the
    /// HMAC-SHA256 key; GitLab: the secret token). Shown this once; the old one stops
    /// working at once.
    secret: String,
}

/// A config var to set on an app (write-only: its value is never returned).
#[derive(InputObject)]
pub struct SetAppEnvInput {
    /// The app's ID.
    app_id: ID,
    /// A POSIX name (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters; not `PORT`).
    name: String,
    /// At most 32 KiB.
    value: String,
    /// Restart the app with the new value when it is running: a deployment that runs its
    /// current release again, switched without downtime like a deploy (default). `false`:
    /// the value reaches the app at its next deployment.
    #[graphql(default = true)]
    restart: bool,
}

/// A config var, as the API shows it: never its value.
#[derive(SimpleObject)]
pub struct AppEnvVar {
    /// The variable's name.
    name: String,
    /// When it was last set.
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// The config var as set: its name and when, never its value.
#[derive(SimpleObject)]
pub struct SetAppEnvPayload {
    /// The app's ID.
    app_id: ID,
    /// The variable as set (its value is never shown).
    variable: AppEnvVar,
    /// The restart queued to apply it, when the app was running and `restart` was not
    /// `false`.
    restart: Option<Deployment>,
}

/// A config var to remove from an app.
#[derive(InputObject)]
pub struct UnsetAppEnvInput {
    /// The app's ID.
    app_id: ID,
    /// The variable's name.
    name: String,
    /// Restart the app without the variable when it is running (default); `false`: from its
    /// next deployment on.
    #[graphql(default = true)]
    restart: bool,
}

/// Whether the config var existed before it was removed.
#[derive(SimpleObject)]
pub struct UnsetAppEnvPayload {
    /// The app's ID.
    app_id: ID,
    /// Whether the variable was set.
    removed: bool,
    /// The restart queued to apply it, when the variable was set, the app was running and
    /// `restart` was not `false`.
    restart: Option<Deployment>,
}

/// A config var's name and value (write-only).
#[derive(InputObject)]
pub struct AppEnvVarInput {
    /// A POSIX name (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters; not `PORT`).
    name: String,
    /// At most 32 KiB.
    value: String,
}

/// Several config var changes to make at once.
#[derive(InputObject)]
pub struct ChangeAppEnvInput {
    /// The app's ID.
    app_id: ID,
    /// The variables to set (each name once).
    #[graphql(default)]
    set: Vec<AppEnvVarInput>,
    /// The variables to remove (names not set are ignored).
    #[graphql(default)]
    unset: Vec<String>,
    /// Restart the app once with all the changes when it is running and something changed
    /// (default); `false`: they reach the app at its next deployment.
    #[graphql(default = true)]
    restart: bool,
}

/// What a config change did (never a value).
#[derive(SimpleObject)]
pub struct ChangeAppEnvPayload {
    /// The app's ID.
    app_id: ID,
    /// The variables set.
    set: Vec<AppEnvVar>,
    /// The names removed (those that were set).
    removed: Vec<String>,
    /// The one restart queued to apply the changes, when the app was running, something
    /// changed and `restart` was not `false`.
    restart: Option<Deployment>,
}

/// Which app to roll back, and to which of its successful deployments.
#[derive(InputObject)]
pub struct RollbackAppInput {
    /// The app's ID.
    app_id: ID,
    /// An earlier successful deployment of the app.
    to_deployment_id: ID,
}

/// The deployment queued, and its app.
#[derive(SimpleObject)]
pub struct DeployAppPayload {
    /// The new, queued deployment.
    deployment: Deployment,
    /// The app, now `DEPLOYING`.
    app: App,
}

#[derive(Default)]
pub struct AppMutation;

#[Object]
impl AppMutation {
    /// Defines an app built from a repository.
    async fn create_app(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: CreateAppInput,
    ) -> async_graphql::Result<CreateAppPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let repo_id = decode_as(&input.repository_id, NodeType::Repository, "repositoryId")?;
            let created = apps::create(
                &api(ctx)?.db,
                audit,
                NewApp {
                    name: input.name,
                    repo_id,
                    access_mode: input.access_mode.map(Into::into),
                    health_check_path: input.health_check_path,
                },
            )
            .await
            .extend()?;
            Ok(CreateAppPayload {
                app: created.into(),
            })
        })
        .await
    }

    /// Renames an app, moves it to another repository or changes its access mode.
    async fn update_app(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: UpdateAppInput,
    ) -> async_graphql::Result<UpdateAppPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = app_named(input.app_id.as_ref(), input.id.as_ref())?;
            let repo_id = input
                .repository_id
                .map(|id| decode_as(&id, NodeType::Repository, "repositoryId"))
                .transpose()?;
            let api = api(ctx)?;
            let updated = apps::update(
                &api.db,
                audit,
                &api.events,
                id,
                AppChanges {
                    name: input.name,
                    repo_id,
                    access_mode: input.access_mode.map(Into::into),
                    health_check_path: input.health_check_path,
                },
            )
            .await
            .extend()?;
            Ok(UpdateAppPayload {
                app: updated.into(),
            })
        })
        .await
    }

    /// Deletes an app and its deployments. Refused (`CONFLICT`) while one is running.
    async fn delete_app(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: DeleteAppInput,
    ) -> async_graphql::Result<DeleteAppPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = app_named(input.app_id.as_ref(), input.id.as_ref())?;
            let api = api(ctx)?;
            let deleted = apps::delete(&api.db, audit, &api.events, &api.runners.logs, id)
                .await
                .extend()?;
            Ok(DeleteAppPayload {
                deleted_app_id: NodeType::App.id(deleted),
            })
        })
        .await
    }

    /// Queues a deployment of the app and marks the app `DEPLOYING`: the head of its
    /// repository's branch, or the `commitSha` (and `branch`) given.
    async fn deploy_app(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: DeployAppInput,
    ) -> async_graphql::Result<DeployAppPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = decode_as(&input.app_id, NodeType::App, "appId")?;
            let api = api(ctx)?;
            let target = apps::Target {
                rollback_of: None,
                commit: input.commit_sha,
                branch: input.branch,
            };
            let (deployment, app) =
                apps::deploy(&api.db, audit, &api.events, api.ports, id, target)
                    .await
                    .extend()?;
            Ok(DeployAppPayload {
                deployment: Deployment::from(deployment),
                app: app.into(),
            })
        })
        .await
    }

    /// Makes the app's push webhook, or replaces its secret (admin only): returns where Git
    /// hosts post push events and the secret they sign them with, shown this once.
    async fn rotate_app_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: RotateAppWebhookInput,
    ) -> async_graphql::Result<RotateAppWebhookPayload> {
        audited(ctx, Capability::Administer, async |audit| {
            let id = decode_as(&input.app_id, NodeType::App, "appId")?;
            let api = api(ctx)?;
            let secret = crate::domain::webhooks::rotate(&api.db, audit, &api.secrets, id)
                .await
                .extend()?;
            let name = apps::name_of(&api.db, id).await.extend()?;
            Ok(RotateAppWebhookPayload {
                app_id: input.app_id,
                path: webhook_path(&name),
                secret,
            })
        })
        .await
    }

    /// Sets a config var of the app (admin only). The value is write-only: it is stored
    /// sealed, never returned, redacted in the audit trail, and reaches the app's build,
    /// release and web processes: at once when the app is running (it restarts, without
    /// downtime, unless `restart: false`), else from its next deployment on.
    async fn set_app_env(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: SetAppEnvInput,
    ) -> async_graphql::Result<SetAppEnvPayload> {
        audited(ctx, Capability::Administer, async |audit| {
            let id = decode_as(&input.app_id, NodeType::App, "appId")?;
            let api = api(ctx)?;
            let restart = api.restart(input.restart);
            let (updated_at, restart) = env::set(
                &api.db,
                audit,
                &api.secrets,
                id,
                &input.name,
                &input.value,
                restart,
            )
            .await
            .extend()?;
            Ok(SetAppEnvPayload {
                app_id: input.app_id,
                variable: AppEnvVar {
                    name: input.name,
                    updated_at: updated_at.as_utc(),
                },
                restart: restart.map(Deployment::from),
            })
        })
        .await
    }

    /// Sets and removes several config vars of the app at once (admin only): all of them or
    /// none; a running app restarts once with all the changes (unless `restart: false`).
    async fn change_app_env(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: ChangeAppEnvInput,
    ) -> async_graphql::Result<ChangeAppEnvPayload> {
        audited(ctx, Capability::Administer, async |audit| {
            let id = decode_as(&input.app_id, NodeType::App, "appId")?;
            let api = api(ctx)?;
            let restart = api.restart(input.restart);
            let set: Vec<(String, String)> =
                input.set.into_iter().map(|v| (v.name, v.value)).collect();
            let changed = env::change(
                &api.db,
                audit,
                &api.secrets,
                id,
                &set,
                &input.unset,
                restart,
            )
            .await
            .extend()?;
            Ok(ChangeAppEnvPayload {
                app_id: input.app_id,
                set: set
                    .into_iter()
                    .map(|(name, _)| AppEnvVar {
                        name,
                        updated_at: changed.at.as_utc(),
                    })
                    .collect(),
                removed: changed.removed,
                restart: changed.restart.map(Deployment::from),
            })
        })
        .await
    }

    /// Removes a config var of the app (admin only); a running app restarts without it
    /// (unless `restart: false`).
    async fn unset_app_env(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: UnsetAppEnvInput,
    ) -> async_graphql::Result<UnsetAppEnvPayload> {
        audited(ctx, Capability::Administer, async |audit| {
            let id = decode_as(&input.app_id, NodeType::App, "appId")?;
            let api = api(ctx)?;
            let restart = api.restart(input.restart);
            let (removed, restart) =
                env::unset(&api.db, audit, &api.secrets, id, &input.name, restart)
                    .await
                    .extend()?;
            Ok(UnsetAppEnvPayload {
                app_id: input.app_id,
                removed,
                restart: restart.map(Deployment::from),
            })
        })
        .await
    }

    /// Rolls an app back to an earlier successful deployment: queues a new deployment that
    /// reuses that deployment's release (or image) when its runner still has it, and otherwise
    /// rebuilds its recorded commit. It goes through the same health check and switch.
    async fn rollback_app(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: RollbackAppInput,
    ) -> async_graphql::Result<DeployAppPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = decode_as(&input.app_id, NodeType::App, "appId")?;
            let source = decode_as(
                &input.to_deployment_id,
                NodeType::Deployment,
                "toDeploymentId",
            )?;
            let api = api(ctx)?;
            let (deployment, app) = apps::deploy(
                &api.db,
                audit,
                &api.events,
                api.ports,
                id,
                apps::Target::rollback(source),
            )
            .await
            .extend()?;
            Ok(DeployAppPayload {
                deployment: Deployment::from(deployment),
                app: app.into(),
            })
        })
        .await
    }

    /// Stops a running app (`RUNNING → STOPPED`); it keeps its port. Any other state is a
    /// `CONFLICT` naming it.
    async fn stop_app(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: StopAppInput,
    ) -> async_graphql::Result<StopAppPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = app_named(input.app_id.as_ref(), input.id.as_ref())?;
            let api = api(ctx)?;
            let app = apps::stop(&api.db, audit, &api.events, id).await.extend()?;
            Ok(StopAppPayload { app: app.into() })
        })
        .await
    }
}
