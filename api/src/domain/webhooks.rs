//! Deploy on push: each app may have a webhook secret, and a Git host that signs its push
//! notifications with it makes Keystone deploy the pushed commit of the app's branch.
//!
//! The senders Keystone understands, told apart by their headers: GitHub
//! (`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`), Gitea and Forgejo
//! (`X-Gitea-Signature`/`X-Forgejo-Signature: <hex HMAC>`), GitLab (`X-Gitlab-Token: <the
//! secret>`), and a generic form (`X-Keystone-Signature: sha256=<hex HMAC>`). All of them
//! send push events with `ref` and `after` in a JSON body.
//!
//! - A push to the app's branch (the repository's default branch) queues a deployment of
//!   that commit: the runner checks out exactly the pushed SHA. When a deployment of the app
//!   is running, the push waits (`api_app_webhook.pending_commit`, the newest push wins) and
//!   is deployed as soon as that deployment ends.
//! - Other branches, tags, deleted branches and other events (GitHub's `ping`) are
//!   acknowledged and change nothing.
//! - A delivery id seen in the last day is acknowledged and ignored (a replay, or a retry of
//!   a delivery that was already taken).
//! - Every delivery is audited with the webhook as its actor, refused ones included.

use entity::Timestamp;
use entity::app_webhook;
use entity::prelude::*;
use entity::webhook_delivery;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, Set,
};
use serde_json::json;

use super::apps::{self, Queued, Target};
use super::audit::{self, Actor, Audit, Object};
use super::events::EventBus;
use super::ports::PortRange;
use super::secrets::SecretBox;
use super::{DomainError, begin_write};

/// The name the secret is sealed under (not a valid config var name, so never one).
const SEALED_AS: &str = "(webhook secret)";
/// How long a delivery id is remembered.
const REMEMBER_DELIVERIES: chrono::Duration = chrono::Duration::hours(24);
/// The most bytes of body a delivery may have (checked before it is read whole).
pub const MAX_BODY: usize = 1 << 20;

/// Who sent a delivery, and how it proves it knows the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum Sender {
    GitHub,
    Gitea,
    GitLab,
    Generic,
}

/// A delivery as received: who sent it, its proof, its event and id.
pub struct Delivery<'a> {
    pub sender: Sender,
    /// The signature (hex HMAC-SHA256 of the body) or, for GitLab, the token.
    pub proof: String,
    /// The event name as the sender gives it (`push`, `Push Hook`, `ping`, …).
    pub event: String,
    /// The sender's id of this delivery, when it sends one.
    pub id: Option<String>,
    pub body: &'a [u8],
}

/// What became of an accepted delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A deployment of `commit` was queued.
    Deployed { deployment_id: i64, commit: String },
    /// A deployment of the app is running: `commit` is deployed when it ends.
    Waiting { commit: String },
    /// Acknowledged, nothing to do (and why).
    Ignored(String),
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Unknown app, no webhook, or a wrong or missing signature: the same answer for each,
    /// so that a caller learns nothing.
    #[error("unknown app, or a missing or wrong signature")]
    Unauthorized,
    /// Signed, but not a push event Keystone can read.
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl From<sea_orm::DbErr> for Refused {
    fn from(e: sea_orm::DbErr) -> Self {
        Refused::Domain(e.into())
    }
}

