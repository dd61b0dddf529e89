//! `keystone proxy`: the data plane. A long-lived process that owns the apps' public
//! listeners — a TCP forwarder per `PORT` app ([`tcp`]) and one HTTP router for `HOST` apps
//! ([`http`]) — and routes them to the instances the runner starts. The runner changes routes
//! through a control socket ([`control`]); the routes are saved on disk ([`routes`]), so the
//! proxy restarts with them, and apps keep serving while the runner is down, restarts or is
//! upgraded (as kamal-proxy, Dokku's nginx and Coolify's Traefik do for their agents).
//!
//! The runner starts a proxy when none answers on its directory's control socket, and uses
//! the one that does. A proxy started while another runs takes the listening sockets over
//! from it (no port closes: see [`control`]); the old one finishes its connections and exits.
//! A proxy whose directory is removed stops.

pub mod control;
mod http;
mod io;
pub mod routes;
mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;

use self::control::{Reply, Request};
use self::io::Limits;
use self::routes::{RouteKey, Routes};

/// `keystone proxy` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArgs {
    /// Where the control socket, the saved routes, the pid and the log live (mode 0700).
    #[arg(
        long,
        env = "KEYSTONE_PROXY_DIR",
        default_value = "keystone-runner/proxy"
    )]
    pub dir: PathBuf,
    /// Where `HOST` apps are served, by host name (put the TLS proxy in front of it).
    #[arg(long, env = "KEYSTONE_HOST_BIND", default_value = "127.0.0.1:8080")]
    pub host_bind: SocketAddr,
    /// The domain `HOST` apps are served under: `<app>.<domain>`.
    #[arg(long, env = "KEYSTONE_APPS_DOMAIN", default_value = "localhost")]
    pub apps_domain: String,
    /// Address the apps' public ports listen on.
    #[arg(long, env = "KEYSTONE_RUNNER_BIND", default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// Connections one listener serves at once (more wait in the kernel's queue).
    #[arg(long, env = "KEYSTONE_PROXY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a request's head may take to arrive, and an idle kept-alive HTTP
    /// connection is kept.
    #[arg(long, env = "KEYSTONE_PROXY_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a connection may move no byte before it is closed.
    #[arg(long, env = "KEYSTONE_PROXY_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Seconds a proxy that is stopped (or replaced) lets open connections finish.
    #[arg(long, env = "KEYSTONE_PROXY_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
}

