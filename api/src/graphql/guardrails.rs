//! What every operation passes before it runs, over HTTP and WebSocket alike (an
//! async-graphql extension):
//!
//! 1. authentication: the request's [`Credential`] (the `Authorization` header, or the
//!    `connection_init` payload of its WebSocket) must name a valid token; the resulting
//!    principal is put into the request's data for guards and the audit trail;
//! 2. the per-token rate limit (`RATE_LIMITED`, with `retryAfterSeconds`);
//! 3. document limits async-graphql does not have: aliases and field selections per
//!    document (an alias or duplicated-field bomb is cheap to send and costly to answer).
//!
//! Depth and complexity limits are async-graphql's own (see [`super::schema`]).

use std::any::TypeId;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Data, Request, ServerError, ServerResult, Variables};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::ApiContext;
use crate::domain::access::AuthError;

/// The `Authorization` value a request or WebSocket connection presented (may be empty).
#[derive(Clone, Debug, Default)]
pub struct Credential(pub Option<String>);

/// Per-token request budget: `per_second` sustained, bursts up to `burst`.
pub struct RateLimit {
    limiter: RateLimiter<i64, DefaultKeyedStateStore<i64>, DefaultClock>,
    clock: DefaultClock,
}

impl RateLimit {
    /// `None` when `per_second` is zero (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(per_second);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// `Err(wait)` when `token_id` has used up its budget.
    fn check(&self, token_id: i64) -> Result<(), Duration> {
        self.limiter
            .check_key(&token_id)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Limits on a document's size, beyond depth and complexity.
#[derive(Clone, Copy, Debug)]
pub struct DocumentLimits {
    pub aliases: usize,
    pub fields: usize,
}

/// The extension factory (one [`Gate`] per operation).
pub struct Guardrails {
    pub limits: DocumentLimits,
}

impl ExtensionFactory for Guardrails {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Gate {
            limits: self.limits,
        })
    }
}

struct Gate {
    limits: DocumentLimits,
}

pub fn auth_error(error: &AuthError) -> ServerError {
    let mut server_error = ServerError::new(error.to_string(), None);
    let code = match error {
        AuthError::Unavailable => "SERVICE_UNAVAILABLE",
        _ => "UNAUTHENTICATED",
    };
    server_error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
    server_error
}

fn find<T: 'static>(data: &Data) -> Option<&T> {
    data.get(&TypeId::of::<T>())
        .and_then(|boxed| boxed.downcast_ref::<T>())
}

#[async_graphql::async_trait::async_trait]
impl Extension for Gate {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let api = ctx
            .data::<ApiContext>()
            .map_err(|e| ServerError::new(e.message, None))?;
        // HTTP puts the credential into the request, WebSocket into the connection's data.
        let credential = find::<Credential>(&request.data)
            .or_else(|| find::<Credential>(ctx.session_data))
            .and_then(|c| c.0.as_deref());
        let principal = api
            .authenticator
            .authenticate(&api.db, credential)
            .await
            .map_err(|e| auth_error(&e))?;
        if let Some(limit) = &api.rate_limit
            && let Err(wait) = limit.check(principal.token_id)
        {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut error = ServerError::new(
                format!(
                    "rate limit exceeded for token {:?}; retry in {seconds} s",
                    principal.name
                ),
                None,
            );
            let extensions = error.extensions.get_or_insert_with(Default::default);
            extensions.set("code", "RATE_LIMITED");
            extensions.set("retryAfterSeconds", seconds);
            return Err(error);
        }
        request.data.insert(principal);
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
        let mut count = Count::default();
        for (_, operation) in document.operations.iter() {
            count.selection_set(&operation.node.selection_set.node);
        }
        for fragment in document.fragments.values() {
            count.selection_set(&fragment.node.selection_set.node);
        }
        let too_many = |what: &str, found: usize, max: usize| {
            let mut error = ServerError::new(
                format!("the document has {found} {what}; at most {max} are accepted"),
                None,
            );
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", "GRAPHQL_VALIDATION_FAILED");
            error
        };
        if count.aliases > self.limits.aliases {
            return Err(too_many("aliases", count.aliases, self.limits.aliases));
        }
        if count.fields > self.limits.fields {
            return Err(too_many(
                "field selections",
                count.fields,
                self.limits.fields,
            ));
        }
        Ok(document)
    }
}

/// Aliases and field selections written in a document (each fragment's body counted once,
/// each spread of it once more).
#[derive(Default)]
struct Count {
    aliases: usize,
    fields: usize,
}

impl Count {
    fn selection_set(&mut self, set: &SelectionSet) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    self.fields += 1;
                    if field.node.alias.is_some() {
                        self.aliases += 1;
                    }
                    self.selection_set(&field.node.selection_set.node);
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_set(&fragment.node.selection_set.node);
                }
                // A spread re-runs its fragment's fields: it counts as a selection too.
                Selection::FragmentSpread(_) => self.fields += 1,
            }
        }
    }
}
