//! The proxy's control socket (`<dir>/control.sock`, mode 0600 in a 0700 directory): one JSON
//! request per connection, one JSON reply, each a line. The runner changes routes through it
//! and waits for the reply, which comes once the change is in effect and saved.
//!
//! A new proxy started beside a running one takes over without closing a port: it asks for a
//! [`Request::Handover`] and receives the running proxy's listening sockets themselves (their
//! descriptors, over the socket: `SCM_RIGHTS`) with the route table; it then serves them, and
//! the old one stops accepting, finishes what it has in flight, and exits. Connections that
//! arrive meanwhile wait in the kernel's queue of the same socket: none is refused.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::routes::RouteKey;

/// The longest request or reply line.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who is there.
    Hello,
    /// Point `route` at `upstream` (opening the port when it is new); the reply names the
    /// upstream it replaced.
    Set {
        route: RouteKey,
        upstream: SocketAddr,
    },
    /// Stop serving `route` (closing the port; open connections finish).
    Remove { route: RouteKey },
    /// Wait (at most `timeout_ms`) until nothing is in flight to `upstream`.
    Drain {
        upstream: SocketAddr,
        timeout_ms: u64,
    },
    /// Every route.
    Routes,
    /// Hand the listening sockets over to the caller (a newer proxy).
    Handover,
    /// Stop: close the ports, finish what is in flight, exit.
    Shutdown,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        pid: u32,
        version: String,
        /// Where `HOST` apps are served; `None` when `--host-bind` could not be bound.
        host_address: Option<SocketAddr>,
    },
    Set {
        previous: Option<SocketAddr>,
    },
    Removed {
        previous: Option<SocketAddr>,
    },
    Drained {
        /// Still in flight at the timeout.
        remaining: usize,
    },
    Routes {
        routes: Vec<(RouteKey, SocketAddr)>,
    },
    /// Followed on the socket by the listeners' descriptors, in this order (`None`: the host
    /// router's listener).
    Handover {
        listeners: Vec<Option<u16>>,
        routes: Vec<(RouteKey, SocketAddr)>,
    },
    Done,
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no proxy answers on {path}: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the proxy at {path} failed: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("the proxy at {path} answered unexpectedly: {detail}")]
    Protocol { path: PathBuf, detail: String },
}

/// The control socket in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// A client of a proxy's control socket.
#[derive(Clone, Debug)]
pub struct ProxyClient {
    socket: PathBuf,
}

impl ProxyClient {
    pub fn new(dir: &Path) -> Self {
        Self {
            socket: socket_path(dir),
        }
    }

    /// Sends `request`, waits for its reply (an `Error` reply is `Err`).
    pub async fn call(&self, request: &Request) -> Result<Reply, ControlError> {
        let unreachable = |source| ControlError::Unreachable {
            path: self.socket.clone(),
            source,
        };
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::UnixStream::connect(&self.socket),
        )
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| ControlError::Protocol {
            path: self.socket.clone(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(unreachable)?;
        let mut reply = String::new();
        BufReader::new(read)
            .take(MAX_LINE as u64)
            .read_line(&mut reply)
            .await
            .map_err(unreachable)?;
        match serde_json::from_str::<Reply>(&reply) {
            Ok(Reply::Error { message }) => Err(ControlError::Refused {
                path: self.socket.clone(),
                message,
            }),
            Ok(reply) => Ok(reply),
            Err(error) => Err(ControlError::Protocol {
                path: self.socket.clone(),
                detail: format!("{error}: {reply:?}"),
            }),
        }
    }
}

/// Reads one request line from a connection of the control socket.
pub async fn read_request(stream: &mut tokio::net::UnixStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    Ok(serde_json::from_str(&line).ok())
}

/// Writes `reply` as a line.
pub async fn write_reply(
    stream: &mut tokio::net::UnixStream,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Descriptors sent per message (the kernel takes at most 253 at once).
const FDS_PER_MESSAGE: usize = 200;

/// Sends `reply` (a [`Reply::Handover`]) and then `fds`, in order, on `stream` (blocking).
pub fn send_handover(
    stream: &mut std::os::unix::net::UnixStream,
    reply: &Reply,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    for batch in fds.chunks(FDS_PER_MESSAGE) {
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(batch.len()))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        if !ancillary.push(SendAncillaryMessage::ScmRights(batch)) {
            return Err(std::io::Error::other("no room for the descriptors"));
        }
        sendmsg(
            stream.as_fd(),
            &[std::io::IoSlice::new(b"f")],
            &mut ancillary,
            SendFlags::empty(),
        )?;
    }
    Ok(())
}

/// What a handover brought: the running proxy's listeners and routes.
pub struct TakenOver {
    pub listeners: Vec<(Option<u16>, OwnedFd)>,
    pub routes: Vec<(RouteKey, SocketAddr)>,
    /// The connection to the old proxy: told [`Reply::Done`] once the new one serves.
    pub old: std::os::unix::net::UnixStream,
}

/// Asks the proxy on `socket` for its listeners (blocking).
pub fn take_over(socket: &Path) -> std::io::Result<TakenOver> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(&Request::Handover).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    // The reply line, byte by byte: nothing past it may be read by a plain read (the
    // descriptors come with the bytes that follow).
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.len() < MAX_LINE {
        stream.read_exact(&mut byte)?;
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    let (keys, routes) = match serde_json::from_slice::<Reply>(&reply) {
        Ok(Reply::Handover { listeners, routes }) => (listeners, routes),
        Ok(Reply::Error { message }) => return Err(std::io::Error::other(message)),
        other => {
            return Err(std::io::Error::other(format!(
                "unexpected handover reply: {other:?}"
            )));
        }
    };
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(keys.len());
    while fds.len() < keys.len() {
        let wanted = (keys.len() - fds.len()).min(FDS_PER_MESSAGE);
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(wanted))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let mut data = [0u8; 1];
        let received = recvmsg(
            stream.as_fd(),
            &mut [std::io::IoSliceMut::new(&mut data)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if received.bytes == 0 {
            return Err(std::io::Error::other(
                "the old proxy closed during the handover",
            ));
        }
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
    }
    Ok(TakenOver {
        listeners: keys.into_iter().zip(fds).collect(),
        routes,
        old: stream,
    })
}
