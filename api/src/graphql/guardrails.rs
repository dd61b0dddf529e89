//! What every operation passes before it runs, over HTTP and WebSocket alike:
//!
//! 1. admission ([`Admission`]): the request's [`Credential`] (the `Authorization` header,
//!    or the `connection_init` payload of its WebSocket) must name a valid token, and the
//!    token must be within its rate limit (`RATE_LIMITED`, with `retryAfterSeconds`). Over
//!    HTTP this happens before the document is even parsed; refusals are audited.
//! 2. the document's size ([`check_document`]): aliases and field selections *after
//!    expanding fragment spreads*, computed once per fragment (memoized, linear in the
//!    document's length), before async-graphql validates the document. Validation and the
//!    depth and complexity checks walk spreads recursively, so a small document of fragments
//!    that spread each other twice would otherwise cost exponential time.
//! 3. the role's reach ([`super::auth::check_reach`]): a role reaches only the types and
//!    fields [`super::auth::may_reach`] lists, however deep in a payload they are; checked on
//!    the document, so a request asking for more runs nothing.
//!
//! [`super::engine`] runs them in this order. Depth and complexity limits are async-graphql's
//! own (see [`super::schema`]).

use std::any::TypeId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Data, ServerError, ServerResult};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use sea_orm::DatabaseConnection;
use serde_json::json;

use super::error::{Code, server_error};
use crate::domain::access::{AuthError, Authenticator, Principal};
use crate::domain::audit::{Actor, Audit};
use crate::logging::Escaped;

/// The `Authorization` value a request or WebSocket connection presented (may be empty).
#[derive(Clone, Debug, Default)]
pub struct Credential(pub Option<String>);

/// The client's IP address (the TCP peer), for limits and the audit trail.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientAddress(pub Option<IpAddr>);

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

/// Refused calls audited per client address (or token) and second, with this burst; more
/// are refused all the same but not written, so a flood of bad requests cannot turn into a
/// flood of permanent rows (the server log counts them).
const AUDITED_REFUSALS_PER_SECOND: u32 = 2;
const AUDITED_REFUSALS_BURST: u32 = 20;

/// Authentication and the per-token rate limit: the first thing every operation passes.
pub struct Admission {
    pub authenticator: Arc<Authenticator>,
    rate_limit: Option<RateLimit>,
    audited_refusals: RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>,
}

impl Admission {
    pub fn new(authenticator: Arc<Authenticator>, rate_limit: Option<RateLimit>) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(AUDITED_REFUSALS_PER_SECOND).expect("> 0"))
            .allow_burst(NonZeroU32::new(AUDITED_REFUSALS_BURST).expect("> 0"));
        Self {
            authenticator,
            rate_limit,
            audited_refusals: RateLimiter::keyed(quota),
        }
    }

    /// The caller behind `credential`, charged one request; a refusal is the error to send
    /// (`UNAUTHENTICATED`, `RATE_LIMITED` or `SERVICE_UNAVAILABLE`), and is audited.
    pub async fn admit(
        &self,
        db: &DatabaseConnection,
        credential: Option<&str>,
        client: ClientAddress,
    ) -> Result<Principal, ServerError> {
        let principal = match self.authenticator.authenticate(db, credential).await {
            Ok(principal) => principal,
            Err(error) => {
                crate::telemetry::metrics().authentication_failed(match error {
                    AuthError::Missing => "missing",
                    AuthError::Malformed => "malformed",
                    AuthError::Invalid => "invalid",
                    AuthError::Expired => "expired",
                    AuthError::Unavailable => "unavailable",
                });
                if error != AuthError::Unavailable {
                    let key = client.0.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
                    self.record_refusal(
                        db,
                        key,
                        None,
                        "(authentication)",
                        client,
                        error.to_string(),
                    )
                    .await;
                }
                return Err(auth_error(&error));
            }
        };
        if let Some(limit) = &self.rate_limit
            && let Err(wait) = limit.check(principal.token_id)
        {
            crate::telemetry::metrics().rate_limited();
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let message = format!(
                "rate limit exceeded for token {:?}; retry in {seconds} s",
                principal.name
            );
            let key = format!("token:{}", principal.token_id);
            self.record_refusal(
                db,
                key,
                Some(&principal),
                "(rate limit)",
                client,
                message.clone(),
            )
            .await;
            let mut error = server_error(Code::RateLimited, message);
            let extensions = error.extensions.get_or_insert_with(Default::default);
            extensions.set("retryAfterSeconds", seconds);
            return Err(error);
        }
        Ok(principal)
    }

    async fn record_refusal(
        &self,
        db: &DatabaseConnection,
        key: String,
        principal: Option<&Principal>,
        operation: &str,
        client: ClientAddress,
        why: String,
    ) {
        if self.audited_refusals.check_key(&key).is_err() {
            tracing::debug!(%key, operation, "refusal over the audit budget: not recorded");
            return;
        }
        let code = if principal.is_some() {
            Code::RateLimited
        } else {
            Code::Unauthenticated
        }
        .as_str();
        let actor = principal.map_or(Actor::Anonymous, |p| Actor::Token(p.clone()));
        let arguments = json!({ "client": client.0.map(|ip| ip.to_string()) });
        let audit = Audit::new(actor, operation, arguments);
        if let Err(error) = audit.finish(db, Some((code.to_owned(), why))).await {
            let _ = super::error::internal(format!("cannot append to the audit trail: {error}"));
        }
    }
}

