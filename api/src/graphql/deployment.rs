//! `Deployment`: one attempt to build and run an app; its queries.

use std::collections::HashMap;

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Object, ResultExt, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{app, deployment};

use super::app::App;
use super::auth::Require;
use super::auth::audited;
use super::connection::{
    Cursor, Order, OrderDirection, PageRows, SortKey, node_fields, page_args, to_connection,
};
use super::error::{Code, OrInternal, bad_input, coded, internal, not_found};
use super::guardrails::ResponseBudget;
use super::ids::{NodeType, decode_as};
use super::loaders::{AppId, DeploymentId, RunOfDeployment};
use super::total_count::TotalCount;
use super::{api, loaders, page_complexity, root_connection};
use crate::store::filters::DeploymentFilter;
use crate::store::nested::Columns;
use crate::store::page::load_page_with;

/// The most log bytes one `logs` field reads (finding where to start included).
const MAX_LOG_BYTES_PER_FIELD: usize = 1 << 20;
/// What a `logs` field costs towards the query's complexity before its lines: one per KiB
/// it may read.
const LOG_FIELD_COST: usize = MAX_LOG_BYTES_PER_FIELD / 1024;
use crate::domain::access::Capability;
use crate::domain::runs;

/// A deployment's lifecycle state.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::deployment::DeploymentStatus")]
pub enum DeploymentStatus {
    /// Waiting for a runner.
    Queued,
    /// A runner is building or starting it.
    Running,
    /// The app was built and started.
    Success,
    /// Building or starting failed; see `errorSummary`.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

/// One attempt to build and run an app.
pub struct Deployment {
    model: deployment::Model,
    /// Its app, when it was read together with the deployment (saves a statement).
    app: Option<app::Model>,
}

impl From<deployment::Model> for Deployment {
    fn from(model: deployment::Model) -> Self {
        Self { model, app: None }
    }
}

impl Deployment {
    async fn run(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<entity::deployment_run::Model>> {
        loaders(ctx)?
            .load_one(RunOfDeployment(self.model.id))
            .await
            .or_internal()
    }
}

/// A running deployment's stage, as its runner reports it.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::deployment_run::Stage")]
pub enum DeploymentStage {
    /// Fetching the repository.
    Clone,
    /// Building (`build:` in the Procfile, or `docker build`).
    Build,
    /// The release phase (`release:`), before traffic moves.
    Release,
    /// Starting the new instance.
    Start,
    /// Waiting for the new instance to pass its health check.
    HealthCheck,
    /// Moving traffic to the new instance and draining the old one.
    Switch,
}
/// One attempt to build and run an app: its status, image, port, timing, error and log.
#[Object]
impl Deployment {
    /// Opaque global ID (see `node`).
    pub async fn id(&self) -> ID {
        NodeType::Deployment.id(self.model.id)
    }

    /// The primary key in Keystone's database.
    async fn database_id(&self) -> i64 {
        self.model.id
    }

    /// The app being deployed.
    async fn app(&self, ctx: &Context<'_>) -> async_graphql::Result<App> {
        if let Some(app) = &self.app {
            return Ok(App::from(app.clone()));
        }
        loaders(ctx)?
            .load_one(AppId(self.model.app_id))
            .await
            .or_internal()?
            .map(App::from)
            .ok_or_else(|| internal(format!("deployment {} has no app", self.model.id)))
    }

    /// Where the deployment is: queued, running, or how it ended.
    async fn status(&self) -> DeploymentStatus {
        self.model.status.into()
    }

    /// The image built for this deployment; empty until built.
    async fn image_tag(&self) -> &str {
        &self.model.image_tag
    }

    /// The host port the deployment was started on, for PORT apps.
    async fn assigned_port(&self) -> Option<i32> {
        self.model.assigned_port
    }

    /// When it was queued.
    async fn created_at(&self) -> DateTime<Utc> {
        self.model.created_at.as_utc()
    }

    /// When a runner started it.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.model.started_at.map(|t| t.as_utc())
    }

    /// When it reached a final state.
    async fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.model.ended_at.map(|t| t.as_utc())
    }

    /// Seconds from `startedAt` to `endedAt`, or to now while it runs; null before it started.
    async fn duration(&self) -> Option<f64> {
        let started = self.model.started_at?.as_utc();
        let ended = self.model.ended_at.map_or_else(Utc::now, |t| t.as_utc());
        Some((ended - started).num_microseconds()? as f64 / 1e6)
    }

    /// The commit the runner built (40 hex digits), once it has cloned.
    async fn commit_sha(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(self.run(ctx).await?.and_then(|run| run.commit_sha))
    }

