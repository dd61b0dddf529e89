//! Changes that live subscribers see, published after the transaction that made them has
//! committed. In-process for now: a bounded `tokio::sync::broadcast` channel.
//!
//! Slow subscribers: each subscription may fall at most [`CAPACITY`] events behind. One
//! that falls further loses the oldest events it has not read (memory stays bounded), is
//! told how many it lost, and goes on from there.

use std::sync::Arc;

use entity::{app, deployment};
use tokio::sync::broadcast;

/// Events a subscriber may lag behind before it loses some.
pub const CAPACITY: usize = 1024;

#[derive(Clone, Debug)]
pub enum Event {
    /// A deployment was created or changed; carries its new state.
    DeploymentUpdated(Arc<deployment::Model>),
    /// An app's status or port changed; carries its new state.
    AppUpdated(Arc<app::Model>),
    /// A runner appended `chunk` to a deployment's log.
    DeploymentLog { deployment_id: i64, chunk: Arc<str> },
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl EventBus {
    /// Sends `event` to every current subscriber (none listening is fine).
    pub fn publish(&self, event: Event) {
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
