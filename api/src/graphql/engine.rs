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
use std::time::Duration;

use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::parse_query;
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::registry::Registry;
use async_graphql::{Data, Executor, Request, Response, SchemaEnv, ServerError, ServerResult};
use futures_util::StreamExt;

use super::conformance::{self, Ordering, mark_abstract_selections, select_operation};
use super::documents::{DocumentHash, Trusted};
use super::error::Code;
use super::guardrails::{ClientAddress, Credential, ResponseBudget, check_document, find};
use super::reach::check_reach;
use super::telemetry::Recorder;
use super::{ApiContext, KeystoneSchema, Limits};
use crate::domain::access::Principal;

/// Parsed documents kept, at most.
pub const KEPT_DOCUMENTS: usize = 128;
/// The longest document kept parsed: longer ones are rare, and parsed again each time.
pub const KEPT_DOCUMENT_BYTES: usize = 4096;

/// Documents up to this size are parsed in place: parsing is linear in the length, so they
/// take microseconds, less than handing them to another thread.
const INLINE_PARSE_BYTES: usize = 1024;

/// CPU time parsing and checking one document may take; past it, the document is refused.
/// Every check is linear in the document's length (the expanded size is bounded before
/// anything walks it), so only a document near the body limit comes close.
pub const CHECK_CPU_BUDGET: Duration = Duration::from_millis(500);

/// A budget of this thread's CPU time (not wall time: a busy machine does not refuse
/// documents it has not spent time on).
struct CpuBudget {
    started: Duration,
    budget: Duration,
}

impl CpuBudget {
    fn start(budget: Duration) -> Self {
        Self {
            started: thread_cpu_time(),
            budget,
        }
    }

    /// `GRAPHQL_VALIDATION_FAILED` once the budget is spent.
    fn check(&self) -> ServerResult<()> {
        let spent = thread_cpu_time().saturating_sub(self.started);
        if spent <= self.budget {
            return Ok(());
        }
        Err(super::error::server_error(
            Code::GraphqlValidationFailed,
            format!(
                "the document took more than {} ms of CPU time to check; send a smaller one",
                self.budget.as_millis()
            ),
        ))
    }
}

fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or_default(),
        u32::try_from(now.tv_nsec).unwrap_or_default(),
    )
}

/// A document parsed, within the limits, its abstract selections marked (for the ordering).
pub type Document = Arc<ExecutableDocument>;

/// The schema, with what every operation passes around it.
#[derive(Clone)]
pub struct Engine {
    schema: KeystoneSchema,
    /// The schema's types (async-graphql keeps its own to itself; see [`super::schema`]).
    types: SchemaEnv,
    limits: Limits,
    /// Parsed documents by the SHA-256 of their text.
    kept: Arc<Mutex<lru::LruCache<String, Document>>>,
}

impl Engine {
    pub(super) fn new(schema: KeystoneSchema, types: SchemaEnv, limits: Limits) -> Self {
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
    /// (`GRAPHQL_VALIDATION_FAILED`): kept from an earlier request, or parsed now; a long
    /// document on a blocking thread, so that no document holds up the runtime's workers.
    pub async fn parse(&self, request: Request) -> ServerResult<(Request, Document)> {
        if let Some(document) = self.kept(&request) {
            return Ok((request, document));
        }
        if request.query.len() <= INLINE_PARSE_BYTES {
            let document = self.parse_now(&request)?;
            return Ok((request, document));
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let document = engine.parse_now(&request)?;
            Ok((request, document))
        })
        .await
        .unwrap_or_else(|error| {
            Err(
                super::error::internal(format!("parsing a request failed: {error}"))
                    .into_server_error(Default::default()),
            )
        })
    }

