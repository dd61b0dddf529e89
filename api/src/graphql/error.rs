//! How failures reach clients: every error carries a stable `extensions.code`
//! (`BAD_USER_INPUT`, `NOT_FOUND`, `CONFLICT`, `INTERNAL`) and, for input errors, the input
//! `extensions.field`. Database errors are logged with a correlation id and returned as
//! `INTERNAL` without SQL or driver text.

use async_graphql::{Error, ErrorExtensions};

use crate::domain::DomainError;

pub fn bad_input(field: &str, message: impl Into<String>) -> Error {
    let field = field.to_owned();
    Error::new(message.into()).extend_with(|_, e| {
        e.set("code", "BAD_USER_INPUT");
        e.set("field", field);
    })
}

pub fn not_found(field: &str, message: impl Into<String>) -> Error {
    let field = field.to_owned();
    Error::new(message.into()).extend_with(|_, e| {
        e.set("code", "NOT_FOUND");
        e.set("field", field);
    })
}

/// An unexpected failure: logged in full under a fresh id, reported to the client as that id.
pub fn internal(error: impl std::fmt::Display) -> Error {
    let id = correlation_id();
    tracing::error!(correlation_id = %id, %error, "internal error");
    Error::new(format!("internal error (correlation id {id})")).extend_with(|_, e| {
        e.set("code", "INTERNAL");
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
            DomainError::Conflict { field, message } => {
                let field = *field;
                Error::new(message.clone()).extend_with(|_, e| {
                    e.set("code", "CONFLICT");
                    if let Some(field) = field {
                        e.set("field", field);
                    }
                })
            }
            DomainError::Forbidden(message) => {
                Error::new(message.clone()).extend_with(|_, e| e.set("code", "FORBIDDEN"))
            }
            DomainError::Database(db) => internal(db),
            DomainError::Internal(message) => internal(message),
        }
    }
}

/// `?` on database results inside resolvers.
pub trait OrInternal<T> {
    fn or_internal(self) -> async_graphql::Result<T>;
}

impl<T, E: std::fmt::Display> OrInternal<T> for Result<T, E> {
    fn or_internal(self) -> async_graphql::Result<T> {
        self.map_err(internal)
    }
}
