//! The runner protocol as the security tests drive it: queue a deployment, claim it, append
//! to its log.

use serde_json::{Value, json};

use crate::support::{Server, global_id};

/// Claims the oldest queued deployment with `token`: its database id and logs path.
pub async fn claim(server: &Server, token: &str) -> (i64, String) {
    let (status, body) = server
        .graphql_as(
            token,
            "mutation { claimDeployment { deployment { databaseId logsPath } } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deployment = &Server::data(&body)["claimDeployment"]["deployment"];
    (
        deployment["databaseId"].as_i64().expect("a deployment"),
        deployment["logsPath"].as_str().expect("a path").to_owned(),
    )
}

pub async fn deploy(server: &Server, app: i64) {
    let body = server
        .graphql(
            "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id } } }",
            json!({ "id": global_id("App", app) }),
        )
        .await;
    Server::data(&body);
}

pub const APPEND: &str = "mutation($id: ID!, $chunk: String!) { appendDeploymentLog(input: { deploymentId: $id, chunk: $chunk }) { bytesWritten logFull } }";

pub async fn append(server: &Server, token: &str, id: i64, chunk: &str) -> Value {
    let (status, body) = server
        .graphql_as(
            token,
            APPEND,
            json!({ "id": global_id("Deployment", id), "chunk": chunk }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}
