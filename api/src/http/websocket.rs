//! `/graphql/ws`: GraphQL over WebSocket (`graphql-transport-ws`, and the legacy `graphql-ws`).
//! async-graphql-axum speaks the protocol; a supervisor between it and the socket holds the
//! limits the protocol engine does not have:
//!
//! - messages larger than the HTTP body limit are refused by the socket itself;
//! - a connection that has not completed `connection_init` within the init timeout is closed
//!   with `4408`; connections per client address (checked at the upgrade: 429) and per token
//!   (checked at init) are bounded;
//! - the token is checked again every recheck interval: once it is revoked or expired, the
//!   connection, with its subscriptions, is closed with `4403`;
//! - a `subscribe` reusing the id of a running operation closes the connection with `4409`
//!   (as the protocol says); operations running at once are bounded per connection and per
//!   token (`TOO_MANY_SUBSCRIPTIONS`, an `error` message for that id);
//! - what the server sends is paced by a byte budget per connection: a subscriber over it
//!   falls behind, and the event bus drops its oldest events (`EVENTS_DROPPED`) rather than
//!   buffering without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, ClientMessage};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use super::client::Client;
use super::graphql::status_of;
use crate::domain::access::Principal;
use crate::graphql::error::Code;
use crate::graphql::guardrails::{ClientAddress, Credential};
use crate::graphql::loaders::loaders;

/// The limits of `/graphql/ws` (see the module doc).
#[derive(Clone, Copy, Debug)]
pub struct WebSocketLimits {
    pub init_timeout: Duration,
    pub max_message_bytes: usize,
    pub per_address: usize,
    pub per_token: usize,
    pub subscriptions: usize,
    pub subscriptions_per_token: usize,
    pub bytes_per_second: u32,
    pub recheck: Duration,
}

/// Close codes of `graphql-transport-ws`.
const FORBIDDEN: u16 = 4403;
/// RFC 6455 "going away": the server shuts down; reconnect (to another instance, or later).
const GOING_AWAY: u16 = 1001;
const INIT_TIMEOUT: u16 = 4408;
const DUPLICATE_ID: u16 = 4409;
const UNAUTHORIZED: u16 = 4401;

