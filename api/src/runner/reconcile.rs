//! Desired state, reconciled: what should run here (the server's `runnerApps`: the apps placed
//! on this runner, each with its status and the deployment that should serve) against what
//! runs (the state file, the live instances and the proxy's routes). At start — so instances
//! that survived a runner restart are re-adopted, and releases start again after a reboot —
//! at every signal from the server, and periodically, so that nothing missed is missed for
//! long:
//!
//! - an app no longer listed was deleted: its route goes at once (it stops answering), then
//!   its instance stops and its releases, output and caches go;
//! - a `STOPPED` app has its route removed and its instance stopped;
//! - an app with an instance keeps it: re-adopted when alive (its route put back if the proxy
//!   lost it), started again from the same release when not (a reboot);
//! - an app without an instance starts its current release only when it is `RUNNING`: a
//!   stopped app that is being deployed again does not start its old release meanwhile, and
//!   one whose new deployment failed stays stopped.
//!
//! Apps with a deployment (or a restart) in progress on this runner are left to it; slow work
//! (stopping, starting and health-checking) runs beside the pass, so one app's restart never
//! delays another app's removal.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::Runner;
use super::client::ClientError;
use super::client::operations::{RunnerApps, runner_apps};
use super::health;
use super::runtime::Release;
use super::state::Instance;
use crate::proxy::routes::RouteKey;

/// An app placed on this runner, as the server lists it.
pub type PlacedApp = runner_apps::RunnerAppsRunnerApps;

pub async fn placed(runner: &Runner) -> Result<Vec<PlacedApp>, ClientError> {
    let data = runner
        .client
        .run::<RunnerApps>(runner_apps::Variables)
        .await?;
    Ok(data.runner_apps)
}

/// Reconciles every `--reconcile-secs`, and whenever `wake` is notified (a signal from the
/// server).
pub async fn every(runner: Arc<Runner>, wake: Arc<tokio::sync::Notify>) {
    let period = Duration::from_secs(runner.args.reconcile_secs.max(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = wake.notified() => {}
        }
        pass(&runner).await;
    }
}

/// One reconciliation.
pub async fn pass(runner: &Arc<Runner>) {
    if let Err(error) = runner.routing.ensure().await {
        tracing::warn!(%error, "the proxy is not running and cannot be started");
    }
    let apps = match placed(runner).await {
        Ok(apps) => apps,
        Err(error) => {
            tracing::warn!(%error, "cannot read the desired state; will retry");
            return;
        }
    };
    let busy: HashSet<i64> = runner.busy.lock().expect("busy").clone();
    let listed: HashSet<i64> = apps.iter().map(|a| a.database_id).collect();
    let local: Vec<(i64, Instance)> = runner
        .state
        .lock()
        .expect("state")
        .apps
        .iter()
        .map(|(id, instance)| (*id, instance.clone()))
        .collect();
    for (id, instance) in &local {
        if !listed.contains(id) && !busy.contains(id) {
            tracing::info!(app = %instance.app_name, "app deleted: removing its route, instance and releases");
            let app = instance.app_name.clone();
            let stopped = stop_app(runner, *id).await;
            let runner = runner.clone();
            tokio::spawn(async move {
                if let Some(stopped) = stopped {
                    stopped.await.ok();
                }
                forget_app(&runner, &app).await;
            });
        }
    }
    // Releases and caches of apps deleted while nothing of theirs ran.
    let names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    for parent in ["apps", "cache"] {
        if let Ok(entries) = std::fs::read_dir(runner.work.join(parent)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let running = local.iter().any(|(id, i)| {
                    i.app_name == name && (busy.contains(id) || listed.contains(id))
                });
                if !names.contains(name.as_str()) && !running {
                    forget_app(runner, &name).await;
                }
            }
        }
    }
    let apps: Vec<&PlacedApp> = apps.iter().filter(|a| super::dns_label(&a.name)).collect();
    for app in apps.iter().filter(|a| !busy.contains(&a.database_id)) {
        let instance = local
            .iter()
            .find(|(id, _)| *id == app.database_id)
            .map(|(_, i)| i.clone());
        match instance {
            Some(_) if app.status == runner_apps::AppStatus::STOPPED => {
                tracing::info!(app = %app.name, "stopping");
                stop_app(runner, app.database_id).await;
            }
            Some(instance) if runner.runtime.alive(&instance.handle).await => {
                adopt(runner, &instance).await;
            }
            // It ran here and died (a reboot): the same release starts again.
            Some(instance) => spawn_restart(runner, app, Some(instance.deployment)),
            None if app.status == runner_apps::AppStatus::RUNNING => {
                spawn_restart(runner, app, app.current_deployment_database_id);
            }
            None => {}
        }
    }
    if busy.is_empty() {
        remove_stray_routes(runner).await;
    }
}

/// Removes `app`'s releases, output and caches, and what the runtime holds of it.
async fn forget_app(runner: &Runner, app: &str) {
    runner.runtime.remove_app(app).await;
    let _ = std::fs::remove_dir_all(runner.app_dir(app));
    let _ = std::fs::remove_dir_all(runner.cache_dir(app));
}

