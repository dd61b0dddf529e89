//! A runner reaches a server behind TLS: its HTTP calls and its WebSocket go over `https://`
//! and `wss://` to a TLS endpoint whose certificate a test CA signed (`--ca-file`), and it
//! deploys an app through it; without the CA, it refuses the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::support::{Backend, Server, TestDb};

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1: (CA PEM, server config).
fn test_pki() -> (String, Arc<tokio_rustls::rustls::ServerConfig>) {
    let pki = crate::support::test_pki();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert_der.into()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(pki.key_der).expect("key"),
        )
        .expect("server config");
    (pki.ca_pem, Arc::new(config))
}

/// Terminates TLS on a loopback port and passes the bytes to `server`'s port: (port,
/// connections it has terminated).
async fn tls_endpoint(
    server: &Server,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let upstream = server.base_url.trim_start_matches("http://").to_owned();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let terminated = Arc::new(AtomicUsize::new(0));
    let count = terminated.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, upstream, count) = (acceptor.clone(), upstream.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (port, terminated)
}

crate::e2e!(a_runner_deploys_through_tls);
async fn a_runner_deploys_through_tls() {
    api::install_tls_provider();
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let range = format!("{port}-{port}");
    let server = Server::start(&db, &["--allow-private-git-hosts", "--port-range", &range])
        .await
        .expect("server starts");
    let (ca, config) = test_pki();
    let ca_file = db.dir().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("ca.pem");
    let (tls_port, terminated) = tls_endpoint(&server, config).await;
    let url = format!("https://localhost:{tls_port}");
    let git_server = GitServer::start(db.dir()).await;
    git_server.push("v1", PROCFILE).await;
    let token_file = runner_token_file(&server, &db).await;

    // Without the CA, the runner does not trust the server, and says so.
    let untrusting = db.dir().join("untrusting");
    let refused = RunnerProcess::start_at(&url, &token_file, &untrusting, &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = RunnerProcess::log(&untrusting);
        if log.contains("UnknownIssuer") || log.contains("certificate") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the untrusting runner should refuse the server: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused.stop().await;
    stop_proxy(&untrusting);

    let work = db.dir().join("work");
    let ca_arg = ca_file.to_str().expect("utf-8");
    let runner = RunnerProcess::start_at(&url, &token_file, &work, &["--ca-file", ca_arg]).await;
    let app = create_app(&server, "secure", &git_server.url(), "").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let done = finished(&server, &deploy(&server, &app).await).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    assert_eq!(answer(port).await.expect("answers"), "v1");
    // Its calls and its signal subscription went through the TLS endpoint.
    assert!(
        terminated.load(Ordering::SeqCst) >= 2,
        "TLS connections: {terminated:?}"
    );
    runner.stop().await;
    stop_proxy(&work);
    server.stop_ok().await;
}
