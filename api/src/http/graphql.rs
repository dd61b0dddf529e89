//! `/graphql` over HTTP, following the GraphQL-over-HTTP specification, and `/graphql/ws`
//! (the `graphql-transport-ws` protocol, plus the legacy `graphql-ws` one).
//!
//! - POST takes `application/json`; anything else is 415. A body that is not a GraphQL
//!   request is 400.
//! - GET takes `query`, `variables` and `operationName` in the query string, for queries
//!   only: a mutation over GET is 405 (`Allow: POST`).
//! - The response is `application/graphql-response+json` or `application/json`, whichever
//!   the `Accept` header prefers (`application/json` when it names neither and has no
//!   wildcard: 406). With `application/graphql-response+json`, a request that fails to parse
//!   or validate is 400 and its body has no `data`; with `application/json` it is 200, as
//!   legacy clients expect.
//!
//! Order of work for a request: admission (token and rate limit) before anything is parsed;
//! then parsing and the document-size check (on a blocking thread for documents over 1 KiB,
//! so that a large document cannot hold up the runtime's workers); then the rest of
//! [`crate::graphql::engine`]'s path (variables, the role's reach, validation, execution,
//! key order). A document asking for a field the role may not read is a request error:
//! 403 under `application/graphql-response+json`.
//!
//! Every operation is logged with its duration and outcome, and, once its token is checked,
//! its name (cut and escaped: [`Escaped`]); nothing else a client sends is logged.

use std::time::Instant;

use std::net::IpAddr;

use async_graphql::ServerError;
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::client::Client;
use crate::graphql::conformance::select_operation;
use crate::graphql::error::Code;
use crate::graphql::guardrails::{ClientAddress, Credential};
use crate::graphql::loaders::with_request_loaders;
use crate::logging::Escaped;

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
const APPLICATION_JSON: &str = "application/json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MediaType {
    GraphqlResponseJson,
    Json,
}

impl MediaType {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            MediaType::GraphqlResponseJson => "application/graphql-response+json; charset=utf-8",
            MediaType::Json => "application/json; charset=utf-8",
        })
    }
}

/// Picks the response media type from `Accept` (highest q wins; on a tie, the GraphQL one).
fn negotiate(headers: &HeaderMap) -> Option<MediaType> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.trim().is_empty() {
        return Some(MediaType::Json);
    }
    let mut best: Option<(f32, MediaType)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let candidate = match media.as_str() {
            GRAPHQL_RESPONSE_JSON => MediaType::GraphqlResponseJson,
            APPLICATION_JSON | "application/*" | "*/*" => MediaType::Json,
            _ => continue,
        };
        let better = match best {
            None => true,
            Some((best_q, best_type)) => {
                q > best_q
                    || (q == best_q
                        && candidate == MediaType::GraphqlResponseJson
                        && best_type == MediaType::Json)
            }
        };
        if q > 0.0 && better {
            best = Some((q, candidate));
        }
    }
    best.map(|(_, media)| media)
}

fn not_acceptable() -> Response {
    plain_error(
        Code::NotAcceptable,
        MediaType::Json,
        "this endpoint answers application/graphql-response+json or application/json",
    )
}

/// An error that is not a GraphQL execution result (no `data`).
fn plain_error(code: Code, media: MediaType, message: &str) -> Response {
    let body =
        json!({ "errors": [{ "message": message, "extensions": { "code": code.as_str() } }] });
    (
        status_of(code),
        [(header::CONTENT_TYPE, media.header())],
        body.to_string(),
    )
        .into_response()
}

/// The `Authorization` header, for [`crate::graphql::guardrails`] to check.
fn credential(headers: &HeaderMap) -> Credential {
    Credential(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    )
}

