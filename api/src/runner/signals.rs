//! Reconciling as soon as something changes: the runner subscribes to `runnerSignals` over
//! the server's WebSocket (`graphql-transport-ws`) and wakes its reconciler on every signal —
//! the first one arrives at once, so every (re)connection reconciles. The connection is
//! re-established after a failure with a growing delay (1 s up to 30 s); the periodic pass
//! covers the time in between.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;

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
    let document = RunnerSignals::build_query(runner_signals::Variables).query;
    let mut signals = client
        .subscribe(&[("signals", document, json!({}))])
        .await
        .map_err(|e| e.to_string())?;
    while let Some((_, data)) = signals.next().await.map_err(|e| e.to_string())? {
        let signal: runner_signals::ResponseData =
            serde_json::from_value(data).map_err(|e| format!("an unexpected signal: {e}"))?;
        tracing::debug!(reason = ?signal.runner_signals.reason, "signal from the server");
        wake.notify_one();
    }
    Ok(())
}
