//! The conversation store: an opaque key (the caller hashes model, user and chat id into
//! it) maps to a Dify `conversation_id`, with expiry, and for chats the digests of what
//! that conversation holds. DynamoDB in Lambda, an SQLite file for local runs (process
//! memory for tests, or on Lambda without a table). Only ids and digests are stored,
//! never message text.
//!
//! Every operation may fail with a [`StoreError`]; callers treat a failing store as "no
//! memory" and still answer, so implementations bound how long a failure takes.

use std::future::Future;
use std::pin::Pin;

pub mod dynamo;
pub mod memory;
pub mod sqlite;

pub use dynamo::DynamoStore;
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

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

/// A mapping as it stands after an answer: the Dify conversation, the digest of what it
/// holds (`state`), and of the system messages it was last sent (`system`). Digests only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub conversation_id: &'a str,
    pub state: &'a str,
    pub system: &'a str,
}

/// Result of [`ConversationStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The mapping was in the expected state and is now this request's to continue; the
    /// digest of the system messages the conversation was last sent, if recorded.
    Continue {
        conversation_id: String,
        system: Option<String>,
    },
    /// A live mapping in another state: the request has diverged from it (a regenerated
    /// answer, an edited or deleted turn, a second continuation of the same state).
    Diverged,
    /// No live mapping.
    Absent,
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

    /// Takes a mapping to continue it: only while it is live and its state is `expected`,
    /// and then atomically sets its state to `token` (this request's own), so that of two
    /// requests continuing the same state exactly one does. Refreshes the expiry.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        expected: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Writes the mapping after an answer. With `claimed`, only while the mapping is still
    /// in that state (the token of [`ConversationStore::claim`]); returns false when it is
    /// not, because a newer request remapped the key. Without, unconditionally (a new or
    /// forked conversation is the key's from now on).
    fn settle<'a>(
        &'a self,
        key: &'a str,
        mapping: Mapping<'a>,
        claimed: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// What backs the store, for the startup log line ("dynamodb table NAME",
    /// "sqlite file PATH", "in-process memory").
    fn describe(&self) -> String;
}
