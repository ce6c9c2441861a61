//! Entry point: validate the configuration, then serve the same router either under the
//! Lambda runtime (response streaming) or as a local HTTP server.

use std::process::ExitCode;

use opendify::{AppState, Config};

fn main() -> ExitCode {
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    opendify::telemetry::init(lambda);

    let config = match Config::from_env() {
        Ok(config) => config,
        Err(problems) => {
            // Plain text on stderr: readable in a terminal and in CloudWatch alike. Exiting
            // non-zero makes Lambda report an init error, so a broken config never serves.
            eprintln!("opendify cannot start: {problems}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("{}", config.summary());

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
    match runtime.block_on(serve(config, lambda)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("opendify stopped: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, lambda: bool) -> Result<(), String> {
    let address = format!("{}:{}", config.server_host, config.server_port);
    let state =
        AppState::new(config).map_err(|e| format!("could not create the HTTP client: {e}"))?;
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
