//! HTTP glue only. The router as data: every path, layer and fallback on one screen.

/// What an answer in progress carries besides Dify's stream; closing it.
mod answer;
/// `POST /v1/audio/speech` and `/v1/audio/transcriptions`: Dify's speech endpoints.
mod audio;
/// Proxy keys, checked in constant time; the caller's model access.
mod auth;
/// Blocking delivery: the whole answer, then one response.
mod blocking;
/// `POST /v1/chat/completions`: the orchestration.
mod chat;
/// Every request bounded by the invocation's deadline or the stream limit.
mod deadline;
/// Errors as HTTP responses.
mod error;
/// The JSON body extractor with OpenAI-shaped rejections.
mod extract;
/// A turn's files: checked against the app's file settings, uploaded, a workflow's input.
mod files;
/// The app's inputs: merged from the model and the request, required ones checked.
mod inputs;
/// `GET /v1/models`.
mod models;
/// `POST /v1/responses`: the orchestration.
mod responses;
/// Streaming delivery: the pump from Dify to the response body.
mod stream;

pub use extract::{parse_request, parse_responses_request};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::config::Cors;
use crate::error::ApiError;
use crate::state::AppState;

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(models::list).fallback(method_not_allowed))
        .route(
            "/v1/models/{*id}",
            get(models::get).fallback(method_not_allowed),
        )
        .route(
            "/v1/chat/completions",
            post(chat::create).fallback(method_not_allowed),
        )
        .route(
            "/v1/responses",
            post(responses::create).fallback(method_not_allowed),
        )
        .route("/v1/responses/{*rest}", any(responses::not_supported))
        .route(
            "/v1/audio/speech",
            post(audio::speech).fallback(method_not_allowed),
        )
        .route(
            "/v1/audio/transcriptions",
            post(audio::transcriptions)
                .fallback(method_not_allowed)
                // The multipart reader's bound (axum's default is 2 MB).
                .layer(DefaultBodyLimit::max(state.config().max_request_bytes)),
        )
        .route("/v1/audio/translations", any(audio::translations))
        .fallback(not_found)
        // Auth wraps the fallback too: without a key, unknown paths answer 401, not 404.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            deadline::bound,
        ))
        // Outside auth: browsers send preflights without credentials.
        .layer(cors_layer(&state.config().cors))
        .layer(middleware::from_fn(request_log))
        .with_state(state)
}

/// CORS for browser clients (Open WebUI direct connections, the SDKs in a browser).
/// Preflights are answered here, before the key check; every answer, errors and streams
/// included, carries the allow-origin header and exposes the headers clients read.
fn cors_layer(cors: &Cors) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        // Echoing the requested headers covers Authorization, which a bare `*` does not.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-should-retry"),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(86_400));
    match cors {
        Cors::AnyOrigin => layer.allow_origin(AllowOrigin::any()),
        Cors::Origins(origins) => layer.allow_origin(AllowOrigin::list(
            origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )),
        // Allows no origin: browsers refuse every cross-origin call. (The layer still
        // answers OPTIONS itself, without CORS headers; it never reaches auth.)
        Cors::Disabled => CorsLayer::new(),
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// One line per request: method, path, status, time to response head. Never headers,
/// query strings or bodies. Every response gets an `x-request-id` the SDKs expose.
async fn request_log(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    if status >= 500 {
        tracing::warn!(%method, path, status, ms, request_id, "request");
    } else {
        tracing::info!(%method, path, status, ms, request_id, "request");
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
