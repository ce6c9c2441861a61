//! The OpenAI side: wire types, and the encoders that turn an answer into them.

/// Free-form request fields parsed with their memory bounded.
pub mod bounded;
/// Chat completions: chunks for streaming clients, one completion for the others.
pub mod chat;
/// Wire types of the chat-completions API and of OpenAI's error body.
pub mod types;

pub use types::*;
/// The Responses API: the event sequence for streaming clients, one response object for
/// the others.
pub mod responses;
