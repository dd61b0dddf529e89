//! Who may do what: API tokens (creation, revocation, authentication), roles and the
//! capabilities they grant, and the first admin token of a new installation.
//!
//! A token's secret is `kst_` followed by 43 base64url characters (256 random bits from the
//! operating system). Only its SHA-256 hash is stored: a fast hash is the right tool for a
//! secret with that much entropy (nobody can guess it, so there is nothing to slow down),
//! and it lets a request find its token with one indexed lookup.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entity::Timestamp;
use entity::api_token::{self, Role};
use entity::prelude::*;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};

use super::audit::{self, Actor, Audit, Object};
use super::{DomainError, begin_write, check, validation, writer_turn};

/// Every secret starts with this, so leaked tokens are easy to recognise (and to scan for).
pub const SECRET_PREFIX: &str = "kst_";
/// Characters of the secret kept in clear (`secret_prefix`) to tell tokens apart.
const SHOWN_PREFIX_LEN: usize = 12;
/// Name of the admin token a new installation creates on its first start.
pub const FIRST_ADMIN_NAME: &str = "admin";

/// A group of operations a role may perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Queries and subscriptions on repositories, apps and deployments.
    Read,
    /// Creating, changing, deleting and deploying repositories and apps.
    Write,
    /// Managing tokens and reading the audit trail.
    Administer,
    /// The deployment-runner protocol (claiming, reporting, logs).
    Run,
}

/// What each role may do: `admin` everything, `viewer` read, `runner` only the runner
/// protocol (a runner's token on a build host must not be able to read or change the rest).
pub fn allows(role: Role, capability: Capability) -> bool {
    match role {
        Role::Admin => true,
        Role::Viewer => capability == Capability::Read,
        Role::Runner => capability == Capability::Run,
    }
}

/// The caller of an operation, as authenticated by its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub token_id: i64,
    pub name: String,
    pub role: Role,
}

impl Principal {
    pub fn may(&self, capability: Capability) -> bool {
        allows(self.role, capability)
    }
}

/// Why a presented token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("malformed token: expected `Bearer kst_…`")]
    Malformed,
    #[error("invalid token (unknown or revoked)")]
    Invalid,
    #[error("this token expired")]
    Expired,
    #[error("cannot check the token right now")]
    Unavailable,
}

/// A new token's secret: shown once, never stored.
pub struct Secret(pub String);

