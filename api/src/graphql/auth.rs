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
use crate::domain::audit::{Actor, Audit};

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
/// response (checked on every request's document, by [`super::reach`]). Root fields have
/// their own guards ([`Require`] on queries and subscriptions, [`audited`] on mutations);
/// this keeps a role from walking past what its entry points return. It fails closed: a
/// type no list names is admin-only.
///
/// | role | reaches |
/// |---|---|
/// | admin | everything |
/// | viewer | [`VIEWER_TYPES`]: repositories, apps, deployments (with their logs); not tokens, the audit trail, `App.runner` or `App.webhook` |
/// | runner | [`RUNNER_TYPES`]: its own identity (`viewer`), the `RunnerJob` of a claim, the `Deployment` it was handed (not its `app`), and of that app only `id`, `databaseId`, `name` and `status` |
///
/// A mutation's payload is whoever may run the mutation's ([`super::reach`] leaves it to the
/// mutation's guard); the types inside it are checked here.
pub fn may_reach(role: entity::api_token::Role, type_name: &str, field: &str) -> bool {
    use entity::api_token::Role;
    if matches!(type_name, "Query" | "Mutation" | "Subscription") {
        return true;
    }
    match role {
        Role::Admin => true,
        Role::Viewer => match (type_name, field) {
            ("App", "runner" | "webhook") => false,
            _ => VIEWER_TYPES.contains(&type_name),
        },
        Role::Runner => match type_name {
            "Deployment" => field != "app",
            "App" => matches!(field, "id" | "databaseId" | "name" | "status"),
            _ => RUNNER_TYPES.contains(&type_name),
        },
    }
}

/// The types viewers read (with every field but `App.runner` and `App.webhook`).
pub const VIEWER_TYPES: &[&str] = &[
    "Node",
    "Viewer",
    "PageInfo",
    "Repository",
    "RepositoryConnection",
    "RepositoryEdge",
    "App",
    "AppConnection",
    "AppEdge",
    "AppEnvVar",
    "Deployment",
    "DeploymentConnection",
    "DeploymentEdge",
    "LogLines",
];

/// The types runners read in full (besides some fields of `Deployment` and `App`).
pub const RUNNER_TYPES: &[&str] = &[
    "Viewer",
    "RunnerJob",
    "RollbackSource",
    "RunnerSignal",
    "EnvVar",
    "RunnerApp",
];

/// Guard for root fields: `#[graphql(guard = "Require(Capability::Read)")]`.
pub struct Require(pub Capability);

impl Guard for Require {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        authorize(ctx, self.0)
    }
}

/// Runs a mutation resolver's `body` if the caller holds `capability`, and appends the
/// outcome to the audit trail either way: the caller, the operation, its arguments (secrets
/// redacted), the object it acted on, the error code and message if it failed.
///
/// `body` gets the call's [`Audit`] to hand to the domain writes it makes: a success is
/// recorded inside the transaction that makes the change, so both are stored or neither is.
/// Refusals, failures and calls that changed nothing are recorded on their own; if that write
/// fails the error is logged and the caller's result still returned.
pub async fn audited<T, F>(
    ctx: &Context<'_>,
    capability: Capability,
    body: F,
) -> async_graphql::Result<T>
where
    F: AsyncFnOnce(&Audit) -> async_graphql::Result<T>,
{
    let api = api(ctx)?;
    let audit = audit_of(ctx)?;
    if let Err(refused) = authorize(ctx, capability) {
        finish(&api.db, &audit, Some(&refused)).await;
        return Err(refused);
    }
    let result = body(&audit).await;
    finish(&api.db, &audit, result.as_ref().err()).await;
    result
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
    let api = api(ctx)?;
    let result = match authorize(ctx, capability) {
        Err(refused) => Err(refused),
        Ok(()) => body.await,
    };
    if let Err(error) = &result {
        // Built only on failure: these calls carry log chunks.
        finish(&api.db, &audit_of(ctx)?, Some(error)).await;
    }
    result
}

/// The audit of the mutation field `ctx` resolves, by its caller: the operation, its
/// arguments as JSON, the object its input names (`input.id`, else the first `input.…Id`:
/// `appId`, `deploymentId`, `repositoryId`), and the document's hash.
fn audit_of(ctx: &Context<'_>) -> async_graphql::Result<Audit> {
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
    let actor = Actor::Token(principal(ctx)?.clone());
    Ok(
        Audit::new(actor, field.name(), serde_json::Value::Object(arguments))
            .requested(requested_object)
            .document(
                ctx.data_opt::<super::documents::DocumentHash>()
                    .map(|hash| hash.0.clone()),
            ),
    )
}

