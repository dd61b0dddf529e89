//! Subscriptions: live changes from the event bus ([`crate::domain::events`]), filtered
//! per subscriber.
//!
//! Slow subscribers: each may fall 1024 events behind; one that falls further loses the
//! oldest it has not read, receives one `EVENTS_DROPPED` error saying how many, and goes on.

use async_graphql::{Context, ID, ResultExt, Subscription};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::app::App;
use super::auth::Require;
use super::deployment::Deployment;
use super::error::{Code, OrInternal, coded, not_found};
use super::ids::{NodeType, decode_as};
use super::loaders::DeploymentId;
use super::{api, loaders};
use crate::domain::access::Capability;
use crate::domain::events::Event;

#[derive(Default)]
pub struct LiveSubscription;

#[Subscription]
impl LiveSubscription {
    /// Every deployment as it is created or changes state (all apps, or only `appId`'s).
    ///
    /// A subscriber that falls more than 1024 updates behind loses the oldest ones it has
    /// not read: it receives one `EVENTS_DROPPED` error saying how many, then goes on.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn deployment_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only the deployments of this app.")] app_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Deployment>> + use<>> {
        let app_id = app_id
            .map(|id| decode_as(&id, NodeType::App, "appId"))
            .transpose()?;
        events(ctx, move |event| match event {
            Event::DeploymentUpdated(model) if app_id.is_none_or(|id| id == model.app_id) => {
                Some(Deployment::from((*model).clone()))
            }
            _ => None,
        })
    }

    /// Every app as it changes: status, port, name, access mode or repository (all apps, or
    /// only `id`). Same policy for slow subscribers as `deploymentUpdated`.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn app_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this app.")] id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<App>> + use<>> {
        let app_id = id
            .map(|id| decode_as(&id, NodeType::App, "id"))
            .transpose()?;
        events(ctx, move |event| match event {
            Event::AppUpdated(model) if app_id.is_none_or(|id| id == model.id) => {
                Some(App::from((*model).clone()))
            }
            _ => None,
        })
    }

    /// A deployment's log, numbered, without gap or duplicate: first the stored lines after
    /// line `after` (up to 10,000; page further back with `Deployment.logs(after:)`), then
    /// each chunk as its runner appends it. A client that loses the connection subscribes
    /// again with `after` set to the last line it has.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn deployment_log_lines(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment whose log to follow.")] deployment_id: ID,
        #[graphql(
            default = 0,
            desc = "Start after this line number (0: from the first line kept)."
        )]
        after: i32,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LogLines>> + use<>> {
        use futures_util::StreamExt;
        let wanted = decode_as(&deployment_id, NodeType::Deployment, "deploymentId")?;
        let after = i64::from(after.max(0));
        let api = api(ctx)?;
        // Subscribed before reading the file: a line appended meanwhile arrives as an event,
        // and numbering drops whatever the read already returned.
        let mut receiver = api.events.subscribe();
        let deployment = loaders(ctx)?
            .load_one(DeploymentId(wanted))
            .await
            .or_internal()?
            .ok_or_else(|| {
                not_found(
                    "deploymentId",
                    format!("deployment {wanted} does not exist"),
                )
            })?;
        let stored = api
            .runners
            .logs
            .after(
                &deployment.logs_path,
                after as usize,
                MAX_CATCH_UP_LINES,
                crate::graphql::guardrails::ResponseBudget::LOG_BYTES,
            )
            .await
            .extend()?;
        let last = after + stored.lines.len() as i64;
        let first = (!stored.lines.is_empty()).then(|| {
            Ok(LogLines {
                first_line: after + 1,
                lines: stored.lines,
            })
        });
        let live = async_stream_lines(&mut receiver, wanted, last);
        drop(receiver);
        Ok(futures_util::stream::iter(first).chain(live))
    }

    /// A deployment's log as its runner appends to it: each item is one appended chunk
    /// (whole lines, as the runner sent them). Earlier lines: `Deployment.logs`; numbered
    /// lines without gaps: `deploymentLogLines`.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn deployment_log(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment whose log to follow.")] deployment_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<String>> + use<>> {
        let wanted = decode_as(&deployment_id, NodeType::Deployment, "deploymentId")?;
        events(ctx, move |event| match event {
            Event::DeploymentLog {
                deployment_id,
                chunk,
                ..
            } if deployment_id == wanted => Some(chunk.to_string()),
            _ => None,
        })
    }
}

