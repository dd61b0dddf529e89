//! What the runner remembers across restarts (`<work>/state.json`, mode 0600): for each app
//! it serves, the instance behind its endpoint. Written atomically (a temporary file, then a
//! rename) after every switch and stop; a missing or unreadable file means nothing runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::runtime::Handle;
use crate::proxy::routes::RouteKey;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// By app id.
    pub apps: BTreeMap<i64, Instance>,
}

/// A running instance of an app.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instance {
    pub app_name: String,
    /// The deployment whose release it runs.
    pub deployment: i64,
    pub release: PathBuf,
    /// Its process group or container.
    pub handle: Handle,
    /// The image it runs (docker runtime).
    #[serde(default)]
    pub image: Option<String>,
    /// Where it serves (the proxy's upstream).
    #[serde(default)]
    pub upstream: Option<SocketAddr>,
    /// Where it served on loopback, as runners before the proxy recorded it.
    #[serde(default)]
    pub private_port: u16,
    /// The app's public port (PORT apps).
    pub public_port: Option<u16>,
    /// Served by host name through the HOST router (HOST apps).
    #[serde(default)]
    pub host_routed: bool,
}

impl Instance {
    /// Where it serves.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.private_port)))
    }

    /// The proxy's route to it: its app's public port, or its host name.
    pub fn route(&self) -> Option<RouteKey> {
        match self.public_port {
            Some(port) => Some(RouteKey::Port(port)),
            None if self.host_routed => Some(RouteKey::Host(self.app_name.clone())),
            None => None,
        }
    }
}

impl State {
    fn path(work: &Path) -> PathBuf {
        work.join("state.json")
    }

    pub fn load(work: &Path) -> Self {
        match std::fs::read(Self::path(work)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(%error, "the runner's state file is unreadable; starting empty");
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    pub fn save(&self, work: &Path) {
        let path = Self::path(work);
        let written = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::files::write_owner_only(&path, &bytes));
        if let Err(error) = written {
            tracing::error!(%error, path = %path.display(), "cannot save the runner's state");
        }
    }
}
