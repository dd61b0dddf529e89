//! `HOST` apps: one HTTP listener for all of them (`--host-bind`; TLS stays with the front
//! proxy), routing each connection by the `Host` header of its first request —
//! `<app>.<apps domain>`, any port ignored — to that app's current instance. Like a `PORT`
//! app's forwarder, a switch swaps the app's upstream atomically: new connections reach the
//! new instance, open ones finish on the old one. The request head is read (at most 16 KiB,
//! within 10 s), then passed on unchanged and the rest of the connection is copied both ways.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::endpoint::Upstream;

const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

type Routes = Arc<Mutex<HashMap<String, Upstream>>>;

pub struct HostRouter {
    routes: Routes,
    accept: JoinHandle<()>,
    pub address: SocketAddr,
}

impl HostRouter {
    /// Listens on `bind` for `<app>.<domain>`.
    pub async fn open(bind: SocketAddr, domain: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let address = listener.local_addr()?;
        let routes = Routes::default();
        let suffix = format!(".{}", domain.trim_matches('.').to_ascii_lowercase());
        let accept = tokio::spawn(accept_loop(listener, routes.clone(), suffix));
        Ok(Self {
            routes,
            accept,
            address,
        })
    }

    /// Sends `app`'s new connections to `upstream`; returns the upstream it replaces.
    pub fn switch(&self, app: &str, upstream: Upstream) -> Option<Upstream> {
        self.routes
            .lock()
            .expect("routes")
            .insert(app.to_owned(), upstream)
    }

    /// Whether `app` has a route.
    pub fn has(&self, app: &str) -> bool {
        self.routes.lock().expect("routes").contains_key(app)
    }

    /// `app` answers no more (stopped or deleted).
    pub fn remove(&self, app: &str) {
        self.routes.lock().expect("routes").remove(app);
    }
}

impl Drop for HostRouter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, routes: Routes, suffix: String) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let (routes, suffix) = (routes.clone(), suffix.clone());
        tokio::spawn(async move {
            let _ = route(inbound, &routes, &suffix).await;
        });
    }
}

async fn route(mut inbound: TcpStream, routes: &Routes, suffix: &str) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut inbound)).await {
        Ok(Ok(Some(head))) => head,
        _ => return refuse(&mut inbound, "400 Bad Request", "no HTTP request head").await,
    };
    let app = host(&head).and_then(|host| host.strip_suffix(suffix).map(str::to_owned));
    let upstream = app
        .as_deref()
        .and_then(|app| routes.lock().expect("routes").get(app).cloned());
    let Some(upstream) = upstream else {
        return refuse(
            &mut inbound,
            "404 Not Found",
            "no app is served at this host name",
        )
        .await;
    };
    upstream
        .active
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let proxied = async {
        let mut outbound = TcpStream::connect(("127.0.0.1", upstream.port)).await?;
        outbound.write_all(&head).await?;
        tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
    }
    .await;
    upstream
        .active
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    if proxied.is_err() {
        let _ = refuse(&mut inbound, "502 Bad Gateway", "the app did not answer").await;
    }
    Ok(())
}

/// Reads until the end of the request head (`\r\n\r\n`); `None` past [`MAX_HEAD`] or at EOF.
/// Whatever followed the head in the same read is kept with it.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buffer[..read]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// The host name of a request head's `Host` header, lowercased, without a port.
fn host(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..end].split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("host") {
            return None;
        }
        let value = value.trim().to_ascii_lowercase();
        let name = match value.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_owned(),
            _ => value,
        };
        Some(name)
    })
}

async fn refuse(stream: &mut TcpStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::host;

    #[test]
    fn host_names() {
        let head = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Web.Apps.Example:8080\r\n\r\n";
        assert_eq!(host(head).as_deref(), Some("web.apps.example"));
        assert_eq!(host(b"GET / HTTP/1.1\r\n\r\n"), None);
    }
}
