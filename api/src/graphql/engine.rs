//! The path of every operation around the schema, over HTTP and WebSocket alike: [`Engine`]
//! is the async-graphql `Executor` both transports hand their requests to.
//!
//! 1. admission and the trusted-document check (over WebSocket here, per operation, with the
//!    connection's credential; HTTP does both before it reads the document, and hands over
//!    the caller as a [`Principal`] in the request's data);
//! 2. parsing and the document's size ([`Engine::parse`]; HTTP parses large documents on a
//!    blocking thread and hands over the result). Parsed documents are kept by the SHA-256
//!    of their text ([`DocumentHash`], taken for the audit trail), the most recently used
//!    [`KEPT_DOCUMENTS`] of up to [`KEPT_DOCUMENT_BYTES`] each: clients send the same few
//!    documents again and again, and parsing one cost a tenth of a point lookup's time;
//! 3. variable coercion ([`conformance::check_variables`]) and the role's reach
//!    ([`check_reach`]): request errors, before anything executes;
//! 4. validation and execution by async-graphql, then the response's keys put in the order
//!    of the selection sets ([`conformance::Ordering`]);
//! 5. the operation counted and timed ([`Recorder`]).
//!
//! None of this is an async-graphql extension: with any extension registered, async-graphql
//! wraps the resolution of every field (a `ResolveInfo` with an allocated type name and a
//! boxed future per field and per extension), which cost a quarter of a nested read's time
//! (the README's bench section). Here each step runs once per request.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::parse_query;
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::registry::Registry;
use async_graphql::{Data, Executor, Request, Response, SchemaEnv, ServerError, ServerResult};
use futures_util::StreamExt;

use super::conformance::{self, Ordering, mark_abstract_selections, select_operation};
use super::documents::DocumentHash;
use super::error::Code;
use super::guardrails::{
    ClientAddress, Credential, DocumentLimits, ResponseBudget, check_document, find,
};
use super::reach::check_reach;
use super::telemetry::Recorder;
use super::{ApiContext, KeystoneSchema};
use crate::domain::access::Principal;

/// Parsed documents kept, at most.
pub const KEPT_DOCUMENTS: usize = 128;
/// The longest document kept parsed: longer ones are rare, and parsed again each time.
pub const KEPT_DOCUMENT_BYTES: usize = 4096;

/// A document parsed, within the limits, its abstract selections marked (for the ordering).
pub type Document = Arc<ExecutableDocument>;

/// The schema, with what every operation passes around it.
#[derive(Clone)]
pub struct Engine {
    schema: KeystoneSchema,
    /// The schema's types (async-graphql keeps its own to itself; see [`super::schema`]).
    types: SchemaEnv,
    limits: DocumentLimits,
    /// Parsed documents by the SHA-256 of their text.
    kept: Arc<Mutex<lru::LruCache<String, Document>>>,
}

impl Engine {
    pub(super) fn new(schema: KeystoneSchema, types: SchemaEnv, limits: DocumentLimits) -> Self {
        let capacity = NonZeroUsize::new(KEPT_DOCUMENTS).unwrap_or(NonZeroUsize::MIN);
        Self {
            schema,
            types,
            limits,
            kept: Arc::new(Mutex::new(lru::LruCache::new(capacity))),
        }
    }

    fn registry(&self) -> &Registry {
        &self.types.registry
    }

    /// `request`'s document parsed (`GRAPHQL_PARSE_FAILED`) and within the document limits
    /// (`GRAPHQL_VALIDATION_FAILED`): kept from an earlier request, or parsed now.
    pub fn parse(&self, request: &Request) -> ServerResult<Document> {
        if let Some(document) = self.kept(request) {
            return Ok(document);
        }
        let mut document = parse_query(&request.query).map_err(|error| {
            let mut error = ServerError::from(error);
            Code::GraphqlParseFailed.set(error.extensions.get_or_insert_with(Default::default));
            error
        })?;
        check_document(&document, &self.limits)?;
        mark_abstract_selections(self.registry(), &mut document);
        let document = Arc::new(document);
        if let Some(hash) = find::<DocumentHash>(&request.data)
            && request.query.len() <= KEPT_DOCUMENT_BYTES
        {
            self.lock_kept().put(hash.0.clone(), Arc::clone(&document));
        }
        Ok(document)
    }

