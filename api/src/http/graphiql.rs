//! GraphiQL at `/`, fully offline: the page, its start script and the vendored bundles
//! (`api/vendor/graphiql/`, see its `VERSIONS`) are compiled into the binary. A Content
//! Security Policy keeps the browser from loading anything from elsewhere.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("graphiql/index.html");

/// Scripts and styles only from this server; connections only back to it: `'self'` covers
/// its WebSocket too (CSP Level 3), so no other host can be reached, whatever a script on the
/// page does. GraphiQL sets inline styles and uses data: URLs for its fonts and icons.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                       img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// The files under `/graphiql/`.
fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    const JS: &str = "text/javascript; charset=utf-8";
    Some(match name {
        "graphiql.umd.js" => (JS, include_bytes!("../../vendor/graphiql/graphiql.umd.js")),
        "graphiql.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../vendor/graphiql/graphiql.css"),
        ),
        "react.production.min.js" => (
            JS,
            include_bytes!("../../vendor/graphiql/react.production.min.js"),
        ),
        "react-dom.production.min.js" => (
            JS,
            include_bytes!("../../vendor/graphiql/react-dom.production.min.js"),
        ),
        "keystone-graphiql.js" => (JS, include_bytes!("graphiql/keystone-graphiql.js")),
        _ => return None,
    })
}

pub async fn serve_asset(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, content_type),
                // Bundles change only with the binary; revalidate cheaply after a day.
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