impl Secret {
    fn generate() -> Result<Self, DomainError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|error| {
            DomainError::Internal(format!("no randomness from the operating system: {error}"))
        })?;
        Ok(Self(format!(
            "{SECRET_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    fn shown_prefix(&self) -> String {
        self.0.chars().take(SHOWN_PREFIX_LEN).collect()
    }
}

/// Hex SHA-256 of a secret, as stored in `api_token.secret_hash`.
fn hash(secret: &str) -> String {
    super::sha256_hex(secret)
}

/// Whether `secret` has the shape of a Keystone secret (checked before touching the
/// database, so garbage costs nothing).
fn well_formed(secret: &str) -> bool {
    secret.strip_prefix(SECRET_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub expires_at: Option<Timestamp>,
    /// Who asked for it: a token name, or how it was made (`keystone token create`).
    pub created_by: String,
}

/// Creates a token; the secret is returned once and only its hash is kept.
pub async fn create_token(
    db: &DatabaseConnection,
    audit: &Audit,
    new: NewToken,
) -> Result<(api_token::Model, Secret), DomainError> {
    check("name", validation::token_name, &new.name)?;
    if new.expires_at.is_some_and(|at| at <= Timestamp::now()) {
        return Err(DomainError::Invalid {
            field: "expiresAt",
            reason: "must be in the future".into(),
        });
    }
    let secret = Secret::generate()?;
    let (_turn, txn) = begin_write(db).await?;
    let created = api_token::ActiveModel {
        name: Set(new.name),
        role: Set(new.role),
        secret_hash: Set(hash(&secret.0)),
        secret_prefix: Set(secret.shown_prefix()),
        created_at: Set(Timestamp::now()),
        created_by: Set(new.created_by),
        expires_at: Set(new.expires_at),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    audit::commit(txn, audit, Object::ApiToken(created.id)).await?;
    Ok((created, secret))
}

/// Revokes a token at once; revoking a revoked token is a conflict naming when it happened.
pub async fn revoke_token(
    db: &DatabaseConnection,
    audit: &Audit,
    id: i64,
) -> Result<api_token::Model, DomainError> {
    let (_turn, txn) = begin_write(db).await?;
    let token = ApiToken::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound {
            entity: "token",
            field: "id",
            id,
        })?;
    if let Some(at) = token.revoked_at {
        return Err(DomainError::Conflict {
            field: Some("id"),
            message: format!(
                "token {:?} is already revoked (since {})",
                token.name,
                at.as_utc().to_rfc3339()
            ),
        });
    }
    let mut active: api_token::ActiveModel = token.into();
    active.revoked_at = Set(Some(Timestamp::now()));
    let revoked = active.update(&txn).await?;
    audit::commit(txn, audit, Object::ApiToken(revoked.id)).await?;
    Ok(revoked)
}

/// Finds a token by its name or database id (for the command line).
pub async fn find_token(
    db: &DatabaseConnection,
    name_or_id: &str,
) -> Result<Option<api_token::Model>, DomainError> {
    let by_name = ApiToken::find()
        .filter(api_token::Column::Name.eq(name_or_id))
        .one(db)
        .await?;
    Ok(match (by_name, name_or_id.parse::<i64>()) {
        (Some(token), _) => Some(token),
        (None, Ok(id)) => ApiToken::find_by_id(id).one(db).await?,
        (None, Err(_)) => None,
    })
}

/// Every token, oldest first.
pub async fn list_tokens(db: &DatabaseConnection) -> Result<Vec<api_token::Model>, DomainError> {
    Ok(ApiToken::find()
        .order_by_asc(api_token::Column::Id)
        .all(db)
        .await?)
}

/// On a database without any token (revoked ones count), creates the first admin token and
/// returns its secret. Two servers starting at once on an empty database cannot both
/// create one: the token name is unique, and the loser finds the winner's token.
pub async fn create_first_admin(db: &DatabaseConnection) -> Result<Option<Secret>, DomainError> {
    if ApiToken::find().count(db).await? > 0 {
        return Ok(None);
    }
    let audit = Audit::new(
        Actor::System("first start"),
        "createApiToken",
        serde_json::json!({ "input": { "name": FIRST_ADMIN_NAME, "role": "ADMIN" } }),
    );
    let created = create_token(
        db,
        &audit,
        NewToken {
            name: FIRST_ADMIN_NAME.to_owned(),
            role: Role::Admin,
            expires_at: None,
            created_by: "keystone serve (first start)".to_owned(),
        },
    )
    .await;
    match created {
        Ok((_, secret)) => Ok(Some(secret)),
        Err(DomainError::Conflict { .. }) => Ok(None),
        Err(other) => Err(other),
    }
}

/// How long `last_used_at` may lag behind: it is written at most this often per token.
const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);
/// Tokens remembered at most (the least recently used goes first).
const CACHE_CAPACITY: std::num::NonZeroUsize = std::num::NonZeroUsize::new(10_000).unwrap();

struct Verified {
    principal: Principal,
    expires_at: Option<Timestamp>,
    verified_at: Instant,
}

/// Checks presented secrets against `api_token`, remembering verified ones for `ttl`.
///
/// With a TTL of zero every request reads its token. Otherwise a revocation made through
/// this process takes effect at once (it evicts the token), and one made elsewhere (the
/// `keystone token revoke` command, another server) within the TTL. An LRU map under a
/// mutex is enough here: lookups are a hash probe, and entries only need an age.
pub struct Authenticator {
    ttl: Duration,
    cache: Mutex<lru::LruCache<String, Verified>>,
}

impl Authenticator {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: Mutex::new(lru::LruCache::new(CACHE_CAPACITY)),
        }
    }

    /// The principal behind an `Authorization` header value (`Bearer <secret>`).
    pub async fn authenticate(
        &self,
        db: &DatabaseConnection,
        authorization: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let value = authorization.map(str::trim).filter(|v| !v.is_empty());
        let Some(value) = value else {
            return Err(AuthError::Missing);
        };
        let secret = match value.split_once(' ') {
            Some((scheme, secret)) if scheme.eq_ignore_ascii_case("bearer") => secret.trim(),
            _ => return Err(AuthError::Malformed),
        };
        if !well_formed(secret) {
            return Err(AuthError::Malformed);
        }
        let hashed = hash(secret);
        let now = Timestamp::now();
        if let Some(hit) = self.cached(&hashed) {
            if hit.1.is_some_and(|at| at <= now) {
                return Err(AuthError::Expired);
            }
            return Ok(hit.0);
        }
        let token = ApiToken::find()
            .filter(api_token::Column::SecretHash.eq(hashed.as_str()))
            .one(db)
            .await
            .map_err(|error| {
                tracing::error!(%error, "cannot read api_token");
                AuthError::Unavailable
            })?
            .filter(|t| t.revoked_at.is_none())
            .ok_or(AuthError::Invalid)?;
        if token.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired);
        }
        let principal = Principal {
            token_id: token.id,
            name: token.name.clone(),
            role: token.role,
        };
        self.remember(hashed, &principal, token.expires_at);
        self.touch(db, &token);
        Ok(principal)
    }

    fn cached(&self, hashed: &str) -> Option<(Principal, Option<Timestamp>)> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut cache = self.cache.lock().ok()?;
        let hit = cache.get(hashed)?;
        (hit.verified_at.elapsed() < self.ttl).then(|| (hit.principal.clone(), hit.expires_at))
    }

    fn remember(&self, hashed: String, principal: &Principal, expires_at: Option<Timestamp>) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(
                hashed,
                Verified {
                    principal: principal.clone(),
                    expires_at,
                    verified_at: Instant::now(),
                },
            );
        }
    }

    /// Forgets a token (after revoking it through this process).
    pub fn evict(&self, token_id: i64) {
        if let Ok(mut cache) = self.cache.lock() {
            let revoked: Vec<String> = cache
                .iter()
                .filter(|(_, v)| v.principal.token_id == token_id)
                .map(|(hashed, _)| hashed.clone())
                .collect();
            for hashed in revoked {
                cache.pop(&hashed);
            }
        }
    }

    /// Records that a token was used, at most once per [`LAST_USED_RESOLUTION`], in the
    /// background (the request does not wait for it).
    fn touch(&self, db: &DatabaseConnection, token: &api_token::Model) {
        let fresh = token.last_used_at.is_some_and(|at| {
            (Timestamp::now().as_utc() - at.as_utc())
                .to_std()
                .is_ok_and(|age| age < LAST_USED_RESOLUTION)
        });
        if fresh {
            return;
        }
        let db = db.clone();
        let id = token.id;
        tokio::spawn(async move {
            let now = Timestamp::now();
            let stale = Timestamp::new(
                now.as_utc() - chrono::Duration::from_std(LAST_USED_RESOLUTION).unwrap_or_default(),
            );
            // One statement, atomic by itself; the condition makes the concurrent first
            // requests of a token write it once.
            let _turn = writer_turn(&db).await;
            let result = ApiToken::update_many()
                .col_expr(
                    api_token::Column::LastUsedAt,
                    sea_orm::sea_query::Expr::value(now),
                )
                .filter(api_token::Column::Id.eq(id))
                .filter(
                    sea_orm::Condition::any()
                        .add(api_token::Column::LastUsedAt.is_null())
                        .add(api_token::Column::LastUsedAt.lt(stale)),
                )
                .exec(&db)
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, token_id = id, "cannot record when a token was last used");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_well_formed_and_distinct() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert!(well_formed(&a.0), "{}", a.0);
        assert_ne!(a.0, b.0);
        assert_eq!(hash(&a.0).len(), 64);
        assert_ne!(hash(&a.0), hash(&b.0));
        assert!(!well_formed("kst_short"));
        assert!(!well_formed(&a.0.replace("kst_", "ghp_")));
    }

    #[test]
    fn roles_grant_their_capabilities_only() {
        use Capability::*;
        for cap in [Read, Write, Administer, Run] {
            assert!(allows(Role::Admin, cap));
            assert_eq!(allows(Role::Viewer, cap), cap == Read);
            assert_eq!(allows(Role::Runner, cap), cap == Run);
        }
    }
}
