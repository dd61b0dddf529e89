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
use crate::telemetry::{OperationName, Outcome, metrics};

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
    /// The operation's label ([`crate::telemetry::Metrics::operation_label`]).
    name: String,
    kind: Option<&'static str>,
    started: Instant,
    /// The first error's code a subscription carried.
    outcome: Outcome,
    recorded: bool,
}

impl Default for Recorder {
    /// For a request whose document is not parsed yet.
    fn default() -> Self {
        Self {
            name: metrics().operation_label(&OperationName::Unknown),
            kind: None,
            started: Instant::now(),
            outcome: "ok",
            recorded: false,
        }
    }
}

impl Recorder {
    /// The request's document is parsed: the operation `requested` selects (a document's
    /// only one when it names none) gives the type and the name, which is the document's,
    /// never the request's alone. `trusted`: the document is a trusted one.
    pub fn parsed(
        &mut self,
        document: &ExecutableDocument,
        requested: Option<&str>,
        trusted: bool,
    ) {
        let Some(selected) = select_operation(document, requested) else {
            return;
        };
        self.kind = Some(kind_name(selected.ty));
        let name = match &document.operations {
            DocumentOperations::Single(_) => None,
            DocumentOperations::Multiple(operations) => operations
                .iter()
                .find(|(_, operation)| std::ptr::eq(&operation.node, selected))
                .map(|(name, _)| name.to_string()),
        };
        let name = match name {
            None => OperationName::Anonymous,
            Some(name) if trusted => OperationName::Trusted(name),
            Some(name) => OperationName::Client(name),
        };
        self.name = metrics().operation_label(&name);
    }

    fn record(&mut self, outcome: Outcome) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let kind = self.kind.unwrap_or("unknown");
        let elapsed = (kind != "subscription").then(|| self.started.elapsed());
        metrics().operation(std::mem::take(&mut self.name), kind, outcome, elapsed);
    }

    /// The operation's label, to name it in the log.
    pub fn label(&self) -> &str {
        &self.name
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
