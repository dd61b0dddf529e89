//! Authorization in the schema: the [`Require`] guard on every query and subscription root
//! field, [`audited`] around every mutation (it checks the capability itself, so refusals are
//! audited too), and the `viewer` query (who am I).
//!
//! Which role has which capability is [`crate::domain::access::allows`]; authentication
//! happened before execution ([`super::guardrails`]).

use std::future::Future;

use async_graphql::{Context, Enum, Guard, ID, Object, SimpleObject};
use sea_orm::ActiveEnum;

use super::api;
use super::error::{Code, coded, internal};
use super::ids::NodeType;
use crate::domain::access::{Capability, Principal};
use crate::domain::audit::{self, Entry, Pending};

/// What a token may do.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::api_token::Role")]
pub enum Role {
    /// Everything, including tokens and the audit trail.
    Admin,
    /// Queries and subscriptions only.
    Viewer,
    /// Only the deployment-runner protocol.
    Runner,
}

fn capability_name(capability: Capability) -> &'static str {
    match capability {
        Capability::Read => "read",
        Capability::Write => "change repositories and apps",
        Capability::Administer => "administer tokens and the audit trail",
        Capability::Run => "use the runner protocol",
    }
}

/// The caller, or `UNAUTHENTICATED` (only reachable if authentication was skipped).
pub fn principal<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Principal> {
    ctx.data::<Principal>()
        .map_err(|_| coded(Code::Unauthenticated, "authentication required"))
}

/// `Ok` when the caller's role grants `capability`, `FORBIDDEN` otherwise.
fn authorize(ctx: &Context<'_>, capability: Capability) -> async_graphql::Result<()> {
    let principal = principal(ctx)?;
    if principal.may(capability) {
        return Ok(());
    }
    Err(coded(
        Code::Forbidden,
        format!(
            "the {} role may not {} (token {:?})",
            principal.role.to_value(),
            capability_name(capability),
            principal.name
        ),
    ))
}

/// Whether `role` may read `field` of the object type `type_name` wherever it appears in a
/// response (checked on every request's document, by [`super::reach`]). Root fields have their own guards
/// ([`Require`] on queries and subscriptions, [`audited`] on mutations); this keeps a role
/// from walking past what its entry points return:
///
/// | role | reaches |
/// |---|---|
/// | admin | everything |
/// | viewer | repositories, apps, deployments (with their logs); not tokens, the audit trail, or `App.runner` |
/// | runner | its own identity (`viewer`), the payloads of the runner mutations and their `RunnerJob`, the `Deployment` it was handed (not its `app`), and of that app only `id`, `databaseId`, `name` and `status` |
pub fn may_reach(role: entity::api_token::Role, type_name: &str, field: &str) -> bool {
    use entity::api_token::Role;
    if matches!(type_name, "Query" | "Mutation" | "Subscription") {
        return true;
    }
    match role {
        Role::Admin => true,
        Role::Viewer => match (type_name, field) {
            ("App", "runner") => false,
            _ => !ADMIN_ONLY_TYPES.contains(&type_name),
        },
        Role::Runner => match type_name {
            "Viewer"
            | "RunnerJob"
            | "RollbackSource"
            | "RunnerSignal"
            | "EnvVar"
            | "RunnerApp"
            | "ClaimDeploymentPayload"
            | "HeartbeatDeploymentPayload"
            | "ReportDeploymentPayload"
            | "AppendDeploymentLogPayload" => true,
            "Deployment" => field != "app",
            "App" => matches!(field, "id" | "databaseId" | "name" | "status"),
            _ => false,
        },
    }
}

/// Types only admins reach (their root fields are admin-only too).
const ADMIN_ONLY_TYPES: &[&str] = &[
    "ApiToken",
    "ApiTokenConnection",
    "ApiTokenEdge",
    "CreateApiTokenPayload",
    "RevokeApiTokenPayload",
    "AuditEvent",
    "AuditEventConnection",
    "AuditEventEdge",
];

/// Guard for root fields: `#[graphql(guard = "Require(Capability::Read)")]`.
pub struct Require(pub Capability);

impl Guard for Require {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        authorize(ctx, self.0)
    }
}

/// Runs a mutation resolver's `body` if the caller holds `capability`, and appends the
/// outcome to the audit trail either way: the operation, its arguments (secrets redacted),
/// the object it acted on, the error code and message if it failed.
///
/// A success is recorded inside the transaction that makes the change (see
/// [`audit::pending`]): both are stored or neither is. Refusals, failures and calls that
/// changed nothing are recorded on their own; if that write fails the error is logged and the
/// caller's result still returned.
pub async fn audited<T, F>(
    ctx: &Context<'_>,
    capability: Capability,
    body: F,
) -> async_graphql::Result<T>
where
    F: Future<Output = async_graphql::Result<T>>,
{
    audit_call(ctx, capability, body, true).await
}

