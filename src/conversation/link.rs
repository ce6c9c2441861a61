//! Glue between a chat request and the conversation store: claim the Dify conversation
//! to continue (only when it holds exactly the request's history), record what it holds
//! after the answer, and keep going when the store fails (the user still gets an answer,
//! as a new conversation with the folded history).
//!
//! A Dify conversation is linear, and a request's history is what the user sees. So a
//! request continues a conversation only when the conversation's state (the digest of its
//! turns) equals the request's history, and only once per state: a regenerated answer, an
//! edited or deleted turn, or two chats that open with the same words diverge, and start a
//! new conversation with their history folded into the query.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::task::JoinHandle;

use super::keys::{Thread, history_key, state_digest, system_digest};
use crate::openai::Role;
use crate::store::{Claim, ConversationStore, Mapping, PutOutcome, StoreError};

/// Requests that found a mapping they could not continue and started anew (since start).
static DIVERGED: AtomicU64 = AtomicU64::new(0);
/// Lookups the store failed, each answered as a new conversation (since start).
static LOOKUP_FAILURES: AtomicU64 = AtomicU64::new(0);

/// One request's view of its conversation.
pub struct ConversationLink {
    store: Arc<dyn ConversationStore>,
    thread: Thread,
    tenant: String,
    model: String,
    user: String,
    /// The conversation this request continues (from the store), if any.
    continued: Option<String>,
    /// Set once the mapping for this request's conversation has been written or refreshed.
    recorded: bool,
    /// This request's own response id's key (Responses API), mapped to the conversation
    /// as soon as Dify names it.
    response: Option<String>,
    /// The state the conversation must be in for this request to continue it: the digest
    /// of the request's history.
    expected: String,
    /// The digest of this request's system messages.
    system: String,
    /// Set when the continued conversation was last sent other system messages.
    resend_system: bool,
    /// This request's claim on the mapping it continues (see `ConversationStore::claim`).
    token: Option<String>,
    pending: Vec<JoinHandle<()>>,
    warned: Arc<AtomicBool>,
}

impl ConversationLink {
    pub fn new(
        store: Arc<dyn ConversationStore>,
        thread: Thread,
        tenant: &str,
        model: &str,
        user: &str,
        history: &[(Role, String)],
    ) -> Self {
        let messages = || history.iter().map(|(r, t)| (*r, t.as_str()));
        Self {
            store,
            thread,
            tenant: tenant.to_string(),
            model: model.to_string(),
            user: user.to_string(),
            continued: None,
            recorded: false,
            response: None,
            expected: state_digest(messages()),
            system: system_digest(messages()),
            resend_system: false,
            token: None,
            pending: Vec::new(),
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The store key this request's conversation was looked up under, if any.
    fn lookup_key(&self) -> Option<&str> {
        match &self.thread {
            Thread::Chat { key }
            | Thread::History { lookup: Some(key) }
            | Thread::Response { key } => Some(key),
            _ => None,
        }
    }

    /// Finds the conversation to continue: claims the stored mapping if it holds exactly
    /// this request's history. Anything else (a mapping in another state, none, a failing
    /// store) means a new conversation with the folded history.
    pub async fn lookup(&mut self) -> Option<String> {
        let key = self.lookup_key()?.to_string();
        if matches!(self.thread, Thread::Response { .. }) {
            // previous_response_id names its conversation; see `lookup_strict`.
            match self.store.get(&key).await {
                Ok(found) => self.continued = found,
                Err(e) => self.lookup_failed(&e),
            }
            return self.continued.clone();
        }
        let token = format!("claim#{}", uuid::Uuid::new_v4().simple());
        match self.store.claim(&key, &self.expected, &token).await {
            Ok(Claim::Continue {
                conversation_id,
                system,
            }) => {
                self.resend_system = system.as_deref() != Some(self.system.as_str());
                self.continued = Some(conversation_id);
                self.token = Some(token);
            }
            Ok(Claim::Diverged) => {
                let n = DIVERGED.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(
                    diverged_total = n,
                    "the history differs from the stored conversation (regenerated, edited or repeated turn); starting a new conversation with the history folded"
                );
            }
            Ok(Claim::Absent) => {}
            Err(e) => self.lookup_failed(&e),
        }
        self.continued.clone()
    }

    /// Whether the continued conversation must be sent this request's system messages
    /// again, because they changed since it was last sent them.
    pub fn resend_system(&self) -> bool {
        self.continued.is_some() && self.resend_system
    }

    fn lookup_failed(&self, error: &StoreError) {
        let n = LOOKUP_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                lookup_failures_total = n,
                "could not look up the conversation; answering as a new conversation with the history folded"
            );
        }
    }

    /// Maps this request's response (the store key of its id) to its conversation too, so
    /// a later request can continue it with `previous_response_id`.
    pub fn record_response(&mut self, key: String) {
        self.response = Some(key);
    }

    /// Looks up the stored conversation, reporting a failing store instead of treating
    /// it as "none": for an explicit handle (`previous_response_id`) a new conversation
    /// would silently lose the context the client asked for.
    pub async fn lookup_strict(&mut self) -> Result<Option<String>, StoreError> {
        let Some(key) = self.lookup_key().map(str::to_string) else {
            return Ok(None);
        };
        self.continued = self.store.get(&key).await?;
        Ok(self.continued.clone())
    }

