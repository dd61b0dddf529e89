//! Where async-graphql departs from the GraphQL specification, put right around it, over
//! HTTP and WebSocket alike (an extension, so every transport gets it):
//!
//! - **Variable coercion** ([`variables`]): a request whose variables cannot be coerced to
//!   their declared types is a *request error* (spec §6.1, CoerceVariableValues): nothing
//!   executes. async-graphql checks a variable only where an argument uses it, and not at
//!   all when it is missing, so a missing `ID!` used to run the rest of the query.
//! - **Response key order** ([`order`]): the keys of every object follow the selection
//!   set (spec §7.2.2, "Serialized Map Ordering"). async-graphql resolves the fields of a
//!   query concurrently and inserts each value as it completes, so a field waiting on a
//!   loader, or a root field of another part of a merged object, came out later than written
//!   (async-graphql issue 612). The response is put back in order after execution.
//!
//! For an object of an abstract type (an interface such as `Node`), which fragments apply
//! depends on its concrete type, so the document is given one extra `__typename` under a
//! reserved alias in such selection sets; [`order`] reads and removes it.

mod order;
mod variables;

use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextSubscribe,
};
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition};
use async_graphql::registry::Registry;
use async_graphql::{Request, Response, ServerResult, Variables};
use futures_util::StreamExt;

pub struct Conformance;

impl ExtensionFactory for Conformance {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ConformanceExtension::default())
    }
}

/// What one request's hooks share: the operation it names, then its document and variables.
#[derive(Default)]
struct ConformanceExtension {
    operation_name: Mutex<Option<String>>,
    prepared: Arc<Mutex<Option<Arc<Prepared>>>>,
}

struct Prepared {
    document: ExecutableDocument,
    operation_name: Option<String>,
    variables: Variables,
}

impl Prepared {
    fn operation(&self) -> Option<&OperationDefinition> {
        select_operation(&self.document, self.operation_name.as_deref())
    }

    fn reorder(&self, registry: &Registry, response: &mut Response) {
        if let Some(operation) = self.operation() {
            order::reorder(
                registry,
                &self.document,
                operation,
                &self.variables,
                &mut response.data,
            );
        }
    }
}

/// The operation a request runs: the named one, or the only one.
pub fn select_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(&op.node),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| &op.node)
        }
        _ => None,
    }
}

/// `mutex`'s guard; a poisoned lock (a panic elsewhere) still holds usable state.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_graphql::async_trait::async_trait]
impl Extension for ConformanceExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *lock(&self.operation_name) = request.operation_name.clone();
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let mut document = next.run(ctx, query, variables).await?;
        let registry = &ctx.schema_env.registry;
        let operation_name = lock(&self.operation_name).clone();
        if let Some(operation) = select_operation(&document, operation_name.as_deref()) {
            variables::check(registry, operation, variables)?;
        }
        order::mark_abstract_selections(registry, &mut document);
        *lock(&self.prepared) = Some(Arc::new(Prepared {
            document: document.clone(),
            operation_name,
            variables: variables.clone(),
        }));
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        let prepared = lock(&self.prepared).clone();
        if let Some(prepared) = prepared {
            prepared.reorder(&ctx.schema_env.registry, &mut response);
        }
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        // The document is parsed once the stream is first polled; each event is put in
        // order as it passes.
        let env = ctx.schema_env.clone();
        let prepared = Arc::clone(&self.prepared);
        next.run(ctx, stream)
            .map(move |mut response| {
                let current = lock(&prepared).clone();
                if let Some(current) = current {
                    current.reorder(&env.registry, &mut response);
                }
                response
            })
            .boxed()
    }
}
