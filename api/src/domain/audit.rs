//! The audit trail: one append-only `api_audit_event` row per mutation, whatever its
//! outcome — who (token name and role), what (operation and arguments, secrets redacted), on
//! which object, when, and how it ended.

use entity::Timestamp;
use entity::audit_event::{self, Outcome};
use entity::prelude::AuditEvent;
use sea_orm::{DatabaseConnection, EntityTrait, Set};
use serde_json::Value;

use super::access::Principal;
use super::{DomainError, writer_turn};

/// Argument names whose values are never recorded.
const SECRET_NAMES: &[&str] = &["secret", "token", "password", "passphrase", "privatekey"];
/// Longest string value kept in full; longer ones are cut (a 10 MB name is not evidence).
const MAX_STRING_CHARS: usize = 500;

/// What one mutation did, as recorded.
pub struct Entry<'a> {
    pub principal: &'a Principal,
    pub operation: &'a str,
    pub arguments: Value,
    pub object_id: Option<String>,
    /// `None` on success; the error's code and message otherwise.
    pub error: Option<(String, String)>,
}

/// Appends `entry` to the trail.
pub async fn record(db: &DatabaseConnection, entry: Entry<'_>) -> Result<(), DomainError> {
    let (outcome, error_code, error_message) = match entry.error {
        None => (Outcome::Success, None, None),
        Some((code, message)) => (Outcome::Error, Some(code), Some(message)),
    };
    // One INSERT: atomic without a transaction around it.
    let _turn = writer_turn(db).await;
    let row = audit_event::ActiveModel {
        occurred_at: Set(Timestamp::now()),
        token_id: Set(Some(entry.principal.token_id)),
        token_name: Set(entry.principal.name.clone()),
        token_role: Set(entry.principal.role),
        operation: Set(entry.operation.to_owned()),
        arguments: Set(redact(entry.arguments).to_string()),
        object_id: Set(entry.object_id),
        outcome: Set(outcome),
        error_code: Set(error_code),
        error_message: Set(error_message.map(|m| shorten(&m))),
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
            }
        }));
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
