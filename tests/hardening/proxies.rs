//! Clients behind a proxy are told apart: with `--trusted-proxy`, per-address WebSocket
//! limits and the audit trail key on the address the proxy forwarded for; without it, on the
//! TCP peer, whatever forwarding headers a client sends.

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Backend, Server, Socket, TestDb, http};

/// Opens `/graphql/ws` as forwarded for `client`: `Ok` when the upgrade is accepted.
async fn socket_for(server: &Server, client: &str) -> Result<Socket, u16> {
    let url = server.url("/graphql/ws").replace("http://", "ws://");
    let mut request = url.into_client_request().expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    headers.insert("x-forwarded-for", client.parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("{error}"),
    }
}

/// The `client` of the audit rows of refused authentications, in order.
async fn refused_clients(db: &TestDb) -> Vec<String> {
    db.rows(
        "SELECT arguments FROM api_audit_event WHERE operation = '(authentication)' ORDER BY id",
    )
    .await
    .iter()
    .map(|arguments| {
        let arguments: serde_json::Value = serde_json::from_str(arguments).expect("JSON");
        arguments["client"].as_str().unwrap_or_default().to_owned()
    })
    .collect()
}

async fn forwarded_clients_are_told_apart_only_behind_a_trusted_proxy(backend: Backend) {
    for trusted in [true, false] {
        let db = TestDb::new(backend).await;
        let mut args = vec!["--ws-max-per-address", "2"];
        if trusted {
            args.extend(["--trusted-proxy", "127.0.0.0/8"]);
        }
        let server = Server::start(&db, &args).await.expect("server starts");
        let mut open = Vec::new();
        for _ in 0..2 {
            open.push(
                socket_for(&server, "203.0.113.1")
                    .await
                    .expect("within the limit"),
            );
        }
        // Another client behind the same proxy.
        let other = socket_for(&server, "203.0.113.2").await;
        if trusted {
            open.push(other.expect("another client has its own slots"));
            assert_eq!(socket_for(&server, "203.0.113.2").await.err(), None);
            assert_eq!(socket_for(&server, "203.0.113.1").await.err(), Some(429));
        } else {
            assert_eq!(
                other.err(),
                Some(429),
                "without a trusted proxy, the peer counts"
            );
        }
        // A client's own left part of the chain proves nothing.
        let response = http()
            .post(server.url("/graphql"))
            .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
            .header("forwarded", "for=198.51.100.3")
            .json(&serde_json::json!({ "query": "{ __typename }" }))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 401);
        let expected = if trusted { "198.51.100.3" } else { "127.0.0.1" };
        assert_eq!(refused_clients(&db).await, [expected]);
        drop(open);
        let (status, log) = server.stop().await;
        assert!(status.success(), "{log}");
    }
}

crate::on_both_backends!(forwarded_clients_are_told_apart_only_behind_a_trusted_proxy);
