//! Entry point: validate the configuration, then serve the same router either under the
//! Lambda runtime (response streaming) or as a local HTTP server.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use axum::serve::ListenerExt;

use opendify::config::{ConfigErrors, ssm};
use opendify::store::{ConversationStore, DynamoStore, MemoryStore};
use opendify::{AppState, Config};

fn main() -> ExitCode {
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    opendify::telemetry::init(lambda);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opendify cannot start: could not create the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let config = match load_config().await {
            Ok(config) => config,
            Err(problems) => {
                // Plain text on stderr: readable in a terminal and in CloudWatch alike.
                // Exiting non-zero makes Lambda report an init error, so a broken
                // config never serves.
                eprintln!("opendify cannot start: {problems}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!("{}", config.summary());
        match serve(config, lambda).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("opendify stopped: {message}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The environment, with `*_PARAMETER` values read from SSM Parameter Store; every
/// problem of either source in one list.
async fn load_config() -> Result<Config, ConfigErrors> {
    let env = |name: &str| std::env::var(name).ok();
    let client = if ssm::any_requested(&env) {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Some(aws_sdk_ssm::Client::new(&shared))
    } else {
        None
    };
    let resolved = ssm::resolve(&env, client.as_ref()).await;
    for (var, name) in &resolved.sources {
        tracing::info!("{var} read from SSM parameter {name:?}");
    }
    let merged = |name: &str| resolved.values.get(name).cloned().or_else(|| env(name));
    let outcome = Config::from_lookup(merged);
    let mut problems = resolved.problems.clone();
    match outcome {
        Ok(config) if problems.is_empty() => return Ok(config),
        Ok(_) => {}
        Err(ConfigErrors(more)) => problems.extend(resolved.attribute(more)),
    }
    Err(ConfigErrors(problems))
}

async fn serve(config: Config, lambda: bool) -> Result<(), String> {
    let address = format!("{}:{}", config.server_host, config.server_port);
    let store: Arc<dyn ConversationStore> = match &config.conversation_table {
        Some(table) => {
            Arc::new(DynamoStore::from_env(table.clone(), config.conversation_ttl).await)
        }
        None => {
            tracing::info!(
                "CONVERSATION_TABLE is not set: conversations are remembered in this process only (fine locally; set it on Lambda)"
            );
            Arc::new(MemoryStore::new(config.conversation_ttl))
        }
    };
    tracing::info!("conversations: {}", store.describe());
    let state = AppState::new(config, store)
        .map_err(|e| format!("could not create the HTTP client: {e}"))?;
    let app = opendify::app(state);

    if lambda {
        tracing::info!("serving through the Lambda runtime API with response streaming");
        return lambda_http::run_with_streaming_response(app)
            .await
            .map_err(|e| e.to_string());
    }
    let listener = tokio::net::TcpListener::bind(&address).await.map_err(|e| {
        format!("could not listen on {address}: {e}. Set SERVER_HOST/SERVER_PORT to a free address, or stop what is using it.")
    })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("listening on http://{local}");
    // Small SSE writes must leave at once: with Nagle on, each write waits for the ACK of
    // the previous one, which a keep-alive client delays by ~40 ms (measured in
    // tests/benches/RESULTS.md, finding A).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
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
