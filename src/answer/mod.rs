//! One answer, neutral between Dify and OpenAI. Dify's events, whatever the app type, are
//! decoded into a small vocabulary of [`Piece`]s (`from_dify`); an [`Accumulator`] keeps
//! what a whole answer amounts to; each OpenAI API is an encoder of pieces into its own
//! wire format (`crate::openai`). Pure: no I/O, no HTTP framework, no configuration.

pub mod accumulate;
pub mod from_dify;
#[cfg(test)]
mod tests;
pub mod think;
pub mod thoughts;

pub use accumulate::{Accumulator, Content};
pub use from_dify::DifyDecoder;

use crate::error::ClientError;

/// What becomes of thinking a model writes inline at the start of its answer
/// (`REASONING_MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReasoningMode {
    /// Split off as reasoning, apart from the answer.
    #[default]
    Separate,
    /// Left in the answer text, as the model wrote it.
    Inline,
}

/// What becomes of the knowledge-base documents Dify cites (`CITATIONS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Citations {
    #[default]
    Off,
    /// A numbered "Sources" list of document names at the end of the answer.
    Sources,
}

/// Per-deployment choices about what an answer shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerOptions {
    pub reasoning: ReasoningMode,
    pub citations: Citations,
}

/// What one moment of an answer means, whichever app produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// The upstream is alive but has nothing new (keeps idle connections open).
    KeepAlive,
    /// Answer text to append.
    Text(String),
    /// The model's thinking, apart from the answer (clients show it separately).
    Reasoning(String),
    /// A file the app produced (a tool's image, a chart), with an absolute URL.
    File { kind: FileKind, url: String },
    /// Output moderation replaced the whole answer with this text.
    Replace(String),
    /// Token counts for the answer.
    Usage(Usage),
    /// The answer is complete. Nothing follows.
    End,
    /// The answer failed. Nothing follows.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Image,
    Other,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// Why an answer failed: what the client is told, and a short cause for the log (never
/// prompt or answer text).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: ClientError,
    pub cause: String,
    /// Dify reported the failure itself (an `error` event, a failed workflow): its task is
    /// over, nothing to stop. Otherwise (a broken or cut stream) it may still be running.
    pub dify_ended: bool,
}

/// Whether to keep reading the upstream stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The contract of a streaming encoder: one per OpenAI API. The pump that moves an answer
/// to the client is generic over it, so a new API is one new encoder.
pub trait StreamEncoder: Send + 'static {
    /// What the client gets as soon as Dify accepted the request.
    fn start(&mut self, buf: &mut Vec<u8>);
    /// Appends the wire bytes for one piece; `answer` already includes it.
    fn encode(&mut self, piece: Piece, answer: &Accumulator, buf: &mut Vec<u8>);
    /// The answer text as the client received it (what it will send back as history).
    fn visible_text(&self) -> &str;
}