pub async fn post(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(media) = negotiate(&headers) else {
        return not_acceptable();
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return plain_error(
                Code::PayloadTooLarge,
                media,
                "the request body is larger than this server accepts (KEYSTONE_MAX_BODY_BYTES)",
            );
        }
        Err(rejection) => {
            return plain_error(Code::BadRequest, media, &rejection.body_text());
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case(APPLICATION_JSON) {
        return plain_error(
            Code::UnsupportedMediaType,
            media,
            "send the request as application/json",
        );
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return plain_error(
            Code::BadRequest,
            media,
            "batched requests are not supported: send one GraphQL request per POST",
        );
    }
    match serde_json::from_slice::<async_graphql::Request>(&body) {
        Ok(request) => {
            let document_id = document_id_in_body(&body);
            execute(
                &state,
                request,
                document_id,
                &headers,
                client,
                media,
                Method::Post,
            )
            .await
        }
        Err(error) => plain_error(
            Code::BadRequest,
            media,
            &format!("the body is not a GraphQL request: {error}"),
        ),
    }
}

pub async fn get(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(media) = negotiate(&headers) else {
        return not_acceptable();
    };
    let request =
        match async_graphql::http::parse_query_string(query.as_deref().unwrap_or_default()) {
            Ok(request) => request,
            Err(error) => {
                return plain_error(
                    Code::BadRequest,
                    media,
                    &format!("invalid query string: {error}"),
                );
            }
        };
    let document_id = url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "documentId")
        .map(|(_, value)| value.into_owned());
    execute(
        &state,
        request,
        document_id,
        &headers,
        client,
        media,
        Method::Get,
    )
    .await
}

