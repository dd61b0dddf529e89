//! What every listener of the proxy shares: a cap on connections at once, a back-off when
//! `accept` fails (out of descriptors, say) instead of a hot loop, and byte copying that gives
//! up on a connection idle for too long.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How a listener's connections are bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections one listener serves at once; more wait in the kernel's queue.
    pub connections: usize,
    /// How long a request's head may take to arrive (HTTP), which is also how long an idle
    /// keep-alive connection is kept.
    pub header: Duration,
    /// How long a connection may carry no byte either way before it is closed.
    pub idle: Duration,
}

/// Accepts connections from `listener` until `accepting` turns false, each with a permit of
/// `slots` (waiting for one when all are taken). A failing `accept` is retried after a pause
/// that doubles up to a second.
pub async fn accept_loop<F>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    mut accepting: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit),
{
    let mut pause = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = stopped(&mut accepting) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut accepting) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = Duration::from_millis(10);
                let _ = stream.set_nodelay(true);
                serve(stream, peer, permit);
            }
            Err(error) => {
                tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                drop(permit);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Resolves once `accepting` is false.
async fn stopped(accepting: &mut watch::Receiver<bool>) {
    while *accepting.borrow_and_update() {
        if accepting.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// When a connection last moved a byte, in milliseconds since `start`.
#[derive(Clone)]
pub struct Activity {
    start: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Resolves once nothing moved for `limit`.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// An I/O object that records its activity.
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways between `a` and `b` until either side closes, or nothing moved for
/// `idle`.
pub async fn copy_both_ways<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::default();
    let mut a = Watched::new(a, activity.clone());
    let mut b = b;
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        () = activity.idle(idle) => {}
    }
}
