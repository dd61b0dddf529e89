//! The runner protocol's mutations (`runner` tokens; admins may call them too):
//! `claimDeployment`, `heartbeatDeployment`, `reportDeployment`, `appendDeploymentLog`.
//! The rules are in [`crate::domain::runs`].

use async_graphql::{Context, Enum, ID, InputObject, Object, ResultExt, SimpleObject};
use chrono::{DateTime, Utc};

use super::app::{AccessMode, App};
use super::auth::{AuditObject, audited, audited_failures, principal};
use super::deployment::Deployment;
use super::ids::{NodeType, decode_as};
use super::{ApiContext, api};
use crate::domain::access::Capability;
use crate::domain::runs::{self, Outcome};

/// Everything a runner needs to build and start a claimed deployment.
#[derive(SimpleObject)]
pub struct RunnerJob {
    /// Where to clone from.
    repository_url: String,
    /// The branch to build.
    branch: String,
    /// The app's name (also its DNS label for `HOST` apps).
    app_name: String,
    access_mode: AccessMode,
    /// The host port to publish on, for `PORT` apps.
    port: Option<i32>,
    /// The server's log file for this deployment (append through `appendDeploymentLog`).
    logs_path: String,
    /// 1 on the first claim, more after lapsed leases.
    attempt: i32,
    /// Heartbeat before this, or the deployment is requeued.
    lease_expires_at: DateTime<Utc>,
}

#[derive(SimpleObject)]
pub struct ClaimDeploymentPayload {
    /// The claimed deployment, now `RUNNING`; null when nothing is queued.
    deployment: Option<Deployment>,
    job: Option<RunnerJob>,
}

impl AuditObject for ClaimDeploymentPayload {
    fn audit_object(&self) -> Option<ID> {
        self.deployment
            .as_ref()
            .map(|d| NodeType::Deployment.id(d.0.id))
    }
}

#[derive(InputObject)]
pub struct HeartbeatDeploymentInput {
    deployment_id: ID,
}

#[derive(SimpleObject)]
pub struct HeartbeatDeploymentPayload {
    deployment: Deployment,
    /// The renewed lease's end.
    lease_expires_at: DateTime<Utc>,
    /// An admin cancelled the deployment: stop, then report `CANCELLED`.
    cancel_requested: bool,
}

impl AuditObject for HeartbeatDeploymentPayload {
    fn audit_object(&self) -> Option<ID> {
        Some(NodeType::Deployment.id(self.deployment.0.id))
    }
}

/// How a deployment ended, as its runner reports it.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentOutcome {
    Success,
    Failed,
    Cancelled,
}

#[derive(InputObject)]
pub struct ReportDeploymentInput {
    deployment_id: ID,
    status: DeploymentOutcome,
    /// The image built: a Docker image reference (`keystone/web:12-abc1234`), at most 200
    /// characters.
    image_tag: Option<String>,
    /// What went wrong, for `FAILED` (at most 4,000 characters).
    error_summary: Option<String>,
}

#[derive(SimpleObject)]
pub struct ReportDeploymentPayload {
    deployment: Deployment,
    /// The app, whose status follows its latest deployment.
    app: App,
}

impl AuditObject for ReportDeploymentPayload {
    fn audit_object(&self) -> Option<ID> {
        Some(NodeType::Deployment.id(self.deployment.0.id))
    }
}

#[derive(InputObject)]
pub struct AppendDeploymentLogInput {
    deployment_id: ID,
    /// Log text (at most 64 KiB per call); lines end with `\n`.
    chunk: String,
}

#[derive(SimpleObject)]
pub struct AppendDeploymentLogPayload {
    deployment_id: ID,
    /// Bytes stored (control characters are stored escaped; 0 once the log is full).
    bytes_written: i32,
    /// The deployment's log reached its size limit (`--max-log-bytes`): a marker line was
    /// written and further appends are dropped, so the runner may stop sending.
    log_full: bool,
}

impl AuditObject for AppendDeploymentLogPayload {
    fn audit_object(&self) -> Option<ID> {
        Some(self.deployment_id.clone())
    }
}

