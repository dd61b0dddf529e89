//! The command line for people as a client of the API (its happy path is the README's
//! walkthrough, `runner::walkthrough`): it needs a login, says why it cannot go on with the
//! API's code, exits non-zero then, prints JSON for scripts, acts with the logged-in token's
//! rights only, and works against a server that runs trusted documents only.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::support::{Backend, Server, TestDb, keystone, keystone_on_a_terminal};

crate::on_both_backends!(client_commands_answer_clearly);

async fn client_commands_answer_clearly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--trusted-documents-only"])
        .await
        .expect("server starts");

    // Not logged in: the command says how.
    let out = keystone(&db, &["ps"]).await;
    out.assert_failure();
    assert!(out.stderr.contains("keystone login"), "{}", out.stderr);

    // A wrong token is refused at login, and nothing is stored.
    std::fs::write(db.dir().join("bad.token"), "kst_nope").expect("token");
    let out = keystone(
        &db,
        &["login", &server.base_url, "--token-file", "bad.token"],
    )
    .await;
    out.assert_failure();
    assert!(out.stderr.contains("UNAUTHENTICATED"), "{}", out.stderr);
    assert!(!db.dir().join(".config/keystone/login.json").exists());

    std::fs::write(db.dir().join("admin.token"), &server.admin_token).expect("token");
    keystone(
        &db,
        &["login", &server.base_url, "--token-file", "admin.token"],
    )
    .await
    .assert_success();
    // Trusted documents only: the command line's own documents are trusted.
    keystone(
        &db,
        &["repos", "create", "site", "https://example.com/site.git"],
    )
    .await
    .assert_success();
    keystone(&db, &["apps", "create", "site", "--repo", "site", "--host"])
        .await
        .assert_success();
    let out = keystone(&db, &["ps", "--json"]).await;
    out.assert_success();
    let apps: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(apps[0]["name"], "site", "{apps:#}");
    assert_eq!(apps[0]["accessMode"], "HOST", "{apps:#}");

    // The API's refusals, with their codes, and a non-zero exit.
    for (args, says) in [
        (&["deploy", "nope"][..], "NOT_FOUND"),
        (
            &["apps", "create", "site", "--repo", "site"][..],
            "CONFLICT",
        ),
        (
            &["apps", "create", "Bad_Name", "--repo", "site"][..],
            "BAD_USER_INPUT",
        ),
        (
            &["deploy", "site", "--commit", "HEAD"][..],
            "BAD_USER_INPUT",
        ),
        (
            &["rollback", "site"][..],
            "no earlier successful deployment",
        ),
        (&["apps", "delete", "site"][..], "--yes"),
    ] {
        let out = keystone(&db, args).await;
        out.assert_failure();
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }

    // A viewer's token reads but does not change.
    let made = keystone(
        &db,
        &["token", "create", "--name", "watcher", "--role", "viewer"],
    )
    .await;
    made.assert_success();
    std::fs::write(db.dir().join("viewer.token"), made.stdout.trim()).expect("token");
    keystone(
        &db,
        &["login", &server.base_url, "--token-file", "viewer.token"],
    )
    .await
    .assert_success();
    let out = keystone(&db, &["whoami"]).await;
    assert!(out.stdout.contains("watcher (viewer)"), "{}", out.stdout);
    keystone(&db, &["ps"]).await.assert_success();
    let out = keystone(&db, &["stop", "site"]).await;
    out.assert_failure();
    assert!(out.stderr.contains("FORBIDDEN"), "{}", out.stderr);

    // Config values are never printed back.
    keystone(
        &db,
        &["login", &server.base_url, "--token-file", "admin.token"],
    )
    .await
    .assert_success();
    keystone(
        &db,
        &[
            "config",
            "set",
            "site",
            "SECRET_KEY=s3cr3t-value",
            "MODE=prod",
        ],
    )
    .await
    .assert_success();
    let out = keystone(&db, &["config", "site"]).await;
    out.assert_success();
    assert!(
        out.stdout.contains("SECRET_KEY") && out.stdout.contains("MODE"),
        "{}",
        out.stdout
    );
    let out = keystone(&db, &["apps", "info", "site", "--json"]).await;
    assert!(!out.stdout.contains("s3cr3t-value"), "{}", out.stdout);
    let out = keystone(&db, &["config", "unset", "site", "MODE", "NEVER_SET"]).await;
    out.assert_success();
    assert!(out.stdout.contains("Removed MODE"), "{}", out.stdout);

    // Waiting on a terminal, a spinner says where the deployment is (no runner here: queued).
    let mut waiting = keystone_on_a_terminal(&db, &["deploy", "site", "--wait"])
        .spawn()
        .expect("script");
    let mut terminal = waiting.stdout.take().expect("stdout");
    let mut shown = Vec::new();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&shown).contains("Deployment 1 QUEUED (") {
            match terminal.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => shown.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    waiting.kill().await.ok();
    assert_eq!(
        seen,
        Ok(true),
        "the terminal showed: {}",
        String::from_utf8_lossy(&shown)
    );

    keystone(&db, &["apps", "delete", "site", "--yes"])
        .await
        .assert_success();
    server.stop_ok().await;
}