    /// Notes (in the background) that the stored response this request continues now has
    /// a continuation. A second one is a branch: Dify's conversation is linear, so the
    /// second branch's context holds the first branch's turn too. That cannot be undone
    /// without the text (which we do not keep); it is logged with its cause.
    pub fn note_continuation(&mut self) {
        let (Thread::Response { key }, Some(conversation)) = (&self.thread, &self.continued) else {
            return;
        };
        let marker = format!("next#{}", key.trim_start_matches("resp#"));
        let (store, id) = (self.store.clone(), conversation.clone());
        self.pending.push(tokio::spawn(async move {
            match store.put_new(&marker, &id).await {
                Ok(PutOutcome::Stored) => {}
                Ok(PutOutcome::Exists(_)) => tracing::warn!(
                    "previous_response_id names a response that was already continued: its Dify conversation now holds both branches, so this answer also sees the other branch's turns"
                ),
                Err(e) => tracing::debug!(error = %e, "could not note the continuation of a response"),
            }
        }));
    }

    /// Dify no longer has the stored conversation: forget it so the retry starts fresh.
    pub async fn forget(&mut self) {
        let Some(conversation) = self.continued.take() else {
            return;
        };
        self.token = None;
        let Some(key) = self.lookup_key().map(str::to_string) else {
            return;
        };
        if let Err(e) = self.store.delete(&key, &conversation).await {
            warn_once(&self.warned, "drop the stale conversation", &e);
        }
    }

    /// Called with the conversation id from the first Dify frame that carries one: maps
    /// this request's response id (Responses API) right away, so a stream the client
    /// abandons can still be continued. Runs in the background: it adds nothing to the
    /// time to first token. Chat mappings are written after the answer (`on_answer`):
    /// only then is it known what the conversation holds.
    pub fn on_conversation(&mut self, conversation: &str) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        if let Some(key) = self.response.clone() {
            let (store, id, warned) = (
                self.store.clone(),
                conversation.to_string(),
                self.warned.clone(),
            );
            self.pending.push(tokio::spawn(async move {
                if let Err(e) = store.put(&key, &id).await {
                    warn_once(&warned, "store the response's conversation", &e);
                }
            }));
        }
    }

    /// An Open WebUI background task: its Dify conversation is a throwaway.
    pub fn is_detached(&self) -> bool {
        matches!(self.thread, Thread::Detached)
    }

    /// Whether [`ConversationLink::on_answer`] needs the answer's text: every tracked
    /// conversation does, to know what it holds; otherwise no copy of it need be kept.
    pub fn wants_answer_text(&self) -> bool {
        matches!(self.thread, Thread::History { .. } | Thread::Chat { .. })
    }

    /// After a complete answer: records what the conversation now holds (the history,
    /// this message, this answer as the client saw it), so the next request that sends
    /// exactly this history continues it. For a chat id the chat's mapping moves on (only
    /// if this request still holds its claim, when it continued); without one, the new
    /// history's digest is mapped. Wait with [`ConversationLink::finish_writes`] before the
    /// client gets the end of the answer, so its next turn finds the mapping.
    pub fn on_answer(
        &mut self,
        conversation: Option<&str>,
        history: &[(Role, String)],
        message: &str,
        answer: &str,
    ) {
        let Some(conversation) = conversation else {
            return;
        };
        let messages = || {
            history
                .iter()
                .map(|(r, t)| (*r, t.as_str()))
                .chain([(Role::User, message), (Role::Assistant, answer)])
        };
        let (key, claimed) = match &self.thread {
            Thread::Chat { key } => {
                let claimed = self
                    .token
                    .clone()
                    .filter(|_| self.continued.as_deref() == Some(conversation));
                (key.clone(), claimed)
            }
            Thread::History { .. } => (
                history_key(&self.tenant, &self.model, &self.user, messages()),
                None,
            ),
            _ => return,
        };
        let state = state_digest(messages());
        let (store, id, system, warned) = (
            self.store.clone(),
            conversation.to_string(),
            self.system.clone(),
            self.warned.clone(),
        );
        self.pending.push(tokio::spawn(async move {
            let mapping = Mapping {
                conversation_id: &id,
                state: &state,
                system: &system,
            };
            match store.settle(&key, mapping, claimed.as_deref()).await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    "a newer turn of this chat remapped it while this one was answered; keeping the newer mapping"
                ),
                Err(e) => warn_once(&warned, "store the conversation", &e),
            }
        }));
    }

    /// Waits for the store writes, so that under Lambda they finish before the invocation
    /// does. Call after the client has its last byte.
    pub async fn finish_writes(&mut self) {
        for task in self.pending.drain(..) {
            let _ = task.await;
        }
    }
}

/// One warning per request, with the cause: enough to notice a broken table without
/// flooding the log on every call of a failing request.
fn warn_once(warned: &AtomicBool, what: &str, error: &StoreError) {
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %error, "could not {what}; answering as a new conversation where needed");
    }
}
