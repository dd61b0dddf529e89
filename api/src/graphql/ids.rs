//! Opaque global IDs for the `Node` interface: base64url of `<Type>:<databaseId>`. Clients
//! must treat them as opaque; `databaseId` exposes the number.

use async_graphql::ID;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entity::audit_event::ObjectType;

use super::error::bad_input;

/// The types that have global IDs, named as in the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
pub enum NodeType {
    Repository,
    App,
    Deployment,
    ApiToken,
    AuditEvent,
}

impl NodeType {
    fn name(self) -> &'static str {
        self.into()
    }

    /// How the audit trail stores an object of this type (`None`: it never names one).
    pub fn object_type(self) -> Option<ObjectType> {
        Some(match self {
            NodeType::Repository => ObjectType::Repository,
            NodeType::App => ObjectType::App,
            NodeType::Deployment => ObjectType::Deployment,
            NodeType::ApiToken => ObjectType::ApiToken,
            NodeType::AuditEvent => return None,
        })
    }

    pub fn id(self, database_id: i64) -> ID {
        // Written on the stack: a nested read makes thousands of these.
        let mut text = [0u8; 32];
        let mut rest = &mut text[..];
        let written =
            std::io::Write::write_fmt(&mut rest, format_args!("{}:{database_id}", self.name()));
        let length = 32 - rest.len();
        debug_assert!(written.is_ok(), "the longest name and i64 fit in 32 bytes");
        ID(URL_SAFE_NO_PAD.encode(&text[..length]))
    }
}

impl From<ObjectType> for NodeType {
    fn from(kind: ObjectType) -> Self {
        match kind {
            ObjectType::Repository => NodeType::Repository,
            ObjectType::App => NodeType::App,
            ObjectType::Deployment => NodeType::Deployment,
            ObjectType::ApiToken => NodeType::ApiToken,
        }
    }
}

/// Decodes any global ID into its type and database id.
pub fn decode(id: &ID, field: &str) -> async_graphql::Result<(NodeType, i64)> {
    let invalid = || bad_input(field, format!("{:?} is not a valid ID", id.as_str()));
    let bytes = URL_SAFE_NO_PAD
        .decode(id.as_bytes())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (kind, number) = text.split_once(':').ok_or_else(invalid)?;
    let kind: NodeType = kind.parse().map_err(|_| invalid())?;
    let number = number.parse::<i64>().map_err(|_| invalid())?;
    Ok((kind, number))
}

/// Decodes a global ID that must name an object of type `expected`.
pub fn decode_as(id: &ID, expected: NodeType, field: &str) -> async_graphql::Result<i64> {
    match decode(id, field)? {
        (kind, number) if kind == expected => Ok(number),
        (kind, _) => Err(bad_input(
            field,
            format!(
                "expected the ID of a {}, got the ID of a {}",
                expected.name(),
                kind.name()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_as_written() {
        assert_eq!(NodeType::App.id(1).as_str(), "QXBwOjE"); // App:1
        for (kind, n) in [
            (NodeType::AuditEvent, i64::MIN),
            (NodeType::Repository, i64::MAX),
            (NodeType::Deployment, 0),
        ] {
            assert_eq!(decode(&kind.id(n), "id").ok(), Some((kind, n)));
        }
    }
}
