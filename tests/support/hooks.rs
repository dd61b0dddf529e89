//! Push webhooks as Git hosts send them: the app's secret made by `rotateAppWebhook`, push
//! bodies in each host's shape, signed (or carrying the token) as each host does.

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use super::{Server, http};

/// A Git host's way of proving a delivery.
#[derive(Clone, Copy, Debug)]
pub enum Host {
    GitHub,
    Gitea,
    GitLab,
    Generic,
}

/// Makes (or replaces) the webhook of `app` (a global ID) as the admin: its path and secret.
pub async fn rotate(server: &Server, app: &str) -> (String, String) {
    let body = server
        .graphql(
            "mutation($app: ID!) { rotateAppWebhook(input: { appId: $app }) { path secret } }",
            json!({ "app": app }),
        )
        .await;
    let payload = &Server::data(&body)["rotateAppWebhook"];
    (
        payload["path"].as_str().expect("path").to_owned(),
        payload["secret"].as_str().expect("secret").to_owned(),
    )
}

/// The hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `host`'s documented push event (`tests/fixtures/webhooks/`), of `after` to `reference`
/// (`refs/heads/main`).
pub fn push_from(host: Host, reference: &str, after: &str) -> Vec<u8> {
    let fixture = match host {
        Host::GitHub | Host::Generic => include_str!("../fixtures/webhooks/github-push.json"),
        Host::Gitea => include_str!("../fixtures/webhooks/gitea-push.json"),
        Host::GitLab => include_str!("../fixtures/webhooks/gitlab-push.json"),
    };
    let mut event: Value = serde_json::from_str(fixture).expect("a JSON fixture");
    event["ref"] = json!(reference);
    event["after"] = json!(after);
    if event.get("checkout_sha").is_some() {
        event["checkout_sha"] = json!(after);
    }
    serde_json::to_vec(&event).expect("json")
}

/// GitHub's push event of `after` to `reference`.
pub fn push_body(reference: &str, after: &str) -> Vec<u8> {
    push_from(Host::GitHub, reference, after)
}

/// Posts `body` to `path` as `host` would, as event `event` with delivery id `delivery`,
/// signed with `secret`: the status and the JSON answer.
pub async fn post(
    server: &Server,
    path: &str,
    host: Host,
    secret: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> (u16, Value) {
    let signature = sign(secret, body);
    let headers: Vec<(&str, String)> = match host {
        Host::GitHub => vec![
            ("X-Hub-Signature-256", format!("sha256={signature}")),
            ("X-GitHub-Event", event.to_owned()),
            ("X-GitHub-Delivery", delivery.to_owned()),
        ],
        Host::Gitea => vec![
            ("X-Gitea-Signature", signature),
            ("X-Gitea-Event", event.to_owned()),
            ("X-Gitea-Delivery", delivery.to_owned()),
        ],
        Host::GitLab => vec![
            ("X-Gitlab-Token", secret.to_owned()),
            ("X-Gitlab-Event", event.to_owned()),
            ("X-Gitlab-Event-UUID", delivery.to_owned()),
        ],
        Host::Generic => vec![
            ("X-Keystone-Signature", format!("sha256={signature}")),
            ("X-Keystone-Event", event.to_owned()),
            ("X-Keystone-Delivery", delivery.to_owned()),
        ],
    };
    let mut request = http()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("webhook post");
    let status = response.status().as_u16();
    let answer = response.json().await.unwrap_or(Value::Null);
    (status, answer)
}
