//! Is a new instance ready for traffic? Probed from the host, never from inside it (no tool
//! is needed in the app): `GET <path>` on the address it serves on — after 100 ms, then twice as long
//! each time up to the interval — each probe with a timeout, until a deadline. 200–399 is healthy (redirects are not followed); a refused
//! connection means "not yet". Without a path: the process still runs after 10 s and
//! accepts TCP connections.

use std::time::Duration;

use std::net::SocketAddr;

use super::runtime::{Handle, Runtime};

#[derive(Clone, Debug)]
pub struct HealthCheck {
    /// `None`: no HTTP check, only "still running after 10 s and accepting TCP".
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub deadline: Duration,
}

/// Waits until the instance on `port` is healthy; `Err` says why not, for the deployment's
/// `errorSummary`.
pub async fn wait_healthy(
    check: &HealthCheck,
    address: SocketAddr,
    runtime: &dyn Runtime,
    instance: &Handle,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let Some(path) = &check.path else {
        let settle = Duration::from_secs(10).min(check.deadline);
        tokio::time::sleep(settle).await;
        if !runtime.alive(instance).await {
            return Err("health check: the web process exited within 10 s".to_owned());
        }
        return match tokio::net::TcpStream::connect(address).await {
            Ok(_) => Ok(()),
            Err(error) => Err(format!(
                "health check: the web process runs but does not accept connections on its port ({error})"
            )),
        };
    };
    let url = format!("http://{address}{path}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(check.timeout)
        .build()
        .map_err(|e| format!("health check: {e}"))?;
    let mut last = "no answer".to_owned();
    // Quick probes while the instance boots (100 ms, doubling), then every interval.
    let mut wait = Duration::from_millis(100).min(check.interval);
    loop {
        if !runtime.alive(instance).await {
            return Err(format!(
                "health check: the web process exited before GET {path} answered (last: {last})"
            ));
        }
        match client
            .get(&url)
            .header("X-Forwarded-Proto", "http")
            .send()
            .await
        {
            Ok(response) if (200..400).contains(&response.status().as_u16()) => return Ok(()),
            Ok(response) => last = format!("HTTP {}", response.status().as_u16()),
            Err(error) if error.is_connect() => last = "connection refused".to_owned(),
            Err(error) if error.is_timeout() => {
                last = format!("no answer within {} s", check.timeout.as_secs())
            }
            Err(error) => last = error.to_string(),
        }
        if started.elapsed() + wait > check.deadline {
            return Err(format!(
                "health check: GET {path} did not answer 200–399 within {} s (last: {last})",
                check.deadline.as_secs()
            ));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(check.interval);
    }
}