/// Numbered lines of a deployment's log.
#[derive(async_graphql::SimpleObject)]
pub struct LogLines {
    /// The number of the first line (lines are numbered from 1).
    first_line: i64,
    /// The lines, without their newlines.
    lines: Vec<String>,
}

/// How many stored lines `deploymentLogLines` sends before the live ones.
const MAX_CATCH_UP_LINES: usize = 10_000;

/// The lines of `chunk` (whose first line is `first`) after line `last`: (first kept, lines).
fn after_line(chunk: &str, first: i64, last: i64) -> Option<(i64, Vec<String>)> {
    let kept: Vec<String> = chunk
        .lines()
        .enumerate()
        .filter(|(offset, _)| first + *offset as i64 > last)
        .map(|(_, line)| line.to_owned())
        .collect();
    (!kept.is_empty()).then(|| (first.max(last + 1), kept))
}

/// The live part of `deploymentLogLines`: chunks of deployment `wanted` after line `last`.
fn async_stream_lines(
    receiver: &mut tokio::sync::broadcast::Receiver<Event>,
    wanted: i64,
    last: i64,
) -> impl Stream<Item = async_graphql::Result<LogLines>> + use<> {
    let receiver = receiver.resubscribe();
    futures_util::stream::unfold(
        (receiver, last),
        move |(mut receiver, mut last)| async move {
            loop {
                let item = match receiver.recv().await {
                    Ok(Event::DeploymentLog {
                        deployment_id,
                        chunk,
                        first_line,
                    }) if deployment_id == wanted => {
                        // Unnumbered chunks (appends without a sequence) follow what was sent.
                        let first = first_line.unwrap_or(last + 1);
                        let Some((first_line, lines)) = after_line(&chunk, first, last) else {
                            continue;
                        };
                        last = first_line + lines.len() as i64 - 1;
                        Ok(LogLines { first_line, lines })
                    }
                    Ok(Event::Resync) => Err(resync()),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => Err(events_dropped(missed)),
                    Err(RecvError::Closed) => return None,
                };
                return Some((item, (receiver, last)));
            }
        },
    )
}

/// The bus's events that `pick` maps to an item, as a stream; readable by `Read` tokens.
fn events<T, F>(
    ctx: &Context<'_>,
    pick: F,
) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<T>> + use<T, F>>
where
    T: Send + 'static,
    F: Fn(Event) -> Option<T> + Send + 'static,
{
    let receiver = api(ctx)?.events.subscribe();
    Ok(futures_util::stream::unfold(
        (receiver, pick),
        |(mut receiver, pick)| async move {
            loop {
                let item = match receiver.recv().await {
                    Ok(Event::Resync) => Err(resync()),
                    Ok(event) => match pick(event) {
                        Some(item) => Ok(item),
                        None => continue,
                    },
                    Err(RecvError::Lagged(missed)) => Err(events_dropped(missed)),
                    Err(RecvError::Closed) => return None,
                };
                return Some((item, (receiver, pick)));
            }
        },
    ))
}

fn resync() -> async_graphql::Error {
    coded(
        Code::Resync,
        "the server's event stream was interrupted and is back; updates may have been missed: \
         refetch the current state",
    )
}

fn events_dropped(missed: u64) -> async_graphql::Error {
    crate::telemetry::metrics().events_dropped("subscriber", missed);
    coded(
        Code::EventsDropped,
        format!(
            "{missed} updates were dropped because this subscription fell behind; refetch the current state"
        ),
    )
}