/// Stops an app: its route goes at once, its instance stops in the background (the returned
/// task).
pub async fn stop_app(runner: &Arc<Runner>, app_id: i64) -> Option<tokio::task::JoinHandle<()>> {
    let instance = {
        let mut state = runner.state.lock().expect("state");
        let instance = state.apps.remove(&app_id);
        state.save(&runner.work);
        instance
    }?;
    if let Some(route) = instance.route()
        && let Err(error) = runner.routing.remove(route).await
    {
        tracing::warn!(app = %instance.app_name, %error, "cannot remove the app's route");
    }
    let runner = runner.clone();
    Some(tokio::spawn(async move {
        runner
            .runtime
            .stop(&instance.handle, runner.args.stop_grace())
            .await;
    }))
}

/// A live instance: its route is put back if the proxy lost it (a proxy started afresh
/// without its saved routes).
async fn adopt(runner: &Runner, instance: &Instance) {
    let Some(route) = instance.route() else {
        return;
    };
    let routes = runner.routing.routes().await.unwrap_or_default();
    let upstream = instance.upstream();
    if routes
        .iter()
        .any(|(key, to)| *key == route && *to == upstream)
    {
        return;
    }
    match runner.routing.set(route, upstream).await {
        Ok(_) => {
            tracing::info!(app = %instance.app_name, %upstream, "re-adopted a running instance")
        }
        Err(error) => {
            tracing::warn!(app = %instance.app_name, %error, "cannot route to a running instance")
        }
    }
}

/// Routes the proxy has that no instance of this runner's state names (left by a runner
/// killed between a switch and its record).
async fn remove_stray_routes(runner: &Runner) {
    let Ok(routes) = runner.routing.routes().await else {
        return;
    };
    let wanted: Vec<RouteKey> = runner
        .state
        .lock()
        .expect("state")
        .apps
        .values()
        .filter_map(Instance::route)
        .collect();
    for (route, _) in routes {
        if !wanted.contains(&route) {
            tracing::info!(%route, "removing a route no app of this runner has");
            let _ = runner.routing.remove(route).await;
        }
    }
}

/// Starts release `deployment` of `app` again, beside the pass (the app is busy meanwhile).
fn spawn_restart(runner: &Arc<Runner>, app: &PlacedApp, deployment: Option<i64>) {
    let Some(deployment) = deployment else {
        return;
    };
    if !runner.busy.lock().expect("busy").insert(app.database_id) {
        return;
    }
    let runner = runner.clone();
    let app = app.clone();
    tokio::spawn(async move {
        restart(&runner, &app, deployment).await;
        runner.busy.lock().expect("busy").remove(&app.database_id);
    });
}

/// The app should serve `deployment`'s release but nothing runs: start it, health-check it,
/// route to it.
async fn restart(runner: &Arc<Runner>, app: &PlacedApp, deployment: i64) {
    // A rollback runs an earlier release where it is: the state names that directory.
    // The dead instance's record goes (its process group id may belong to another process
    // after a reboot: it is never signalled).
    let recorded = {
        let mut state = runner.state.lock().expect("state");
        let recorded = state
            .apps
            .remove(&app.database_id)
            .map(|i| (i.release, i.image));
        state.save(&runner.work);
        recorded
    };
    let (release, image) =
        recorded.unwrap_or_else(|| (runner.release_dir(&app.name, deployment), None));
    if !release.is_dir() {
        tracing::warn!(app = %app.name, deployment, "the release to serve is not on this runner; redeploy the app");
        return;
    }
    let procfile = super::read_procfile(&release).ok().flatten();
    let web = procfile
        .and_then(|p| p.web)
        .or_else(|| runner.runtime.default_web(&release));
    let env: Vec<(String, String)> = app
        .env
        .iter()
        .map(|var| (var.name.clone(), var.value.clone()))
        .collect();
    let cache = runner.cache_dir(&app.name);
    let output = runner.output_file(&app.name, deployment);
    let started = runner
        .runtime
        .start(
            Release {
                app: &app.name,
                deployment,
                dir: &release,
                env: &env,
                cache: &cache,
                output: &output,
            },
            web.as_deref(),
            image.as_deref(),
        )
        .await;
    let (handle, upstream) = match started {
        Ok(started) => started,
        Err(error) => {
            tracing::warn!(app = %app.name, %error, "cannot start the release again");
            return;
        }
    };
    let check = runner.args.health(Some(&app.health_check_path));
    if let Err(why) = health::wait_healthy(&check, upstream, runner.runtime.as_ref(), &handle).await
    {
        tracing::warn!(app = %app.name, %why, "the restarted instance is not healthy");
        runner.runtime.stop(&handle, runner.args.stop_grace()).await;
        return;
    }
    let instance = Instance {
        app_name: app.name.clone(),
        deployment,
        release,
        handle: handle.clone(),
        image,
        upstream: Some(upstream),
        private_port: upstream.port(),
        public_port: app
            .port
            .and_then(|port| u16::try_from(port).ok())
            .filter(|_| matches!(app.access_mode, runner_apps::AccessMode::PORT)),
        host_routed: matches!(app.access_mode, runner_apps::AccessMode::HOST),
    };
    match runner.switch(app.database_id, instance).await {
        Ok(()) => tracing::info!(app = %app.name, deployment, "started the release again"),
        Err(error) => {
            tracing::warn!(app = %app.name, %error, "cannot serve the restarted instance");
            runner.runtime.stop(&handle, runner.args.stop_grace()).await;
        }
    }
}
