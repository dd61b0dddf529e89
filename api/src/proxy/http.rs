//! `HOST` apps: one HTTP/1.1 listener for all of them (`--host-bind`; TLS stays with the front
//! proxy), routing **each request** by its `Host` header — `<app>.<apps domain>`, any port
//! ignored — to that app's current instance, so a kept-alive connection whose requests name
//! different apps reaches each. A request without exactly one well-formed `Host` is refused
//! (400). Every forwarded request carries `X-Forwarded-For` (the peer appended),
//! `X-Forwarded-Proto` and `X-Forwarded-Host`; WebSocket upgrades pass through.
//!
//! Like a port, a switch changes the route: requests after it reach the new instance, and
//! requests in flight (their response bodies included) finish on the old one, counted so the
//! runner can drain it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::io::{Activity, Limits, Watched, accept_loop, copy_both_ways};
use super::routes::{InFlight, RouteKey, Routes};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Routes requests by host name.
pub struct HostRouter {
    routes: Arc<Routes>,
    /// `.<apps domain>`, lowercase.
    suffix: String,
    client: Client<HttpConnector, Incoming>,
    limits: Limits,
}

impl HostRouter {
    pub fn new(routes: Arc<Routes>, apps_domain: &str, limits: Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        Self {
            routes,
            suffix: format!(".{}", apps_domain.trim_matches('.').to_ascii_lowercase()),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(30))
                .build(connector),
            limits,
        }
    }
}

/// Serves what `listener` accepts until `accepting` turns false; connections still open then
/// finish the request in progress (`finishing` tells them to stop keeping alive).
pub async fn serve(
    listener: TcpListener,
    router: Arc<HostRouter>,
    accepting: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(router.limits.connections.max(1)));
    let finishing = accepting.clone();
    accept_loop(listener, slots, accepting, |stream, peer, permit| {
        let router = router.clone();
        let mut finishing = finishing.clone();
        tokio::spawn(async move {
            let activity = Activity::default();
            let io = TokioIo::new(Watched::new(stream, activity.clone()));
            let service = hyper::service::service_fn({
                let router = router.clone();
                move |request| {
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(router.handle(request, peer).await) }
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(router.limits.header)
                .max_buf_size(64 * 1024);
            let connection = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    () = activity.idle(router.limits.idle) => break,
                    changed = finishing.changed(), if *finishing.borrow() => {
                        if changed.is_err() || !*finishing.borrow() {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(permit);
        });
    })
    .await;
}

/// Hop-by-hop headers, which concern one connection and are never passed on.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// `headers` without hop-by-hop headers (those named by `Connection` too, and `Upgrade`).
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(name)
            || *name == header::UPGRADE
            || named.iter().any(|n| n == name.as_str())
        {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

/// The request's host name (lowercase, without a port or a trailing dot), or why it has
/// none usable.
fn host_of(request: &Request<Incoming>) -> Result<String, &'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host,
        (None, _) => return Err("the request has no Host header"),
        (Some(_), Some(_)) => return Err("the request has more than one Host header"),
    };
    let host = host.to_str().map_err(|_| "the Host header is malformed")?;
    let authority: hyper::http::uri::Authority =
        host.parse().map_err(|_| "the Host header is malformed")?;
    if authority.as_str().contains('@') {
        return Err("the Host header is malformed");
    }
    if let Some(uri_authority) = request.uri().authority()
        && !uri_authority.host().eq_ignore_ascii_case(authority.host())
    {
        return Err("the Host header does not match the request's target");
    }
    let name = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
    {
        return Err("the Host header is malformed");
    }
    Ok(name)
}

fn plain(status: StatusCode, why: &str) -> Response<ProxyBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("{why}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| {
                value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
            })
}

impl HostRouter {
    async fn handle(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let host = match host_of(&request) {
            Ok(host) => host,
            Err(why) => return plain(StatusCode::BAD_REQUEST, why),
        };
        let app = host
            .strip_suffix(&self.suffix)
            .filter(|app| crate::runner::dns_label(app));
        let Some(in_flight) =
            app.and_then(|app| self.routes.enter(&RouteKey::Host(app.to_owned())))
        else {
            return plain(StatusCode::NOT_FOUND, "no app is served at this host name");
        };
        let upstream = in_flight.target().address;
        let upgrade = is_upgrade(request.headers());
        let original_host = request.headers().get(header::HOST).cloned();

        let mut headers = end_to_end(request.headers());
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(chain) => format!("{chain}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
        if !headers.contains_key("x-forwarded-proto") {
            headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        }
        if let Some(host) = &original_host {
            headers.insert("x-forwarded-host", host.clone());
        }
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = request.headers().get(header::UPGRADE) {
                headers.insert(header::UPGRADE, protocol.clone());
            }
        }
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let Ok(uri) = format!("http://{upstream}{path}").parse::<hyper::Uri>() else {
            return plain(StatusCode::BAD_REQUEST, "the request target is malformed");
        };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let mut forwarded = Request::new(body);
        *forwarded.method_mut() = parts.method;
        *forwarded.uri_mut() = uri;
        *forwarded.headers_mut() = headers;

        let mut response = match self.client.request(forwarded).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, %upstream, "the app did not answer");
                return plain(StatusCode::BAD_GATEWAY, "the app did not answer");
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let idle = self.limits.idle;
            tokio::spawn(async move {
                if let (Ok(client), Ok(app)) = tokio::join!(client_upgrade, upstream_upgrade) {
                    copy_both_ways(TokioIo::new(client), TokioIo::new(app), idle).await;
                }
                drop(in_flight);
            });
            let (parts, _) = response.into_parts();
            return Response::from_parts(
                parts,
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            );
        }
        let (mut parts, body) = response.into_parts();
        parts.headers = end_to_end(&parts.headers);
        Response::from_parts(
            parts,
            Counted {
                body,
                _in_flight: in_flight,
            }
            .boxed(),
        )
    }
}

/// A response body that keeps its request counted until it is sent whole (or dropped).
struct Counted {
    body: Incoming,
    _in_flight: InFlight,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_on_their_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::COOKIE, "a=b".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        let kept = end_to_end(&headers);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[header::COOKIE], "a=b");
    }
}
