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
//!
//! Without a chat id, chats that cannot be told apart (same key, user, identity and
//! history: many open with "Hi" and get the same greeting) each keep their conversation:
//! a history key has numbered slots (`<key>#0` … `#7`), each holding one conversation in
//! that state, claimed in order, so each such chat continues one that holds exactly its
//! history and no two continue the same one. A slot whose chat moved on is marked free
//! and reused; past the bound, a chat's next turn starts anew with its history folded.

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
/// Answers whose state found every slot taken, so their next turn starts anew.
static SLOTS_FULL: AtomicU64 = AtomicU64::new(0);
static SLOTS_FULL_WARNED: AtomicBool = AtomicBool::new(false);

/// How many conversations one history state can hold at once (see the module doc).
pub const HISTORY_SLOTS: usize = 8;
/// The state of a history slot whose chat moved on: reusable by the next answer.
const FREE: &str = "free";
/// The state of a response's mapping while no request continues it.
const RESPONSE_OPEN: &str = "open";

/// What `previous_response_id` names, as [`ConversationLink::lookup_previous`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// Its conversation, now claimed by this request until its answer ends.
    Found(String),
    /// Another request is continuing it right now: Dify's conversation is linear, so
    /// a second turn at once would interleave with the first.
    Busy,
    /// Unknown (never stored, expired, or another key's, model's or user's).
    Missing,
}

fn slot_key(base: &str, slot: usize) -> String {
    format!("{base}#{slot}")
}

