//! Dify's service API: wire types, the SSE frame decoder, the HTTP client, its errors.

/// `/text-to-audio` and `/audio-to-text`.
pub mod audio;
pub mod client;
pub mod error;
/// The shape of Dify's ids, checked before one goes into a URL path.
pub mod ids;
pub mod multipart;
/// `GET /parameters`: an app's input form and file-upload settings.
pub mod parameters;
pub mod sse;
pub mod task;
pub mod types;

pub use client::{DifyClient, EventStream};
pub use error::DifyError;
pub use task::RunningTask;
pub use types::{DifyEvent, Event};
