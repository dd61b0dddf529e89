//! Changes that live subscribers see, published after the transaction that made them has
//! committed, to the subscribers of every server instance.
//!
//! - **SQLite** (one process): a bounded in-process `tokio::sync::broadcast` channel.
//! - **PostgreSQL** (any number of instances on one database): each instance sends its
//!   events with `NOTIFY` on a channel named after the database schema, in the order it
//!   made them, and every instance, itself included, receives them with `LISTEN` and hands
//!   them to its local subscribers. All subscribers, wherever connected, therefore see one
//!   order: PostgreSQL's. Payloads carry the changed row (or, when too big for a
//!   notification, its id, and the row is read back); log chunks are split to fit.
//!
//! Notifications are signed: any role that can connect to the database can call
//! `pg_notify` on Keystone's channel, so each payload carries an HMAC-SHA256 under a key
//! only Keystone's servers hold ([`signing_key`], a file in the logs directory they share),
//! and a payload that does not verify is dropped (and logged). The signature covers a stamp
//! too: the sending instance's random id and a sequence number it increments for each
//! notification. Each instance's notifications arrive in the order it sent them, so a
//! receiver drops any whose number is not above the last it had from that instance: a
//! captured notification sent again (by anyone) reaches no subscriber ([`Replays`]).
//!
//! Slow subscribers: each subscription may fall at most [`CAPACITY`] events behind. One
//! that falls further loses the oldest events it has not read (memory stays bounded), is
//! told how many it lost, and goes on from there. When an instance's listening connection
//! drops, it reconnects by itself (retrying every second while PostgreSQL is away), and once
//! it listens again every local subscriber gets [`Event::Resync`]: notifications sent
//! meanwhile are lost, so whoever relies on them refetches.

use std::sync::Arc;

use entity::prelude::*;
use entity::{app, deployment};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, Statement};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc};

/// Events a subscriber may lag behind before it loses some.
pub const CAPACITY: usize = 1024;
/// Events an instance may have waiting to be sent with `NOTIFY`.
const OUTBOX: usize = 4096;
/// The most payload bytes one notification carries (PostgreSQL's limit is 8000), before its
/// signature (64 hex digits and a dot).
const MAX_PAYLOAD: usize = 7_400;

type Signer = hmac::Hmac<sha2::Sha256>;

/// The key that signs notifications: `events.key` in `dir` (the logs directory, which every
/// instance on one database shares), made on first use with mode 0600. Several instances
/// starting at once agree on one key: it is published with an atomic link.
pub fn signing_key(dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    crate::files::create_private_dir(dir)?;
    let (key, _) = crate::files::key_file(&dir.join("events.key"))?;
    Ok(key.into_bytes())
}

fn signer(key: &[u8]) -> Signer {
    use hmac::KeyInit;
    Signer::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Who sent a notification, and its place in that sender's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    /// The sending instance's random id, drawn when it starts.
    sender: u64,
    sequence: u64,
}

/// `payload` stamped and signed: `<hex mac>.<sender hex>.<sequence>.<payload>`, the mac over
/// everything after its dot.
fn sign(key: &[u8], stamp: Stamp, payload: &str) -> String {
    use hmac::Mac;
    let stamped = format!("{:016x}.{}.{payload}", stamp.sender, stamp.sequence);
    let mut mac = signer(key);
    mac.update(stamped.as_bytes());
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{tag}.{stamped}")
}

