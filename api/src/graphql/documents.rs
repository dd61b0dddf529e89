//! Trusted documents on the request path: a request may name a stored document by its
//! SHA-256 instead of sending its text, as Apollo and Relay clients do
//! (`extensions.persistedQuery.sha256Hash`, or a `documentId` field of `sha256:<hex>`); with
//! trusted documents only, nothing else runs. The same check serves HTTP (before parsing)
//! and WebSocket (in [`super::engine`], after the connection's token is checked).
//!
//! The stored documents themselves are [`crate::domain::documents`]; this module also
//! checks a document against the schema before it is stored ([`validate`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use async_graphql::parser::types::DocumentOperations;
use async_graphql::{Request, Response, ServerError};

use entity::api_token::Role;

use super::error::{Code, server_error};
use crate::domain::access::Principal;
use crate::domain::documents::{self, DocumentStore};

/// What the server accepts.
#[derive(Clone, Copy, Debug, Default)]
pub struct DocumentPolicy {
    /// Run stored documents only (`--trusted-documents-only`).
    pub trusted_only: bool,
    /// …except for admin tokens (`--trusted-documents-allow-admins`), so that operators
    /// keep GraphiQL.
    pub admins_exempt: bool,
}

/// The SHA-256 (hex) of the document a request runs: recorded in the audit trail.
pub struct DocumentHash(pub String);

/// The document a request runs is a trusted one: it was sent by hash, or found stored.
pub struct Trusted;

pub struct TrustedDocuments {
    store: DocumentStore,
    policy: DocumentPolicy,
    /// Documents this binary sends itself (`keystone runner`, the client commands), trusted
    /// without being stored, by hash.
    builtin: HashMap<String, &'static str>,
}

impl TrustedDocuments {
    pub fn new(store: DocumentStore, policy: DocumentPolicy) -> Self {
        let builtin = crate::runner::client::operations::ALL
            .iter()
            .chain(crate::remote::operations::ALL)
            .map(|(_, text)| (documents::hash(text), *text))
            .collect();
        Self {
            store,
            policy,
            builtin,
        }
    }

    /// The trusted document named by `hash`: one of this binary's own, or a stored one.
    async fn get(&self, hash: &str) -> Result<Option<Arc<str>>, ServerError> {
        if let Some(text) = self.builtin.get(hash) {
            return Ok(Some(Arc::from(*text)));
        }
        self.store.get(hash).await.map_err(database)
    }

    /// Puts the stored document into `request` when it names one by hash (`document_id`, or
    /// `extensions.persistedQuery`), and refuses what the policy does not allow:
    /// `PERSISTED_QUERY_NOT_FOUND` for an unknown hash, `FORBIDDEN_DOCUMENT` for a document
    /// that is not stored (with trusted documents only), `BAD_REQUEST` for a hash that does
    /// not match the text sent with it.
    pub async fn resolve(
        &self,
        request: &mut Request,
        document_id: Option<&str>,
        principal: &Principal,
    ) -> Result<(), ServerError> {
        let named = requested_hash(request, document_id)?;
        let mut trusted = false;
        if request.query.is_empty()
            && let Some(hash) = &named
        {
            let Some(text) = self.get(hash).await? else {
                return Err(server_error(
                    Code::PersistedQueryNotFound,
                    // Apollo's persisted-query link looks for this message.
                    "PersistedQueryNotFound: no stored document has this hash; send the \
                     document's text with it, or store it (`keystone documents add`)",
                ));
            };
            request.query = text.to_string();
            trusted = true;
        }
        let hash = documents::hash(&request.query);
        if let Some(named) = &named
            && *named != hash
        {
            return Err(server_error(
                Code::BadRequest,
                "the document's SHA-256 does not match the hash sent with it",
            ));
        }
        if self.policy.trusted_only && !trusted {
            trusted = self.get(&hash).await?.is_some();
        }
        let exempt = self.policy.admins_exempt && principal.role == Role::Admin;
        if self.policy.trusted_only && !trusted && !exempt {
            return Err(server_error(
                Code::ForbiddenDocument,
                "this server runs trusted documents only, and this document is not one of \
                 them: send the hash of a stored document (`keystone documents list`)",
            ));
        }
        request.data.insert(DocumentHash(hash));
        if trusted {
            request.data.insert(Trusted);
        }
        Ok(())
    }
}