/// Records `audit` with its outcome unless a write recorded it; a failure to record is
/// logged (with a correlation id), not returned.
async fn finish(
    db: &sea_orm::DatabaseConnection,
    audit: &Audit,
    error: Option<&async_graphql::Error>,
) {
    let error = error.map(|error| {
        let code = Code::of(error.extensions.as_ref()).unwrap_or(Code::Internal);
        (code.as_str().to_owned(), error.message.clone())
    });
    if let Err(error) = audit.finish(db, error).await {
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

#[cfg(test)]
mod tests {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    use entity::api_token::Role;

    use super::may_reach;

    /// `docs/access.md`, the table of what each role reads.
    const MATRIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/access.md");

    /// What `role` reads of a type with `fields`: `all`, `-` (nothing), or the fields.
    fn reach(role: Role, type_name: &str, fields: &[String]) -> String {
        let allowed: Vec<&str> = fields
            .iter()
            .filter(|field| may_reach(role, type_name, field))
            .map(String::as_str)
            .collect();
        if allowed.len() == fields.len() {
            "all".to_owned()
        } else if allowed.is_empty() {
            "-".to_owned()
        } else if allowed.len() + 3 > fields.len() {
            let denied: Vec<&str> = fields
                .iter()
                .map(String::as_str)
                .filter(|field| !allowed.contains(field))
                .collect();
            format!("all but `{}`", denied.join("`, `"))
        } else {
            format!("`{}`", allowed.join("`, `"))
        }
    }

    /// Every object and interface type of the schema, classified for every role: a new type
    /// or field changes this table, so the change shows which roles read it (nothing, for
    /// viewers and runners, until a list in `may_reach` names it). Refresh with
    /// `KEYSTONE_BLESS=1 cargo test -p api access_matrix`.
    #[test]
    fn access_matrix_is_documented() {
        let document = async_graphql::parser::parse_schema(crate::graphql::sdl()).expect("SDL");
        // Mutation payloads are left to their mutation's guard (see `reach`).
        let payloads: Vec<String> = document
            .definitions
            .iter()
            .find_map(|definition| match definition {
                TypeSystemDefinition::Type(ty) if ty.node.name.node == "Mutation" => {
                    match &ty.node.kind {
                        TypeKind::Object(object) => Some(
                            object
                                .fields
                                .iter()
                                .map(|f| {
                                    f.node.ty.node.to_string().trim_end_matches('!').to_owned()
                                })
                                .collect(),
                        ),
                        _ => None,
                    }
                }
                _ => None,
            })
            .expect("a Mutation type");
        let mut rows = Vec::new();
        for definition in document.definitions {
            let TypeSystemDefinition::Type(ty) = definition else {
                continue;
            };
            let ty = ty.node;
            let fields: Vec<String> = match &ty.kind {
                TypeKind::Object(object) => &object.fields,
                TypeKind::Interface(interface) => &interface.fields,
                _ => continue,
            }
            .iter()
            .map(|field| field.node.name.node.to_string())
            .collect();
            let name = ty.name.node.to_string();
            if matches!(name.as_str(), "Query" | "Mutation" | "Subscription") {
                continue;
            }
            let cells: Vec<String> = if payloads.contains(&name) {
                vec!["its mutation's roles".to_owned(); 3]
            } else {
                [Role::Admin, Role::Viewer, Role::Runner]
                    .iter()
                    .map(|role| reach(*role, &name, &fields))
                    .collect()
            };
            rows.push(format!("| `{name}` | {} |", cells.join(" | ")));
        }
        rows.sort();
        let table = format!(
            "# What each role reads\n\n\
             Generated from the schema and `may_reach` (`api/src/graphql/auth.rs`) by \
             `KEYSTONE_BLESS=1 cargo test -p api access_matrix`; a test fails when it drifts. \
             Root fields have their own rules (see the README's security model); this is what \
             a role may read wherever a type appears in a response. A type no list names is \
             admin-only.\n\n\
             | type | admin | viewer | runner |\n|---|---|---|---|\n{}\n",
            rows.join("\n")
        );
        if std::env::var_os("KEYSTONE_BLESS").is_some() {
            std::fs::write(MATRIX, &table).expect("write docs/access.md");
        }
        let documented = std::fs::read_to_string(MATRIX).unwrap_or_default();
        assert!(
            documented == table,
            "docs/access.md is out of date (refresh: KEYSTONE_BLESS=1 cargo test -p api \
             access_matrix), and check who now reads what:\n{table}"
        );
    }
}
