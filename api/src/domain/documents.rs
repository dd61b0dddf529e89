//! Trusted documents (persisted queries): GraphQL documents an operator stored
//! (`keystone documents add`), each named by the SHA-256 of its text. Clients send the hash
//! instead of the text; with `--trusted-documents-only` the server runs nothing else.
//!
//! Documents are stored only by operators, never by clients (no automatic registration:
//! that would let any caller fill the table and defeat the allow-list).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use entity::Timestamp;
use entity::prelude::TrustedDocument;
use entity::trusted_document;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::audit::{self, Audit};
use super::{DomainError, begin_write};

/// Lowercase hex SHA-256 of `text`'s UTF-8 bytes: a document's name.
pub fn hash(text: &str) -> String {
    super::sha256_hex(text)
}

/// `hash` as stored: 64 hex digits, lowercased; `None` if it is not one.
pub fn normalize_hash(hash: &str) -> Option<String> {
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hash.to_ascii_lowercase())
}

/// A document to store, with its operations' names (`anonymous` for an unnamed one).
pub struct NewDocument {
    pub text: String,
    pub operation_names: Vec<String>,
}

/// Stores `documents` in one transaction; returns each one's hash and whether it is new
/// (storing a document twice changes nothing).
pub async fn add(
    db: &DatabaseConnection,
    audit: &Audit,
    documents: Vec<NewDocument>,
) -> Result<Vec<(String, bool)>, DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    let mut added = Vec::with_capacity(documents.len());
    for document in documents {
        let hash = hash(&document.text);
        let exists = TrustedDocument::find_by_id(hash.clone())
            .one(&txn)
            .await?
            .is_some();
        if !exists {
            let names = document.operation_names.join(",");
            if names.len() > 1000 {
                return Err(DomainError::Invalid {
                    field: "document",
                    reason: "its operation names exceed 1000 characters together".into(),
                });
            }
            TrustedDocument::insert(trusted_document::ActiveModel {
                hash: Set(hash.clone()),
                document: Set(document.text),
                operation_names: Set(names),
                created_at: Set(Timestamp::now()),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        added.push((hash, !exists));
    }
    audit::commit_unnamed(txn, audit).await?;
    Ok(added)
}

/// Every stored document, oldest first.
pub async fn list(db: &DatabaseConnection) -> Result<Vec<trusted_document::Model>, DomainError> {
    Ok(TrustedDocument::find()
        .order_by_asc(trusted_document::Column::CreatedAt)
        .order_by_asc(trusted_document::Column::Hash)
        .all(db)
        .await?)
}

/// Removes the documents named by `hashes`; returns how many there were.
pub async fn remove(
    db: &DatabaseConnection,
    audit: &Audit,
    hashes: &[String],
) -> Result<u64, DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    let removed = TrustedDocument::delete_many()
        .filter(trusted_document::Column::Hash.is_in(hashes.iter().cloned()))
        .exec(&txn)
        .await?
        .rows_affected;
    audit::commit_unnamed(txn, audit).await?;
    Ok(removed)
}

/// The stored documents, kept in memory and read again every `every` (documents are added
/// and removed by another process, `keystone documents`): a known document costs no
/// statement and no wait; a hash not in memory costs one lookup, so a document added a moment
/// ago is found at once, and a removed one stops running within `every`. No lock is held
/// across a statement but the one that lets a single request read everything again.
pub struct DocumentStore {
    db: DatabaseConnection,
    every: Duration,
    known: RwLock<Known>,
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Known {
    /// When every document was last read.
    read_at: Option<Instant>,
    documents: HashMap<String, Arc<str>>,
}

impl DocumentStore {
    pub fn new(db: DatabaseConnection, every: Duration) -> Self {
        Self {
            db,
            every,
            known: RwLock::default(),
            reloading: tokio::sync::Mutex::default(),
        }
    }

    /// The document named by `hash` (normalized), if stored.
    pub async fn get(&self, hash: &str) -> Result<Option<Arc<str>>, DbErr> {
        if self.stale() {
            self.reload().await?;
        }
        if let Some(text) = self.read().documents.get(hash) {
            return Ok(Some(text.clone()));
        }
        // Not known: perhaps stored since everything was read.
        let row = TrustedDocument::find_by_id(hash.to_owned())
            .one(&self.db)
            .await?;
        Ok(row.map(|row| {
            let text: Arc<str> = Arc::from(row.document);
            self.write().documents.insert(row.hash, text.clone());
            text
        }))
    }

    fn stale(&self) -> bool {
        self.read()
            .read_at
            .is_none_or(|at| at.elapsed() >= self.every)
    }

    /// Reads every document again (one request does; the others meanwhile keep the
    /// documents they know).
    async fn reload(&self) -> Result<(), DbErr> {
        let _one = self.reloading.lock().await;
        if !self.stale() {
            return Ok(());
        }
        let rows: Vec<(String, String)> = TrustedDocument::find()
            .select_only()
            .column(trusted_document::Column::Hash)
            .column(trusted_document::Column::Document)
            .into_tuple()
            .all(&self.db)
            .await?;
        *self.write() = Known {
            read_at: Some(Instant::now()),
            documents: rows
                .into_iter()
                .map(|(hash, text)| (hash, Arc::from(text)))
                .collect(),
        };
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(normalize_hash(&"A".repeat(64)), Some("a".repeat(64)));
        assert_eq!(normalize_hash("abc"), None);
        assert_eq!(normalize_hash(&"g".repeat(64)), None);
    }
}
