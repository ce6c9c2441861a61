//! OpenDify: an OpenAI-compatible chat API in front of Dify apps, for AWS Lambda (function
//! URL with response streaming) and local runs. `main.rs` only chooses how to serve
//! [`app`]; everything else lives here so tests drive the same router.

#![forbid(unsafe_code)]

/// Environment configuration, validated as a whole at cold start.
pub mod config;
/// Which Dify conversation a request continues (store keys, background tasks).
pub mod continuity;
/// Dify service API: wire types, SSE decoding, HTTP client.
pub mod dify;
/// Client-facing errors and their one mapping to HTTP.
pub mod error;
/// OpenAI chat-completions wire types.
pub mod openai;
/// The HTTP routes: models, chat completions, auth, fallbacks.
pub mod routes;
/// Shared per-instance state.
pub mod state;
/// Chat → Dify conversation mappings: DynamoDB, or process memory.
pub mod store;
/// Logging setup that never prints secrets.
pub mod telemetry;
/// Pure OpenAI ⇄ Dify translation.
pub mod translate;

pub use config::Config;
pub use routes::app;
pub use state::AppState;

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
