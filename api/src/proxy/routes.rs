//! The proxy's routes: which upstream (an instance's address) serves each public port and
//! each `HOST` app, and how many connections or requests each upstream has in flight (a
//! switch drains the old upstream by that count). The table is saved to `routes.json`
//! (mode 0600, written atomically) before a change is acknowledged, so a restarted proxy
//! serves what was last acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a route is for: a public port (a `PORT` app) or an app's host name (a `HOST` app).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKey {
    Port(u16),
    Host(String),
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteKey::Port(port) => write!(f, "port {port}"),
            RouteKey::Host(app) => write!(f, "host {app}"),
        }
    }
}

/// An upstream and what it serves right now.
#[derive(Debug)]
pub struct Target {
    pub address: SocketAddr,
    active: AtomicUsize,
}

impl Target {
    /// How many connections (or HTTP requests) it serves now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// One connection or request counted against a target while it lives.
pub struct InFlight(Arc<Target>);

impl InFlight {
    pub fn target(&self) -> &Target {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The routes as saved.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub routes: BTreeMap<String, SocketAddr>,
}

impl Saved {
    fn key(key: &RouteKey) -> String {
        match key {
            RouteKey::Port(port) => format!("port:{port}"),
            RouteKey::Host(app) => format!("host:{app}"),
        }
    }

    fn parse(key: &str) -> Option<RouteKey> {
        match key.split_once(':')? {
            ("port", port) => port.parse().ok().map(RouteKey::Port),
            ("host", app) => Some(RouteKey::Host(app.to_owned())),
            _ => None,
        }
    }

    /// The saved routes, each key parsed (unreadable ones are skipped).
    pub fn entries(&self) -> Vec<(RouteKey, SocketAddr)> {
        self.routes
            .iter()
            .filter_map(|(key, address)| Some((Self::parse(key)?, *address)))
            .collect()
    }
}

/// The table, shared by the listeners and the control socket.
pub struct Routes {
    file: PathBuf,
    table: Mutex<BTreeMap<RouteKey, Arc<Target>>>,
    /// Every target with requests in flight or a route, by address (a drain finds the old
    /// one here after its route moved on).
    targets: Mutex<HashMap<SocketAddr, Arc<Target>>>,
}

impl Routes {
    /// The routes saved in `dir` (none when there is no file).
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let file = dir.join("routes.json");
        let saved: Saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                std::io::Error::other(format!("{} is not a routes file: {error}", file.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(error) => return Err(error),
        };
        let routes = Self {
            file,
            table: Mutex::default(),
            targets: Mutex::default(),
        };
        for (key, address) in saved.entries() {
            let target = routes.target(address);
            routes.lock_table().insert(key, target);
        }
        Ok(routes)
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, BTreeMap<RouteKey, Arc<Target>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target(&self, address: SocketAddr) -> Arc<Target> {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(address)
            .or_insert_with(|| {
                Arc::new(Target {
                    address,
                    active: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Every route.
    pub fn entries(&self) -> Vec<(RouteKey, SocketAddr)> {
        self.lock_table()
            .iter()
            .map(|(key, target)| (key.clone(), target.address))
            .collect()
    }

    /// A connection or request to `key`'s upstream, counted while it lives.
    pub fn enter(&self, key: &RouteKey) -> Option<InFlight> {
        let target = self.lock_table().get(key)?.clone();
        target.active.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(target))
    }

    /// Points `key` at `address` and saves the table; returns the upstream it replaces. The
    /// change is undone when it cannot be saved.
    pub fn set(&self, key: RouteKey, address: SocketAddr) -> std::io::Result<Option<SocketAddr>> {
        let target = self.target(address);
        let mut table = self.lock_table();
        let previous = table.insert(key.clone(), target);
        if let Err(error) = self.save(&table) {
            match &previous {
                Some(previous) => table.insert(key, previous.clone()),
                None => table.remove(&key),
            };
            return Err(error);
        }
        Ok(previous
            .map(|target| target.address)
            .filter(|previous| *previous != address))
    }

    /// Removes `key`'s route and saves the table; returns the upstream it had.
    pub fn remove(&self, key: &RouteKey) -> std::io::Result<Option<SocketAddr>> {
        let mut table = self.lock_table();
        let Some(previous) = table.remove(key) else {
            return Ok(None);
        };
        if let Err(error) = self.save(&table) {
            table.insert(key.clone(), previous);
            return Err(error);
        }
        Ok(Some(previous.address))
    }

    fn save(&self, table: &BTreeMap<RouteKey, Arc<Target>>) -> std::io::Result<()> {
        let saved = Saved {
            routes: table
                .iter()
                .map(|(key, target)| (Saved::key(key), target.address))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
        crate::files::write_owner_only(&self.file, &bytes)
    }

    /// Waits until nothing is in flight to `address` any more, or `limit` has passed;
    /// returns what is still in flight.
    pub async fn drain(&self, address: SocketAddr, limit: Duration) -> usize {
        let target = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&address)
            .cloned();
        let Some(target) = target else {
            return 0;
        };
        let deadline = tokio::time::Instant::now() + limit;
        while target.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining = target.active();
        self.forget_unused();
        remaining
    }

    /// Connections and requests in flight to any upstream.
    pub fn in_flight(&self) -> usize {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|target| target.active())
            .sum()
    }

    /// Drops targets no route names and nothing uses.
    fn forget_unused(&self) {
        let routed: Vec<SocketAddr> = self.lock_table().values().map(|t| t.address).collect();
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|address, target| routed.contains(address) || target.active() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_are_saved_and_drained() {
        let dir = tempfile::tempdir().unwrap();
        let routes = Routes::load(dir.path()).unwrap();
        let a: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        assert_eq!(routes.set(RouteKey::Port(9000), a).unwrap(), None);
        assert_eq!(routes.set(RouteKey::Host("web".into()), b).unwrap(), None);
        let held = routes.enter(&RouteKey::Port(9000)).unwrap();
        assert_eq!(held.target().address, a);
        assert_eq!(routes.set(RouteKey::Port(9000), b).unwrap(), Some(a));
        // The old upstream drains when its last connection ends.
        assert_eq!(routes.drain(a, Duration::from_millis(50)).await, 1);
        drop(held);
        assert_eq!(routes.drain(a, Duration::from_secs(5)).await, 0);
        // A restart finds the same table.
        let again = Routes::load(dir.path()).unwrap();
        assert_eq!(again.entries(), routes.entries());
        let mode = std::fs::metadata(dir.path().join("routes.json"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(routes.remove(&RouteKey::Port(9000)).unwrap(), Some(b));
        assert!(routes.enter(&RouteKey::Port(9000)).is_none());
    }
}
