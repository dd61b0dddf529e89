//! A TCP proxy between Keystone and PostgreSQL that a test can make stall (stop passing
//! bytes, connections left open) or cut (close every connection it carries), like the
//! chaos proxy of the Rust registry's server tests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Stall,
}

pub struct ChaosProxy {
    pub address: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped to cut every connection open at that moment.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mode = watch::Sender::new(Mode::Pass);
        let cuts = watch::Sender::new(0u64);
        let (modes, cut) = (mode.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mode, cut) = (modes.subscribe(), cut.subscribe());
                tokio::spawn(carry(client, server, mode, cut));
            }
        });
        Self {
            address,
            mode,
            cuts,
            task,
        }
    }

    /// Stops passing bytes (both ways); connections stay open.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Passes bytes again.
    pub fn resume(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Closes every connection open now (new ones are carried as before).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes or the connection is cut.
async fn carry(
    client: TcpStream,
    server: TcpStream,
    mode: watch::Receiver<Mode>,
    mut cut: watch::Receiver<u64>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone());
    let down = pump(server_read, client_write, mode);
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cut.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        // Held while stalled: the bytes wait here.
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
