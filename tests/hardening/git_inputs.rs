//! What a repository may name: hosts hidden behind percent-encoding and branch names that
//! are not plain refs are refused; loopback and private hosts only with
//! `--allow-private-git-hosts`. Nothing refused is written.

use serde_json::json;

use crate::support::{Backend, Server, TestDb, only_error};

const CREATE: &str = "mutation($u: String!, $b: String) { createRepository(input: { name: \"r\", gitUrl: $u, defaultBranch: $b }) { repository { name } } }";

async fn private_hosts_and_odd_refs_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    let refused = |url: &str, branch: Option<&str>, field: &str| {
        let body = json!({ "u": url, "b": branch });
        let field = field.to_owned();
        let server = &server;
        async move {
            let (_, body) = server.graphql_as(&server.admin_token, CREATE, body).await;
            assert_eq!(
                only_error(&body),
                ("BAD_USER_INPUT".to_owned(), Some(field)),
                "{body}"
            );
        }
    };
    for url in [
        "git://127.0.0.1:9418/app.git",
        "https://localhost/app.git",
        "ssh://git@10.0.0.5/app.git",
        "git@192.168.1.2:app.git",
        "git://[::1]/app.git",
        "ssh://git@%2doProxyCommand=x/repo",
        "ssh://%2D%2Dupload-pack=x@host/repo",
    ] {
        refused(url, None, "gitUrl").await;
    }
    for branch in ["$(id)", "HEAD", "..", "a`b`", "main;id"] {
        refused("https://example.com/app.git", Some(branch), "defaultBranch").await;
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM api_repository").await, 0);
    server.stop_ok().await;

    // With the setting, a git server on this machine may be used.
    let server = Server::start(&db, &["--allow-private-git-hosts"])
        .await
        .expect("server starts");
    let body = server
        .graphql(
            CREATE,
            json!({ "u": "git://127.0.0.1:9418/app.git", "b": "main" }),
        )
        .await;
    assert_eq!(
        Server::data(&body)["createRepository"]["repository"]["name"],
        "r"
    );
    let (_, body) = server
        .graphql_as(
            &server.admin_token,
            CREATE,
            json!({ "u": "git://169.254.169.254/x.git" }),
        )
        .await;
    assert_eq!(
        only_error(&body).1.as_deref(),
        Some("gitUrl"),
        "metadata hosts never"
    );
    server.stop_ok().await;
}

crate::on_both_backends!(
    private_hosts_and_odd_refs_are_refused,
    hostile_git_urls_are_refused,
);

/// Git URLs that would run commands or reach metadata services are refused, and nothing is
/// written.
async fn hostile_git_urls_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]).await.expect("server starts");
    for url in [
        "ssh://-oProxyCommand=touch%20pwned@host/repo",
        "ssh://%2doProxyCommand=x@host/repo",
        "https://example.com/$(touch pwned).git",
        "https://example.com/a%0aX.git",
        "http://169.254.169.254/latest/meta-data",
        "ssh://git@169.254.169.254/x.git",
        "git://[fe80::1]/x.git",
    ] {
        let (_, body) = server
            .graphql_as(
                &server.admin_token,
                "mutation($u: String!) { createRepository(input: { name: \"r\", gitUrl: $u }) { repository { id } } }",
                json!({ "u": url }),
            )
            .await;
        assert_eq!(
            only_error(&body),
            ("BAD_USER_INPUT".to_owned(), Some("gitUrl".to_owned())),
            "{url}: {body}"
        );
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM api_repository").await, 0);
    server.stop_ok().await;
}
