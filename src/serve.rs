//! Serving the router, the same way in production and in tests: under the Lambda runtime
//! (response streaming), or on a local socket with the socket options streaming needs.

mod nodelay;

use std::future::Future;
use std::sync::Arc;

use aws_config::SdkConfig;
use axum::Router;
use axum::serve::ListenerExt;
use http_body_util::BodyExt;
use lambda_http::tower::ServiceBuilder;
use tokio::net::TcpListener;

pub use nodelay::TcpNoDelay;

use crate::config::Config;
use crate::config::store::StoreKind;
use crate::state::AppState;
use crate::store::dynamo::{StoreBudget, with_budget};
use crate::store::{ConversationStore, DynamoStore, MemoryStore, SqliteStore};

/// Builds the state for `config` and serves until stopped: through the Lambda Runtime API
/// when `lambda`, else on `SERVER_HOST:SERVER_PORT` until Ctrl-C or SIGTERM. `aws` is the
/// AWS configuration if `main` already loaded it (for SSM), so it is loaded once.
pub async fn serve(config: Config, lambda: bool, aws: Option<SdkConfig>) -> Result<(), String> {
    let address = format!("{}:{}", config.server_host, config.server_port);
    let store = conversation_store(&config, lambda, aws).await?;
    let state = AppState::new(config, store)
        .map_err(|e| format!("could not create the HTTP client: {e}"))?;
    state.resolve_apps().await;
    let app = crate::app(state);

    if lambda {
        return serve_lambda(app).await;
    }
    let listener = TcpListener::bind(&address).await.map_err(|e| {
        format!("could not listen on {address}: {e}. Set SERVER_HOST/SERVER_PORT to a free address, or stop what is using it.")
    })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("listening on http://{local}");
    serve_local(listener, app, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Serves `app` through the Lambda Runtime API with response streaming: up to
/// `AWS_LAMBDA_MAX_CONCURRENCY` invocations at once (Lambda Managed Instances), one at a
/// time when it is unset or 1 (classic Lambda). `lambda_runtime` reads the variable.
async fn serve_lambda(app: Router) -> Result<(), String> {
    let sockets = Arc::new(TcpNoDelay::new());
    // When the first body frame is ready, the runtime has the connection it streams the
    // response on (kept from `/next`, or new: `cargo lambda watch` closes each one), and
    // only the head and the prelude went out on it: TCP_NODELAY now also pushes those.
    let app = ServiceBuilder::new()
        .map_response(move |response: axum::response::Response| {
            let sockets = sockets.clone();
            let mut first = true;
            response.map(|body| {
                body.map_frame(move |frame| {
                    if std::mem::take(&mut first) {
                        sockets.apply();
                    }
                    frame
                })
            })
        })
        .service(app);
    lambda_http::run_with_streaming_response_concurrent(app)
        .await
        .map_err(|e| e.to_string())
}

/// The conversation store `config` asks for (see [`StoreSettings::choose`]): its DynamoDB
/// table (with `aws`, or the AWS configuration loaded now), the SQLite file, or process
/// memory. Logs which and why. Fails when the SQLite file cannot be opened: serving
/// without it would silently forget every chat at the next restart.
///
/// [`StoreSettings::choose`]: crate::config::store::StoreSettings::choose
pub async fn conversation_store(
    config: &Config,
    lambda: bool,
    aws: Option<SdkConfig>,
) -> Result<Arc<dyn ConversationStore>, String> {
    let budget = StoreBudget {
        lookup: config.store_lookup_timeout,
        write: config.store_write_timeout,
    };
    let settings = &config.conversation_store;
    let (kind, why) = settings.choose(config.conversation_table.is_some(), lambda);
    let store: Arc<dyn ConversationStore> = match (kind, &config.conversation_table) {
        (StoreKind::DynamoDb, Some(table)) => {
            let aws = match aws {
                Some(aws) => aws,
                None => load_aws_config().await,
            };
            let client = aws_sdk_dynamodb::Client::from_conf(
                with_budget(aws_sdk_dynamodb::config::Builder::from(&aws)).build(),
            );
            Arc::new(
                DynamoStore::new(client, table.clone(), config.conversation_ttl)
                    .with_budget(budget),
            )
        }
        // Config refuses dynamodb without a table; memory is the harmless answer anyway.
        (StoreKind::DynamoDb, None) | (StoreKind::Memory, _) => {
            Arc::new(MemoryStore::new(config.conversation_ttl))
        }
        (StoreKind::Sqlite, _) => {
            let path = settings.db_path.clone();
            let ttl = config.conversation_ttl;
            // Opening creates the directory and file and may wait on a lock: off the async
            // threads.
            let opened = tokio::task::spawn_blocking(move || SqliteStore::open(&path, ttl, budget))
                .await
                .map_err(|e| format!("could not open the conversation store: {e}"))?;
            Arc::new(opened.map_err(|e| {
                format!(
                    "could not open the conversation store file {}: {e}. Set CONVERSATION_DB_PATH to a writable file, or CONVERSATION_STORE=memory to keep chats in this process only.",
                    settings.db_path.display()
                )
            })?)
        }
    };
    tracing::info!("conversations: {} ({why})", store.describe());
    Ok(store)
}

/// Region, credentials and endpoints from the standard AWS chain. Load once at cold start:
/// it is the largest part of init when DynamoDB or SSM is used.
pub async fn load_aws_config() -> SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve_local(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small SSE writes must leave at once: with Nagle on, each write waits for the ACK of
    // the previous one, which a keep-alive client delays by ~40 ms (measured in
    // tests/benches/RESULTS.md, finding A).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Ctrl-C, or SIGTERM (what container runtimes and `cargo lambda watch` send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
