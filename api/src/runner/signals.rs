//! Reconciling as soon as something changes: the runner subscribes to `runnerSignals` over
//! the server's WebSocket (`graphql-transport-ws`) and wakes its reconciler on every signal —
//! the first one arrives at once, so every (re)connection reconciles. The connection is
//! re-established after a failure with a growing delay (1 s up to 30 s); the periodic pass
//! covers the time in between.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use graphql_client::GraphQLQuery;

use super::client::Client;
use super::client::operations::{RunnerSignals, runner_signals};

/// Keeps a subscription open for as long as the runner runs, notifying `wake` on each signal.
pub async fn watch(client: Client, wake: Arc<Notify>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match subscribe(&client, &wake).await {
            Ok(()) => delay = Duration::from_secs(1),
            Err(error) => {
                tracing::debug!(%error, "the signal subscription ended; reconnecting");
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
        tokio::time::sleep(delay).await;
    }
}

async fn subscribe(client: &Client, wake: &Notify) -> Result<(), String> {
    let mut request = client
        .websocket_url()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().map_err(|_| "header")?,
    );
    let connector = tokio_tungstenite::Connector::Rustls(client.tls());
    let (mut socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
            .await
            .map_err(|e| e.to_string())?;
    let send = |message: Value| Message::Text(message.to_string().into());
    socket
        .send(send(json!({
            "type": "connection_init",
            "payload": { "Authorization": client.authorization() },
        })))
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send(send(json!({
            "id": "signals",
            "type": "subscribe",
            "payload": { "query": RunnerSignals::build_query(runner_signals::Variables).query },
        })))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(message) = socket.next().await {
        let text = match message.map_err(|e| e.to_string())? {
            Message::Text(text) => text,
            Message::Close(frame) => return Err(format!("closed: {frame:?}")),
            _ => continue,
        };
        let message: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        match message["type"].as_str() {
            Some("next") if message["payload"]["errors"].is_null() => {
                let signal: runner_signals::ResponseData =
                    serde_json::from_value(message["payload"]["data"].clone())
                        .map_err(|e| format!("an unexpected signal: {e}"))?;
                tracing::debug!(reason = ?signal.runner_signals.reason, "signal from the server");
                wake.notify_one();
            }
            Some("next") => return Err(format!("refused: {}", message["payload"]["errors"])),
            Some("ping") => socket
                .send(send(json!({ "type": "pong" })))
                .await
                .map_err(|e| e.to_string())?,
            Some("error" | "complete") => return Err(format!("subscription ended: {message}")),
            _ => {}
        }
    }
    Ok(())
}
