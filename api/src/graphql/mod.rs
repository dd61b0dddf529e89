//! The GraphQL API: schema building, one module per GraphQL type (queries and mutations
//! beside the type), cursor pagination, DataLoaders, global IDs and error mapping.
//! Resolvers are thin: reads go through loaders or one paginated query, writes through
//! [`crate::domain`].

pub mod api_token;
pub mod app;
pub mod audit_event;
pub mod auth;
pub mod conformance;
pub mod connection;
pub mod deployment;
pub mod documents;
pub mod engine;
pub mod error;
pub mod guardrails;
pub mod ids;
pub mod loaders;
pub mod node;
pub mod reach;
pub mod repository;
pub mod runner;
pub mod subscription;
pub mod telemetry;
pub mod total_count;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema, SchemaBuilder};
use sea_orm::DatabaseConnection;

use self::engine::Engine;
use self::guardrails::{Admission, DocumentLimits};
use crate::domain::events::EventBus;
use crate::domain::ports::PortRange;
use crate::domain::runs::RunnerPolicy;

use std::sync::Arc;

use async_graphql::OutputType;
use async_graphql::connection::Connection;
use async_graphql::dataloader::Loader;
use sea_orm::DbErr;

use self::connection::{Cursor, PageArgs, PageRows, Paged, to_connection};
use self::error::{OrInternal, internal};
use self::loaders::{Loaders, Reader};
use self::total_count::TotalCount;
use crate::store::filters::FilterCondition;
use crate::store::page::load_page;

/// Reads. Every list is a cursor connection (`first`/`after`, `last`/`before`); every object
/// has a global `id` that `node` resolves.
#[derive(MergedObject, Default)]
pub struct Query(
    node::NodeQuery,
    repository::RepositoryQuery,
    app::AppQuery,
    deployment::DeploymentQuery,
    auth::ViewerQuery,
    api_token::ApiTokenQuery,
    audit_event::AuditEventQuery,
    runner::RunnerQuery,
);

/// Changes. Each takes one `input` and returns a payload; every call is audited.
#[derive(MergedObject, Default)]
pub struct Mutation(
    repository::RepositoryMutation,
    app::AppMutation,
    deployment::DeploymentMutation,
    runner::RunnerMutation,
    api_token::ApiTokenMutation,
);

/// Live updates over WebSocket (`/graphql/ws`, `graphql-transport-ws` or `graphql-ws`).
#[derive(MergedSubscription, Default)]
pub struct Subscription(subscription::LiveSubscription, runner::RunnerSubscription);

pub type KeystoneSchema = Schema<Query, Mutation, Subscription>;

/// What every resolver may need, put into the schema once.
pub struct ApiContext {
    pub db: DatabaseConnection,
    /// Host name in the `url` of PORT apps (`http://<public_host>:<port>`).
    pub public_host: String,
    /// Domain under which HOST apps are served (`http://<app>.<apps_domain>`), if any.
    pub apps_domain: Option<String>,
    /// Where changes are published for subscriptions.
    pub events: EventBus,
    /// Checks the token and rate limit of every operation.
    pub admission: Arc<Admission>,
    /// Seals and opens config vars.
    pub secrets: Arc<crate::domain::secrets::SecretBox>,
    /// Host ports given to `PORT` apps.
    pub ports: PortRange,
    /// Leases, attempts and the logs directory of the runner protocol.
    pub runners: RunnerPolicy,
    /// The stored documents, and whether only they run.
    pub documents: Arc<documents::TrustedDocuments>,
    /// Which hosts repositories may name.
    pub git_hosts: crate::domain::validation::GitHosts,
}

impl ApiContext {
    /// The restart a config change asks for (`wanted`), published on this server's bus.
    pub fn restart(&self, wanted: bool) -> crate::domain::env::Restart<'_> {
        crate::domain::env::Restart {
            wanted,
            events: &self.events,
            ports: self.ports,
        }
    }
}

/// What a query document may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub depth: usize,
    pub complexity: usize,
    pub document: DocumentLimits,
    /// Whether `__schema` and `__type` answer (GraphiQL needs them).
    pub introspection: bool,
    /// Longest a query or mutation may take, on every transport ([`Engine::within_deadline`]).
    pub request_timeout: std::time::Duration,
}

