//! `tidings serve`: run the server until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tidings_server::{Tidings, TokenSpec};

use crate::settings::{ServeArgs, Settings};

/// Run the server with `args` until a signal, then shut down gracefully.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let Settings {
        mut config,
        bind,
        log,
        dev_secret,
    } = Settings::load(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log).context("--log")?)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    tracing::info!("tidings {}", tidings_server::VERSION);
    fit_to_open_files(&mut config);
    if dev_secret.is_some() && (args.jwt_secret.is_some() || !args.jwt_public_keys.is_empty()) {
        tracing::warn!("dev mode: ignoring the configured JWT keys, using a throwaway secret");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let tidings = Tidings::new(config)?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("bind {bind}"))?;
        let addr = listener.local_addr()?;
        tracing::info!("listening on {addr}");
        if let Some(secret) = &dev_secret {
            announce_dev(addr, secret)?;
        }
        let mut app = tidings.router();
        if let Some(secret) = dev_secret {
            app = app.route(
                "/dev/token",
                axum::routing::get(move |q| dev_token(q, secret.clone())),
            );
        }
        if let Some(dir) = &args.static_dir {
            tracing::info!("serving {} at /", dir.display());
            app = app.fallback_service(tower_http::services::ServeDir::new(dir));
        }
        let clean = tidings_server::serve(listener, app, &tidings, shutdown_signal()).await?;
        if clean {
            tracing::info!("shut down cleanly");
        } else {
            tracing::warn!("shutdown deadline reached; remaining connections were dropped");
        }
        Ok(())
    })
}

/// Raise the soft open-file limit to the hard one (as Go's runtime does at start) and keep
/// `max_connections` under what it allows, leaving room for the listener, the store, Redis
/// and connections that are not (yet) WebSockets. The connection past the limit then gets an
/// HTTP 503 like any over the limit, instead of an `accept` failing with `EMFILE`.
fn fit_to_open_files(config: &mut tidings_server::Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return;
        }
    };
    let reserve = (limit / 32).max(64);
    let room = usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1);
    if config.max_connections > room {
        tracing::warn!(
            "max_connections {} needs more than the {limit} open files this process may have; \
             holding at most {room} connections (raise LimitNOFILE / ulimit -n for more)",
            config.max_connections
        );
        config.max_connections = room;
    } else {
        tracing::info!(
            "open-file limit {limit}: room for max_connections {}",
            config.max_connections
        );
    }
}

fn announce_dev(addr: SocketAddr, secret: &str) -> anyhow::Result<()> {
    let spec = TokenSpec {
        info: None,
        sub: "dev".into(),
        ttl: Some(Duration::from_secs(24 * 3600)),
        ..TokenSpec::default()
    };
    let token = tidings_server::mint_token(secret, &spec)?;
    tracing::warn!("dev mode: throwaway JWT secret, do not use in production");
    tracing::info!("dev token (user \"dev\", 24h): ws://{addr}/ws?token={token}");
    Ok(())
}

/// `GET /dev/token?sub=NAME` in `--dev` mode only: a 24 h token for any user (with an `info`
/// claim `{"name": NAME}` for presence), so the demo
/// page (and anyone on this machine) can connect without a backend. Never enabled otherwise.
async fn dev_token(
    axum::extract::Query(query): axum::extract::Query<DevTokenQuery>,
    secret: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let sub = query.sub.unwrap_or_else(|| "dev".into());
    if sub.is_empty() || sub.len() > 64 {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "sub must be 1 to 64 bytes",
        )
            .into_response();
    }
    let spec = TokenSpec {
        // What presence shows of the user (the demo's "who's online").
        info: Some(serde_json::json!({ "name": sub })),
        sub,
        ttl: Some(Duration::from_secs(24 * 3600)),
        ..TokenSpec::default()
    };
    match tidings_server::mint_token(&secret, &spec) {
        Ok(token) => axum::Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Query of `/dev/token`.
#[derive(serde::Deserialize)]
struct DevTokenQuery {
    sub: Option<String>,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}
