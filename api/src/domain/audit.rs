//! The audit trail: one append-only `api_audit_event` row per mutation, whatever its
//! outcome — who (token name and role), what (operation and arguments, secrets redacted), on
//! which object, when, and how it ended — and one per call refused before it ran (failed
//! authentication, rate limit).
//!
//! What is never copied into the trail (rows there can never be deleted): secrets (by name,
//! in URLs, token-shaped strings), and free text that runners send, which may carry build
//! secrets — log chunks and error summaries are recorded as their size only.

use std::cell::RefCell;

use entity::Timestamp;
use entity::audit_event::{self, ActorRole, Outcome};
use entity::prelude::AuditEvent;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, Set};
use serde_json::Value;

use super::access::Principal;
use super::{DomainError, writer_turn};

/// Argument names whose values are never recorded.
const SECRET_NAMES: &[&str] = &[
    "secret",
    "token",
    "password",
    "passphrase",
    "privatekey",
    // `setAppEnv`'s value: config vars are write-only.
    "value",
];
/// Argument names whose text is recorded only as its size: free text from runners (build
/// output, error summaries) that may carry secrets.
const TEXT_NAMES: &[&str] = &["chunk", "errorsummary"];
/// Longest string value kept in full; longer ones are cut (a 10 MB name is not evidence).
const MAX_STRING_CHARS: usize = 500;
/// `api_audit_event.object_id` and `operation` hold at most this many characters.
const MAX_OBJECT_ID_CHARS: usize = 200;
const MAX_OPERATION_CHARS: usize = 100;
/// The name recorded for a caller without an accepted token.
pub const ANONYMOUS: &str = "(anonymous)";

/// What one call did, as recorded.
pub struct Entry {
    /// The caller; `None` when no token was accepted.
    pub principal: Option<Principal>,
    pub operation: String,
    pub arguments: Value,
    pub object_id: Option<String>,
    /// `None` on success; the error's code and message otherwise.
    pub error: Option<(String, String)>,
    /// The SHA-256 of the document the call ran, when known.
    pub document_hash: Option<String>,
}

/// What a write acted on, as the trail names it.
#[derive(Clone, Copy, Debug)]
pub enum Object {
    Repository(i64),
    App(i64),
    Deployment(i64),
    ApiToken(i64),
}

/// A successful call's entry, waiting for the transaction that makes its change: see
/// [`pending`] and [`commit`].
pub struct Pending {
    /// The entry, recorded with `error: None` and the object the write names.
    pub entry: Entry,
    /// How the trail names an object (its global ID; the API layer owns that format).
    pub name: fn(Object) -> String,
}

tokio::task_local! {
    static PENDING: RefCell<Option<Pending>>;
}

/// Runs `body` with `entry` pending: the first write that `body` commits through [`commit`]
/// appends the entry inside its own transaction, so a change and its audit row are stored
/// together or not at all (a cut connection cannot keep one without the other). Returns
/// `body`'s output and the entry if no write took it (a call that changed nothing).
pub async fn pending<F: Future>(entry: Pending, body: F) -> (F::Output, Option<Pending>) {
    PENDING
        .scope(RefCell::new(Some(entry)), async {
            let output = body.await;
            (output, PENDING.with(|cell| cell.borrow_mut().take()))
        })
        .await
}

/// Commits a domain write that acted on `object`, appending the task's pending audit entry
/// (if any, see [`pending`]) in the same transaction.
pub(crate) async fn commit(txn: DatabaseTransaction, object: Object) -> Result<(), DbErr> {
    let pending = PENDING
        .try_with(|cell| cell.borrow_mut().take())
        .ok()
        .flatten();
    if let Some(Pending { mut entry, name }) = pending {
        entry.object_id = Some(name(object));
        insert(&txn, entry).await?;
    }
    txn.commit().await
}

/// Appends `entry` to the trail on its own: refusals, failures, and calls that wrote nothing.
pub async fn record(db: &DatabaseConnection, entry: Entry) -> Result<(), DomainError> {
    // One INSERT: atomic without a transaction around it.
    let _turn = writer_turn(db).await;
    Ok(insert(db, entry).await?)
}