impl ProxyArgs {
    fn limits(&self) -> Limits {
        Limits {
            connections: self.max_connections.max(1),
            header: Duration::from_secs(self.header_timeout_secs.max(1)),
            idle: Duration::from_secs(self.idle_timeout_secs.max(1)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take over from the running proxy: {0}")]
    Handover(std::io::Error),
    #[error("control socket {path}: {source}")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A listening socket the proxy serves, and the switch that stops its accept loop.
struct Listening {
    /// Kept to hand over (the accept loop has its own copy).
    socket: std::net::TcpListener,
    accepting: watch::Sender<bool>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.accepting.send_replace(false);
    }
}

struct Proxy {
    args: ProxyArgs,
    routes: Arc<Routes>,
    limits: Limits,
    ports: Mutex<HashMap<u16, Listening>>,
    host: Option<(Listening, SocketAddr)>,
    /// Turns true when the proxy should stop (a signal, `Shutdown`, a handover, its
    /// directory gone).
    stopping: watch::Sender<bool>,
}

impl Proxy {
    fn lock_ports(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Listening>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `socket` (listening, for `port`) as a forwarder.
    fn serve_port(&self, port: u16, socket: std::net::TcpListener) -> std::io::Result<()> {
        socket.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
        let (accepting, receiver) = watch::channel(true);
        tokio::spawn(tcp::serve(
            listener,
            port,
            self.routes.clone(),
            self.limits,
            receiver,
        ));
        self.lock_ports()
            .insert(port, Listening { socket, accepting });
        Ok(())
    }

    fn open_port(&self, port: u16) -> Result<(), String> {
        if self.lock_ports().contains_key(&port) {
            return Ok(());
        }
        let bind = self.args.bind_address;
        let socket = std::net::TcpListener::bind((bind, port))
            .map_err(|e| format!("cannot listen on {bind}:{port}: {e}"))?;
        self.serve_port(port, socket)
            .map_err(|e| format!("cannot serve {bind}:{port}: {e}"))
    }

    async fn handle(&self, request: Request) -> Reply {
        let failed = |message: String| Reply::Error { message };
        match request {
            Request::Hello => Reply::Hello {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                host_address: self.host.as_ref().map(|(_, address)| *address),
            },
            Request::Routes => Reply::Routes {
                routes: self.routes.entries(),
            },
            Request::Set { route, upstream } => {
                let opened = match &route {
                    RouteKey::Port(port) => {
                        let new = !self.lock_ports().contains_key(port);
                        if let Err(why) = self.open_port(*port) {
                            return failed(why);
                        }
                        new.then_some(*port)
                    }
                    RouteKey::Host(_) if self.host.is_none() => {
                        return failed(format!(
                            "HOST apps are not served: --host-bind {} could not be bound",
                            self.args.host_bind
                        ));
                    }
                    RouteKey::Host(_) => None,
                };
                match self.routes.set(route.clone(), upstream) {
                    Ok(previous) => {
                        tracing::info!(%route, %upstream, "route set");
                        Reply::Set { previous }
                    }
                    Err(error) => {
                        if let Some(port) = opened {
                            self.lock_ports().remove(&port);
                        }
                        failed(format!("cannot save the routes: {error}"))
                    }
                }
            }
            Request::Remove { route } => match self.routes.remove(&route) {
                Ok(previous) => {
                    if let RouteKey::Port(port) = &route {
                        self.lock_ports().remove(port);
                    }
                    tracing::info!(%route, "route removed");
                    Reply::Removed { previous }
                }
                Err(error) => failed(format!("cannot save the routes: {error}")),
            },
            Request::Drain {
                upstream,
                timeout_ms,
            } => Reply::Drained {
                remaining: self
                    .routes
                    .drain(upstream, Duration::from_millis(timeout_ms))
                    .await,
            },
            Request::Shutdown => {
                self.stopping.send_replace(true);
                Reply::Done
            }
            // Answered on the socket itself (see `control_connection`).
            Request::Handover => failed("a handover is answered on its own".to_owned()),
        }
    }

    /// The listening sockets, in the order a handover sends them.
    fn listeners(&self) -> (Vec<Option<u16>>, Vec<std::net::TcpListener>) {
        let mut keys = Vec::new();
        let mut sockets = Vec::new();
        for (port, listening) in self.lock_ports().iter() {
            if let Ok(socket) = listening.socket.try_clone() {
                keys.push(Some(*port));
                sockets.push(socket);
            }
        }
        if let Some((listening, _)) = &self.host
            && let Ok(socket) = listening.socket.try_clone()
        {
            keys.push(None);
            sockets.push(socket);
        }
        (keys, sockets)
    }

    /// Stops accepting everywhere (open connections go on).
    fn stop_accepting(&self) {
        for listening in self.lock_ports().values() {
            listening.accepting.send_replace(false);
        }
        if let Some((listening, _)) = &self.host {
            listening.accepting.send_replace(false);
        }
    }
}

/// Runs the proxy until it is stopped (SIGTERM, Ctrl-C, `Shutdown`), replaced by a newer one,
/// or its directory disappears.
pub async fn run(args: ProxyArgs) -> Result<(), ProxyError> {
    let dir = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
    let dir_error = |source| ProxyError::Dir {
        path: dir.clone(),
        source,
    };
    crate::files::create_private_dir(&dir).map_err(dir_error)?;
    let socket_path = control::socket_path(&dir);
    let limits = args.limits();

    // A running proxy hands its listeners over; otherwise the saved routes are served.
    let taken = if std::os::unix::net::UnixStream::connect(&socket_path).is_ok() {
        let path = socket_path.clone();
        let taken = tokio::task::spawn_blocking(move || control::take_over(&path))
            .await
            .map_err(|e| ProxyError::Handover(std::io::Error::other(e)))?
            .map_err(ProxyError::Handover)?;
        Some(taken)
    } else {
        None
    };
    let routes = Arc::new(Routes::load(&dir).map_err(dir_error)?);
    let (mut inherited, old) = match taken {
        Some(taken) => {
            for (key, upstream) in &taken.routes {
                routes.set(key.clone(), *upstream).map_err(dir_error)?;
            }
            let sockets: Vec<(Option<u16>, std::net::TcpListener)> = taken
                .listeners
                .into_iter()
                .map(|(key, fd): (Option<u16>, OwnedFd)| (key, std::net::TcpListener::from(fd)))
                .collect();
            (sockets, Some(taken.old))
        }
        None => (Vec::new(), None),
    };

    let router = Arc::new(http::HostRouter::new(
        routes.clone(),
        &args.apps_domain,
        limits,
    ));
    let host_socket = match inherited.iter().position(|(key, _)| key.is_none()) {
        Some(at) => Ok(inherited.remove(at).1),
        None => std::net::TcpListener::bind(args.host_bind),
    };
    let host = match host_socket.and_then(|socket| {
        socket.set_nonblocking(true)?;
        let address = socket.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
        Ok((socket, address, listener))
    }) {
        Ok((socket, address, listener)) => {
            let (accepting, receiver) = watch::channel(true);
            tokio::spawn(http::serve(listener, router.clone(), receiver));
            tracing::info!(%address, domain = %args.apps_domain, "serving HOST apps");
            Some((Listening { socket, accepting }, address))
        }
        Err(error) => {
            tracing::warn!(bind = %args.host_bind, %error, "cannot serve HOST apps (--host-bind)");
            None
        }
    };
    let proxy = Arc::new(Proxy {
        routes: routes.clone(),
        limits,
        ports: Mutex::default(),
        host,
        stopping: watch::Sender::new(false),
        args,
    });
    for (port, socket) in inherited {
        if let Some(port) = port
            && let Err(error) = proxy.serve_port(port, socket)
        {
            tracing::warn!(port, %error, "cannot serve a port taken over");
        }
    }
    for (key, _) in routes.entries() {
        if let RouteKey::Port(port) = key
            && let Err(why) = proxy.open_port(port)
        {
            tracing::warn!(port, %why, "cannot reopen a saved route's port");
        }
    }

    // The control socket: bound beside the old one, then renamed over it, so that the path
    // always leads to a proxy.
    let fresh = dir.join(format!("control.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let control_error = |source| ProxyError::Control {
        path: socket_path.clone(),
        source,
    };
    let control = UnixListener::bind(&fresh).map_err(control_error)?;
    std::fs::set_permissions(&fresh, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(control_error)?;
    std::fs::rename(&fresh, &socket_path).map_err(control_error)?;
    let _ = crate::files::write_owner_only(
        &dir.join("proxy.pid"),
        std::process::id().to_string().as_bytes(),
    );
    if let Some(mut old) = old {
        // The old proxy stops accepting once told: from now on the listeners are ours.
        let _ = std::io::Write::write_all(&mut old, b"{\"reply\":\"done\"}\n");
        tracing::info!("took the listeners over from the running proxy");
    }
    tracing::info!(dir = %dir.display(), routes = routes.entries().len(), "proxy ready");

    let mut stopping = proxy.stopping.subscribe();
    let accept_control = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = control.accept().await else {
                    continue;
                };
                let proxy = proxy.clone();
                tokio::spawn(control_connection(proxy, stream));
            }
        })
    };
    let watch_dir = {
        let proxy = proxy.clone();
        let socket_path = socket_path.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !socket_path.exists() {
                    tracing::warn!(
                        "the control socket is gone (its directory was removed): stopping"
                    );
                    proxy.stopping.send_replace(true);
                    return;
                }
            }
        })
    };
    tokio::select! {
        () = crate::shutdown_signal() => {}
        _ = stopping.wait_for(|stopping| *stopping) => {}
    }
    accept_control.abort();
    watch_dir.abort();
    proxy.stop_accepting();
    // What is in flight finishes, within the drain time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(proxy.args.drain_secs);
    while routes.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("proxy stopped");
    Ok(())
}

