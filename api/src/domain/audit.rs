//! The audit trail: one append-only `api_audit_event` row per change, whatever its entry
//! point (an API call, the `keystone` command, Keystone's own tasks) and outcome — who (the
//! [`Actor`]), what (operation and arguments, secrets redacted), on which object, when, and
//! how it ended — and one per API call refused before it ran (failed authentication, rate
//! limit).
//!
//! What is never copied into the trail (rows there can never be deleted): secrets (by name,
//! in URLs, token-shaped strings), and free text that runners send, which may carry build
//! secrets — log chunks and error summaries are recorded as their size only.

use std::sync::atomic::{AtomicBool, Ordering};

use entity::Timestamp;
use entity::audit_event::{self, ActorRole, ObjectType, Outcome};
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
/// `api_audit_event.object_id`, `operation` and `token_name` hold at most this many
/// characters.
const MAX_OBJECT_ID_CHARS: usize = 200;
const MAX_OPERATION_CHARS: usize = 100;
const MAX_NAME_CHARS: usize = 100;
/// The name recorded for a caller without an accepted token.
pub const ANONYMOUS: &str = "(anonymous)";

/// Who acts. Every domain write takes one (inside an [`Audit`]), so a new entry point cannot
/// write without saying who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A caller of the API, by its token.
    Token(Principal),
    /// Someone running the `keystone` command on the server, by operating-system user name.
    Operator(String),
    /// A Git host's push notification, by the name it was received under.
    Webhook(String),
    /// Keystone itself, by the task's name (e.g. `lease sweeper`).
    System(&'static str),
    /// A caller refused before any token was accepted (it never writes).
    Anonymous,
}

impl Actor {
    /// The operator running this process: the operating-system user (`$USER`, else
    /// `$LOGNAME`, else the numeric uid).
    pub fn operator() -> Actor {
        let name = ["USER", "LOGNAME"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()));
        Actor::Operator(name)
    }

    /// The token behind the call, if a token made it.
    pub fn token(&self) -> Option<&Principal> {
        match self {
            Actor::Token(principal) => Some(principal),
            _ => None,
        }
    }

    /// The name the trail and messages give the actor.
    pub fn name(&self) -> &str {
        match self {
            Actor::Token(principal) => &principal.name,
            Actor::Operator(name) | Actor::Webhook(name) => name,
            Actor::System(name) => name,
            Actor::Anonymous => ANONYMOUS,
        }
    }

    fn role(&self) -> ActorRole {
        match self {
            Actor::Token(principal) => principal.role.into(),
            Actor::Operator(_) => ActorRole::Operator,
            Actor::Webhook(_) => ActorRole::Webhook,
            Actor::System(_) => ActorRole::System,
            Actor::Anonymous => ActorRole::Anonymous,
        }
    }
}

/// What a write acted on, as the trail names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Repository(i64),
    App(i64),
    Deployment(i64),
    ApiToken(i64),
}

impl Object {
    fn columns(self) -> (ObjectType, i64) {
        match self {
            Object::Repository(id) => (ObjectType::Repository, id),
            Object::App(id) => (ObjectType::App, id),
            Object::Deployment(id) => (ObjectType::Deployment, id),
            Object::ApiToken(id) => (ObjectType::ApiToken, id),
        }
    }
}

/// One call that may change something, as the trail records it: who, which operation, its
/// arguments (secrets redacted when stored). Every domain write takes one and records it
/// inside its own transaction ([`commit`]), so a change and its audit row are stored
/// together or not at all; [`Audit::finish`] records the calls that wrote nothing (refused,
/// failed, or with nothing to change).
#[derive(Debug)]
pub struct Audit {
    actor: Actor,
    operation: String,
    arguments: Value,
    /// The object the call is about, when known before it runs (kept when it fails).
    about: Option<Object>,
    /// The ID the caller named, kept when the call fails before acting on an object.
    requested: Option<String>,
    /// The SHA-256 of the GraphQL document the call ran, when known.
    document_hash: Option<String>,
    /// Set once a write has recorded this call with its change.
    recorded: AtomicBool,
}

