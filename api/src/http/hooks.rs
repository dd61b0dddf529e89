//! `POST /hooks/git/{app}`: push notifications from Git hosts ([`crate::domain::webhooks`]).
//! The sender is told apart by its headers; the body is read up to 1 MiB (413 above, before
//! anything is parsed); each client address (behind `--trusted-proxy`, the forwarded one)
//! may post 5 deliveries a second (bursts of 50), and each app name receive 2 (bursts of
//! 30): 429 above, before the database is touched, so a flood of unsigned posts cannot grow
//! the audit trail faster than that.
//!
//! Answers: 202 with the queued deployment (or the commit waiting for the running one), 200
//! for a delivery acknowledged and ignored (another branch, a tag, a `ping`, a replay), 401
//! for an unknown app or a missing or wrong signature, 400 for a signed body that is not a
//! push event, 429 over the rate, 503 when the database is unavailable.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use super::AppState;
use super::client::Client;
use crate::domain::DomainError;
use crate::domain::events::EventBus;
use crate::domain::ports::PortRange;
use crate::domain::secrets::SecretBox;
use crate::domain::webhooks::{self, Delivery, Received, Refused, Sender};

/// Deliveries one client address may post per second, on average, and at once (a Git host
/// sends every repository's pushes from a few addresses).
const PER_CLIENT: (u32, u32) = (5, 50);
/// Deliveries one app may receive per second, and at once.
const PER_APP: (u32, u32) = (2, 30);
/// Keys remembered by a rate limiter before the idle ones are forgotten.
const REMEMBERED_KEYS: usize = 10_000;

fn limiter<K: std::hash::Hash + Eq + Clone>(
    (per_second, burst): (u32, u32),
) -> DefaultKeyedRateLimiter<K> {
    let quota = Quota::per_second(NonZeroU32::new(per_second).expect("non-zero"))
        .allow_burst(NonZeroU32::new(burst).expect("non-zero"));
    RateLimiter::keyed(quota)
}

/// Whether `key` is within `limiter`'s rate (forgetting idle keys when there are many).
fn admitted<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> bool {
    if limiter.len() > REMEMBERED_KEYS {
        limiter.retain_recent();
    }
    limiter.check_key(key).is_ok()
}

/// What the webhook endpoint needs.
pub struct Hooks {
    pub secrets: Arc<SecretBox>,
    pub events: EventBus,
    pub ports: PortRange,
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    per_app: DefaultKeyedRateLimiter<String>,
}

impl Hooks {
    pub fn new(secrets: Arc<SecretBox>, events: EventBus, ports: PortRange) -> Self {
        Self {
            secrets,
            events,
            ports,
            per_client: limiter(PER_CLIENT),
            per_app: limiter(PER_APP),
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The sender, its proof, its event and its delivery id, from the headers.
fn delivery_of<'a>(headers: &HeaderMap, body: &'a [u8]) -> Delivery<'a> {
    let first = |names: &[&str]| names.iter().find_map(|name| header(headers, name));
    let (sender, proof, event, id) = if let Some(proof) = header(headers, "x-hub-signature-256") {
        (
            Sender::GitHub,
            proof,
            first(&["x-github-event"]),
            first(&["x-github-delivery"]),
        )
    } else if let Some(proof) = first(&["x-gitea-signature", "x-forgejo-signature"]) {
        (
            Sender::Gitea,
            proof,
            first(&["x-gitea-event", "x-forgejo-event"]),
            first(&["x-gitea-delivery", "x-forgejo-delivery"]),
        )
    } else if let Some(proof) = header(headers, "x-gitlab-token") {
        (
            Sender::GitLab,
            proof,
            first(&["x-gitlab-event"]),
            first(&["x-gitlab-event-uuid", "idempotency-key"]),
        )
    } else {
        (
            Sender::Generic,
            header(headers, "x-keystone-signature").unwrap_or_default(),
            first(&["x-keystone-event"]),
            first(&["x-keystone-delivery"]),
        )
    };
    Delivery {
        sender,
        proof,
        event: event.unwrap_or_default(),
        id,
        body,
    }
}

pub async fn receive(
    State(state): State<AppState>,
    Client(client): Client,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hooks = &state.hooks;
    let refused = if !admitted(&hooks.per_client, &client) {
        Some("too many deliveries from this address; retry later")
    } else if !admitted(&hooks.per_app, &app) {
        Some("too many deliveries for this app; retry later")
    } else {
        None
    };
    if let Some(why) = refused {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(json!({ "error": why })),
        )
            .into_response();
    }
    let delivery = delivery_of(&headers, &body);
    let received = webhooks::receive(
        &state.db,
        &hooks.secrets,
        &hooks.events,
        hooks.ports,
        client,
        &app,
        delivery,
    )
    .await;
    match received {
        Ok(Received::Deployed {
            deployment_id,
            commit,
        }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "deployment": deployment_id, "commit": commit })),
        )
            .into_response(),
        Ok(Received::Waiting { commit }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "waiting": commit, "reason": "a deployment of the app is running; this commit is deployed when it ends" })),
        )
            .into_response(),
        Ok(Received::Ignored(why)) => {
            (StatusCode::OK, Json(json!({ "ignored": why }))).into_response()
        }
        Err(Refused::Unauthorized) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": Refused::Unauthorized.to_string() })),
        )
            .into_response(),
        Err(Refused::Malformed(why)) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response()
        }
        Err(Refused::Domain(error)) => domain_error(error),
    }
}

fn domain_error(error: DomainError) -> Response {
    let status = match &error {
        DomainError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        DomainError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        DomainError::Conflict { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match status {
        StatusCode::INTERNAL_SERVER_ERROR => {
            crate::graphql::error::internal(format!("webhook: {error}")).message
        }
        StatusCode::SERVICE_UNAVAILABLE => "the database is unavailable; retry".to_owned(),
        _ => error.to_string(),
    };
    (status, Json(json!({ "error": message }))).into_response()
}
