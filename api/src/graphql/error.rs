//! How failures reach clients: every error carries a stable `extensions.code`
//! (`BAD_USER_INPUT`, `NOT_FOUND`, `CONFLICT`, `INTERNAL`) and, for input errors, the input
//! `extensions.field`. Database errors are logged with a correlation id and returned as
//! `INTERNAL` without SQL or driver text.

use async_graphql::{Error, ErrorExtensions};

/// Every `extensions.code` Keystone answers with (`BAD_USER_INPUT` for `BadUserInput`). The
/// HTTP layer picks statuses from it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr, strum::EnumString,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// An argument, input field or variable is invalid (`extensions.field` or
    /// `extensions.variable` says which).
    BadUserInput,
    NotFound,
    Conflict,
    Forbidden,
    /// No valid token.
    Unauthenticated,
    /// Over the rate limit (`extensions.retryAfterSeconds`).
    RateLimited,
    /// Tokens or the database cannot be reached right now.
    ServiceUnavailable,
    /// The query did not finish within the request timeout.
    Timeout,
    ResponseTooLarge,
    /// A slow subscriber missed events.
    EventsDropped,
    /// The server's event stream was interrupted and is back: refetch.
    Resync,
    GraphqlParseFailed,
    GraphqlValidationFailed,
    TooManyConnections,
    TooManySubscriptions,
    /// The HTTP request is not a GraphQL request.
    BadRequest,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    /// The disk is full: nothing was stored (HTTP 507 when nothing ran).
    InsufficientStorage,
    /// A request named a trusted document by a hash no stored document has.
    PersistedQueryNotFound,
    /// With trusted documents only, a document that is not one of them.
    ForbiddenDocument,
    /// Unexpected; logged under `extensions.correlationId`.
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The code of an error's `extensions.code`, if it is one of ours.
    pub fn of(extensions: Option<&async_graphql::ErrorExtensionValues>) -> Option<Code> {
        match extensions?.get("code")? {
            async_graphql::Value::String(code) => code.parse().ok(),
            _ => None,
        }
    }

    /// Sets `extensions.code`.
    pub fn set(self, extensions: &mut async_graphql::ErrorExtensionValues) {
        extensions.set("code", self.as_str());
    }
}

use crate::domain::DomainError;

/// The longest error message sent: messages can echo what a client sent (a parse error
/// quotes the document's line, an unknown operation its name), so each is cut here, once,
/// for every transport.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Cuts every message of `errors` to [`MAX_MESSAGE_BYTES`].
pub fn bound_messages(errors: &mut [async_graphql::ServerError]) {
    for error in errors {
        if error.message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !error.message.is_char_boundary(cut) {
                cut -= 1;
            }
            let left_out = error.message.len() - cut;
            error.message.truncate(cut);
            error.message.push_str(&format!("…({left_out} more bytes)"));
        }
    }
}

/// A field error with `extensions.code`.
pub fn coded(code: Code, message: impl Into<String>) -> Error {
    Error::new(message.into()).extend_with(|_, e| code.set(e))
}

/// A request error (or one raised outside a resolver) with `extensions.code`.
pub fn server_error(code: Code, message: impl Into<String>) -> async_graphql::ServerError {
    let mut error = async_graphql::ServerError::new(message, None);
    code.set(error.extensions.get_or_insert_with(Default::default));
    error
}

fn with_field(code: Code, field: &str, message: impl Into<String>) -> Error {
    let field = field.to_owned();
    Error::new(message.into()).extend_with(|_, e| {
        code.set(e);
        e.set("field", field);
    })
}

pub fn bad_input(field: &str, message: impl Into<String>) -> Error {
    with_field(Code::BadUserInput, field, message)
}

pub fn not_found(field: &str, message: impl Into<String>) -> Error {
    with_field(Code::NotFound, field, message)
}