    /// `request`'s document, if it was parsed before and is still kept.
    pub fn kept(&self, request: &Request) -> Option<Document> {
        let hash = find::<DocumentHash>(&request.data)?;
        self.lock_kept().get(&hash.0).cloned()
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, Document>> {
        // A panic elsewhere while holding it leaves a usable cache.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `request` to its one response; `document` is its query, when parsed already.
    pub async fn run(&self, request: Request, document: Option<Document>) -> Response {
        let (request, mut recorder) = match self.admit(request, &Data::default()).await {
            Ok(admitted) => admitted,
            Err(refusal) => return Response::from_errors(vec![refusal]),
        };
        let response = match self.prepare(request, document, &mut recorder) {
            Ok((request, ordering)) => {
                let mut response = self.schema.execute(request).await;
                ordering.reorder(self.registry(), &mut response);
                response
            }
            Err(error) => Response::from_errors(vec![error]),
        };
        recorder.saw(&response);
        response
    }

    /// Runs `request` (over WebSocket) to its stream of responses.
    fn stream(&self, request: Request, session: Arc<Data>) -> BoxStream<'static, Response> {
        let engine = self.clone();
        futures_util::stream::once(async move {
            let (request, mut recorder) = match engine.admit(request, &session).await {
                Ok(admitted) => admitted,
                Err(refusal) => return one(Response::from_errors(vec![refusal])),
            };
            let responses = match engine.prepare(request, None, &mut recorder) {
                Ok((request, ordering)) => {
                    let types = engine.types.clone();
                    engine
                        .schema
                        .execute_stream_with_session_data(request, session)
                        .map(move |mut response| {
                            ordering.reorder(&types.registry, &mut response);
                            response
                        })
                        .boxed()
                }
                Err(error) => one(Response::from_errors(vec![error])),
            };
            recorder.watch(responses)
        })
        .flatten()
        .boxed()
    }

    /// Step 1: the caller, unless the transport admitted it already (with `session`, the
    /// WebSocket connection's data, for its credential and address).
    async fn admit(
        &self,
        mut request: Request,
        session: &Data,
    ) -> ServerResult<(Request, Recorder)> {
        if find::<Principal>(&request.data).is_none() {
            let api = self.schema.data::<ApiContext>().ok_or_else(|| {
                super::error::internal("the schema has no context")
                    .into_server_error(Default::default())
            })?;
            let credential = find::<Credential>(&request.data)
                .or_else(|| find::<Credential>(session))
                .and_then(|c| c.0.as_deref());
            let client = find::<ClientAddress>(session).copied().unwrap_or_default();
            let principal = api.admission.admit(&api.db, credential, client).await?;
            api.documents
                .resolve(&mut request, None, &principal)
                .await?;
            request.data.insert(principal);
        }
        request.data.insert(ResponseBudget::default());
        let recorder = Recorder::new(request.operation_name.clone());
        Ok((request, recorder))
    }

    /// Steps 2 and 3: the request with its document, checked, and what puts its response in
    /// order.
    fn prepare(
        &self,
        mut request: Request,
        document: Option<Document>,
        recorder: &mut Recorder,
    ) -> ServerResult<(Request, Ordering)> {
        let document = match document {
            Some(document) => document,
            None => self.parse(&request)?,
        };
        recorder.parsed(&document);
        let registry = self.registry();
        if let Some(operation) = select_operation(&document, request.operation_name.as_deref()) {
            conformance::check_variables(registry, operation, &request.variables)?;
            if let Some(principal) = find::<Principal>(&request.data) {
                check_reach(
                    registry,
                    &document,
                    operation,
                    &request.variables,
                    principal.role,
                )?;
            }
        }
        // async-graphql takes the document apart as it executes: it gets a copy.
        request.set_parsed_query(ExecutableDocument::clone(&document));
        let ordering = Ordering {
            document,
            operation_name: request.operation_name.clone(),
            variables: request.variables.clone(),
        };
        Ok((request, ordering))
    }
}

fn one(response: Response) -> BoxStream<'static, Response> {
    futures_util::stream::once(std::future::ready(response)).boxed()
}

impl Executor for Engine {
    async fn execute(&self, request: Request) -> Response {
        self.run(request, None).await
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        self.stream(request, session_data.unwrap_or_default())
    }
}