    /// Where a running deployment is (clone, build, release, start, health check, switch);
    /// the last stage reached once it has ended; null before a runner reported one.
    async fn stage(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<DeploymentStage>> {
        Ok(self
            .run(ctx)
            .await?
            .and_then(|run| run.stage)
            .map(Into::into))
    }

    /// For a rollback: the earlier deployment whose release it reuses.
    async fn rollback_of(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ID>> {
        Ok(self
            .run(ctx)
            .await?
            .and_then(|run| run.source_deployment_id)
            .map(|id| NodeType::Deployment.id(id)))
    }

    /// What went wrong, for failed deployments; empty otherwise.
    async fn error_summary(&self) -> &str {
        &self.model.error_summary
    }

    /// Where the runner's log is stored on the server; empty until it has one.
    async fn logs_path(&self) -> &str {
        &self.model.logs_path
    }

    /// The last `tail` lines of the deployment's log (default 100, at most 10,000), from at
    /// most its last 1 MiB; one response reads at most 4 MiB of logs in all
    /// (`RESPONSE_TOO_LARGE` past that). Towards the query's complexity, the field counts
    /// 1,024 (a KiB of what it may read) and each line 1.
    ///
    /// With `after: N`, the lines after line N instead (numbered from 1), at most `tail` of
    /// them: a client that has read N lines resumes exactly there, without gap or duplicate.
    #[graphql(complexity = "LOG_FIELD_COST + tail.max(0) as usize")]
    async fn logs(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            default = 100,
            desc = "How many lines at most (0–10,000; default 100)."
        )]
        tail: i32,
        #[graphql(desc = "Only the lines after this line number (from 1).")] after: Option<i32>,
    ) -> async_graphql::Result<Vec<String>> {
        let tail = usize::try_from(tail)
            .ok()
            .filter(|n| *n <= runs::MAX_TAIL)
            .ok_or_else(|| {
                bad_input(
                    "tail",
                    format!("tail must be between 0 and {}", runs::MAX_TAIL),
                )
            })?;
        let too_large = || {
            coded(
                Code::ResponseTooLarge,
                format!(
                    "this response carries {} bytes of log lines already; ask for fewer logs, \
                     or for them in several requests",
                    ResponseBudget::LOG_BYTES
                ),
            )
        };
        let budget = ctx
            .data::<ResponseBudget>()
            .map_err(|e| internal(e.message))?;
        let mut remaining = budget.log_bytes.lock().await;
        if *remaining == 0 {
            return Err(too_large());
        }
        let allowed = (*remaining).min(MAX_LOG_BYTES_PER_FIELD);
        let logs = &api(ctx)?.runners.logs;
        let read = match after {
            None => logs.tail(&self.model.logs_path, tail, allowed).await,
            Some(after) => {
                let after = usize::try_from(after)
                    .map_err(|_| bad_input("after", "after must be 0 or more"))?;
                logs.after(&self.model.logs_path, after, tail, allowed)
                    .await
            }
        }
        .extend()?;
        if read.cut && allowed < MAX_LOG_BYTES_PER_FIELD {
            // The response's budget, not this field's, ran out.
            *remaining = 0;
            return Err(too_large());
        }
        *remaining = remaining.saturating_sub(read.read);
        Ok(read.lines)
    }
}

/// The columns that a selection of `Deployment` fields reads, beyond those every read
/// includes (ids, status, creation time): nested pages leave the others out.
pub fn columns_for(fields: &[async_graphql::SelectionField<'_>]) -> Columns {
    use deployment::Column as C;
    Columns::of(
        fields
            .iter()
            .flat_map(|field| match field.name() {
                "imageTag" => &[C::ImageTag][..],
                "assignedPort" => &[C::AssignedPort],
                "startedAt" => &[C::StartedAt],
                "endedAt" => &[C::EndedAt],
                "duration" => &[C::StartedAt, C::EndedAt],
                "errorSummary" => &[C::ErrorSummary],
                "logsPath" | "logs" => &[C::LogsPath],
                _ => &[],
            })
            .copied(),
    )
}

/// What deployments can be ordered by.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeploymentOrderField {
    #[default]
    /// When they were queued (the default).
    CreatedAt,
    /// Creation order by ID.
    Id,
}

/// How to order deployments. Default: newest first.
#[derive(InputObject, Clone, Copy, Debug)]
pub struct DeploymentOrder {
    /// What to order by.
    field: DeploymentOrderField,
    #[graphql(default)]
    /// Ascending or descending (the default when `orderBy` is omitted).
    direction: OrderDirection,
}