/// The schema without data: enough to print the SDL.
pub fn schema_builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    type Page<N> = Connection<Cursor, N, TotalCount>;
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    // Generic connections, which no doc comment reaches.
    .override_output_type_description::<Page<repository::Repository>>("A page of repositories.")
    .override_output_type_description::<Page<app::App>>("A page of apps.")
    .override_output_type_description::<Page<deployment::Deployment>>("A page of deployments.")
    .override_output_type_description::<Page<api_token::ApiToken>>("A page of API tokens.")
    .override_output_type_description::<Page<audit_event::AuditEvent>>("A page of audit events.")
}

/// The schema serving `context`, within `limits`, with what every operation passes around
/// it ([`engine`]).
pub async fn schema(context: ApiContext, limits: Limits) -> Engine {
    let mut builder = schema_builder()
        .data(context)
        .limit_depth(limits.depth)
        .limit_complexity(limits.complexity)
        .limit_directives(MAX_DIRECTIVES_PER_FIELD);
    if !limits.introspection {
        builder = builder.disable_introspection();
    }
    Engine::new(builder.finish(), types().await, limits)
}

/// The schema's types. async-graphql hands its registry to extensions only, and any
/// extension on the serving schema would wrap every field's resolution; so a schema built
/// alike, with one extension that keeps what it is handed, answers one query at startup.
async fn types() -> async_graphql::SchemaEnv {
    use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextRequest};
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Keep(Arc<Mutex<Option<async_graphql::SchemaEnv>>>);

    impl ExtensionFactory for Keep {
        fn create(&self) -> Arc<dyn Extension> {
            Arc::new(self.clone())
        }
    }

    #[async_graphql::async_trait::async_trait]
    impl Extension for Keep {
        async fn request(
            &self,
            ctx: &ExtensionContext<'_>,
            next: NextRequest<'_>,
        ) -> async_graphql::Response {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.schema_env.clone());
            next.run(ctx).await
        }
    }

    let kept = Keep::default();
    schema_builder()
        .extension(kept.clone())
        .finish()
        .execute("{ __typename }")
        .await;
    let env = kept.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    env.expect("async-graphql calls every extension's request hook")
}

/// Directives accepted on one field (`@include` and `@skip` are all there is).
const MAX_DIRECTIVES_PER_FIELD: usize = 4;

/// The SDL that `schema.graphql` must equal (`keystone schema`).
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}

pub(crate) fn api<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a ApiContext> {
    ctx.data::<ApiContext>().map_err(|e| internal(e.message))
}

pub(crate) fn loaders<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Loaders> {
    ctx.data::<Loaders>().map_err(|e| internal(e.message))
}

/// A connection over every row of `E` matching `filter`, with a lazy `totalCount`.
pub(crate) async fn root_connection<E, F, N>(
    ctx: &Context<'_>,
    page: PageArgs,
    filter: F,
    total_count: fn(F) -> TotalCount,
    node: fn(E::Model) -> N,
) -> async_graphql::Result<Connection<Cursor, N, TotalCount>>
where
    E: Paged,
    F: FilterCondition,
    N: OutputType,
{
    let rows = load_page::<E>(&api(ctx)?.db, &filter, &page)
        .await
        .or_internal()?;
    Ok(to_connection::<E, _, _>(
        rows,
        &page,
        total_count(filter),
        node,
    ))
}

/// A nested connection: `key`'s page, loaded in one statement with its siblings' pages.
pub(crate) async fn nested_connection<K, E, N>(
    ctx: &Context<'_>,
    key: K,
    page: &PageArgs,
    total_count: TotalCount,
    node: fn(E::Model) -> N,
) -> async_graphql::Result<Connection<Cursor, N, TotalCount>>
where
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    E: Paged,
    Reader: Loader<K, Value = Arc<PageRows<E::Model>>, Error = Arc<DbErr>>,
    E::Model: Clone,
    N: OutputType,
{
    let rows = match loaders(ctx)?.load_one(key).await.or_internal()? {
        // The loader has let go of its copy by now: take the rows without copying them.
        Some(shared) => Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone()),
        None => PageRows::default(),
    };
    Ok(to_connection::<E, _, _>(rows, page, total_count, node))
}

/// Complexity of a connection field: its page size times the cost of one node.
pub(crate) fn page_complexity(first: Option<i32>, last: Option<i32>, child: usize) -> usize {
    let size = first
        .or(last)
        .map_or(connection::DEFAULT_PAGE_SIZE as usize, |n| {
            n.max(0) as usize
        });
    size.max(1) * child + 1
}