/// The stamp and payload of a signed notification, when its signature verifies.
fn verified<'a>(key: &[u8], signed: &'a str) -> Option<(Stamp, &'a str)> {
    use hmac::Mac;
    let (tag, stamped) = signed.split_once('.')?;
    if tag.len() != 64 {
        return None;
    }
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(tag.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let mut mac = signer(key);
    mac.update(stamped.as_bytes());
    mac.verify_slice(&tag).ok()?;
    let (sender, rest) = stamped.split_once('.')?;
    let (sequence, payload) = rest.split_once('.')?;
    let stamp = Stamp {
        sender: u64::from_str_radix(sender, 16).ok()?,
        sequence: sequence.parse().ok()?,
    };
    Some((stamp, payload))
}

/// The last sequence number seen from each sender: a notification that is not newer is a
/// replay. Bounded: the senders seen longest ago are forgotten first (each instance is one
/// sender per start, so only a replay of a notification thousands of starts old could pass).
struct Replays {
    last: std::collections::HashMap<u64, u64>,
    /// Senders, in the order first seen.
    order: std::collections::VecDeque<u64>,
}

impl Replays {
    const SENDERS: usize = 4096;

    fn new() -> Self {
        Self {
            last: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    /// Whether `stamp` is newer than anything its sender sent before (and remembers it).
    fn fresh(&mut self, stamp: Stamp) -> bool {
        match self.last.get_mut(&stamp.sender) {
            Some(last) if stamp.sequence <= *last => false,
            Some(last) => {
                *last = stamp.sequence;
                true
            }
            None => {
                if self.order.len() == Self::SENDERS
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.last.remove(&oldest);
                }
                self.order.push_back(stamp.sender);
                self.last.insert(stamp.sender, stamp.sequence);
                true
            }
        }
    }
}

#[derive(Clone, Debug)]
pub enum Event {
    /// A deployment was created or changed; carries its new state.
    DeploymentUpdated(Arc<deployment::Model>),
    /// An app's status or port changed; carries its new state.
    AppUpdated(Arc<app::Model>),
    /// A runner appended `chunk` to a deployment's log; `first_line` is the number of its
    /// first line when the chunk was numbered.
    DeploymentLog {
        deployment_id: i64,
        chunk: Arc<str>,
        first_line: Option<i64>,
    },
    /// An app was deleted (with its repository, or alone); `runner` is the runner it was
    /// placed on, which removes its instance and releases.
    AppDeleted {
        app_id: i64,
        runner: Option<Arc<str>>,
    },
    /// The stream from PostgreSQL was interrupted and is back: events may have been missed
    /// (local only; never sent).
    Resync,
}

impl Event {
    /// Its kind, as `/metrics` labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DeploymentUpdated(_) => "deployment_updated",
            Event::AppUpdated(_) => "app_updated",
            Event::DeploymentLog { .. } => "deployment_log",
            Event::AppDeleted { .. } => "app_deleted",
            Event::Resync => "resync",
        }
    }
}

/// An event as a `NOTIFY` payload.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Wire {
    Deployment {
        row: deployment::Model,
    },
    DeploymentId {
        id: i64,
    },
    App {
        row: app::Model,
    },
    AppId {
        id: i64,
    },
    Log {
        id: i64,
        chunk: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first: Option<i64>,
    },
    AppDeleted {
        id: i64,
        runner: Option<String>,
    },
}

#[derive(Clone)]
pub struct EventBus {
    local: broadcast::Sender<Event>,
    /// PostgreSQL: events go out through `NOTIFY` and come back through `LISTEN`.
    outbox: Option<mpsc::Sender<Event>>,
    /// The sending and listening tasks (PostgreSQL), stopped by [`EventBus::close`].
    tasks: Arc<Vec<tokio::task::AbortHandle>>,
}

impl Default for EventBus {
    /// In-process only.
    fn default() -> Self {
        Self {
            local: broadcast::channel(CAPACITY).0,
            outbox: None,
            tasks: Arc::default(),
        }
    }
}

