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
//! Slow subscribers: each subscription may fall at most [`CAPACITY`] events behind. One
//! that falls further loses the oldest events it has not read (memory stays bounded), is
//! told how many it lost, and goes on from there. Notifications missed while an instance's
//! listening connection was down (it reconnects by itself) are lost the same way; that is
//! logged.

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
/// The most payload bytes one notification carries (PostgreSQL's limit is 8000).
const MAX_PAYLOAD: usize = 7_500;

#[derive(Clone, Debug)]
pub enum Event {
    /// A deployment was created or changed; carries its new state.
    DeploymentUpdated(Arc<deployment::Model>),
    /// An app's status or port changed; carries its new state.
    AppUpdated(Arc<app::Model>),
    /// A runner appended `chunk` to a deployment's log.
    DeploymentLog { deployment_id: i64, chunk: Arc<str> },
}

/// An event as a `NOTIFY` payload.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Wire {
    Deployment { row: deployment::Model },
    DeploymentId { id: i64 },
    App { row: app::Model },
    AppId { id: i64 },
    Log { id: i64, chunk: String },
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
    pub async fn for_database(db: &DatabaseConnection) -> Result<Self, DbErr> {
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
        let tasks = vec![
            tokio::spawn(send_notifications(db.clone(), channel, pending)).abort_handle(),
            tokio::spawn(receive_notifications(listener, db.clone(), local.clone())).abort_handle(),
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
        match &self.outbox {
            None => {
                let _ = self.local.send(event);
            }
            Some(outbox) => {
                if outbox.try_send(event).is_err() {
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
        Event::DeploymentLog {
            deployment_id,
            chunk,
        } => {
            // JSON escaping can double a character's size; 3,000 characters always fit.
            let chars: Vec<char> = chunk.chars().collect();
            chars
                .chunks(3_000)
                .filter_map(|piece| {
                    fits(&Wire::Log {
                        id: deployment_id,
                        chunk: piece.iter().collect(),
                    })
                })
                .collect()
        }
    }
}

/// Sends this instance's events with `NOTIFY`, one at a time, in order.
async fn send_notifications(
    db: DatabaseConnection,
    channel: String,
    mut pending: mpsc::Receiver<Event>,
) {
    while let Some(event) = pending.recv().await {
        for payload in encode(event) {
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

/// Hands every instance's events, as PostgreSQL delivers them, to local subscribers.
async fn receive_notifications(
    mut listener: PgListener,
    db: DatabaseConnection,
    local: broadcast::Sender<Event>,
) {
    loop {
        let notification = match listener.try_recv().await {
            Ok(Some(notification)) => notification,
            Ok(None) => {
                tracing::warn!(
                    "event connection lost; reconnecting (events sent meanwhile are missed)"
                );
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot receive events; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let event = match serde_json::from_str::<Wire>(notification.payload()) {
            Ok(Wire::Deployment { row }) => Event::DeploymentUpdated(Arc::new(row)),
            Ok(Wire::App { row }) => Event::AppUpdated(Arc::new(row)),
            Ok(Wire::Log { id, chunk }) => Event::DeploymentLog {
                deployment_id: id,
                chunk: Arc::from(chunk),
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