async fn insert(db: &impl ConnectionTrait, entry: Entry) -> Result<(), DbErr> {
    let (outcome, error_code, error_message) = match entry.error {
        None => (Outcome::Success, None, None),
        Some((code, message)) => (Outcome::Error, Some(code), Some(message)),
    };
    let (token_id, token_name, token_role) = match entry.principal {
        Some(p) => (Some(p.token_id), p.name.clone(), ActorRole::from(p.role)),
        None => (None, ANONYMOUS.to_owned(), ActorRole::Anonymous),
    };
    let row = audit_event::ActiveModel {
        occurred_at: Set(Timestamp::now()),
        token_id: Set(token_id),
        token_name: Set(token_name),
        token_role: Set(token_role),
        operation: Set(cut(&entry.operation, MAX_OPERATION_CHARS)),
        arguments: Set(redact(entry.arguments).to_string()),
        // Ids come from the caller: a 300-character one must not lose the row.
        object_id: Set(entry.object_id.map(|id| cut(&id, MAX_OBJECT_ID_CHARS))),
        outcome: Set(outcome),
        error_code: Set(error_code),
        error_message: Set(error_message.map(|m| shorten(&m))),
        document_hash: Set(entry.document_hash),
        ..Default::default()
    };
    AuditEvent::insert(row).exec_without_returning(db).await?;
    Ok(())
}

/// Replaces secrets with `"[REDACTED]"`: values under secret-looking names, passwords in
/// URLs, anything shaped like a Keystone token; and cuts very long strings.
pub fn redact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let normalized = key.to_ascii_lowercase().replace(['_', '-'], "");
                    if SECRET_NAMES.iter().any(|s| normalized.contains(s)) {
                        (key, Value::String("[REDACTED]".into()))
                    } else if TEXT_NAMES.contains(&normalized.as_str()) {
                        let size = value.as_str().map_or(0, str::len);
                        (key, Value::String(format!("[{size} bytes, not recorded]")))
                    } else {
                        (key, redact(value))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::String(text) => Value::String(redact_string(&text)),
        other => other,
    }
}

fn redact_string(text: &str) -> String {
    if text.contains(super::access::SECRET_PREFIX) {
        return "[REDACTED]".into();
    }
    if let Ok(mut url) = url::Url::parse(text)
        && url.password().is_some()
    {
        let _ = url.set_password(Some("[REDACTED]"));
        return shorten(url.as_str());
    }
    shorten(text)
}

/// `text` cut to at most `max` characters (with an ellipsis when cut).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut kept: String = text.chars().take(max - 1).collect();
    kept.push('…');
    kept
}

fn shorten(text: &str) -> String {
    let count = text.chars().count();
    if count <= MAX_STRING_CHARS {
        return text.to_owned();
    }
    let kept: String = text.chars().take(MAX_STRING_CHARS).collect();
    format!("{kept}… [{} more characters]", count - MAX_STRING_CHARS)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let token = format!("{}{}", crate::domain::access::SECRET_PREFIX, "x".repeat(43));
        let redacted = redact(json!({
            "input": {
                "name": "web",
                "apiToken": "abc",
                "gitUrl": "https://user:hunter2@example.com/a.git",
                "note": token,
                "long": "y".repeat(600),
                "chunk": "DB_PASSWORD=hunter2\n",
                "errorSummary": "build failed: TOKEN=abc",
            }
        }));
        assert_eq!(redacted["input"]["chunk"], "[20 bytes, not recorded]");
        assert_eq!(
            redacted["input"]["errorSummary"],
            "[23 bytes, not recorded]"
        );
        let input = &redacted["input"];
        assert_eq!(input["name"], "web");
        assert_eq!(input["apiToken"], "[REDACTED]");
        assert_eq!(input["note"], "[REDACTED]");
        let url = input["gitUrl"].as_str().unwrap();
        assert!(
            !url.contains("hunter2") && url.contains("example.com"),
            "{url}"
        );
        assert!(
            input["long"]
                .as_str()
                .unwrap()
                .ends_with("[100 more characters]")
        );
    }
}
