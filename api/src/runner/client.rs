//! The runner's only way to the server: GraphQL over HTTP with a `runner` token. Each
//! operation is a `.graphql` document in `operations/`; its variables and response types are
//! generated from it and `schema.graphql` at compile time (`graphql_client`), so stages,
//! outcomes, access modes and the fields read are the schema's: a renamed field or value
//! fails the build, not a deployment. A test also validates the documents against the
//! schema the server builds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The operations the runner sends, and their generated types.
pub mod operations {
    use graphql_client::GraphQLQuery;

    /// The schema's `DateTime` scalar.
    pub type DateTime = chrono::DateTime<chrono::Utc>;
    /// The schema's `ID` scalar.
    #[allow(clippy::upper_case_acronyms)]
    pub type ID = String;

    #[derive(GraphQLQuery)]
    #[graphql(
        schema_path = "../schema.graphql",
        query_path = "src/runner/operations/claim.graphql",
        response_derives = "Debug, Clone, PartialEq",
        variables_derives = "Debug, Clone"
    )]
    pub struct Claim;

    #[derive(GraphQLQuery)]
    #[graphql(
        schema_path = "../schema.graphql",
        query_path = "src/runner/operations/heartbeat.graphql",
        response_derives = "Debug, Clone, PartialEq",
        variables_derives = "Debug, Clone"
    )]
    pub struct Heartbeat;

    #[derive(GraphQLQuery)]
    #[graphql(
        schema_path = "../schema.graphql",
        query_path = "src/runner/operations/report.graphql",
        response_derives = "Debug, Clone, PartialEq",
        variables_derives = "Debug, Clone"
    )]
    pub struct Report;

    #[derive(GraphQLQuery)]
    #[graphql(
        schema_path = "../schema.graphql",
        query_path = "src/runner/operations/append_log.graphql",
        response_derives = "Debug, Clone, PartialEq",
        variables_derives = "Debug, Clone"
    )]
    pub struct AppendLog;

    #[derive(GraphQLQuery)]
    #[graphql(
        schema_path = "../schema.graphql",
        query_path = "src/runner/operations/runner_apps.graphql",
        response_derives = "Debug, Clone, PartialEq",
        variables_derives = "Debug, Clone"
    )]
    pub struct RunnerApps;

    #[derive(GraphQLQuery)]
    #[graphql(
        schema_path = "../schema.graphql",
        query_path = "src/runner/operations/runner_signals.graphql",
        response_derives = "Debug, Clone, PartialEq",
        variables_derives = "Debug, Clone"
    )]
    pub struct RunnerSignals;

    pub const CLAIM: &str = include_str!("operations/claim.graphql");
    pub const HEARTBEAT: &str = include_str!("operations/heartbeat.graphql");
    pub const REPORT: &str = include_str!("operations/report.graphql");
    pub const APPEND_LOG: &str = include_str!("operations/append_log.graphql");
    pub const RUNNER_APPS: &str = include_str!("operations/runner_apps.graphql");
    pub const RUNNER_SIGNALS: &str = include_str!("operations/runner_signals.graphql");

    /// Every document, by file name (for the schema test).
    pub const ALL: &[(&str, &str)] = &[
        ("claim.graphql", CLAIM),
        ("heartbeat.graphql", HEARTBEAT),
        ("report.graphql", REPORT),
        ("append_log.graphql", APPEND_LOG),
        ("runner_apps.graphql", RUNNER_APPS),
        ("runner_signals.graphql", RUNNER_SIGNALS),
    ];
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or answered garbage: worth retrying.
    #[error("cannot reach the server: {0}")]
    Transport(String),
    /// The server refused the operation (`code` from `extensions.code`).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    /// The certificate authorities to trust cannot be read.
    #[error("cannot read the certificate authorities {0}")]
    Tls(String),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            ClientError::Transport(_) | ClientError::Tls(_) => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    authorization: String,
    /// What the WebSocket trusts, as the HTTP client does.
    tls: Arc<rustls::ClientConfig>,
}