#[derive(Default)]
pub struct RunnerMutation;

#[Object]
impl RunnerMutation {
    /// Hands the oldest queued deployment to the calling runner (exactly one runner gets
    /// each), with everything needed to run it, and starts its lease.
    async fn claim_deployment(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<ClaimDeploymentPayload> {
        audited(ctx, Capability::Run, async {
            let api: &ApiContext = api(ctx)?;
            let claim = runs::claim(&api.db, &api.events, &api.runners, principal(ctx)?)
                .await
                .extend()?;
            Ok(match claim {
                None => ClaimDeploymentPayload {
                    deployment: None,
                    job: None,
                },
                Some(claim) => ClaimDeploymentPayload {
                    job: Some(RunnerJob {
                        repository_url: claim.repository.git_url,
                        branch: claim.repository.default_branch,
                        app_name: claim.app.name,
                        access_mode: claim.app.access_mode.into(),
                        port: claim.deployment.assigned_port,
                        logs_path: claim.deployment.logs_path.clone(),
                        attempt: claim.attempt,
                        lease_expires_at: claim.lease_expires_at.as_utc(),
                    }),
                    deployment: Some(Deployment(claim.deployment)),
                },
            })
        })
        .await
    }

    /// Renews the lease on a deployment this runner holds; says whether it was cancelled.
    async fn heartbeat_deployment(
        &self,
        ctx: &Context<'_>,
        input: HeartbeatDeploymentInput,
    ) -> async_graphql::Result<HeartbeatDeploymentPayload> {
        audited_failures(ctx, Capability::Run, async {
            let id = decode_as(&input.deployment_id, NodeType::Deployment, "deploymentId")?;
            let api = api(ctx)?;
            let beat = runs::heartbeat(&api.db, &api.runners, principal(ctx)?, id)
                .await
                .extend()?;
            Ok(HeartbeatDeploymentPayload {
                deployment: Deployment(beat.deployment),
                lease_expires_at: beat.lease_expires_at.as_utc(),
                cancel_requested: beat.cancel_requested,
            })
        })
        .await
    }

    /// Ends a deployment this runner holds. Its app becomes `RUNNING` on success, `FAILED`
    /// on failure, and returns to its status before the deploy when cancelled.
    async fn report_deployment(
        &self,
        ctx: &Context<'_>,
        input: ReportDeploymentInput,
    ) -> async_graphql::Result<ReportDeploymentPayload> {
        audited(ctx, Capability::Run, async {
            let id = decode_as(&input.deployment_id, NodeType::Deployment, "deploymentId")?;
            let outcome = match input.status {
                DeploymentOutcome::Success => Outcome::Success,
                DeploymentOutcome::Failed => Outcome::Failed,
                DeploymentOutcome::Cancelled => Outcome::Cancelled,
            };
            let api = api(ctx)?;
            let (deployment, app) = runs::report(
                &api.db,
                &api.events,
                principal(ctx)?,
                id,
                outcome,
                input.image_tag,
                input.error_summary,
            )
            .await
            .extend()?;
            Ok(ReportDeploymentPayload {
                deployment: Deployment(deployment),
                app: app.into(),
            })
        })
        .await
    }

    /// Appends to the log of a deployment this runner holds (the server chose the file);
    /// `deploymentLog` subscribers receive the lines.
    async fn append_deployment_log(
        &self,
        ctx: &Context<'_>,
        input: AppendDeploymentLogInput,
    ) -> async_graphql::Result<AppendDeploymentLogPayload> {
        audited_failures(ctx, Capability::Run, async {
            let id = decode_as(&input.deployment_id, NodeType::Deployment, "deploymentId")?;
            let api = api(ctx)?;
            let appended = runs::append_log(
                &api.db,
                &api.events,
                &api.runners,
                principal(ctx)?,
                id,
                &input.chunk,
            )
            .await
            .extend()?;
            Ok(AppendDeploymentLogPayload {
                deployment_id: input.deployment_id,
                bytes_written: appended.text.len() as i32,
                log_full: appended.full,
            })
        })
        .await
    }
}
