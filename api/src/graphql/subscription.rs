//! Subscriptions: live changes from the event bus ([`crate::domain::events`]), filtered
//! per subscriber.
//!
//! Slow subscribers: each may fall 1024 events behind; one that falls further loses the
//! oldest it has not read, receives one `EVENTS_DROPPED` error saying how many, and goes on.

use async_graphql::{Context, ErrorExtensions, ID, Subscription};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::api;
use super::app::App;
use super::auth::Require;
use super::deployment::Deployment;
use super::ids::{NodeType, decode_as};
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
        app_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Deployment>> + use<>> {
        let app_id = app_id
            .map(|id| decode_as(&id, NodeType::App, "appId"))
            .transpose()?;
        events(ctx, move |event| match event {
            Event::DeploymentUpdated(model) if app_id.is_none_or(|id| id == model.app_id) => {
                Some(Deployment((*model).clone()))
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
        id: Option<ID>,
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

    /// A deployment's log as its runner appends to it: each item is one appended chunk
    /// (whole lines, as the runner sent them). Earlier lines: `Deployment.logs`.
    #[graphql(guard = "Require(Capability::Read)")]
    async fn deployment_log(
        &self,
        ctx: &Context<'_>,
        deployment_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<String>> + use<>> {
        let wanted = decode_as(&deployment_id, NodeType::Deployment, "deploymentId")?;
        events(ctx, move |event| match event {
            Event::DeploymentLog {
                deployment_id,
                chunk,
            } if deployment_id == wanted => Some(chunk.to_string()),
            _ => None,
        })
    }
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

fn events_dropped(missed: u64) -> async_graphql::Error {
    async_graphql::Error::new(format!(
        "{missed} updates were dropped because this subscription fell behind; refetch the current state"
    ))
    .extend_with(|_, e| e.set("code", "EVENTS_DROPPED"))
}
