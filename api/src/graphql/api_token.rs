//! `ApiToken`: tokens as admins see them (never their secret), and the mutations that
//! create and revoke them.

use async_graphql::connection::Connection;
use async_graphql::{Context, ID, InputObject, Object, ResultExt, SimpleObject};
use chrono::{DateTime, Utc};
use entity::api_token;

use super::auth::{Require, Role, audited, principal};
use super::connection::{Cursor, OrderDirection, SortKey, order, page_args};
use super::ids::{NodeType, decode_as};
use super::total_count::TotalCount;
use super::{api, page_complexity, root_connection};
use crate::domain::access::{self, Capability, NewToken};
use crate::store::filters::ApiTokenFilter;

/// An API token row, as the API shows it.
pub struct ApiToken(pub api_token::Model);

/// An API token. Its secret was shown once, when it was created; only its prefix is kept.
#[Object]
impl ApiToken {
    /// Opaque global ID.
    async fn id(&self) -> ID {
        NodeType::ApiToken.id(self.0.id)
    }

    /// The row id in `api_apitoken`, for operators and logs.
    async fn database_id(&self) -> i64 {
        self.0.id
    }

    /// Unique, also after revocation (audit events name tokens by it).
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// What the token may do.
    async fn role(&self) -> Role {
        self.0.role.into()
    }

    /// The secret's first characters (`kst_` and 8 more), to recognise it.
    async fn prefix(&self) -> &str {
        &self.0.secret_prefix
    }

    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at.as_utc()
    }

    /// The token (or command) that created it.
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }

    /// When it stops working; null: never.
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at.map(|t| t.as_utc())
    }

    /// When it was last used, to the minute.
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at.map(|t| t.as_utc())
    }

    /// When it was revoked; null while it works.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at.map(|t| t.as_utc())
    }

    /// Neither revoked nor expired.
    async fn active(&self) -> bool {
        self.0.revoked_at.is_none()
            && self
                .0
                .expires_at
                .is_none_or(|at| at > entity::Timestamp::now())
    }
}

/// Which tokens to list.
#[derive(InputObject, Default)]
#[graphql(name = "ApiTokenFilter")]
pub struct ApiTokenFilterInput {
    /// Only tokens with this role.
    role: Option<Role>,
    /// Also list revoked tokens (default: false).
    #[graphql(default)]
    include_revoked: bool,
}

#[derive(Default)]
pub struct ApiTokenQuery;

#[Object]
impl ApiTokenQuery {
    /// API tokens, oldest first (admin only).
    #[graphql(
        guard = "Require(Capability::Administer)",
        complexity = "page_complexity(first, last, child_complexity)"
    )]
    async fn api_tokens(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "Returns the first n items (0–100). Without `first` and `last`, the first 20."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "Returns the items after this cursor (an edge's `cursor`, or `pageInfo.endCursor`)."
        )]
        after: Option<String>,
        #[graphql(desc = "Returns the last n items (0–100); pass `before`, not `after`, with it.")]
        last: Option<i32>,
        #[graphql(
            desc = "Returns the items before this cursor (an edge's `cursor`, or `pageInfo.startCursor`)."
        )]
        before: Option<String>,
        #[graphql(desc = "Only the items that match every condition given.")] filter: Option<
            ApiTokenFilterInput,
        >,
    ) -> async_graphql::Result<Connection<Cursor, ApiToken, TotalCount>> {
        let order = order(SortKey::Id, OrderDirection::Asc);
        let page = page_args(first, after, last, before, order)?;
        let filter = filter.unwrap_or_default();
        let filter = ApiTokenFilter {
            role: filter.role.map(Into::into),
            include_revoked: filter.include_revoked,
        };
        root_connection::<api_token::Entity, _, _>(
            ctx,
            page,
            filter,
            TotalCount::ApiTokens,
            ApiToken,
        )
        .await
    }
}

/// A new API token.
#[derive(InputObject)]
pub struct CreateApiTokenInput {
    /// Letters, digits, spaces, `.`, `_`, `-`; at most 100 characters; unique forever.
    name: String,
    /// What the token may do.
    role: Role,
    /// When it stops working; never when null.
    expires_at: Option<DateTime<Utc>>,
}

/// The token created, with its secret.
#[derive(SimpleObject)]
pub struct CreateApiTokenPayload {
    /// The token, as `apiTokens` lists it.
    token: ApiToken,
    /// The secret, shown this once: send it as `Authorization: Bearer <secret>`.
    secret: String,
}

/// The token to revoke.
#[derive(InputObject)]
pub struct RevokeApiTokenInput {
    /// The token's ID.
    id: ID,
}

/// The revoked token.
#[derive(SimpleObject)]
pub struct RevokeApiTokenPayload {
    /// The token, now with `revokedAt` set.
    token: ApiToken,
}

#[derive(Default)]
pub struct ApiTokenMutation;

#[Object]
impl ApiTokenMutation {
    /// Creates a token (admin only). The payload carries its secret, which is not stored and
    /// cannot be shown again.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: CreateApiTokenInput,
    ) -> async_graphql::Result<CreateApiTokenPayload> {
        audited(ctx, Capability::Administer, async |audit| {
            let (token, secret) = access::create_token(
                &api(ctx)?.db,
                audit,
                NewToken {
                    name: input.name,
                    role: input.role.into(),
                    expires_at: input.expires_at.map(Into::into),
                    created_by: principal(ctx)?.name.clone(),
                },
            )
            .await
            .extend()?;
            Ok(CreateApiTokenPayload {
                token: ApiToken(token),
                secret: secret.0,
            })
        })
        .await
    }

    /// Revokes a token (admin only), effective at once on this server and within the token
    /// cache time on others.
    async fn revoke_api_token(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to change (see the input type).")] input: RevokeApiTokenInput,
    ) -> async_graphql::Result<RevokeApiTokenPayload> {
        audited(ctx, Capability::Administer, async |audit| {
            let id = decode_as(&input.id, NodeType::ApiToken, "id")?;
            let api = api(ctx)?;
            let token = access::revoke_token(&api.db, audit, id).await.extend()?;
            api.admission.authenticator.evict(token.id);
            Ok(RevokeApiTokenPayload {
                token: ApiToken(token),
            })
        })
        .await
    }
}
