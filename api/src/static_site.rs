//! `keystone static DIR`: the file server of static sites the runner deploys (a repository
//! with an `index.html` and no other stack, see [`crate::runner::buildpack`]). It serves the
//! directory on `$PORT` (on loopback: the proxy is in front), an `index.html` for a
//! directory, never a file outside it, with the content type of each file's extension.
//! Hidden files and directories (a name starting with `.`: `.env`, `.git`, Keystone's own
//! `.keystone`) are never served.

use std::net::SocketAddr;
use std::path::PathBuf;

use tower_http::services::ServeDir;

/// `keystone static` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct StaticArgs {
    /// The directory to serve.
    pub dir: PathBuf,
    /// Where to listen (default: 127.0.0.1 on `$PORT`).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
}

pub async fn serve(args: StaticArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let bind = match args.bind {
        Some(bind) => bind,
        None => {
            let port: u16 = std::env::var("PORT")
                .context("PORT is not set (or pass --bind)")?
                .parse()
                .context("PORT is not a port number")?;
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );
    let files = ServeDir::new(&args.dir).append_index_html_on_directories(true);
    let app = axum::Router::new()
        .fallback_service(files)
        .layer(axum::middleware::from_fn(no_hidden_files));
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    tracing::info!(dir = %args.dir.display(), %bind, "serving files");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await?;
    Ok(())
}

/// 404 for a path with a hidden component.
async fn no_hidden_files(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let hidden = request
        .uri()
        .path()
        .split('/')
        .any(|part| part.starts_with('.') || part.to_ascii_lowercase().starts_with("%2e"));
    if hidden {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    }
    next.run(request).await
}