/// The TLS configuration of the runner's connections to the server: the system's
/// certificate authorities, and those of `ca_file` (PEM) when given (a server behind a
/// proxy with a private CA).
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(certificate);
    }
    if let Some(path) = ca_file {
        let unreadable =
            |e: &dyn std::fmt::Display| ClientError::Tls(format!("{}: {e}", path.display()));
        let mut added = 0;
        for certificate in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
            roots
                .add(certificate.map_err(|e| unreadable(&e))?)
                .map_err(|e| unreadable(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(unreadable(&"no certificate in it"));
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl Client {
    /// The server's GraphQL WebSocket endpoint (`ws://…/graphql/ws`).
    pub fn websocket_url(&self) -> String {
        let url = self.endpoint.replacen("https://", "wss://", 1);
        format!("{}/ws", url.replacen("http://", "ws://", 1))
    }

    /// The server's URL (without `/graphql`).
    pub fn server_url(&self) -> &str {
        self.endpoint.trim_end_matches("/graphql")
    }

    /// The `Authorization` value this client sends.
    pub fn authorization(&self) -> &str {
        &self.authorization
    }

    /// What `wss://` connections to the server trust.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }
}

impl Client {
    /// A client of `server` sending `token`, trusting `tls` for `https://` and `wss://`.
    pub fn new(
        server: &str,
        token: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            endpoint: format!("{}/graphql", server.trim_end_matches('/')),
            authorization: format!("Bearer {}", token.trim()),
            tls,
        })
    }

    /// Runs operation `Q` with `variables`; `Ok(data)` when the server reported no error.
    pub async fn run<Q: graphql_client::GraphQLQuery>(
        &self,
        variables: Q::Variables,
    ) -> Result<Q::ResponseData, ClientError> {
        let body = Q::build_query(variables);
        let variables = serde_json::to_value(&body.variables)
            .map_err(|e| ClientError::Transport(format!("cannot encode variables: {e}")))?;
        self.call(body.query, variables).await
    }

    /// Runs `document` with `variables`; `Ok(data)` when the server reported no error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        document: &str,
        variables: Value,
    ) -> Result<T, ClientError> {
        let response = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .json(&json!({ "query": document, "variables": variables }))
            .send()
            .await
            .map_err(|e| ClientError::Transport(with_causes(&e)))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ClientError::Transport(format!("HTTP {status}: {e}")))?;
        if let Some(error) = body["errors"].as_array().and_then(|e| e.first()) {
            return Err(refusal(error));
        }
        serde_json::from_value(body["data"].clone())
            .map_err(|e| ClientError::Transport(format!("unexpected response: {e}")))
    }
}

/// Subscriptions open on one `graphql-transport-ws` connection to the server.
pub struct Subscriptions {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

fn text_message(message: Value) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Text(message.to_string().into())
}

impl Client {
    /// Opens a WebSocket to the server, authenticates, and starts each `(id, document,
    /// variables)` subscription.
    pub async fn subscribe(
        &self,
        subscriptions: &[(&str, &str, Value)],
    ) -> Result<Subscriptions, ClientError> {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let mut request = self
            .websocket_url()
            .into_client_request()
            .map_err(|e| transport(&e))?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            reqwest::header::HeaderValue::from_static("graphql-transport-ws"),
        );
        let connector = tokio_tungstenite::Connector::Rustls(self.tls());
        let (mut socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
                .await
                .map_err(|e| ClientError::Transport(with_causes(&e)))?;
        socket
            .send(text_message(json!({
                "type": "connection_init",
                "payload": { "Authorization": self.authorization() },
            })))
            .await
            .map_err(|e| transport(&e))?;
        for (id, document, variables) in subscriptions {
            socket
                .send(text_message(json!({
                    "id": id,
                    "type": "subscribe",
                    "payload": { "query": document, "variables": variables },
                })))
                .await
                .map_err(|e| transport(&e))?;
        }
        Ok(Subscriptions { socket })
    }
}

impl Subscriptions {
    /// The next event: the subscription's id and its data. `Ok(None)` when the server
    /// closed the connection; a refusal (`errors`) is `ClientError::Refused`.
    pub async fn next(&mut self) -> Result<Option<(String, Value)>, ClientError> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        while let Some(message) = self.socket.next().await {
            let text = match message.map_err(|e| transport(&e))? {
                Message::Text(text) => text,
                Message::Close(_) => return Ok(None),
                _ => continue,
            };
            let message: Value = serde_json::from_str(&text).map_err(|e| transport(&e))?;
            let id = message["id"].as_str().unwrap_or_default().to_owned();
            match message["type"].as_str() {
                Some("next") => {
                    if let Some(error) = message["payload"]["errors"].get(0) {
                        return Err(refusal(error));
                    }
                    return Ok(Some((id, message["payload"]["data"].clone())));
                }
                Some("error") => {
                    return Err(message["payload"]
                        .get(0)
                        .map_or_else(|| transport(&message), refusal));
                }
                Some("complete") => return Ok(None),
                Some("ping") => self
                    .socket
                    .send(text_message(json!({ "type": "pong" })))
                    .await
                    .map_err(|e| transport(&e))?,
                _ => {}
            }
        }
        Ok(None)
    }
}

/// A GraphQL error as a refusal.
fn refusal(error: &Value) -> ClientError {
    ClientError::Refused {
        code: error["extensions"]["code"]
            .as_str()
            .unwrap_or("UNKNOWN")
            .to_owned(),
        message: error["message"].as_str().unwrap_or_default().to_owned(),
    }
}

/// `error` and what caused it (reqwest's own message leaves out why a connection failed:
/// a refused connection, a certificate of an unknown issuer).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use graphql_client::GraphQLQuery;

    use super::operations::*;

    /// The text sent is the file's, byte for byte: servers trust the runner's documents by
    /// the SHA-256 of that text.
    #[test]
    fn the_generated_operations_send_the_files() {
        for (sent, file) in [
            (
                Claim::build_query(claim::Variables { public_host: None }).query,
                CLAIM,
            ),
            (
                RunnerApps::build_query(runner_apps::Variables).query,
                RUNNER_APPS,
            ),
            (
                RunnerSignals::build_query(runner_signals::Variables).query,
                RUNNER_SIGNALS,
            ),
            (heartbeat::QUERY, HEARTBEAT),
            (report::QUERY, REPORT),
            (append_log::QUERY, APPEND_LOG),
        ] {
            assert_eq!(sent, file);
        }
    }
}
