//! Serving the router, the same way in production and in tests: under the Lambda runtime
//! (response streaming), or on a local socket with the socket options streaming needs.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::AppState;
use crate::store::dynamo::StoreBudget;
use crate::store::{ConversationStore, DynamoStore, MemoryStore};

/// Builds the state for `config` and serves until stopped: through the Lambda Runtime API
/// when `lambda`, else on `SERVER_HOST:SERVER_PORT` until Ctrl-C or SIGTERM.
pub async fn serve(config: Config, lambda: bool) -> Result<(), String> {
    let address = format!("{}:{}", config.server_host, config.server_port);
    let store = conversation_store(&config).await;
    tracing::info!("conversations: {}", store.describe());
    let state = AppState::new(config, store)
        .map_err(|e| format!("could not create the HTTP client: {e}"))?;
    let app = crate::app(state);

    if lambda {
        tracing::info!("serving through the Lambda runtime API with response streaming");
        return lambda_http::run_with_streaming_response(app)
            .await
            .map_err(|e| e.to_string());
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

/// The conversation store `config` asks for: its DynamoDB table, or process memory.
pub async fn conversation_store(config: &Config) -> Arc<dyn ConversationStore> {
    match &config.conversation_table {
        Some(table) => {
            let budget = StoreBudget {
                lookup: config.store_lookup_timeout,
                write: config.store_write_timeout,
            };
            Arc::new(DynamoStore::from_env(table.clone(), config.conversation_ttl, budget).await)
        }
        None => {
            tracing::info!(
                "CONVERSATION_TABLE is not set: conversations are remembered in this process only (fine locally; set it on Lambda)"
            );
            Arc::new(MemoryStore::new(config.conversation_ttl))
        }
    }
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
