//! The runner's side of the data plane: it routes apps through `keystone proxy`
//! ([`crate::proxy`]), a process of its own that outlives the runner. The runner uses the
//! proxy that answers on its work directory's control socket, and starts one when none does
//! (detached: its own process group, its log in `<work>/proxy/proxy.log`). Every change waits
//! for the proxy's acknowledgement, which comes once the route is in effect and saved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use crate::proxy::control::{ProxyClient, Reply, Request};
use crate::proxy::routes::RouteKey;

/// How the proxy this runner starts is set up.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub host_bind: SocketAddr,
    pub apps_domain: String,
    pub bind_address: std::net::IpAddr,
}

pub struct Routing {
    dir: PathBuf,
    client: ProxyClient,
    settings: ProxySettings,
    /// Where the proxy serves `HOST` apps (as it last said).
    host_address: Mutex<Option<SocketAddr>>,
}

impl Routing {
    /// The routing of the runner whose work directory is `work`; a proxy is started if none
    /// answers.
    pub async fn start(work: &Path, settings: ProxySettings) -> Result<Self, String> {
        let dir = crate::proxy::dir_for(work);
        let routing = Self {
            client: ProxyClient::new(&dir),
            dir,
            settings,
            host_address: Mutex::default(),
        };
        routing.ensure().await?;
        Ok(routing)
    }

    /// Makes sure a proxy answers: the running one, or a new one started now.
    pub async fn ensure(&self) -> Result<(), String> {
        if self.hello().await.is_ok() {
            return Ok(());
        }
        self.spawn()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.hello().await {
                Ok(()) => return Ok(()),
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "the proxy did not start (see {}): {error}",
                        self.dir.join("proxy.log").display()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn hello(&self) -> Result<(), String> {
        match self.client.call(&Request::Hello).await {
            Ok(Reply::Hello {
                host_address, pid, ..
            }) => {
                let mut known = self.host_address.lock().unwrap_or_else(|e| e.into_inner());
                if *known != host_address || known.is_none() {
                    match host_address {
                        Some(address) => {
                            tracing::info!(%address, pid, "HOST apps are served by the proxy on {address}")
                        }
                        None => tracing::warn!(
                            pid,
                            "the proxy does not serve HOST apps (its --host-bind could not be bound)"
                        ),
                    }
                }
                *known = host_address;
                Ok(())
            }
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Starts `keystone proxy` on this runner's directory, detached from the runner.
    fn spawn(&self) -> Result<(), String> {
        crate::files::create_private_dir(&self.dir).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("proxy.log"))
            .map_err(|e| format!("cannot open the proxy's log: {e}"))?;
        let binary =
            std::env::current_exe().map_err(|e| format!("cannot find the keystone binary: {e}"))?;
        let mut command = std::process::Command::new(binary);
        command
            .arg("proxy")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--host-bind", &self.settings.host_bind.to_string()])
            .args(["--apps-domain", &self.settings.apps_domain])
            .args(["--bind-address", &self.settings.bind_address.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start the proxy: {e}"))?;
        tracing::info!(pid = child.id(), dir = %self.dir.display(), "started the proxy");
        // It outlives the runner; while the runner lives, this thread reaps it if it ends.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(())
    }

    async fn call(&self, request: Request) -> Result<Reply, String> {
        match self.client.call(&request).await {
            Ok(reply) => Ok(reply),
            // The proxy went away (killed, or its host rebooted): start it again, once.
            Err(crate::proxy::control::ControlError::Unreachable { .. }) => {
                self.ensure().await?;
                self.client.call(&request).await.map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Routes `route` to `upstream`; returns the upstream it replaces.
    pub async fn set(
        &self,
        route: RouteKey,
        upstream: SocketAddr,
    ) -> Result<Option<SocketAddr>, String> {
        match self.call(Request::Set { route, upstream }).await? {
            Reply::Set { previous } => Ok(previous),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }

    /// Stops routing `route` (a port closes); returns the upstream it had.
    pub async fn remove(&self, route: RouteKey) -> Result<Option<SocketAddr>, String> {
        match self.call(Request::Remove { route }).await? {
            Reply::Removed { previous } => Ok(previous),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }

    /// Waits (at most `limit`) until nothing is in flight to `upstream`.
    pub async fn drain(&self, upstream: SocketAddr, limit: Duration) {
        let request = Request::Drain {
            upstream,
            timeout_ms: limit.as_millis() as u64,
        };
        if let Err(error) = self.call(request).await {
            tracing::warn!(%error, %upstream, "cannot drain an instance; waiting the drain time");
            tokio::time::sleep(limit).await;
        }
    }

    /// Every route the proxy serves.
    pub async fn routes(&self) -> Result<Vec<(RouteKey, SocketAddr)>, String> {
        match self.call(Request::Routes).await? {
            Reply::Routes { routes } => Ok(routes),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }
}
