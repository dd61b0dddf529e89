//! Desired state, reconciled: what should run here (the server's `runnerApps`: the apps placed
//! on this runner, each with the deployment that should serve) against what runs (the state
//! file and the live process groups). At start — so instances that survived a runner
//! restart get their endpoints back, and releases of running apps start again after a
//! reboot — at every signal from the server, and periodically, so that nothing missed is
//! missed for long:
//!
//! - an app no longer listed was deleted: its instance stops, its endpoint closes, and its
//!   releases and output go;
//! - a stopped app (or one never deployed) has nothing running and its port closed;
//! - any other app with a successful deployment has that release serving.
//!
//! Apps with a deployment in progress on this runner are left to it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::Runner;
use super::client::{ClientError, operations};
use super::endpoint::Upstream;
use super::health;
use super::runtime::Release;
use super::state::Instance;

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedApp {
    pub database_id: i64,
    pub name: String,
    pub access_mode: String,
    pub port: Option<u16>,
    pub status: String,
    pub current_deployment_database_id: Option<i64>,
    #[serde(default)]
    pub env: Vec<super::EnvVar>,
    #[serde(default)]
    pub health_check_path: Option<String>,
}

pub async fn placed(runner: &Runner) -> Result<Vec<PlacedApp>, ClientError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        runner_apps: Vec<PlacedApp>,
    }
    let data: Data = runner
        .client
        .call(operations::RUNNER_APPS, json!({}))
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
            tracing::info!(app = %instance.app_name, "app deleted: removing its instance and releases");
            stop_app(runner, *id).await;
            runner.runtime.remove_app(&instance.app_name).await;
            let _ = std::fs::remove_dir_all(runner.app_dir(&instance.app_name));
        }
    }
    // Releases of apps deleted while nothing of theirs ran.
    let names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    if let Ok(entries) = std::fs::read_dir(runner.work.join("apps")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let running = local
                .iter()
                .any(|(id, i)| i.app_name == name && busy.contains(id));
            if !names.contains(name.as_str()) && !running {
                runner.runtime.remove_app(&name).await;
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let apps: Vec<&PlacedApp> = apps.iter().filter(|a| super::dns_label(&a.name)).collect();
    for app in apps.iter().filter(|a| !busy.contains(&a.database_id)) {
        let should_run = app.status != "STOPPED" && app.current_deployment_database_id.is_some();
        let instance = local
            .iter()
            .find(|(id, _)| *id == app.database_id)
            .map(|(_, i)| i.clone());
        match (should_run, instance) {
            (false, Some(_)) => {
                tracing::info!(app = %app.name, status = %app.status, "stopping");
                stop_app(runner, app.database_id).await;
            }
            (false, None) => {}
            (true, Some(instance)) if runner.runtime.alive(&instance.handle).await => {
                adopt(runner, app.database_id, &instance);
            }
            (true, _) => restart(runner, app).await,
        }
    }
}

/// Stops an app's instance and closes its endpoint.
pub async fn stop_app(runner: &Runner, app_id: i64) {
    runner.endpoints.lock().expect("endpoints").remove(&app_id);
    let instance = {
        let mut state = runner.state.lock().expect("state");
        let instance = state.apps.remove(&app_id);
        state.save(&runner.work);
        instance
    };
    if let Some(instance) = instance {
        if let Some(router) = &runner.host_router {
            router.remove(&instance.app_name);
        }
        runner
            .runtime
            .stop(&instance.handle, runner.stop_grace())
            .await;
    }
}

/// A live instance (after a runner restart): give it its endpoint (or host route) back.
fn adopt(runner: &Runner, app_id: i64, instance: &Instance) {
    if instance.host_routed
        && let Some(router) = &runner.host_router
    {
        if !router.has(&instance.app_name) {
            tracing::info!(app = %instance.app_name, "re-adopted a running instance");
            router.switch(&instance.app_name, Upstream::new(instance.private_port));
        }
        return;
    }
    let Some(port) = instance.public_port else {
        return;
    };
    let mut endpoints = runner.endpoints.lock().expect("endpoints");
    if endpoints.contains_key(&app_id) {
        return;
    }
    match runner.open_endpoint(port, Upstream::new(instance.private_port)) {
        Ok(endpoint) => {
            tracing::info!(app = %instance.app_name, port, "re-adopted a running instance");
            endpoints.insert(app_id, endpoint);
        }
        Err(error) => {
            tracing::warn!(app = %instance.app_name, %error, "cannot re-open the app's port")
        }
    }
}

/// The app should serve its current release but nothing runs (a reboot, a crash): start
/// that release again, health-check it, put it behind the endpoint.
async fn restart(runner: &Arc<Runner>, app: &PlacedApp) {
    let Some(deployment) = app.current_deployment_database_id else {
        return;
    };
    let release = runner.release_dir(&app.name, deployment);
    if !release.is_dir() {
        tracing::warn!(app = %app.name, deployment, "the current release is not on this runner; redeploy the app");
        return;
    }
    let procfile = super::read_procfile(&release).ok();
    // The image it ran with, when the runtime builds images.
    let image = runner
        .state
        .lock()
        .expect("state")
        .apps
        .get(&app.database_id)
        .and_then(|i| i.image.clone());
    let web = procfile.as_ref().map(|p| p.web.as_str());
    let env: Vec<(String, String)> = app
        .env
        .iter()
        .map(|var| (var.name.clone(), var.value.clone()))
        .collect();
    let started = runner
        .start_instance(
            Release {
                app: &app.name,
                deployment,
                dir: &release,
                env: &env,
            },
            web,
            image.as_deref(),
        )
        .await;
    let (handle, port) = match started {
        Ok(started) => started,
        Err(error) => {
            tracing::warn!(app = %app.name, %error, "cannot start the current release");
            return;
        }
    };
    let check = runner.args.health(app.health_check_path.as_deref());
    if let Err(why) = health::wait_healthy(&check, port, &runner.runtime, &handle).await {
        tracing::warn!(app = %app.name, %why, "the restarted instance is not healthy");
        runner.runtime.stop(&handle, runner.stop_grace()).await;
        return;
    }
    let instance = Instance {
        app_name: app.name.clone(),
        deployment,
        release,
        handle: handle.clone(),
        image,
        private_port: port,
        public_port: app.port.filter(|_| app.access_mode == "PORT"),
        host_routed: app.access_mode == "HOST",
    };
    match runner.switch(app.database_id, instance).await {
        Ok(()) => tracing::info!(app = %app.name, deployment, "started the current release again"),
        Err(error) => {
            tracing::warn!(app = %app.name, %error, "cannot serve the restarted instance");
            runner.runtime.stop(&handle, runner.stop_grace()).await;
        }
    }
}
