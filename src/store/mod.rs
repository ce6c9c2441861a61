//! The conversation store: an opaque key (the caller hashes model, user and chat id into
//! it) maps to a Dify `conversation_id`, with expiry. DynamoDB in Lambda, process memory
//! for local runs. Only ids are stored, never message text.
//!
//! Every operation may fail with a [`StoreError`]; callers treat a failing store as "no
//! memory" and still answer, so implementations bound how long a failure takes.

use std::future::Future;
use std::pin::Pin;

pub mod dynamo;
pub mod memory;

pub use dynamo::DynamoStore;
pub use memory::MemoryStore;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store call failed. Each carries a short cause without secrets or stored values;
/// `Display` is what gets logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Could not connect, timed out, or the service answered 5xx.
    #[error("conversation store unavailable: {0}")]
    Unavailable(String),
    /// The table's capacity or the account's request rate is exhausted.
    #[error("conversation store throttled: {0}")]
    Throttled(String),
    /// Credentials missing, unknown or not allowed on the table.
    #[error("conversation store access denied: {0}")]
    AccessDenied(String),
    /// Anything else: missing table, validation error, malformed item.
    #[error("conversation store error: {0}")]
    Other(String),
}

/// Result of [`ConversationStore::put_new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call created the mapping.
    Stored,
    /// A live mapping already existed (a concurrent first turn won); its conversation id.
    Exists(String),
}

pub trait ConversationStore: Send + Sync {
    /// The conversation for `key`, or None. Items past their expiry are treated as absent
    /// (DynamoDB TTL deletion lags by up to days).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Conditional create: of two concurrent first turns exactly one wins; the loser learns
    /// the winner's id via [`PutOutcome::Exists`]. An expired item counts as absent and is
    /// overwritten.
    fn put_new<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StoreError>>;

    /// Unconditional write (history-digest keys).
    fn put<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Refreshes the expiry, only while `key` still maps to this conversation and has not
    /// expired: no resurrection, no overwrite. A mismatch is not an error.
    fn touch<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes, only while `key` still maps to this conversation, so a concurrent newer
    /// mapping survives. A mismatch is not an error.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// What backs the store, for the startup log line ("dynamodb table NAME",
    /// "in-process memory").
    fn describe(&self) -> String;
}