impl EventBus {
    /// The bus for `db`: in-process on SQLite; on PostgreSQL, shared by every instance on
    /// the same schema.
    pub async fn for_database(
        db: &DatabaseConnection,
        key: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, DbErr> {
        // Listening from the start (in-process on SQLite: always).
        crate::telemetry::metrics().event_listener(true);
        if db.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(Self::default());
        }
        let schema = db
            .query_one_raw(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT current_schema() AS schema",
            ))
            .await?
            .and_then(|row| row.try_get::<String>("", "schema").ok())
            .unwrap_or_else(|| "public".to_owned());
        let channel = format!("keystone_events:{schema}");
        let key: Arc<[u8]> = key()
            .map_err(|e| DbErr::Custom(format!("cannot read or create the events key: {e}")))?
            .into();
        let pool = db.get_postgres_connection_pool().clone();
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| DbErr::Custom(format!("cannot LISTEN for events: {e}")))?;
        listener
            .listen(&channel)
            .await
            .map_err(|e| DbErr::Custom(format!("cannot LISTEN for events: {e}")))?;
        let local = broadcast::channel(CAPACITY).0;
        let (outbox, pending) = mpsc::channel(OUTBOX);
        let channel_name = channel.clone();
        let tasks = vec![
            tokio::spawn(send_notifications(
                db.clone(),
                channel,
                key.clone(),
                pending,
            ))
            .abort_handle(),
            tokio::spawn(receive_notifications(
                listener,
                channel_name,
                db.clone(),
                key,
                local.clone(),
            ))
            .abort_handle(),
        ];
        Ok(Self {
            local,
            outbox: Some(outbox),
            tasks: Arc::new(tasks),
        })
    }

    /// Stops relaying (at shutdown, so the pool can close: listening holds a connection).
    pub fn close(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }

    /// Sends `event` to every current subscriber (none listening is fine).
    pub fn publish(&self, event: Event) {
        let metrics = crate::telemetry::metrics();
        metrics.event_published(event.kind());
        match &self.outbox {
            None => {
                let _ = self.local.send(event);
            }
            Some(outbox) => {
                if outbox.try_send(event).is_err() {
                    metrics.events_dropped("outbox", 1);
                    tracing::warn!("event outbox full: an event was dropped");
                }
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }
}

/// The payloads for `event`, each within [`MAX_PAYLOAD`].
fn encode(event: Event) -> Vec<String> {
    let fits = |wire: &Wire| {
        serde_json::to_string(wire)
            .ok()
            .filter(|p| p.len() <= MAX_PAYLOAD)
    };
    match event {
        Event::DeploymentUpdated(row) => {
            let id = row.id;
            fits(&Wire::Deployment {
                row: (*row).clone(),
            })
            .or_else(|| fits(&Wire::DeploymentId { id }))
            .into_iter()
            .collect()
        }
        Event::AppUpdated(row) => {
            let id = row.id;
            fits(&Wire::App {
                row: (*row).clone(),
            })
            .or_else(|| fits(&Wire::AppId { id }))
            .into_iter()
            .collect()
        }
        Event::AppDeleted { app_id, runner } => fits(&Wire::AppDeleted {
            id: app_id,
            runner: runner.map(|r| r.to_string()),
        })
        .into_iter()
        .collect(),
        Event::DeploymentLog {
            deployment_id,
            chunk,
            first_line,
        } => {
            // JSON escaping can double a character's size; 3,000 characters always fit. Each
            // piece carries the number of its own first line.
            let chars: Vec<char> = chunk.chars().collect();
            let mut first = first_line;
            chars
                .chunks(3_000)
                .filter_map(|piece| {
                    let text: String = piece.iter().collect();
                    let this = first;
                    first = first.map(|n| n + text.matches('\n').count() as i64);
                    fits(&Wire::Log {
                        id: deployment_id,
                        chunk: text,
                        first: this,
                    })
                })
                .collect()
        }
        Event::Resync => Vec::new(),
    }
}

/// Sends this instance's events with `NOTIFY`, one at a time, in order.
async fn send_notifications(
    db: DatabaseConnection,
    channel: String,
    key: Arc<[u8]>,
    mut pending: mpsc::Receiver<Event>,
) {
    let mut sender = [0u8; 8];
    if let Err(error) = getrandom::fill(&mut sender) {
        tracing::error!(%error, "no randomness for the events sender id: events are not sent");
        return;
    }
    let mut stamp = Stamp {
        sender: u64::from_le_bytes(sender),
        sequence: 0,
    };
    while let Some(event) = pending.recv().await {
        for payload in encode(event) {
            stamp.sequence += 1;
            let payload = sign(&key, stamp, &payload);
            let sent = db
                .execute_raw(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [channel.clone().into(), payload.into()],
                ))
                .await;
            if let Err(error) = sent {
                tracing::warn!(%error, "cannot NOTIFY an event; subscribers miss it");
            }
        }
    }
}

