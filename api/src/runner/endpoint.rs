//! An app's public endpoint on the runner's host: a TCP forwarder that owns the app's port
//! and passes each connection to the instance currently behind it. Switching instances
//! swaps that upstream atomically: connections accepted after the swap reach the new
//! instance, connections already open finish on the old one (which is drained before it is
//! stopped). The port never closes during a switch, so clients see no gap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The instance behind an endpoint: its private port and how many connections it serves.
#[derive(Clone)]
pub struct Upstream {
    pub port: u16,
    pub active: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            active: Arc::default(),
        }
    }

    /// Waits until no connection uses this upstream any more, or `limit` has passed.
    pub async fn drained(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.active.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Endpoint {
    upstream: watch::Sender<Upstream>,
    accept: JoinHandle<()>,
}

impl Endpoint {
    /// Forwards what `listener` (bound, non-blocking) accepts to `upstream`.
    pub fn from_listener(
        listener: std::net::TcpListener,
        upstream: Upstream,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::from_std(listener)?;
        let (sender, receiver) = watch::channel(upstream);
        let accept = tokio::spawn(accept_loop(listener, receiver));
        Ok(Self {
            upstream: sender,
            accept,
        })
    }

    /// Sends new connections to `next`; returns the upstream it replaces (to drain).
    pub fn switch(&self, next: Upstream) -> Upstream {
        self.upstream.send_replace(next)
    }
}

impl Drop for Endpoint {
    /// Closes the port (connections already open run to their end).
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: watch::Receiver<Upstream>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = upstream.borrow().clone();
        target.active.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target.port)).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
            target.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// A free port on the loopback interface for a new instance.
pub fn free_private_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