/// A fresh webhook secret: 32 random bytes, hex.
fn new_secret() -> Result<String, DomainError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| DomainError::Internal(format!("no randomness for a secret: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Makes (or replaces) the app's webhook secret and returns it: the only time it is shown.
/// A push waiting for the running deployment is kept.
pub async fn rotate(
    db: &DatabaseConnection,
    audit: &Audit,
    secrets: &SecretBox,
    app_id: i64,
) -> Result<String, DomainError> {
    let secret = new_secret()?;
    let sealed = secrets.seal(app_id, SEALED_AS, &secret)?;
    let (_turn, txn) = begin_write(db).await?;
    apps::find_for_update(&txn, app_id, "appId").await?;
    match AppWebhook::find_by_id(app_id).one(&txn).await? {
        Some(existing) => {
            let mut row: app_webhook::ActiveModel = existing.into();
            row.sealed_secret = Set(sealed);
            row.created_at = Set(Timestamp::now());
            row.update(&txn).await?;
        }
        None => {
            AppWebhook::insert(app_webhook::ActiveModel {
                app_id: Set(app_id),
                sealed_secret: Set(sealed),
                created_at: Set(Timestamp::now()),
                pending_commit: Set(None),
            })
            .exec_without_returning(&txn)
            .await?;
        }
    }
    audit::commit(txn, audit, Object::App(app_id)).await?;
    Ok(secret)
}

/// Whether `delivery` proves knowledge of `secret`, in constant time.
fn proven(delivery: &Delivery<'_>, secret: &str) -> bool {
    use hmac::{KeyInit, Mac};
    use subtle::ConstantTimeEq;
    match delivery.sender {
        Sender::GitLab => bool::from(delivery.proof.as_bytes().ct_eq(secret.as_bytes())),
        _ => {
            let hex = delivery
                .proof
                .strip_prefix("sha256=")
                .unwrap_or(&delivery.proof);
            let Ok(signature) = hex::decode(hex.trim()) else {
                return false;
            };
            let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
                return false;
            };
            mac.update(delivery.body);
            mac.verify_slice(&signature).is_ok()
        }
    }
}

/// What a push event says: its ref and new commit.
struct Push {
    reference: String,
    after: String,
}

fn push_of(body: &[u8]) -> Result<Push, Refused> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refused::Malformed(format!("the body is not JSON: {e}")))?;
    let text = |key: &str| {
        value[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Refused::Malformed(format!("a push event has `{key}`")))
    };
    Ok(Push {
        reference: text("ref")?,
        after: text("after")?,
    })
}

fn is_push(sender: Sender, event: &str) -> bool {
    match sender {
        Sender::GitHub | Sender::Gitea => event == "push",
        Sender::GitLab => event == "Push Hook",
        Sender::Generic => event.is_empty() || event == "push",
    }
}

/// Receives a delivery for the app named `app_name`: checks it, and deploys the pushed
/// commit when it is a push to the app's branch. Audited whatever the outcome.
pub async fn receive(
    db: &DatabaseConnection,
    secrets: &SecretBox,
    events: &EventBus,
    ports: PortRange,
    client: std::net::IpAddr,
    app_name: &str,
    delivery: Delivery<'_>,
) -> Result<Received, Refused> {
    let sender: &'static str = delivery.sender.into();
    let audit = Audit::new(
        Actor::Webhook(format!("{sender} webhook")),
        "push",
        // Shortened and redacted by the audit trail like every argument.
        json!({
            "app": app_name,
            "event": delivery.event,
            "delivery": delivery.id,
            "client": client.to_string(),
        }),
    );
    let result = receive_audited(db, secrets, events, ports, app_name, &delivery, &audit).await;
    let error = match &result {
        Ok(Received::Ignored(why)) => Some(("IGNORED".to_owned(), why.clone())),
        Ok(_) => None,
        Err(Refused::Unauthorized) => Some((
            "UNAUTHENTICATED".to_owned(),
            Refused::Unauthorized.to_string(),
        )),
        Err(Refused::Malformed(why)) => Some(("BAD_USER_INPUT".to_owned(), why.clone())),
        Err(Refused::Domain(e)) => Some(("INTERNAL".to_owned(), e.to_string())),
    };
    // An ignored delivery is recorded as a success that changed nothing.
    let error = error.filter(|(code, _)| code != "IGNORED");
    audit.finish(db, error).await?;
    result
}

