//! Counts and times every GraphQL operation for `/metrics` ([`crate::telemetry`]), over
//! HTTP and WebSocket alike: an extension, so it sees each operation's name and type once
//! the document is parsed, and its response.
//!
//! A query or mutation is recorded when it is answered (a query cancelled at the request
//! timeout is recorded as `TIMEOUT`); a subscription when it ends, with the code of the
//! first error it carried, if any. Requests refused before execution (authentication, rate
//! limit) have metrics of their own.

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextRequest,
    NextSubscribe,
};
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use async_graphql::{Request, Response, ServerResult, Variables};
use futures_util::{Stream, StreamExt};

use super::conformance::{lock, select_operation};
use super::error::Code;
use crate::telemetry::{Outcome, metrics};

pub struct Telemetry;

impl ExtensionFactory for Telemetry {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(TelemetryExtension::default())
    }
}

/// What one operation's hooks learn: its name, then its type.
#[derive(Default)]
struct Operation {
    name: Option<String>,
    kind: Option<&'static str>,
}

#[derive(Default)]
struct TelemetryExtension {
    operation: Arc<Mutex<Operation>>,
}

fn kind_name(kind: OperationType) -> &'static str {
    match kind {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

/// `ok`, or the code of the response's first error (request errors without one failed
/// validation; anything else uncoded is `OTHER`).
fn outcome(response: &Response) -> Outcome {
    match response.errors.first() {
        None => "ok",
        Some(error) => match Code::of(error.extensions.as_ref()) {
            Some(code) => code.as_str(),
            None if error.path.is_empty() => Code::GraphqlValidationFailed.as_str(),
            None => "OTHER",
        },
    }
}

/// Records the operation once: when answered, or when dropped unanswered (a query
/// cancelled at the timeout, a subscription that ended).
struct Recorder {
    operation: Arc<Mutex<Operation>>,
    started: Instant,
    /// The first error's code a subscription carried.
    outcome: Outcome,
    recorded: bool,
}

impl Recorder {
    fn new(operation: Arc<Mutex<Operation>>) -> Self {
        Self {
            operation,
            started: Instant::now(),
            outcome: "ok",
            recorded: false,
        }
    }

    fn kind(&self) -> Option<&'static str> {
        lock(&self.operation).kind
    }

    fn record(&mut self, outcome: Outcome) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let operation = lock(&self.operation);
        let kind = operation.kind.unwrap_or("unknown");
        let elapsed = (kind != "subscription").then(|| self.started.elapsed());
        metrics().operation(operation.name.as_deref(), kind, outcome, elapsed);
    }

    /// One response of the operation's stream.
    fn saw(&mut self, response: &Response) {
        let outcome = outcome(response);
        if self.kind() == Some("subscription") {
            if self.outcome == "ok" {
                self.outcome = outcome;
            }
        } else {
            self.record(outcome);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let outcome = if self.kind() == Some("subscription") {
            self.outcome
        } else {
            Code::Timeout.as_str()
        };
        self.record(outcome);
    }
}

/// A subscription's (or a WebSocket query's) responses, passed through while recorded.
struct Recorded<'s> {
    inner: BoxStream<'s, Response>,
    recorder: Recorder,
}

impl Stream for Recorded<'_> {
    type Item = Response;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Response>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(response)) = &polled {
            self.recorder.saw(response);
        }
        polled
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for TelemetryExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        lock(&self.operation).name = request.operation_name.clone();
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let mut operation = lock(&self.operation);
        if let Some(selected) = select_operation(&document, operation.name.as_deref()) {
            operation.kind = Some(kind_name(selected.ty));
        }
        // A document's only operation is known by its name even when the request does
        // not repeat it.
        if operation.name.is_none()
            && let DocumentOperations::Multiple(operations) = &document.operations
            && operations.len() == 1
        {
            operation.name = operations.keys().next().map(ToString::to_string);
        }
        drop(operation);
        Ok(document)
    }

    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut recorder = Recorder::new(self.operation.clone());
        let response = next.run(ctx).await;
        recorder.record(outcome(&response));
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        Recorded {
            inner: next.run(ctx, stream),
            recorder: Recorder::new(self.operation.clone()),
        }
        .boxed()
    }
}