/// How long a client should wait before retrying after `SERVICE_UNAVAILABLE`.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// What a database error means for the client, decided in this one place:
/// - the database cannot be reached right now (no connection in time, a refused or lost
///   connection, a server shutting down or starting up, SQLite busy past its timeout):
///   `SERVICE_UNAVAILABLE` (HTTP 503 with `Retry-After`), the client should retry;
/// - its disk is full (SQLite `SQLITE_FULL`, PostgreSQL `disk_full`): `INSUFFICIENT_STORAGE`,
///   nothing was written;
/// - anything else is a bug: `INTERNAL`.
pub fn database(error: &sea_orm::DbErr) -> Error {
    use sea_orm::{DbErr, RuntimeErr};
    if let DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) = error {
        crate::telemetry::metrics().pool_timeout();
    }
    let driver = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => None,
        DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)) => {
            Some(e.as_ref())
        }
        _ => return internal(error),
    };
    let code = match driver {
        Some(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    let unavailable = match (driver, code.as_deref()) {
        (None, _) => true,
        (
            Some(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ),
            _,
        ) => true,
        // Class 08 (connection exception), 57P01–57P03 (shutdown, cannot connect now),
        // SQLite 5 (busy).
        (_, Some(code)) => {
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "5")
        }
        _ => false,
    };
    if unavailable {
        tracing::warn!(%error, "database unavailable");
        return Error::new("the database is unavailable; retry shortly").extend_with(|_, e| {
            Code::ServiceUnavailable.set(e);
            e.set("retryAfterSeconds", RETRY_AFTER_SECONDS);
        });
    }
    if matches!(code.as_deref(), Some("13" | "53100")) {
        tracing::warn!(%error, "database disk full");
        return coded(
            Code::InsufficientStorage,
            "the database's disk is full: nothing was written; retry once there is space",
        );
    }
    internal(error)
}

/// An unexpected failure: logged in full under a fresh id, reported to the client as that id.
pub fn internal(error: impl std::fmt::Display) -> Error {
    let id = correlation_id();
    tracing::error!(correlation_id = %id, %error, "internal error");
    Error::new(format!("internal error (correlation id {id})")).extend_with(|_, e| {
        Code::Internal.set(e);
        e.set("correlationId", id);
    })
}

fn correlation_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:x}-{:x}",
        nanos & 0xffff_ffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Used as `domain_call().await.extend()?` (async-graphql's `ResultExt`).
impl ErrorExtensions for DomainError {
    fn extend(&self) -> Error {
        match self {
            DomainError::NotFound { field, .. } => not_found(field, self.to_string()),
            DomainError::Invalid { field, reason } => bad_input(field, format!("{field} {reason}")),
            DomainError::Conflict {
                field: Some(field),
                message,
            } => with_field(Code::Conflict, field, message.clone()),
            DomainError::Conflict {
                field: None,
                message,
            } => coded(Code::Conflict, message.clone()),
            DomainError::Forbidden(message) => coded(Code::Forbidden, message.clone()),
            DomainError::StorageFull(message) => coded(Code::InsufficientStorage, message.clone()),
            DomainError::Database(db) => database(db),
            DomainError::Internal(message) => internal(message),
        }
    }
}

/// `?` on database results inside resolvers (database errors through [`database`]).
pub trait OrInternal<T> {
    fn or_internal(self) -> async_graphql::Result<T>;
}

impl<T, E: std::fmt::Display + 'static> OrInternal<T> for Result<T, E> {
    fn or_internal(self) -> async_graphql::Result<T> {
        self.map_err(|error| {
            let any: &dyn std::any::Any = &error;
            let db = any.downcast_ref::<sea_orm::DbErr>().or_else(|| {
                any.downcast_ref::<std::sync::Arc<sea_orm::DbErr>>()
                    .map(|e| &**e)
            });
            match db {
                Some(db) => database(db),
                None => internal(error),
            }
        })
    }
}