/// One request on the control socket.
async fn control_connection(proxy: Arc<Proxy>, mut stream: tokio::net::UnixStream) {
    let request = match control::read_request(&mut stream).await {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(_) => {
            let _ = control::write_reply(
                &mut stream,
                &Reply::Error {
                    message: "not a request".to_owned(),
                },
            )
            .await;
            return;
        }
    };
    if matches!(request, Request::Handover) {
        hand_over(&proxy, stream).await;
        return;
    }
    let reply = proxy.handle(request).await;
    let _ = control::write_reply(&mut stream, &reply).await;
}

/// Sends a newer proxy the listeners and routes; once it says it serves them, stops.
async fn hand_over(proxy: &Arc<Proxy>, stream: tokio::net::UnixStream) {
    let (keys, sockets) = proxy.listeners();
    let reply = Reply::Handover {
        listeners: keys,
        routes: proxy.routes.entries(),
    };
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let sent = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        let fds: Vec<_> = sockets.iter().map(|s| s.as_fd()).collect();
        control::send_handover(&mut stream, &reply, &fds)?;
        // Wait for the new proxy to serve them (or to give up: then keep serving).
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut done = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut stream), &mut done)?;
        if done.contains("done") {
            Ok(())
        } else {
            Err(std::io::Error::other("the new proxy did not take over"))
        }
    })
    .await;
    match sent {
        Ok(Ok(())) => {
            tracing::info!("a newer proxy took the listeners over: finishing and stopping");
            proxy.stopping.send_replace(true);
        }
        Ok(Err(error)) => tracing::warn!(%error, "a handover failed; still serving"),
        Err(error) => tracing::warn!(%error, "a handover failed; still serving"),
    }
}

/// The proxy directory of a runner's work directory.
pub fn dir_for(work: &Path) -> PathBuf {
    work.join("proxy")
}