/// A POST body's `documentId` (GraphQL over HTTP's persisted documents), read only when the
/// body mentions one.
fn document_id_in_body(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithDocumentId {
        #[serde(rename = "documentId")]
        document_id: Option<String>,
    }
    const FIELD: &[u8] = b"\"documentId\"";
    if !body.windows(FIELD.len()).any(|window| window == FIELD) {
        return None;
    }
    serde_json::from_slice::<WithDocumentId>(body)
        .ok()
        .and_then(|with| with.document_id)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

/// Whether the operation `request` would run of `document` is a mutation.
fn is_mutation(request: &async_graphql::Request, document: &ExecutableDocument) -> bool {
    select_operation(document, request.operation_name.as_deref())
        .is_some_and(|op| op.ty == OperationType::Mutation)
}

/// A request error: it failed before execution (syntax, validation, limits).
fn is_request_error(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response
            .errors
            .iter()
            .all(|e: &ServerError| e.path.is_empty())
}

async fn execute(
    state: &AppState,
    mut request: async_graphql::Request,
    document_id: Option<String>,
    headers: &HeaderMap,
    client: IpAddr,
    media: MediaType,
    method: Method,
) -> Response {
    let started = Instant::now();
    // Nothing a client sends is logged before its token is checked.
    let mut operation = "-".to_owned();
    let credential = credential(headers);
    // One deadline for the whole request, admission included: a stalled database cannot
    // hold a client past the request timeout.
    let deadline = state.engine.deadline();
    let admitted = tokio::time::timeout_at(
        deadline,
        state.admission.admit(
            &state.db,
            credential.0.as_deref(),
            ClientAddress(Some(client)),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(crate::graphql::guardrails::auth_error(
            &crate::domain::access::AuthError::Unavailable,
        ))
    });
    let principal = match admitted {
        Ok(principal) => {
            if let Some(name) = &request.operation_name {
                operation = Escaped(name).to_string();
            }
            principal
        }
        Err(refusal) => {
            return respond(
                async_graphql::Response::from_errors(vec![refusal]),
                media,
                &operation,
                started,
            );
        }
    };
    if let Err(refusal) = state
        .documents
        .resolve(&mut request, document_id.as_deref(), &principal)
        .await
    {
        return respond(
            async_graphql::Response::from_errors(vec![refusal]),
            media,
            &operation,
            started,
        );
    }
    let (request, document) = match state.engine.parse(request).await {
        Ok(parsed) => parsed,
        Err(error) => {
            return respond(
                async_graphql::Response::from_errors(vec![error]),
                media,
                &operation,
                started,
            );
        }
    };
    let mutation = is_mutation(&request, &document);
    if mutation && method == Method::Get {
        let mut response = plain_error(
            Code::MethodNotAllowed,
            media,
            "mutations are only accepted over POST",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let request = request.data(credential).data(principal);
    let engine = state.engine.clone();
    let run = with_request_loaders(state.db.clone(), move |loaders| {
        Box::pin(async move { engine.run(request.data(loaders), Some(document)).await })
    });
    let response = state
        .engine
        .within_deadline(deadline, mutation, &operation, run)
        .await;
    respond(response, media, &operation, started)
}

/// The HTTP response for a GraphQL response; a request error (nothing executed) gets no
/// `data`, and its status from its code.
fn respond(
    mut response: async_graphql::Response,
    media: MediaType,
    operation: &str,
    started: Instant,
) -> Response {
    crate::graphql::error::bound_messages(&mut response.errors);
    let request_error = is_request_error(&response);
    if request_error {
        // Parse errors were labelled when parsing; what is left failed validation.
        for error in &mut response.errors {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            if extensions.get("code").is_none() {
                Code::GraphqlValidationFailed.set(extensions);
            }
        }
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if response.errors.is_empty() {
        tracing::info!(%operation, elapsed_ms, outcome = "ok", "graphql");
    } else {
        let codes: Vec<String> = response
            .errors
            .iter()
            .map(|e| {
                e.extensions
                    .as_ref()
                    .and_then(|x| x.get("code"))
                    .map_or_else(|| "?".to_owned(), |c| c.to_string())
            })
            .collect();
        tracing::info!(%operation, elapsed_ms, outcome = "error", codes = ?codes, "graphql");
    }

    let code = response
        .errors
        .first()
        .and_then(|e| Code::of(e.extensions.as_ref()));
    // The database was unreachable for everything that failed: the client should retry.
    let unavailable = !response.errors.is_empty()
        && response
            .errors
            .iter()
            .all(|e| Code::of(e.extensions.as_ref()) == Some(Code::ServiceUnavailable));
    let status = match code {
        // Refused before it ran: the status says why.
        Some(
            code @ (Code::Unauthenticated
            | Code::RateLimited
            | Code::ServiceUnavailable
            | Code::Timeout
            | Code::ForbiddenDocument),
        ) if request_error => status_of(code),
        _ if unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // Failed before it ran (syntax, validation, variables, the role's reach): its code's.
        _ if request_error && media == MediaType::GraphqlResponseJson => {
            code.map_or(StatusCode::BAD_REQUEST, status_of)
        }
        _ => StatusCode::OK,
    };
    let header = match (code, response.errors.first()) {
        (Some(code), Some(error)) if status != StatusCode::OK => refusal_header(code, error),
        _ => None,
    };
    let body = if request_error {
        // No `data` entry: the request never executed.
        serde_json::to_vec(&json!({ "errors": response.errors }))
    } else {
        serde_json::to_vec(&response)
    };
    match body {
        Ok(body) => {
            let mut response =
                (status, [(header::CONTENT_TYPE, media.header())], body).into_response();
            if let Some((name, value)) = header {
                response.headers_mut().insert(name, value);
            }
            response
        }
        Err(error) => {
            tracing::error!(%error, "cannot serialize a GraphQL response");
            plain_error(Code::Internal, media, "internal error")
        }
    }
}

/// The HTTP status of an error answered without executing anything.
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Forbidden | Code::ForbiddenDocument => StatusCode::FORBIDDEN,
        Code::RateLimited | Code::TooManyConnections | Code::TooManySubscriptions => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Code::ServiceUnavailable | Code::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        Code::BadUserInput
        | Code::NotFound
        | Code::Conflict
        | Code::ResponseTooLarge
        | Code::EventsDropped
        | Code::Resync
        | Code::GraphqlParseFailed
        | Code::GraphqlValidationFailed
        | Code::PersistedQueryNotFound
        | Code::BadRequest => StatusCode::BAD_REQUEST,
    }
}

/// The header that goes with a refusal: how to authenticate, or when to retry.
fn refusal_header(code: Code, error: &ServerError) -> Option<(header::HeaderName, HeaderValue)> {
    match code {
        Code::Unauthenticated => Some((
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"keystone\""),
        )),
        Code::RateLimited | Code::ServiceUnavailable => {
            let retry = match error
                .extensions
                .as_ref()
                .and_then(|e| e.get("retryAfterSeconds"))
            {
                Some(async_graphql::Value::Number(n)) => n.as_u64().unwrap_or(1),
                _ => crate::graphql::error::RETRY_AFTER_SECONDS,
            };
            Some((header::RETRY_AFTER, HeaderValue::from(retry)))
        }
        _ => None,
    }
}
