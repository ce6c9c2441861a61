//! OpenDify: an OpenAI-compatible API in front of Dify apps, for AWS Lambda (function URL
//! with response streaming) and local runs. `main.rs` only loads the configuration and
//! picks how to [`serve`]; everything else lives here so tests drive the same code.
//!
//! The data path, module by module: `openai` request → `plan` (the Dify request) → `dify`
//! (client, events) → `answer` (one neutral answer) → `openai::chat` and
//! `openai::responses` (an encoder per OpenAI API); `routes` is the HTTP glue around it.

#![forbid(unsafe_code)]

/// One answer, neutral between Dify and OpenAI: pieces decoded from Dify, accumulated.
pub mod answer;
/// Which kind of Dify app each model is (chat, completion, workflow), learnt at cold start.
pub mod apps;
/// Configuration from the environment and SSM, validated as a whole at cold start.
pub mod config;
/// Which Dify conversation a request continues (keys, rules, store reads and writes).
pub mod conversation;
/// The time by which a request must be over (Lambda's invocation deadline, or the stream limit).
pub mod deadline;
/// Dify's service API: wire types, SSE decoding, HTTP client, task stop.
pub mod dify;
/// Every error a client can see and its one mapping (pure; HTTP at `routes::error`).
pub mod error;
/// OpenAI wire types and the encoders of an answer into them.
pub mod openai;
/// OpenAI request → Dify request: the turn, its history, its end user.
pub mod plan;
/// The HTTP routes: models, chat completions, responses, auth, fallbacks.
pub mod routes;
/// Serving the router: under the Lambda runtime or on a local socket.
pub mod serve;
/// Shared per-instance state.
pub mod state;
/// Chat → Dify conversation mappings: DynamoDB, or process memory.
pub mod store;
/// Logging setup that never prints secrets; error chains for log lines.
pub mod telemetry;

pub use config::Config;
pub use routes::app;
pub use serve::serve;
pub use state::AppState;

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