    /// Parses and checks `request`'s document on this thread, within [`CHECK_CPU_BUDGET`]
    /// of this thread's CPU time, measured after each step.
    fn parse_now(&self, request: &Request) -> ServerResult<Document> {
        let budget = CpuBudget::start(CHECK_CPU_BUDGET);
        let mut document = parse_query(&request.query).map_err(|error| {
            let mut error = ServerError::from(error);
            Code::GraphqlParseFailed.set(error.extensions.get_or_insert_with(Default::default));
            error
        })?;
        budget.check()?;
        check_document(&document, &self.limits.document)?;
        budget.check()?;
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
        let prepared = match document {
            Some(document) => Ok((request, document)),
            None => self.parse(request).await,
        }
        .and_then(|(request, document)| self.prepare(request, document, &mut recorder));
        let response = match prepared {
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

    /// Runs `request` (over WebSocket) to its stream of responses: a subscription's events,
    /// or a query's or mutation's one response, within the request timeout as over HTTP.
    fn stream(&self, request: Request, session: Arc<Data>) -> BoxStream<'static, Response> {
        let engine = self.clone();
        let deadline = self.deadline();
        futures_util::stream::once(async move {
            let (request, mut recorder) = match engine.admit(request, &session).await {
                Ok(admitted) => admitted,
                Err(refusal) => return one(Response::from_errors(vec![refusal])),
            };
            let prepared =
                match engine.parse(request).await {
                    Ok((request, document)) => engine
                        .prepare(request, document, &mut recorder)
                        .map(|(request, ordering)| {
                            let kind = select_operation(
                                &ordering.document,
                                ordering.operation_name.as_deref(),
                            )
                            .map(|operation| operation.ty);
                            (request, ordering, kind)
                        }),
                    Err(error) => Err(error),
                };
            let (request, ordering, kind) = match prepared {
                Ok(prepared) => prepared,
                Err(error) => return recorder.watch(one(Response::from_errors(vec![error]))),
            };
            let types = engine.types.clone();
            let responses = engine
                .schema
                .execute_stream_with_session_data(request, session)
                .map(move |mut response| {
                    ordering.reorder(&types.registry, &mut response);
                    response
                })
                .boxed();
            if kind == Some(OperationType::Subscription) {
                return recorder.watch(responses);
            }
            let first = async move {
                let mut responses = responses;
                responses.next().await.unwrap_or_default()
            };
            let mutation = kind == Some(OperationType::Mutation);
            let response = engine
                .within_deadline(deadline, mutation, recorder.label(), first)
                .await;
            recorder.saw(&response);
            one(response)
        })
        .flatten()
        .boxed()
    }

    /// When a request arriving now must be answered: the request timeout from now.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.limits.request_timeout
    }

    /// Runs `work`, one operation's execution, until `deadline`. A query is cancelled there
    /// (`TIMEOUT`: it changes nothing). A mutation is never cancelled: a cancel could land
    /// between its COMMIT and the answer. One still running at the deadline (the database
    /// stalled) goes on in the background, and its client is answered `TIMEOUT`, its outcome
    /// unknown, instead of waiting without bound. `operation` names it in the log.
    /// `deadline` is [`Engine::deadline`]'s, taken when the request arrived.
    pub async fn within_deadline<F>(
        &self,
        deadline: tokio::time::Instant,
        mutation: bool,
        operation: &str,
        work: F,
    ) -> Response
    where
        F: Future<Output = Response> + Send + 'static,
    {
        let seconds = self.limits.request_timeout.as_secs_f64();
        let timed_out = |message: String| {
            Response::from_errors(vec![super::error::server_error(Code::Timeout, message)])
        };
        if !mutation {
            return match tokio::time::timeout_at(deadline, work).await {
                Ok(response) => response,
                Err(_) => {
                    tracing::warn!(%operation, "graphql query timed out");
                    timed_out(format!(
                        "the query did not finish within {seconds} s and was \
                         cancelled"
                    ))
                }
            };
        }
        let mut running = tokio::spawn(work);
        match tokio::time::timeout_at(deadline, &mut running).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => Response::from_errors(vec![
                super::error::internal(format!("a mutation task failed: {error}"))
                    .into_server_error(Default::default()),
            ]),
            Err(_) => {
                tracing::warn!(%operation, "graphql mutation still running at the timeout; it goes on in the background");
                timed_out(format!(
                    "the mutation did not finish within {seconds} s; it goes \
                     on, and its outcome is unknown: check before retrying"
                ))
            }
        }
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
        let recorder = Recorder::default();
        Ok((request, recorder))
    }

    /// Steps 2 and 3: the request with its document, checked, and what puts its response in
    /// order.
    fn prepare(
        &self,
        mut request: Request,
        document: Document,
        recorder: &mut Recorder,
    ) -> ServerResult<(Request, Ordering)> {
        let trusted = find::<Trusted>(&request.data).is_some();
        recorder.parsed(&document, request.operation_name.as_deref(), trusted);
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
            .map(|mut response| {
                super::error::bound_messages(&mut response.errors);
                response
            })
            .boxed()
    }
}