/// One request's view of its conversation.
pub struct ConversationLink {
    store: Arc<dyn ConversationStore>,
    thread: Thread,
    tenant: String,
    model: String,
    user: String,
    /// The request's identity digest (`keys::identity`), part of every key it writes.
    identity: String,
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
    /// The store key of that mapping (a history key's slot, a chat key, a response key).
    claimed_key: Option<String>,
    /// The system digest the claimed mapping held, to put back if the claim is released.
    claimed_system: String,
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
        identity: &str,
        history: &[(Role, String)],
    ) -> Self {
        let messages = || history.iter().map(|(r, t)| (*r, t.as_str()));
        Self {
            store,
            thread,
            tenant: tenant.to_string(),
            model: model.to_string(),
            user: user.to_string(),
            identity: identity.to_string(),
            continued: None,
            recorded: false,
            response: None,
            expected: state_digest(messages()),
            system: system_digest(messages()),
            resend_system: false,
            token: None,
            claimed_key: None,
            claimed_system: String::new(),
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
    /// this request's history (for a history key, the first of its slots that does).
    /// Anything else (a mapping in another state, none, a failing store) means a new
    /// conversation with the folded history.
    pub async fn lookup(&mut self) -> Option<String> {
        let key = self.lookup_key()?.to_string();
        let slots = match self.thread {
            Thread::Response { .. } => {
                // previous_response_id names its conversation; see `lookup_previous`.
                match self.store.get(&key).await {
                    Ok(found) => self.continued = found,
                    Err(e) => self.lookup_failed(&e),
                }
                return self.continued.clone();
            }
            Thread::History { .. } => HISTORY_SLOTS,
            _ => 0,
        };
        let token = format!("claim#{}", uuid::Uuid::new_v4().simple());
        let mut diverged = false;
        for slot in 0..slots.max(1) {
            let key = if slots == 0 {
                key.clone()
            } else {
                slot_key(&key, slot)
            };
            match self.store.claim(&key, &self.expected, &token).await {
                Ok(Claim::Continue {
                    conversation_id,
                    system,
                }) => {
                    self.resend_system = system.as_deref() != Some(self.system.as_str());
                    self.claimed_system = system.unwrap_or_default();
                    self.continued = Some(conversation_id);
                    self.token = Some(token);
                    self.claimed_key = Some(key);
                    return self.continued.clone();
                }
                // Taken (being continued, or moved on and not yet freed): the next slot.
                Ok(Claim::Diverged) => diverged = true,
                // Slots are filled in order and freed in place, never deleted (but by
                // expiry or Dify's 404): none after an empty one.
                Ok(Claim::Absent) => break,
                Err(e) => {
                    self.lookup_failed(&e);
                    return None;
                }
            }
        }
        if diverged {
            let n = DIVERGED.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(
                diverged_total = n,
                "the history differs from the stored conversation (regenerated, edited or repeated turn); starting a new conversation with the history folded"
            );
        }
        None
    }

    /// Puts back a claim whose request never reached Dify (refused, throttled, timed out
    /// before the run started): the conversation still holds exactly the history, so the
    /// client's retry must find it as it was, not fork a new one.
    pub async fn release(&mut self) {
        let (Some(token), Some(key), Some(conversation)) = (
            self.token.take(),
            self.claimed_key.take(),
            self.continued.clone(),
        ) else {
            return;
        };
        let state = match self.thread {
            Thread::Response { .. } => RESPONSE_OPEN,
            _ => self.expected.as_str(),
        };
        let mapping = Mapping {
            conversation_id: &conversation,
            state,
            system: &self.claimed_system,
        };
        match self.store.settle(&key, mapping, Some(&token)).await {
            Ok(_) => {}
            Err(e) => warn_once(&self.warned, "release the conversation", &e),
        }
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

    /// Claims the conversation of `previous_response_id`, reporting a failing store
    /// instead of treating it as "none": for an explicit handle a new conversation would
    /// silently lose the context the client asked for. The claim is held until this
    /// request's answer ends (see [`ConversationLink::finish_writes`]), so two requests
    /// continuing one response at once never interleave in its Dify conversation.
    pub async fn lookup_previous(&mut self) -> Result<Previous, StoreError> {
        let Some(key) = self.lookup_key().map(str::to_string) else {
            return Ok(Previous::Missing);
        };
        let token = format!("claim#{}", uuid::Uuid::new_v4().simple());
        Ok(match self.store.claim(&key, RESPONSE_OPEN, &token).await? {
            Claim::Continue {
                conversation_id, ..
            } => {
                self.continued = Some(conversation_id.clone());
                self.token = Some(token);
                self.claimed_key = Some(key);
                Previous::Found(conversation_id)
            }
            Claim::Diverged => Previous::Busy,
            Claim::Absent => Previous::Missing,
        })
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
        let Some(key) = self.claimed_key.take() else {
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
                let mapping = Mapping {
                    conversation_id: &id,
                    state: RESPONSE_OPEN,
                    system: "",
                };
                if let Err(e) = store.settle(&key, mapping, None).await {
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
        let state = state_digest(messages());
        let (store, id, system, warned) = (
            self.store.clone(),
            conversation.to_string(),
            self.system.clone(),
            self.warned.clone(),
        );
        match &self.thread {
            Thread::Chat { key } => {
                let claimed = self
                    .token
                    .clone()
                    .filter(|_| self.continued.as_deref() == Some(conversation));
                let key = key.clone();
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
            Thread::History { .. } => {
                let base = history_key(
                    &self.tenant,
                    &self.model,
                    &self.user,
                    &self.identity,
                    messages(),
                );
                // The slot this turn continued from is free once the conversation moved on.
                let freed = match (&self.token, &self.claimed_key, &self.continued) {
                    (Some(token), Some(key), Some(old)) if old == conversation => {
                        Some((token.clone(), key.clone(), self.claimed_system.clone()))
                    }
                    _ => None,
                };
                self.pending.push(tokio::spawn(async move {
                    let mapping = Mapping {
                        conversation_id: &id,
                        state: &state,
                        system: &system,
                    };
                    if let Err(e) = write_slot(store.as_ref(), &base, mapping).await {
                        warn_once(&warned, "store the conversation", &e);
                    }
                    if let Some((token, key, system)) = freed {
                        let free = Mapping {
                            conversation_id: &id,
                            state: FREE,
                            system: &system,
                        };
                        if let Err(e) = store.settle(&key, free, Some(&token)).await {
                            tracing::debug!(error = %e, "could not free the slot this turn continued from");
                        }
                    }
                }));
            }
            _ => {}
        }
    }

    /// Waits for the store writes, so that under Lambda they finish before the invocation
    /// does. Call after the client has its last byte.
    pub async fn finish_writes(&mut self) {
        if matches!(self.thread, Thread::Response { .. }) {
            // The continuation of a response is over (or its answer complete): the
            // response may be continued again (a branch, noted by `note_continuation`).
            self.release().await;
        }
        for task in self.pending.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for ConversationLink {
    /// A request dropped mid-answer (the client went away from a non-streamed answer)
    /// still gives back its claim on a response, or the response could not be continued
    /// until its mapping expired. A chat's claim is kept: Dify may hold part of the turn.
    fn drop(&mut self) {
        if !matches!(self.thread, Thread::Response { .. }) || self.token.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (Some(token), Some(key), Some(conversation)) = (
            self.token.take(),
            self.claimed_key.take(),
            self.continued.take(),
        ) else {
            return;
        };
        let store = self.store.clone();
        runtime.spawn(async move {
            let mapping = Mapping {
                conversation_id: &conversation,
                state: RESPONSE_OPEN,
                system: "",
            };
            if let Err(e) = store.settle(&key, mapping, Some(&token)).await {
                tracing::debug!(error = %e, "could not release the response's claim");
            }
        });
    }
}

/// Records a conversation in the first slot of `base` that is empty or free. Slots are
/// tried in order with the store's conditional writes, so two answers at once never take
/// the same one. All taken: counted and logged once, and the chat's next turn starts a new
/// conversation with its history folded (nothing is lost but the Dify conversation).
async fn write_slot(
    store: &dyn ConversationStore,
    base: &str,
    mapping: Mapping<'_>,
) -> Result<(), StoreError> {
    let token = format!("claim#{}", uuid::Uuid::new_v4().simple());
    for slot in 0..HISTORY_SLOTS {
        let key = slot_key(base, slot);
        match store.put_new(&key, mapping.conversation_id).await? {
            PutOutcome::Stored => {
                store.settle(&key, mapping, None).await?;
                return Ok(());
            }
            PutOutcome::Exists(_) => {
                if let Claim::Continue { .. } = store.claim(&key, FREE, &token).await? {
                    store.settle(&key, mapping, Some(&token)).await?;
                    return Ok(());
                }
            }
        }
    }
    let n = SLOTS_FULL.fetch_add(1, Ordering::Relaxed) + 1;
    if !SLOTS_FULL_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            slots = HISTORY_SLOTS,
            slots_full_total = n,
            "every slot of a conversation state is taken (many chats with the same opening at once); the next turn of this chat starts a new conversation with its history folded"
        );
    } else {
        tracing::debug!(
            slots_full_total = n,
            "every slot of a conversation state is taken"
        );
    }
    Ok(())
}

/// One warning per request, with the cause: enough to notice a broken table without
/// flooding the log on every call of a failing request.
fn warn_once(warned: &AtomicBool, what: &str, error: &StoreError) {
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %error, "could not {what}; answering as a new conversation where needed");
    }
}