impl Audit {
    pub fn new(actor: Actor, operation: impl Into<String>, arguments: Value) -> Audit {
        Audit {
            actor,
            operation: operation.into(),
            arguments,
            about: None,
            requested: None,
            document_hash: None,
            recorded: AtomicBool::new(false),
        }
    }

    /// The object the call is about, as known before it runs.
    pub fn about(mut self, object: Object) -> Audit {
        self.about = Some(object);
        self
    }

    /// The object the caller named (a global ID, or whatever it sent).
    pub fn requested(mut self, object_id: Option<String>) -> Audit {
        self.requested = object_id;
        self
    }

    /// The document the call ran.
    pub fn document(mut self, hash: Option<String>) -> Audit {
        self.document_hash = hash;
        self
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Whether a write already recorded this call, with its change.
    pub fn recorded(&self) -> bool {
        self.recorded.load(Ordering::Acquire)
    }

    /// Records the call on its own unless a write recorded it: with `error` (its code and
    /// message) when it was refused or failed, as a success that changed nothing otherwise.
    pub async fn finish(
        &self,
        db: &DatabaseConnection,
        error: Option<(String, String)>,
    ) -> Result<(), DomainError> {
        if self.recorded() {
            return Ok(());
        }
        // One INSERT: atomic without a transaction around it.
        let _turn = writer_turn(db).await;
        insert(db, self, self.about, error).await?;
        Ok(())
    }
}

/// Commits a domain write that acted on `object`, with `audit`'s row in the same
/// transaction (the first write of a call records it; later ones only commit).
pub(crate) async fn commit(
    txn: DatabaseTransaction,
    audit: &Audit,
    object: Object,
) -> Result<(), DbErr> {
    commit_on(txn, audit, Some(object)).await
}

/// Like [`commit`], for a write on rows the trail has no object type for (trusted
/// documents: the arguments name them).
pub(crate) async fn commit_unnamed(txn: DatabaseTransaction, audit: &Audit) -> Result<(), DbErr> {
    commit_on(txn, audit, None).await
}

async fn commit_on(
    txn: DatabaseTransaction,
    audit: &Audit,
    object: Option<Object>,
) -> Result<(), DbErr> {
    if audit.recorded() {
        return txn.commit().await;
    }
    insert(&txn, audit, object, None).await?;
    txn.commit().await?;
    audit.recorded.store(true, Ordering::Release);
    Ok(())
}

async fn insert(
    db: &impl ConnectionTrait,
    audit: &Audit,
    object: Option<Object>,
    error: Option<(String, String)>,
) -> Result<(), DbErr> {
    let (outcome, error_code, error_message) = match error {
        None => (Outcome::Success, None, None),
        Some((code, message)) => (Outcome::Error, Some(code), Some(message)),
    };
    let (object_type, object_database_id) = object.map(Object::columns).unzip();
    let row = audit_event::ActiveModel {
        occurred_at: Set(Timestamp::now()),
        token_id: Set(audit.actor.token().map(|p| p.token_id)),
        token_name: Set(cut(audit.actor.name(), MAX_NAME_CHARS)),
        token_role: Set(audit.actor.role()),
        operation: Set(cut(&audit.operation, MAX_OPERATION_CHARS)),
        arguments: Set(redact(audit.arguments.clone()).to_string()),
        // Ids come from the caller: a 300-character one must not lose the row.
        object_id: Set(match object {
            Some(_) => None,
            None => audit
                .requested
                .as_deref()
                .map(|id| cut(id, MAX_OBJECT_ID_CHARS)),
        }),
        object_type: Set(object_type),
        object_database_id: Set(object_database_id),
        outcome: Set(outcome),
        error_code: Set(error_code),
        error_message: Set(error_message.map(|m| shorten(&m))),
        document_hash: Set(audit.document_hash.clone()),
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
