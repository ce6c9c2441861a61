//! Glue between a chat request and the conversation store: look up the Dify conversation
//! to continue, record new ones as soon as Dify names them, and keep going when the store
//! fails (the user still gets an answer, as a new conversation with the folded history).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;

use super::keys::{Thread, history_key};
use crate::openai::Role;
use crate::store::{ConversationStore, PutOutcome, StoreError};

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
    ) -> Self {
        Self {
            store,
            thread,
            tenant: tenant.to_string(),
            model: model.to_string(),
            user: user.to_string(),
            continued: None,
            recorded: false,
            response: None,
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

    /// Looks up the stored conversation. A store failure means "none": the request goes
    /// out as a new conversation with the folded history.
    pub async fn lookup(&mut self) -> Option<String> {
        let key = self.lookup_key()?.to_string();
        match self.store.get(&key).await {
            Ok(found) => self.continued = found,
            Err(e) => warn_once(&self.warned, "look up the conversation", &e),
        }
        self.continued.clone()
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
        let Some(key) = self.lookup_key().map(str::to_string) else {
            return;
        };
        if let Err(e) = self.store.delete(&key, &conversation).await {
            warn_once(&self.warned, "drop the stale conversation", &e);
        }
    }

    /// Called with the conversation id from the first Dify frame that carries one. For
    /// chat ids this writes (or refreshes) the mapping right away, so even a stream the
    /// client abandons leaves its conversation mapped. Runs in the background: it adds
    /// nothing to the time to first token.
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
        let Thread::Chat { key } = &self.thread else {
            return;
        };
        let (store, key, id, warned) = (
            self.store.clone(),
            key.clone(),
            conversation.to_string(),
            self.warned.clone(),
        );
        let continued = self.continued.as_deref() == Some(conversation);
        self.pending.push(tokio::spawn(async move {
            if continued {
                if let Err(e) = store.touch(&key, &id).await {
                    warn_once(&warned, "refresh the conversation's expiry", &e);
                }
                return;
            }
            match store.put_new(&key, &id).await {
                Ok(PutOutcome::Stored) => {}
                // Two first turns of one chat ran at once; the other one's conversation is
                // the chat's from now on, for every later turn.
                Ok(PutOutcome::Exists(_)) => tracing::info!(
                    "a concurrent first turn already mapped this chat; keeping that mapping"
                ),
                Err(e) => warn_once(&warned, "store the conversation", &e),
            }
        }));
    }

    /// An Open WebUI background task: its Dify conversation is a throwaway.
    pub fn is_detached(&self) -> bool {
        matches!(self.thread, Thread::Detached)
    }

    /// Whether [`ConversationLink::on_answer`] needs the answer's text (history matching
    /// does); otherwise no copy of it need be kept.
    pub fn wants_answer_text(&self) -> bool {
        matches!(self.thread, Thread::History { .. })
    }

    /// After a complete answer: for clients without chat id, map the conversation so far
    /// (history, this message, this answer as the client saw it) to the Dify conversation,
    /// so the next request that sends this history continues it.
    pub fn on_answer(
        &mut self,
        conversation: Option<&str>,
        history: &[(Role, String)],
        message: &str,
        answer: &str,
    ) {
        let (Thread::History { .. }, Some(conversation)) = (&self.thread, conversation) else {
            return;
        };
        let messages = history
            .iter()
            .map(|(r, t)| (*r, t.as_str()))
            .chain([(Role::User, message), (Role::Assistant, answer)]);
        let key = history_key(&self.tenant, &self.model, &self.user, messages);
        let (store, id, warned) = (
            self.store.clone(),
            conversation.to_string(),
            self.warned.clone(),
        );
        self.pending.push(tokio::spawn(async move {
            if let Err(e) = store.put(&key, &id).await {
                warn_once(&warned, "store the conversation", &e);
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
