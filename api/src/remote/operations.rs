//! The documents the command line sends, compiled in (see `operations/`). Servers trust
//! them by hash like the runner's; `graphql::tests` validates them against the schema.

macro_rules! documents {
    ($($name:ident = $file:literal),* $(,)?) => {
        $(pub const $name: &str = include_str!(concat!("operations/", $file));)*
        /// Every document, by file name.
        pub const ALL: &[(&str, &str)] = &[$(($file, $name)),*];
    };
}

documents!(
    VIEWER = "viewer.graphql",
    REPOSITORIES = "repositories.graphql",
    CREATE_REPOSITORY = "create_repository.graphql",
    APPS = "apps.graphql",
    APP = "app.graphql",
    APP_WEBHOOK = "app_webhook.graphql",
    CREATE_APP = "create_app.graphql",
    DELETE_APP = "delete_app.graphql",
    DEPLOY_APP = "deploy_app.graphql",
    ROLLBACK_APP = "rollback_app.graphql",
    STOP_APP = "stop_app.graphql",
    CHANGE_ENV = "change_env.graphql",
    ROTATE_WEBHOOK = "rotate_webhook.graphql",
    DEPLOYMENT = "deployment.graphql",
    FOLLOW = "follow.graphql",
    DEPLOYMENT_UPDATES = "deployment_updates.graphql",
);