fn database(error: sea_orm::DbErr) -> ServerError {
    super::error::database(&error).into_server_error(Default::default())
}

/// The hash a request names: its `documentId` (`sha256:<hex>` or bare hex), else its
/// `extensions.persistedQuery.sha256Hash`.
fn requested_hash(
    request: &Request,
    document_id: Option<&str>,
) -> Result<Option<String>, ServerError> {
    let named = match document_id {
        Some(id) => Some(id.strip_prefix("sha256:").unwrap_or(id).to_owned()),
        None => match request.extensions.get("persistedQuery") {
            Some(async_graphql::Value::Object(persisted)) => match persisted.get("sha256Hash") {
                Some(async_graphql::Value::String(hash)) => Some(hash.clone()),
                _ => None,
            },
            _ => None,
        },
    };
    named
        .map(|hash| {
            documents::normalize_hash(&hash).ok_or_else(|| {
                server_error(
                    Code::BadRequest,
                    "a document is named by its SHA-256: 64 hex digits (`documentId` may \
                     prefix them with `sha256:`)",
                )
            })
        })
        .transpose()
}

/// Checks `text` against the schema as the server would (parse and validation, each
/// operation), without running anything; returns its operations' names (`anonymous` for
/// an unnamed one) or what is wrong.
pub async fn validate(text: &str) -> Result<Vec<String>, String> {
    let document = async_graphql::parser::parse_query(text).map_err(|e| e.to_string())?;
    let names: Vec<Option<String>> = match &document.operations {
        DocumentOperations::Single(_) => vec![None],
        DocumentOperations::Multiple(operations) => operations
            .keys()
            .map(|name| Some(name.to_string()))
            .collect(),
    };
    let schema = super::schema_builder().extension(ValidateOnly).finish();
    for name in &names {
        let mut request = Request::new(text);
        if let Some(name) = name {
            request = request.operation_name(name);
        }
        let response = futures_util::StreamExt::next(&mut schema.execute_stream(request))
            .await
            .unwrap_or_default();
        // Request errors (nothing ran) have no path; a subscription's fields fail below
        // validation for want of a server, with one.
        let invalid: Vec<String> = response
            .errors
            .iter()
            .filter(|e| e.path.is_empty())
            .map(|e| e.message.clone())
            .collect();
        if !invalid.is_empty() {
            return Err(invalid.join("; "));
        }
    }
    Ok(names
        .into_iter()
        .map(|name| name.unwrap_or_else(|| "anonymous".to_owned()))
        .collect())
}

/// Answers a validated query or mutation without executing it.
struct ValidateOnly;

impl ExtensionFactory for ValidateOnly {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ValidateOnly)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ValidateOnly {
    async fn execute(
        &self,
        _ctx: &ExtensionContext<'_>,
        _operation_name: Option<&str>,
        _next: NextExecute<'_>,
    ) -> Response {
        Response::new(async_graphql::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn documents_are_validated_against_the_schema() {
        assert_eq!(
            validate("query Apps { apps { totalCount } } mutation Go($id: ID!) { deployApp(input: { appId: $id }) { app { id } } }")
                .await
                .map(|mut names| {
                    names.sort();
                    names
                }),
            Ok(vec!["Apps".to_owned(), "Go".to_owned()])
        );
        assert_eq!(
            validate("{ viewer { name } }").await,
            Ok(vec!["anonymous".to_owned()])
        );
        assert!(
            validate("subscription Watch { deploymentUpdated { status } }")
                .await
                .is_ok()
        );
        let unknown = validate("{ apps { nope } }").await.unwrap_err();
        assert!(unknown.contains("nope"), "{unknown}");
        assert!(validate("{ apps ").await.is_err());
    }
}
