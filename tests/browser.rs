//! GraphiQL in a real browser and stock GraphQL clients, all against the real server:
//! Debian's Chromium driven by npm's `playwright-core`, npm's `graphql-ws`, and Apollo
//! Client with its persisted-query link (`tests/browser/`, installed with
//! `npm ci --prefix tests/browser`).
//!
//! Without Node.js, those packages or Chromium, these tests say so and pass, unless
//! `KEYSTONE_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs them), which makes them fail.

use std::path::{Path, PathBuf};

use crate::support::{Backend, Server, TestDb};

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Makes sure `node`, the npm packages and (if `chromium`) the browser are there; skips the
/// test otherwise (unless `KEYSTONE_REQUIRE_BROWSER=1`).
fn tools_ready(chromium: bool) {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let packages = ["playwright-core", "graphql-ws", "@apollo/client"]
        .iter()
        .all(|package| tools_dir().join("node_modules").join(package).exists());
    let browser = !chromium
        || Path::new(&std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
            .exists();
    if !(node && packages && browser) {
        crate::support::unavailable(
            "KEYSTONE_REQUIRE_BROWSER",
            format!(
                "browser tests need Node.js ({node}), `npm ci --prefix tests/browser` \
                 ({packages}) and Debian's chromium ({browser})"
            ),
        );
    }
}

/// A server with one repository and one app named `browser-app`; returns the app's ID.
async fn server_with_app() -> (TestDb, Server, String) {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let app = server.create_app("web", "browser-app").await;
    (db, server, app)
}

async fn node(script: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(tools_dir().join(script))
            .args(args)
            .current_dir(tools_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node finished within 90 s")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

crate::e2e!(graphiql_works_offline_in_chromium);
/// GraphiQL renders with the network cut off, runs a query, and shows a subscription's
/// update caused by a mutation made elsewhere.
async fn graphiql_works_offline_in_chromium() {
    tools_ready(true);
    let (db, server, app) = server_with_app().await;
    let screenshot = db.dir().join("graphiql.png");
    let out = node(
        "graphiql.mjs",
        &[
            &server.base_url,
            &app,
            &screenshot.display().to_string(),
            &server.admin_token,
        ],
    )
    .await;
    for step in [
        "wrong token refused",
        "signed in",
        "query ok",
        "subscription ok",
        "signed out",
        "offline ok",
    ] {
        assert!(out.contains(step), "{out}");
    }
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot"
    );
    if let Ok(keep) = std::env::var("KEYSTONE_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).expect("copy screenshot");
    }
    server.stop_ok().await;
}

crate::e2e!(stock_graphql_ws_client);
/// A stock graphql-ws client runs a query and receives a subscription event.
async fn stock_graphql_ws_client() {
    tools_ready(false);
    let (_db, server, app) = server_with_app().await;
    let out = node(
        "stock-client.mjs",
        &[&server.base_url, &app, &server.admin_token],
    )
    .await;
    assert!(
        out.contains("anonymous refused")
            && out.contains("query ok")
            && out.contains("subscription ok"),
        "{out}"
    );
    server.stop_ok().await;
}

crate::e2e!(stock_apollo_client_sends_hashes);
/// A stock Apollo Client with its persisted-query link sends SHA-256 hashes (queries over
/// GET). Against an open server it falls back to sending the text (nothing is stored by a
/// client); once the document it sends is stored (`keystone documents add`, from the manifest
/// of what it hashed) and the server runs trusted documents only, the hash alone works in
/// one request, and a document that is not stored is refused.
async fn stock_apollo_client_sends_hashes() {
    tools_ready(false);
    let (db, server, _) = server_with_app().await;
    let viewer = server.create_token("frontend", "VIEWER").await;
    let out = node("apollo-persisted.mjs", &[&server.base_url, &viewer]).await;
    assert!(
        out.contains("apps ok GET,POST ") && out.contains("me ok GET,POST "),
        "{out}"
    );
    let manifest: serde_json::Value = out
        .lines()
        .find_map(|line| line.strip_prefix("manifest "))
        .and_then(|json| serde_json::from_str(json).ok())
        .expect("the manifest");
    let apps = manifest
        .as_object()
        .expect("hash → text")
        .iter()
        .find(|(_, text)| text.as_str().is_some_and(|t| t.contains("query Apps")))
        .map(|(hash, text)| (hash.clone(), text.as_str().unwrap_or_default().to_owned()))
        .expect("the Apps document");
    let file = db.dir().join("apps.graphql");
    std::fs::write(&file, &apps.1).expect("write");
    let added = crate::support::keystone(&db, &["documents", "add", file.to_str().unwrap()]).await;
    assert!(
        added.assert_success().stdout.starts_with(&apps.0),
        "{}",
        added.stdout
    );
    server.stop_ok().await;

    let server = Server::start(&db, &["--trusted-documents-only"])
        .await
        .expect("server restarts");
    let out = node("apollo-persisted.mjs", &[&server.base_url, &viewer]).await;
    assert!(
        out.contains("apps ok GET {"),
        "by hash alone, in one request: {out}"
    );
    assert!(out.contains("browser-app"), "{out}");
    assert!(
        out.contains("me refused GET,POST FORBIDDEN_DOCUMENT"),
        "not stored: {out}"
    );
    server.stop_ok().await;
}