/// What one operation may read beyond what complexity counts: log files, which a field
/// cannot size before reading them. One per operation.
pub struct ResponseBudget {
    /// Log bytes still allowed to be read; reads take turns, so the budget is exact.
    pub log_bytes: tokio::sync::Mutex<usize>,
}

impl ResponseBudget {
    /// Log bytes one operation may read.
    pub const LOG_BYTES: usize = 4 << 20;
}

impl Default for ResponseBudget {
    fn default() -> Self {
        Self {
            log_bytes: tokio::sync::Mutex::new(Self::LOG_BYTES),
        }
    }
}

/// Limits on a document's size, beyond depth and complexity.
#[derive(Clone, Copy, Debug)]
pub struct DocumentLimits {
    pub aliases: usize,
    /// Selections (fields, fragment spreads and inline fragments) after expanding every
    /// fragment spread.
    pub fields: usize,
}

/// `Ok` when `document`, with every fragment spread expanded, stays within `limits`
/// (`GRAPHQL_VALIDATION_FAILED` otherwise), spreads no unknown fragment and no fragment
/// that spreads itself. Linear in the document's length: each fragment's expanded size is
/// computed once.
///
/// This pass runs before anything else walks the document (the role's reach, async-graphql's
/// validation, depth and complexity, the response ordering), and every one of those walks
/// at most the expanded document: so what this pass accepts, they walk in time bounded by
/// the limits. A spread costs one selection whatever it names, so a family of fragments
/// that spread each other (or an unknown fragment) many times over cannot measure as small.
pub fn check_document(document: &ExecutableDocument, limits: &DocumentLimits) -> ServerResult<()> {
    let invalid = |message: String| server_error(Code::GraphqlValidationFailed, message);
    let mut sizer = Sizer {
        document,
        memo: HashMap::new(),
    };
    let mut total = Count::default();
    for (_, operation) in document.operations.iter() {
        total = total.plus(
            sizer
                .selection_set(&operation.node.selection_set.node)
                .map_err(invalid)?,
        );
    }
    // Validation visits every fragment definition too, used or not.
    for name in document.fragments.keys() {
        total = total.plus(sizer.fragment(name.as_str()).map_err(invalid)?);
    }
    let too_many = |what: &str, found: usize, max: usize| {
        invalid(format!(
            "the document has {found} {what} once its fragments are expanded; at most {max} \
             are accepted"
        ))
    };
    if total.aliases > limits.aliases {
        return Err(too_many("aliases", total.aliases, limits.aliases));
    }
    if total.selections > limits.fields {
        return Err(too_many(
            "selections (fields, fragment spreads and inline fragments)",
            total.selections,
            limits.fields,
        ));
    }
    Ok(())
}

/// Aliases and selections, saturating (an expanded size can exceed any integer).
#[derive(Clone, Copy, Default)]
struct Count {
    aliases: usize,
    selections: usize,
}

impl Count {
    fn plus(self, other: Count) -> Count {
        Count {
            aliases: self.aliases.saturating_add(other.aliases),
            selections: self.selections.saturating_add(other.selections),
        }
    }
}

/// Expanded sizes of a document's selection sets, one computation per fragment.
struct Sizer<'a> {
    document: &'a ExecutableDocument,
    /// `None` while a fragment is being measured: meeting it again is a cycle.
    memo: HashMap<&'a str, Option<Count>>,
}

impl<'a> Sizer<'a> {
    fn fragment(&mut self, name: &'a str) -> Result<Count, String> {
        match self.memo.get(name) {
            Some(Some(count)) => return Ok(*count),
            Some(None) => return Err(format!("fragment {} spreads itself", Escaped(name))),
            None => {}
        }
        let Some((key, fragment)) = self.document.fragments.get_key_value(name) else {
            return Err(format!("unknown fragment {}", Escaped(name)));
        };
        let name = key.as_str();
        self.memo.insert(name, None);
        let count = self.selection_set(&fragment.node.selection_set.node)?;
        self.memo.insert(name, Some(count));
        Ok(count)
    }

    fn selection_set(&mut self, set: &'a SelectionSet) -> Result<Count, String> {
        let mut count = Count::default();
        for selection in &set.items {
            let inner = match &selection.node {
                Selection::Field(field) => Count {
                    aliases: usize::from(field.node.alias.is_some()),
                    selections: 1,
                }
                .plus(self.selection_set(&field.node.selection_set.node)?),
                Selection::InlineFragment(fragment) => Count {
                    aliases: 0,
                    selections: 1,
                }
                .plus(self.selection_set(&fragment.node.selection_set.node)?),
                Selection::FragmentSpread(spread) => Count {
                    aliases: 0,
                    selections: 1,
                }
                .plus(self.fragment(spread.node.fragment_name.node.as_str())?),
            };
            count = count.plus(inner);
        }
        Ok(count)
    }
}

pub fn auth_error(error: &AuthError) -> ServerError {
    let code = match error {
        AuthError::Unavailable => Code::ServiceUnavailable,
        _ => Code::Unauthenticated,
    };
    server_error(code, error.to_string())
}

pub fn find<T: 'static>(data: &Data) -> Option<&T> {
    data.get(&TypeId::of::<T>())
        .and_then(|boxed| boxed.downcast_ref::<T>())
}
