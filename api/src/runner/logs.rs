//! A deployment's log on its way to the server: lines are collected and sent with
//! `appendDeploymentLog` in batches (at most every 500 ms, or at 32 KiB), in order, each with
//! the next sequence number (continuing from the job's `logSequence`), so that a batch that
//! is retried after a lost answer is applied once. Once the server says the log is full, the
//! rest is dropped. Memory stays bounded: the queue of lines is bounded, and a producer waits when it
//! is full (a build printing faster than the server takes it is slowed down, not buffered).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::{Client, operations};

const BATCH_BYTES: usize = 32 * 1024;
const BATCH_DELAY: Duration = Duration::from_millis(500);
const QUEUE_LINES: usize = 1024;

/// Where lines of one deployment's log go.
#[derive(Clone)]
pub struct LogSender(mpsc::Sender<String>);

impl LogSender {
    pub async fn line(&self, line: impl Into<String>) {
        let _ = self.0.send(line.into()).await;
    }

    /// A stage marker, as `==> build` (stages are what `Deployment.stage` reports).
    pub async fn stage(&self, stage: &str) {
        self.line(format!("==> {stage}")).await;
    }
}

/// Values shorter than this are not redacted (they would blank out ordinary words).
const MIN_SECRET: usize = 4;

/// Replaces config var values in log lines by `[REDACTED]`. The log travels line by line,
/// so a value of several lines (a PEM key) is redacted line by line.
pub struct Redactor {
    /// Longest first, so that a value containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(values: Vec<String>) -> Self {
        let mut secrets: Vec<String> = values
            .iter()
            .flat_map(|value| value.lines())
            .map(|line| line.trim().to_owned())
            .filter(|line| line.len() >= MIN_SECRET)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `line` with every value replaced.
    pub fn redact(&self, mut line: String) -> String {
        for secret in &self.secrets {
            if line.contains(secret.as_str()) {
                line = line.replace(secret.as_str(), "[REDACTED]");
            }
        }
        line
    }
}

/// Starts sending `deployment`'s log, with every occurrence of a value in `secrets` replaced
/// by `[REDACTED]`; the task ends, having sent everything, once every [`LogSender`] is
/// dropped.
pub fn spool(
    client: Client,
    deployment: String,
    secrets: Vec<String>,
    last_sequence: i64,
) -> (LogSender, JoinHandle<()>) {
    let redactor = Redactor::new(secrets);
    let (sender, mut lines) = mpsc::channel::<String>(QUEUE_LINES);
    let task = tokio::spawn(async move {
        let mut sequence = last_sequence;
        let mut batch = String::new();
        let mut full = false;
        loop {
            let next = if batch.is_empty() {
                lines.recv().await
            } else {
                match tokio::time::timeout(BATCH_DELAY, lines.recv()).await {
                    Ok(line) => line,
                    Err(_) => {
                        full = full || send(&client, &deployment, &mut sequence, &mut batch).await;
                        continue;
                    }
                }
            };
            let Some(line) = next else { break };
            if full {
                continue;
            }
            batch.push_str(&redactor.redact(line));
            batch.push('\n');
            if batch.len() >= BATCH_BYTES {
                full = send(&client, &deployment, &mut sequence, &mut batch).await;
            }
        }
        if !batch.is_empty() && !full {
            send(&client, &deployment, &mut sequence, &mut batch).await;
        }
    });
    (LogSender(sender), task)
}

/// Sends `batch` (emptying it) as chunk `sequence + 1`, retrying a failed transport with the
/// same number; returns whether the server reported the log full (or refused it).
async fn send(client: &Client, deployment: &str, sequence: &mut i64, batch: &mut String) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        append_deployment_log: Appended,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Appended {
        log_full: bool,
    }
    let chunk = std::mem::take(batch);
    let number = *sequence + 1;
    for attempt in 0..5u32 {
        match client
            .call::<Data>(
                operations::APPEND_LOG,
                json!({ "id": deployment, "chunk": chunk, "sequence": number }),
            )
            .await
        {
            Ok(data) => {
                *sequence = number;
                return data.append_deployment_log.log_full;
            }
            Err(error) if error.code().is_some() => {
                // Refused (the deployment ended, or is not ours any more): nothing to retry.
                tracing::warn!(%error, "the server refused a log batch");
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, attempt, "cannot send a log batch; retrying");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::Redactor;

    #[test]
    fn values_of_several_lines_are_redacted_line_by_line() {
        let pem = "-----BEGIN PRIVATE KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n";
        let redactor = Redactor::new(vec![
            pem.to_owned(),
            "abc".to_owned(),
            "hunter22".to_owned(),
        ]);
        for line in pem.lines() {
            let shown = redactor.redact(format!("echo {line} done"));
            assert_eq!(shown, "echo [REDACTED] done", "{line}");
        }
        assert_eq!(
            redactor.redact("pw=hunter22 abc".to_owned()),
            "pw=[REDACTED] abc"
        );
    }
}
