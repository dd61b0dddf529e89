//! Counts and times every GraphQL operation for `/metrics` ([`crate::telemetry`]), over
//! HTTP and WebSocket alike: [`super::engine`] gives each request a [`Recorder`], tells it
//! the operation's name and type once the document is parsed, and shows it the responses.
//!
//! A query or mutation is recorded when it is answered (a query cancelled at the request
//! timeout is recorded as `TIMEOUT`); a subscription when it ends, with the code of the
//! first error it carried, if any. Requests refused before execution (authentication, rate
//! limit) have metrics of their own.

use std::task::Poll;
use std::time::Instant;

use async_graphql::Response;
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use futures_util::{Stream, StreamExt};

use super::conformance::select_operation;
use super::error::Code;
use crate::telemetry::{Outcome, metrics};

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
pub struct Recorder {
    name: Option<String>,
    kind: Option<&'static str>,
    started: Instant,
    /// The first error's code a subscription carried.
    outcome: Outcome,
    recorded: bool,
}

impl Recorder {
    /// For a request that names `operation_name` (or none).
    pub fn new(operation_name: Option<String>) -> Self {
        Self {
            name: operation_name,
            kind: None,
            started: Instant::now(),
            outcome: "ok",
            recorded: false,
        }
    }

    /// The request's document is parsed: its operation's type is known, and a document's
    /// only operation by its name even when the request does not repeat it.
    pub fn parsed(&mut self, document: &ExecutableDocument) {
        if let Some(selected) = select_operation(document, self.name.as_deref()) {
            self.kind = Some(kind_name(selected.ty));
        }
        if self.name.is_none()
            && let DocumentOperations::Multiple(operations) = &document.operations
            && operations.len() == 1
        {
            self.name = operations.keys().next().map(ToString::to_string);
        }
    }

    fn record(&mut self, outcome: Outcome) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let kind = self.kind.unwrap_or("unknown");
        let elapsed = (kind != "subscription").then(|| self.started.elapsed());
        metrics().operation(self.name.as_deref(), kind, outcome, elapsed);
    }

    /// One response of the operation (a query's or mutation's only one).
    pub fn saw(&mut self, response: &Response) {
        let outcome = outcome(response);
        if self.kind == Some("subscription") {
            if self.outcome == "ok" {
                self.outcome = outcome;
            }
        } else {
            self.record(outcome);
        }
    }

    /// `responses`, recorded as they pass.
    pub fn watch(self, responses: BoxStream<'static, Response>) -> BoxStream<'static, Response> {
        Recorded {
            inner: responses,
            recorder: self,
        }
        .boxed()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let outcome = if self.kind == Some("subscription") {
            self.outcome
        } else {
            Code::Timeout.as_str()
        };
        self.record(outcome);
    }
}

/// A subscription's (or a WebSocket query's) responses, passed through while recorded.
struct Recorded {
    inner: BoxStream<'static, Response>,
    recorder: Recorder,
}

impl Stream for Recorded {
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
