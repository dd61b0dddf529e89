//! Following a deployment until it ends (`deploy --wait`, `logs -f`): its log lines, each
//! printed once, in order, over the `deploymentLogLines` subscription, and its status over
//! `deploymentUpdated`. After a dropped connection it subscribes again after the last line
//! printed (growing delays, up to 5 s); every 5 s without events, and after each
//! (re)connection, it reads the deployment over HTTP, so an end it was not told of (one
//! that came before the subscription started) is still seen. On a terminal, a spinner on
//! stderr says where the deployment is (`QUEUED`, `BUILDING · CLONE`, …) between log lines.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use super::operations;
use crate::runner::client::{Client, ClientError};

const ENDED: [&str; 3] = ["SUCCESS", "FAILED", "CANCELLED"];
/// How long without an event before the deployment is read over HTTP.
const QUIET: Duration = Duration::from_secs(5);

/// How followed lines are printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// As they are.
    Plain,
    /// One JSON object per line: `{"line": n, "text": …}`.
    Json,
    /// Not at all.
    Quiet,
}

struct Printer {
    /// The number of the last line printed.
    after: i64,
    lines: Lines,
    /// Hidden when stderr is not a terminal: then nothing but the lines is written.
    progress: ProgressBar,
}

impl Printer {
    fn new(after: i64, lines: Lines, deployment: &str) -> Self {
        let progress = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        progress.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})")
                .expect("a valid template"),
        );
        progress.set_prefix(format!(
            "Deployment {}",
            super::deployment_number(deployment)
        ));
        progress.enable_steady_tick(Duration::from_millis(120));
        Self {
            after,
            lines,
            progress,
        }
    }

    /// Shows where deployment `state` (as read or as reported) is.
    fn show(&self, state: &Value) {
        let mut message = state["status"].as_str().unwrap_or("…").to_owned();
        if let Some(stage) = state["stage"].as_str() {
            message.push_str(" · ");
            message.push_str(stage);
        }
        self.progress.set_message(message);
    }

    /// Prints the lines numbered from `first` that come after the last one printed.
    fn print(&mut self, first: i64, lines: &[Value]) {
        for (n, line) in (first..).zip(lines) {
            if n <= self.after {
                continue;
            }
            let text = line.as_str().unwrap_or_default();
            match self.lines {
                Lines::Plain => self.progress.suspend(|| println!("{text}")),
                Lines::Json => self
                    .progress
                    .suspend(|| println!("{}", json!({ "line": n, "text": text }))),
                Lines::Quiet => {}
            }
            self.after = n;
        }
    }

    /// Reads the deployment and the lines after the last one printed; the deployment.
    async fn catch_up(&mut self, client: &Client, id: &str) -> anyhow::Result<Value> {
        loop {
            let data: Value = client
                .call(
                    operations::DEPLOYMENT,
                    json!({ "id": id, "after": self.after, "tail": 10000 }),
                )
                .await?;
            let deployment = data["deployment"].clone();
            self.show(&deployment);
            let lines = deployment["logs"].as_array().cloned().unwrap_or_default();
            if lines.is_empty() {
                return Ok(deployment);
            }
            self.print(self.after + 1, &lines);
        }
    }
}

fn ended(deployment: &Value) -> bool {
    deployment["status"]
        .as_str()
        .is_some_and(|status| ENDED.contains(&status))
}

/// Follows deployment `id` of app `app_id` from after line `after` until it ends; returns
/// the deployment as `deployment.graphql` reads it.
pub async fn follow(
    client: &Client,
    app_id: &str,
    id: &str,
    after: i64,
    lines: Lines,
) -> anyhow::Result<Value> {
    let mut printer = Printer::new(after, lines, id);
    let ended = follow_with(client, app_id, id, &mut printer).await;
    printer.progress.finish_and_clear();
    ended
}

async fn follow_with(
    client: &Client,
    app_id: &str,
    id: &str,
    printer: &mut Printer,
) -> anyhow::Result<Value> {
    let mut delay = Duration::from_millis(500);
    loop {
        let subscribed = client
            .subscribe(&[
                (
                    "log",
                    operations::FOLLOW,
                    json!({ "id": id, "line": printer.after }),
                ),
                (
                    "status",
                    operations::DEPLOYMENT_UPDATES,
                    json!({ "appId": app_id }),
                ),
            ])
            .await;
        let state = printer.catch_up(client, id).await?;
        if ended(&state) {
            return Ok(state);
        }
        let mut events = match subscribed {
            Ok(events) => events,
            Err(error @ ClientError::Refused { .. }) => return Err(error.into()),
            Err(error) => {
                printer
                    .progress
                    .suspend(|| eprintln!("keystone: {error}; retrying in {delay:?}"));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            match tokio::time::timeout(QUIET, events.next()).await {
                Err(_quiet) => {
                    let state = printer.catch_up(client, id).await?;
                    if ended(&state) {
                        return Ok(state);
                    }
                }
                Ok(Ok(Some((which, data)))) if which == "log" => {
                    let chunk = &data["deploymentLogLines"];
                    let first = chunk["firstLine"].as_i64().unwrap_or(i64::MAX);
                    printer.print(first, chunk["lines"].as_array().map_or(&[], Vec::as_slice));
                    delay = Duration::from_millis(500);
                }
                Ok(Ok(Some((_, data)))) => {
                    let update = &data["deploymentUpdated"];
                    if update["id"] != id {
                        continue;
                    }
                    printer.show(update);
                    if ended(update) {
                        // The last lines were appended before the end was reported.
                        return printer.catch_up(client, id).await;
                    }
                }
                Ok(Err(error @ ClientError::Refused { .. })) => return Err(error.into()),
                Ok(Ok(None)) | Ok(Err(_)) => {
                    printer.progress.suspend(|| {
                        eprintln!(
                            "keystone: the connection to the server ended; resuming after line {}",
                            printer.after
                        )
                    });
                    break;
                }
            }
        }
    }
}