async fn receive_audited(
    db: &DatabaseConnection,
    secrets: &SecretBox,
    events: &EventBus,
    ports: PortRange,
    app_name: &str,
    delivery: &Delivery<'_>,
    audit: &Audit,
) -> Result<Received, Refused> {
    let Some(app) = App::find()
        .filter(entity::app::Column::Name.eq(app_name))
        .one(db)
        .await?
    else {
        return Err(Refused::Unauthorized);
    };
    let Some(webhook) = AppWebhook::find_by_id(app.id).one(db).await? else {
        return Err(Refused::Unauthorized);
    };
    let secret = secrets.open(app.id, SEALED_AS, &webhook.sealed_secret)?;
    if !proven(delivery, &secret) {
        return Err(Refused::Unauthorized);
    }
    if !is_push(delivery.sender, &delivery.event) {
        return Ok(Received::Ignored(format!(
            "{:?} is not a push event",
            delivery.event
        )));
    }
    let push = push_of(delivery.body)?;
    let repository = super::repositories::find(db, app.repo_id, "app").await?;
    let tracked = format!("refs/heads/{}", repository.default_branch);
    if push.reference != tracked {
        return Ok(Received::Ignored(format!(
            "{} is not the app's branch ({tracked})",
            push.reference
        )));
    }
    if push.after.bytes().all(|b| b == b'0') {
        return Ok(Received::Ignored("the branch was deleted".to_owned()));
    }
    super::check("after", super::validation::commit_sha, &push.after)
        .map_err(|e| Refused::Malformed(e.to_string()))?;
    let commit = push.after.to_ascii_lowercase();

    let (_turn, txn) = begin_write(db).await?;
    let app = apps::find_for_update(&txn, app.id, "app").await?;
    if let Some(id) = &delivery.id {
        let cutoff = Timestamp::new(Timestamp::now().as_utc() - REMEMBER_DELIVERIES);
        WebhookDelivery::delete_many()
            .filter(webhook_delivery::Column::AppId.eq(app.id))
            .filter(webhook_delivery::Column::ReceivedAt.lt(cutoff))
            .exec(&txn)
            .await?;
        let seen = WebhookDelivery::find_by_id((app.id, id.clone()))
            .one(&txn)
            .await?;
        if seen.is_some() {
            return Ok(Received::Ignored(format!(
                "delivery {id} was received before"
            )));
        }
        WebhookDelivery::insert(webhook_delivery::ActiveModel {
            app_id: Set(app.id),
            delivery: Set(id.chars().take(100).collect()),
            received_at: Set(Timestamp::now()),
        })
        .exec_without_returning(&txn)
        .await?;
    }
    let app_id = app.id;
    // A running deployment is never superseded (its switch may be under way): the push
    // waits for it, the newest push winning. Queued ones are superseded as by `deployApp`.
    match apps::queue(&txn, ports, app, Target::commit(commit.clone())).await {
        Ok(queued) => {
            audit::commit(txn, audit, Object::App(app_id)).await?;
            queued.publish(events);
            Ok(Received::Deployed {
                deployment_id: queued.created.id,
                commit,
            })
        }
        Err(DomainError::Conflict {
            field: Some("appId"),
            ..
        }) => {
            let mut waiting: app_webhook::ActiveModel = webhook.into();
            waiting.pending_commit = Set(Some(commit.clone()));
            waiting.update(&txn).await?;
            audit::commit(txn, audit, Object::App(app_id)).await?;
            Ok(Received::Waiting { commit })
        }
        Err(error) => Err(error.into()),
    }
}

/// After a deployment of app `app_id` ended (inside the transaction that ended it): queues
/// the push that waited for it, if any. The caller publishes what was queued once it commits.
pub(crate) async fn deploy_waiting_push(
    txn: &DatabaseTransaction,
    ports: PortRange,
    app_id: i64,
) -> Result<Option<Queued>, DomainError> {
    let Some(webhook) = AppWebhook::find_by_id(app_id).one(txn).await? else {
        return Ok(None);
    };
    let Some(commit) = webhook.pending_commit.clone() else {
        return Ok(None);
    };
    let mut cleared: app_webhook::ActiveModel = webhook.into();
    cleared.pending_commit = Set(None);
    cleared.update(txn).await?;
    let app = apps::find_for_update(txn, app_id, "appId").await?;
    Ok(Some(
        apps::queue(txn, ports, app, Target::commit(commit)).await?,
    ))
}