/// Like [`audited`], but only refusals and failures are recorded: for the runner's frequent
/// calls (`heartbeatDeployment`, `appendDeploymentLog`), whose successes would add a
/// permanent row every few seconds, and whose text must never reach the trail.
pub async fn audited_failures<T, F>(
    ctx: &Context<'_>,
    capability: Capability,
    body: F,
) -> async_graphql::Result<T>
where
    F: Future<Output = async_graphql::Result<T>>,
{
    audit_call(ctx, capability, body, false).await
}

async fn audit_call<T, F>(
    ctx: &Context<'_>,
    capability: Capability,
    body: F,
    record_success: bool,
) -> async_graphql::Result<T>
where
    F: Future<Output = async_graphql::Result<T>>,
{
    let api = api(ctx)?;
    if let Err(refused) = authorize(ctx, capability) {
        record(&api.db, entry_of(ctx, Some(error_of(&refused)))?).await;
        return Err(refused);
    }
    if !record_success {
        // Built only on failure: these calls carry log chunks.
        let result = body.await;
        if let Err(error) = &result {
            record(&api.db, entry_of(ctx, Some(error_of(error)))?).await;
        }
        return result;
    }
    let pending = Pending {
        entry: entry_of(ctx, None)?,
        name: |object| object_id(object).0,
    };
    let (result, unwritten) = audit::pending(pending, body).await;
    match (&result, unwritten) {
        // Recorded with the change.
        (_, None) => {}
        (Ok(_), Some(Pending { entry, .. })) => record(&api.db, entry).await,
        (Err(error), Some(Pending { mut entry, .. })) => {
            entry.error = Some(error_of(error));
            record(&api.db, entry).await;
        }
    }
    result
}

/// The audit entry of the mutation field `ctx` resolves, by its caller: the operation, its
/// arguments as JSON, the object its input names (`input.id`, else the first `input.…Id`:
/// `appId`, `deploymentId`, `repositoryId`; a write names its own, a created row), the
/// document's hash, and `error`.
fn entry_of(ctx: &Context<'_>, error: Option<(String, String)>) -> async_graphql::Result<Entry> {
    let field = ctx.field();
    let arguments: serde_json::Map<String, serde_json::Value> = field
        .arguments()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let json = value.into_json().unwrap_or(serde_json::Value::Null);
            (name.to_string(), json)
        })
        .collect();
    let requested_object = arguments
        .get("input")
        .and_then(|input| input.as_object())
        .and_then(|input| {
            input.get("id").or_else(|| {
                input
                    .iter()
                    .find(|(name, _)| name.ends_with("Id"))
                    .map(|(_, value)| value)
            })
        })
        .and_then(|id| id.as_str())
        .map(str::to_owned);
    Ok(Entry {
        principal: Some(principal(ctx)?.clone()),
        operation: field.name().to_owned(),
        arguments: serde_json::Value::Object(arguments),
        object_id: requested_object,
        error,
        document_hash: ctx
            .data_opt::<super::documents::DocumentHash>()
            .map(|hash| hash.0.clone()),
    })
}

/// The code and message an audit row keeps of a failed call.
fn error_of(error: &async_graphql::Error) -> (String, String) {
    let code = Code::of(error.extensions.as_ref()).unwrap_or(Code::Internal);
    (code.as_str().to_owned(), error.message.clone())
}

/// The global ID the audit trail names an object by.
fn object_id(object: audit::Object) -> ID {
    match object {
        audit::Object::Repository(id) => NodeType::Repository.id(id),
        audit::Object::App(id) => NodeType::App.id(id),
        audit::Object::Deployment(id) => NodeType::Deployment.id(id),
        audit::Object::ApiToken(id) => NodeType::ApiToken.id(id),
    }
}

/// Appends `entry` on its own; a failure is logged (with a correlation id), not returned.
async fn record(db: &sea_orm::DatabaseConnection, entry: Entry) {
    if let Err(error) = audit::record(db, entry).await {
        let _ = internal(format!("cannot append to the audit trail: {error}"));
    }
}

/// The authenticated caller.
#[derive(SimpleObject)]
pub struct Viewer {
    /// The token's name.
    name: String,
    /// What the token may do.
    role: Role,
    /// The token's ID (see `apiTokens`).
    token_id: ID,
}

#[derive(Default)]
pub struct ViewerQuery;

#[Object]
impl ViewerQuery {
    /// Who is calling: the token used for this request. Allowed for every role.
    async fn viewer(&self, ctx: &Context<'_>) -> async_graphql::Result<Viewer> {
        let principal = principal(ctx)?;
        Ok(Viewer {
            name: principal.name.clone(),
            role: principal.role.into(),
            token_id: NodeType::ApiToken.id(principal.token_id),
        })
    }
}