/// How many of something each key holds; a [`Slot`] gives its unit back when dropped.
pub struct Occupancy<K: Eq + Hash + Clone> {
    held: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Clone> Default for Occupancy<K> {
    fn default() -> Self {
        Self {
            held: Mutex::default(),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> Occupancy<K> {
    /// One more unit for `key`, unless it holds `max` already.
    fn acquire(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(key.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            owner: self.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash + Clone> Occupancy<K> {
    /// Units held over all keys.
    fn total(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

pub struct Slot<K: Eq + Hash + Clone> {
    owner: Arc<Occupancy<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// What all connections of this server hold.
#[derive(Default)]
pub struct Sockets {
    by_address: Arc<Occupancy<IpAddr>>,
    by_token: Arc<Occupancy<i64>>,
    subscriptions_by_token: Arc<Occupancy<i64>>,
}

impl Sockets {
    /// WebSocket connections open (each holds a slot of its client address).
    pub fn connections(&self) -> usize {
        self.by_address.total()
    }

    /// Operations running on them.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions_by_token.total()
    }
}

/// What `connection_init` established.
struct Session {
    principal: Principal,
    credential: Credential,
    _token_slot: Slot<i64>,
}

pub async fn websocket(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let limits = state.websocket;
    let Some(address_slot) = state.sockets.by_address.acquire(client, limits.per_address) else {
        let body = json!({ "errors": [{
            "message": format!("too many WebSocket connections from {client} (at most {})", limits.per_address),
            "extensions": { "code": Code::TooManyConnections.as_str() },
        }] });
        return (status_of(Code::TooManyConnections), axum::Json(body)).into_response();
    };
    let header_credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| async move {
            supervise(state, socket, protocol, header_credential, client).await;
            drop(address_slot);
        })
}

/// Runs one connection: the protocol engine between the client and the limits.
async fn supervise(
    state: AppState,
    socket: WebSocket,
    protocol: GraphQLProtocol,
    header_credential: Option<String>,
    client: IpAddr,
) {
    let limits = state.websocket;
    let legacy = socket
        .protocol()
        .is_some_and(|p| p.as_bytes() == b"graphql-ws");
    let (mut socket_out, mut socket_in) = socket.split();
    let (to_engine, engine_in) = mpsc::channel::<Message>(16);
    let (engine_out, mut from_engine) = mpsc::channel::<Message>(16);
    let (established, mut session_rx) = oneshot::channel::<Session>();

    let engine_stream = futures_util::stream::unfold(engine_in, |mut rx| async move {
        rx.recv().await.map(|m| (Ok::<_, axum::Error>(m), rx))
    });
    let engine_sink = futures_util::sink::unfold(engine_out, |tx, message: Message| async move {
        tx.send(message).await.map(|()| tx)
    });
    let init_state = state.clone();
    let engine = GraphQLWebSocket::new_with_pair(
        Box::pin(engine_sink),
        engine_stream,
        state.engine.clone(),
        protocol,
    )
    .on_connection_init(move |payload| async move {
        let state = init_state;
        let credential = Credential(init_credential(&payload).or(header_credential));
        let principal = state
            .admission
            .admit(
                &state.db,
                credential.0.as_deref(),
                ClientAddress(Some(client)),
            )
            .await
            .map_err(|e| async_graphql::Error::new(format!("UNAUTHENTICATED: {}", e.message)))?;
        let Some(token_slot) = state
            .sockets
            .by_token
            .acquire(principal.token_id, state.websocket.per_token)
        else {
            return Err(async_graphql::Error::new(format!(
                "TOO_MANY_CONNECTIONS: token {:?} has {} WebSocket connections open already",
                principal.name, state.websocket.per_token
            )));
        };
        let mut data = Data::default();
        data.insert(credential.clone());
        data.insert(ClientAddress(Some(client)));
        data.insert(loaders(state.db.clone()));
        let _ = established.send(Session {
            principal,
            credential,
            _token_slot: token_slot,
        });
        Ok(data)
    })
    .serve();
    let engine = tokio::spawn(engine);

    let budget = Budget::new(limits.bytes_per_second);
    let mut session: Option<Session> = None;
    let mut awaiting_init = true;
    let mut init_sent = false;
    let mut running: HashMap<String, Slot<i64>> = HashMap::new();
    let init_deadline = tokio::time::sleep(limits.init_timeout);
    tokio::pin!(init_deadline);
    let mut shutdown = state.shutdown.clone();
    let mut recheck = tokio::time::interval(limits.recheck);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let close: Option<(u16, String)> = loop {
        tokio::select! {
            received = socket_in.next() => {
                let message = match received {
                    Some(Ok(message)) => message,
                    _ => break None,
                };
                let bytes: &[u8] = match &message {
                    Message::Text(text) => text.as_bytes(),
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => {
                        // Complete the closing handshake the client started (the reply is
                        // queued by the WebSocket library; closing the sink sends it).
                        let _ = socket_out.close().await;
                        break None;
                    }
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                match ClientMessage::from_bytes(bytes) {
                    Ok(ClientMessage::ConnectionInit { .. }) => init_sent = true,
                    Ok(ClientMessage::Start { id, .. }) => {
                        // A client may send its first operation right behind
                        // `connection_init`: it waits for the init's outcome.
                        if init_sent && awaiting_init {
                            awaiting_init = false;
                            let outcome = tokio::time::timeout_at(
                                init_deadline.deadline(),
                                &mut session_rx,
                            )
                            .await;
                            session = outcome.ok().and_then(Result::ok);
                        }
                        let Some(session) = &session else {
                            break Some((UNAUTHORIZED, "Unauthorized".to_owned()));
                        };
                        if running.contains_key(&id) {
                            break Some((DUPLICATE_ID, format!("Subscriber for {id} already exists")));
                        }
                        let slot = (running.len() < limits.subscriptions)
                            .then(|| state.sockets.subscriptions_by_token.acquire(
                                session.principal.token_id,
                                limits.subscriptions_per_token,
                            ))
                            .flatten();
                        let Some(slot) = slot else {
                            let refusal = too_many_subscriptions(&id, legacy, &limits);
                            if socket_out.send(Message::Text(refusal.into())).await.is_err() {
                                break None;
                            }
                            continue;
                        };
                        running.insert(id, slot);
                    }
                    Ok(ClientMessage::Stop { id }) => {
                        running.remove(&id);
                    }
                    _ => {}
                }
                if to_engine.send(message).await.is_err() {
                    break None;
                }
            }
            sent = from_engine.recv() => {
                let Some(message) = sent else { break None };
                match &message {
                    Message::Close(frame) => {
                        let frame = frame.clone();
                        let _ = socket_out.send(Message::Close(frame)).await;
                        break None;
                    }
                    Message::Text(text) => {
                        if let Some(id) = finished_operation(text.as_str()) {
                            running.remove(id.as_ref());
                        }
                        if let Some(budget) = &budget {
                            budget.spend(text.len()).await;
                        }
                    }
                    _ => {}
                }
                if socket_out.send(message).await.is_err() {
                    break None;
                }
            }
            established = &mut session_rx, if awaiting_init => {
                awaiting_init = false;
                session = established.ok();
            }
            () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
                break Some((GOING_AWAY, "server shutting down".to_owned()));
            }
            () = &mut init_deadline, if session.is_none() => {
                break Some((INIT_TIMEOUT, "Connection initialisation timeout".to_owned()));
            }
            _ = recheck.tick(), if session.is_some() => {
                let Some(current) = &session else { continue };
                let checked = state
                    .admission
                    .authenticator
                    .authenticate(&state.db, current.credential.0.as_deref())
                    .await;
                if let Err(error) = checked
                    && error != crate::domain::access::AuthError::Unavailable
                {
                    break Some((FORBIDDEN, format!("Forbidden: {error}")));
                }
            }
        }
    };
    engine.abort();
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket_out.send(Message::Close(Some(frame))).await;
    }
}

/// Bytes a connection is sent, counted in KiB: `bytes_per_second` on average, bursts of 8
/// seconds' worth.
struct Budget {
    limiter: RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::DefaultClock,
    >,
    burst: NonZeroU32,
}

impl Budget {
    /// `None` when `bytes_per_second` is zero (no budget).
    fn new(bytes_per_second: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(bytes_per_second.div_ceil(1024))?;
        let burst = per_second.saturating_mul(NonZeroU32::new(8).expect("> 0"));
        Some(Self {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            burst,
        })
    }

    /// Waits until `bytes` may be sent (a message larger than a burst waits for a burst).
    async fn spend(&self, bytes: usize) {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let cells = NonZeroU32::new(kib)
            .unwrap_or(NonZeroU32::MIN)
            .min(self.burst);
        let _ = self.limiter.until_n_ready(cells).await;
    }
}

/// The id of an operation the engine has finished (`complete`, or `error` for it).
fn finished_operation(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    /// An id with `"` or `\` in it is escaped in JSON, so it cannot be borrowed from the
    /// text: `Cow` takes it either way (a `&str` would fail, and the slot would never be
    /// given back).
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    // Only the envelope's fields are read; `next` payloads are skipped over.
    let envelope: Envelope = serde_json::from_str(text).ok()?;
    matches!(envelope.kind.as_ref(), "complete" | "error")
        .then_some(envelope.id)
        .flatten()
}

fn too_many_subscriptions(id: &str, legacy: bool, limits: &WebSocketLimits) -> String {
    let error = json!({
        "message": format!(
            "too many operations at once: at most {} per connection and {} per token",
            limits.subscriptions, limits.subscriptions_per_token
        ),
        "extensions": { "code": Code::TooManySubscriptions.as_str() },
    });
    // graphql-transport-ws sends a list of errors; the legacy protocol one error.
    let payload = if legacy { error } else { json!([error]) };
    json!({ "type": "error", "id": id, "payload": payload }).to_string()
}

/// The token a WebSocket client sent in its `connection_init` payload: `Authorization`
/// (any case, at the top or under `headers`, as Apollo and Hasura clients send it) or
/// `token` (a bare secret).
fn init_credential(payload: &serde_json::Value) -> Option<String> {
    let object = payload.as_object()?;
    let authorization = |map: &serde_json::Map<String, serde_json::Value>| {
        map.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, value)| value.as_str())
            .map(str::to_owned)
    };
    authorization(object)
        .or_else(|| object.get("headers")?.as_object().and_then(authorization))
        .or_else(|| {
            object
                .get("token")?
                .as_str()
                .map(|token| format!("Bearer {token}"))
        })
}

#[cfg(test)]
mod tests {
    use super::finished_operation;

    #[test]
    fn finished_operations_are_found_whatever_their_id() {
        for id in ["1", "a\"b", "back\\slash", "\u{1F600}\n"] {
            for kind in ["complete", "error"] {
                let text = serde_json::json!({ "type": kind, "id": id, "payload": [] }).to_string();
                assert_eq!(finished_operation(&text).as_deref(), Some(id), "{text}");
            }
            let next = serde_json::json!({ "type": "next", "id": id, "payload": {} }).to_string();
            assert_eq!(finished_operation(&next), None);
        }
    }
}