/// A new listening connection on `channel`, retried every second until PostgreSQL answers.
async fn relisten(db: &DatabaseConnection, channel: &str) -> PgListener {
    loop {
        let pool = db.get_postgres_connection_pool();
        match PgListener::connect_with(pool).await {
            Ok(mut listener) => match listener.listen(channel).await {
                Ok(()) => return listener,
                Err(error) => tracing::warn!(%error, "cannot LISTEN for events; retrying in 1 s"),
            },
            Err(error) => tracing::warn!(%error, "cannot reconnect for events; retrying in 1 s"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Hands every instance's events, as PostgreSQL delivers them, to local subscribers.
async fn receive_notifications(
    mut listener: PgListener,
    channel: String,
    db: DatabaseConnection,
    key: Arc<[u8]>,
    local: broadcast::Sender<Event>,
) {
    let mut replays = Replays::new();
    loop {
        let notification = match listener.try_recv().await {
            Ok(Some(notification)) => notification,
            lost => {
                if let Err(error) = lost {
                    tracing::warn!(%error, "event connection failed");
                }
                tracing::warn!("event connection lost; reconnecting");
                crate::telemetry::metrics().event_listener(false);
                listener = relisten(&db, &channel).await;
                crate::telemetry::metrics().event_listener(true);
                tracing::info!("listening for events again; subscribers are told to refetch");
                let _ = local.send(Event::Resync);
                continue;
            }
        };
        let Some((stamp, payload)) = verified(&key, notification.payload()) else {
            tracing::warn!(
                "ignoring a notification on Keystone's channel whose signature does not verify \
                 (sent by something other than a Keystone server with this events key)"
            );
            continue;
        };
        if !replays.fresh(stamp) {
            tracing::warn!(
                sender = format_args!("{:016x}", stamp.sender),
                sequence = stamp.sequence,
                "ignoring a notification sent again (a replay)"
            );
            continue;
        }
        let event = match serde_json::from_str::<Wire>(payload) {
            Ok(Wire::Deployment { row }) => Event::DeploymentUpdated(Arc::new(row)),
            Ok(Wire::App { row }) => Event::AppUpdated(Arc::new(row)),
            Ok(Wire::AppDeleted { id, runner }) => Event::AppDeleted {
                app_id: id,
                runner: runner.map(Arc::from),
            },
            Ok(Wire::Log { id, chunk, first }) => Event::DeploymentLog {
                deployment_id: id,
                chunk: Arc::from(chunk),
                first_line: first,
            },
            Ok(Wire::DeploymentId { id }) => match Deployment::find_by_id(id).one(&db).await {
                Ok(Some(row)) => Event::DeploymentUpdated(Arc::new(row)),
                _ => continue,
            },
            Ok(Wire::AppId { id }) => match App::find_by_id(id).one(&db).await {
                Ok(Some(row)) => Event::AppUpdated(Arc::new(row)),
                _ => continue,
            },
            Err(error) => {
                tracing::warn!(%error, "ignoring a notification that is not a Keystone event");
                continue;
            }
        };
        let _ = local.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signed_payloads_verify() {
        let key = b"k".repeat(64);
        let stamp = Stamp {
            sender: 0xfeed,
            sequence: 7,
        };
        let signed = sign(&key, stamp, r#"{"k":"app_id","id":1}"#);
        assert_eq!(
            verified(&key, &signed),
            Some((stamp, r#"{"k":"app_id","id":1}"#))
        );
        assert_eq!(verified(b"another key", &signed), None);
        assert_eq!(verified(&key, r#"{"k":"app_id","id":1}"#), None);
        let forged = format!("{}.{}", "0".repeat(64), r#"{"k":"app_id","id":1}"#);
        assert_eq!(verified(&key, &forged), None);
        // The stamp is signed: a renumbered payload does not verify.
        let renumbered = signed.replace(".7.", ".8.");
        assert_eq!(verified(&key, &renumbered), None);
    }

    #[test]
    fn a_notification_is_accepted_once() {
        let mut replays = Replays::new();
        let stamp = |sender, sequence| Stamp { sender, sequence };
        assert!(replays.fresh(stamp(1, 1)));
        assert!(replays.fresh(stamp(2, 1)));
        assert!(replays.fresh(stamp(1, 2)));
        assert!(!replays.fresh(stamp(1, 2)));
        assert!(!replays.fresh(stamp(1, 1)));
        assert!(replays.fresh(stamp(2, 5)));
        // Bounded: the oldest senders are forgotten.
        for sender in 10..(10 + Replays::SENDERS as u64) {
            replays.fresh(stamp(sender, 1));
        }
        assert_eq!(replays.last.len(), Replays::SENDERS);
    }

    #[test]
    fn instances_share_one_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = signing_key(&dir.path().join("logs")).unwrap();
        let second = signing_key(&dir.path().join("logs")).unwrap();
        assert_eq!(first, second);
        let mode = std::fs::metadata(dir.path().join("logs/events.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