/// Every element of the SDL that has no description: types, fields, arguments, enum
/// values, input fields and directives, as `Type`, `Type.field`, `Type.field(arg)`.
///
/// The arguments of the specification's own directives (`@skip(if:)`, …) are left out:
/// async-graphql emits them, and GraphiQL explains them from the specification.
pub fn undescribed_elements(sdl: &str) -> Vec<String> {
    use async_graphql::parser::types::{InputValueDefinition, TypeKind, TypeSystemDefinition};
    use async_graphql::parser::{Positioned, parse_schema};

    fn args(out: &mut Vec<String>, at: &str, args: &[Positioned<InputValueDefinition>]) {
        for arg in args {
            if arg.node.description.is_none() {
                out.push(format!("{at}({})", arg.node.name.node));
            }
        }
    }
    let document = match parse_schema(sdl) {
        Ok(document) => document,
        Err(error) => return vec![format!("the SDL does not parse: {error}")],
    };
    let mut out = Vec::new();
    for definition in &document.definitions {
        match definition {
            TypeSystemDefinition::Schema(_) => {}
            TypeSystemDefinition::Directive(directive) => {
                const SPECIFIED: [&str; 5] =
                    ["skip", "include", "deprecated", "specifiedBy", "oneOf"];
                let name = format!("@{}", directive.node.name.node);
                if directive.node.description.is_none() {
                    out.push(name.clone());
                }
                if !SPECIFIED.contains(&directive.node.name.node.as_str()) {
                    args(&mut out, &name, &directive.node.arguments);
                }
            }
            TypeSystemDefinition::Type(ty) => {
                let ty = &ty.node;
                let name = ty.name.node.as_str();
                if ty.description.is_none() {
                    out.push(name.to_owned());
                }
                let fields = match &ty.kind {
                    TypeKind::Object(object) => &object.fields,
                    TypeKind::Interface(interface) => &interface.fields,
                    TypeKind::Enum(values) => {
                        for value in &values.values {
                            if value.node.description.is_none() {
                                out.push(format!("{name}.{}", value.node.value.node));
                            }
                        }
                        continue;
                    }
                    TypeKind::InputObject(input) => {
                        for field in &input.fields {
                            if field.node.description.is_none() {
                                out.push(format!("{name}.{}", field.node.name.node));
                            }
                        }
                        continue;
                    }
                    TypeKind::Scalar | TypeKind::Union(_) => continue,
                };
                for field in fields {
                    let at = format!("{name}.{}", field.node.name.node);
                    if field.node.description.is_none() {
                        out.push(at.clone());
                    }
                    args(&mut out, &at, &field.node.arguments);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// GraphiQL's docs explain the whole API: every element of the schema is described.
    #[test]
    fn every_schema_element_is_described() {
        let missing = super::undescribed_elements(&super::sdl());
        assert!(
            missing.is_empty(),
            "{} schema elements have no description:\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    /// The runner's and the command line's `.graphql` documents validate against this
    /// schema (which `schema.graphql` must equal): a renamed field breaks this test, not a
    /// deployment.
    #[tokio::test]
    async fn builtin_operations_match_the_schema() {
        let schema = super::schema_builder().finish();
        let variables = serde_json::json!({
            "id": "x", "status": "FAILED", "chunk": "x", "name": "x", "gitUrl": "x",
            "repositoryId": "x", "appId": "x", "value": "x", "restart": true, "to": "x",
            "after": null, "line": 0, "tail": 1, "admin": true, "set": [], "unset": [],
        });
        let builtin = crate::runner::client::operations::ALL
            .iter()
            .chain(crate::remote::operations::ALL);
        for (name, document) in builtin {
            let request = async_graphql::Request::new(*document)
                .variables(async_graphql::Variables::from_json(variables.clone()));
            let response = if document.trim_start().starts_with("subscription") {
                use futures_util::StreamExt;
                let mut stream = schema.execute_stream(request);
                stream.next().await.expect("a response")
            } else {
                schema.execute(request).await
            };
            // Without data every resolver fails at run time, with a path; a document that
            // does not validate fails before, without one.
            let invalid: Vec<_> = response
                .errors
                .iter()
                .filter(|e| e.path.is_empty())
                .map(|e| e.message.clone())
                .collect();
            assert!(invalid.is_empty(), "{name}: {invalid:?}");
        }
    }
}