impl Default for DeploymentOrder {
    fn default() -> Self {
        Self {
            field: DeploymentOrderField::CreatedAt,
            direction: OrderDirection::Desc,
        }
    }
}

impl From<DeploymentOrder> for Order {
    fn from(order: DeploymentOrder) -> Self {
        let key = match order.field {
            DeploymentOrderField::CreatedAt => SortKey::CreatedAt,
            DeploymentOrderField::Id => SortKey::Id,
        };
        super::connection::order(key, order.direction)
    }
}

/// Which deployments to list.
#[derive(InputObject, Default)]
#[graphql(name = "DeploymentFilter")]
pub struct DeploymentFilterInput {
    /// Only deployments in one of these states.
    status: Option<Vec<DeploymentStatus>>,
    /// Only deployments created at or after this instant.
    created_after: Option<DateTime<Utc>>,
    /// Only deployments created before this instant.
    created_before: Option<DateTime<Utc>>,
}

impl DeploymentFilterInput {
    pub fn into_filter(self, app_id: Option<i64>) -> DeploymentFilter {
        DeploymentFilter {
            statuses: self
                .status
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
            created_after: self.created_after.map(Into::into),
            created_before: self.created_before.map(Into::into),
            app_id,
        }
    }
}

#[derive(Default)]
pub struct DeploymentQuery;

#[Object]
impl DeploymentQuery {
    /// All deployments, newest first unless `orderBy` says otherwise; paginated (default 20,
    /// at most 100 per page).
    #[graphql(
        guard = "Require(Capability::Read)",
        complexity = "page_complexity(first, last, child_complexity)"
    )]
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
        #[graphql(desc = "Only the deployments of this app.")] app_id: Option<ID>,
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
        let app_id = app_id
            .map(|id| decode_as(&id, NodeType::App, "appId"))
            .transpose()?;
        let filter = filter.unwrap_or_default().into_filter(app_id);
        if !node_fields(ctx).iter().any(|field| field.name() == "app") {
            return root_connection::<deployment::Entity, _, _>(
                ctx,
                page,
                filter,
                TotalCount::Deployments,
                Deployment::from,
            )
            .await;
        }
        // The nodes' apps are selected: read them in the page's statement.
        let PageRows { rows, has_more } =
            load_page_with::<deployment::Entity, app::Entity>(&api(ctx)?.db, &filter, &page)
                .await
                .or_internal()?;
        let (rows, apps): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
        let apps: HashMap<i64, app::Model> =
            apps.into_iter().flatten().map(|a| (a.id, a)).collect();
        Ok(to_connection::<deployment::Entity, _, _>(
            PageRows { rows, has_more },
            &page,
            TotalCount::Deployments(filter),
            |model| Deployment {
                app: apps.get(&model.app_id).cloned(),
                model,
            },
        ))
    }

    /// One deployment by its ID.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment's global ID.")] id: ID,
    ) -> async_graphql::Result<Option<Deployment>> {
        let database_id = decode_as(&id, NodeType::Deployment, "id")?;
        match loaders(ctx)?
            .load_one(DeploymentId(database_id))
            .await
            .or_internal()?
        {
            Some(model) => Ok(Some(Deployment::from(model))),
            None => Err(not_found(
                "id",
                format!("deployment {database_id} does not exist"),
            )),
        }
    }
}

/// The deployment to cancel.
#[derive(InputObject)]
pub struct CancelDeploymentInput {
    /// The deployment's ID.
    id: ID,
}

/// The deployment, cancelled or being stopped.
#[derive(SimpleObject)]
pub struct CancelDeploymentPayload {
    /// `CANCELLED` when it was queued; still `RUNNING` (until its runner stops) otherwise.
    deployment: Deployment,
    /// Whether it is cancelled already (false: its runner was asked to stop).
    cancelled: bool,
}

#[derive(Default)]
pub struct DeploymentMutation;

#[Object]
impl DeploymentMutation {
    /// Cancels a deployment: a queued one at once (its app returns to its status before the
    /// deploy); a running one is flagged, and its runner learns it from its next heartbeat
    /// and reports `CANCELLED`. A finished deployment is a `CONFLICT`.
    async fn cancel_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: CancelDeploymentInput,
    ) -> async_graphql::Result<CancelDeploymentPayload> {
        audited(ctx, Capability::Write, async |audit| {
            let id = decode_as(&input.id, NodeType::Deployment, "id")?;
            let api = api(ctx)?;
            let (deployment, cancelled) = runs::cancel(&api.db, audit, &api.events, id)
                .await
                .extend()?;
            Ok(CancelDeploymentPayload {
                deployment: Deployment::from(deployment),
                cancelled,
            })
        })
        .await
    }
}
