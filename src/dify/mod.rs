//! Dify service API: wire types, the SSE frame decoder, and the HTTP client.

pub mod client;
pub mod sse;
pub mod types;

pub use client::{DifyClient, DifyError, EventStream};
pub use types::{DifyEvent, Event};
