//! Which kind of Dify app each model is (chat, completion or workflow), and its name.
//!
//! The kind decides the endpoint (`/chat-messages`, `/completion-messages`,
//! `/workflows/run`), so it is learnt once per instance: at cold start from `GET /info` for
//! every model at once, within [`COLD_START_BUDGET`], or from `MODEL_CONFIG`'s `mode`
//! (no lookup). A model Dify could not describe in time is looked up on first use.
//!
//! Only a definite answer is kept: a description, a rejected key (401), or a Dify that
//! answers but will not describe the app (taken for a chat app). A passing failure (429,
//! 408, 5xx, timeout, unreachable) is asked again, at most once per [`RETRY_BACKOFF`] and
//! model, by one request while others wait for its answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::ModelConfig;
use crate::dify::{DifyClient, DifyError};

/// How long cold start may wait for Dify's `/info` answers, all models together. A Lambda
/// init is billed and delays the first request: a slow Dify must not hold it.
pub const COLD_START_BUDGET: Duration = Duration::from_millis(1500);

/// After a passing failure of `/info`, how long requests for that model answer the same
/// error without asking Dify again (a burst or a retrying client makes one lookup).
pub const RETRY_BACKOFF: Duration = Duration::from_secs(2);

/// The Dify endpoint family of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppMode {
    /// `chat`, `agent-chat`, `advanced-chat` (Chatflow), `agent`: `/chat-messages`, with
    /// conversations.
    Chat,
    /// `completion` (Text Generator): `/completion-messages`, one-shot.
    Completion,
    /// `workflow`: `/workflows/run`, one-shot.
    Workflow,
}

impl AppMode {
    /// Dify's `mode` names (from `/info`, or `MODEL_CONFIG`), each to its family.
    pub const NAMES: &'static [&'static str] = &[
        "chat",
        "agent-chat",
        "advanced-chat",
        "agent",
        "completion",
        "workflow",
    ];

    /// The family of one of Dify's `mode` names; `None` for a name Dify does not use.
    pub fn from_dify(mode: &str) -> Option<AppMode> {
        match mode {
            "chat" | "agent-chat" | "advanced-chat" | "agent" => Some(AppMode::Chat),
            "completion" => Some(AppMode::Completion),
            "workflow" => Some(AppMode::Workflow),
            _ => None,
        }
    }

    /// Only the chat family keeps conversations in Dify.
    pub fn has_conversations(self) -> bool {
        self == AppMode::Chat
    }

    /// The endpoint that runs the app, relative to the API base.
    pub fn run_path(self) -> &'static str {
        match self {
            AppMode::Chat => "chat-messages",
            AppMode::Completion => "completion-messages",
            AppMode::Workflow => "workflows/run",
        }
    }

    /// The endpoint that stops a running task of the app.
    pub fn stop_path(self, task_id: &str) -> String {
        match self {
            AppMode::Chat => format!("chat-messages/{task_id}/stop"),
            AppMode::Completion => format!("completion-messages/{task_id}/stop"),
            AppMode::Workflow => format!("workflows/tasks/{task_id}/stop"),
        }
    }

    /// How the README and the messages name the kind of app.
    pub fn label(self) -> &'static str {
        match self {
            AppMode::Chat => "chat",
            AppMode::Completion => "completion",
            AppMode::Workflow => "workflow",
        }
    }
}

/// `GET /info`: the fields read (others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InfoResponse {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
}

/// What `/v1/models` shows of a model's app: Dify's name and description, once known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub name: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
enum Known {
    App {
        mode: AppMode,
        listing: Listing,
    },
    /// Dify refused the key at cold start: every request answers this at once.
    Rejected(DifyError),
    /// A passing failure on first use: answered until `retry_at`, then asked again.
    Failed {
        error: DifyError,
        retry_at: Instant,
    },
}

/// How the cold-start lookups went, for the init log and the init-time measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdStart {
    pub resolved: usize,
    pub rejected: usize,
    /// Not answered in time or failed otherwise: looked up on first use.
    pub unresolved: usize,
    pub elapsed: Duration,
}

/// Every model's app, as far as known.
#[derive(Debug, Default)]
pub struct Apps {
    known: RwLock<HashMap<String, Known>>,
    /// One lookup per model at a time: the others wait for its answer.
    lookups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Apps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks every model up on Dify at once (those whose `mode` is configured need not),
    /// for at most [`COLD_START_BUDGET`]. Never fails: a model not resolved here is
    /// looked up on first use.
    pub async fn resolve_at_cold_start(
        &self,
        dify: &DifyClient,
        models: &BTreeMap<String, ModelConfig>,
    ) -> ColdStart {
        let started = Instant::now();
        let lookups = models
            .iter()
            .filter(|(_, m)| m.mode.is_none())
            .map(|(name, m)| async move {
                let result = dify.info(m.app_key.expose()).await;
                self.learn(name, m, result, true)
            });
        let lookups = futures_util::future::join_all(lookups);
        // Each lookup records its answer as it comes, so those in time count even if
        // others are cut off.
        let _ = tokio::time::timeout(COLD_START_BUDGET, lookups).await;
        let known = self.read();
        let mut report = ColdStart {
            elapsed: started.elapsed(),
            ..ColdStart::default()
        };
        for (name, m) in models {
            match known.get(name) {
                _ if m.mode.is_some() => report.resolved += 1,
                Some(Known::App { .. }) => report.resolved += 1,
                Some(Known::Rejected(_)) => report.rejected += 1,
                None | Some(Known::Failed { .. }) => {
                    report.unresolved += 1;
                    tracing::warn!(
                        model = %name,
                        "Dify did not describe this model's app within the cold-start budget; it is looked up on first use"
                    );
                }
            }
        }
        report
    }

    /// The model's app mode: configured, known, or asked of Dify now (and kept if
    /// definite). A key rejected at cold start fails at once, without a round trip; so
    /// does a passing failure within [`RETRY_BACKOFF`] of the last lookup.
    pub async fn mode_for(
        &self,
        dify: &DifyClient,
        name: &str,
        model: &ModelConfig,
    ) -> Result<AppMode, DifyError> {
        if let Some(mode) = model.mode {
            return Ok(mode);
        }
        if let Some(known) = self.settled(name) {
            return known;
        }
        let gate = self.gate(name);
        let _turn = gate.lock().await;
        // Whoever held the gate may have just learnt the answer.
        if let Some(known) = self.settled(name) {
            return known;
        }
        let result = dify.info(model.app_key.expose()).await;
        self.learn(name, model, result, false)
    }

    /// What is known of the model now, if that answers a request without a lookup.
    fn settled(&self, name: &str) -> Option<Result<AppMode, DifyError>> {
        match self.read().get(name)? {
            Known::App { mode, .. } => Some(Ok(*mode)),
            Known::Rejected(error) => Some(Err(error.clone())),
            Known::Failed { error, retry_at } if Instant::now() < *retry_at => {
                Some(Err(error.clone()))
            }
            Known::Failed { .. } => None,
        }
    }

    fn gate(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        lookups.entry(name.to_string()).or_default().clone()
    }

    /// What `/v1/models` shows of the model's app; nothing when it was never described
    /// (configured `mode`, rejected key, Dify unreachable so far).
    pub fn listing(&self, name: &str) -> Listing {
        match self.read().get(name) {
            Some(Known::App { listing, .. }) => listing.clone(),
            _ => Listing::default(),
        }
    }

    /// Keeps what `/info` said. A rejected key is kept only at cold start (where it is
    /// logged); a failure on first use is the request's own error, tried again next time.
    /// A Dify that answers but will not describe the app (a gateway exposing only the chat
    /// route, an unreadable body) is taken to front a chat app, as before `/info` was asked.
    fn learn(
        &self,
        name: &str,
        model: &ModelConfig,
        result: Result<InfoResponse, DifyError>,
        cold_start: bool,
    ) -> Result<AppMode, DifyError> {
        let info = match result {
            Ok(info) => info,
            Err(error) if undescribed(&error) => {
                tracing::warn!(model = %name, error = %error.summary(), "Dify did not describe this model's app; treating it as a chat app (set \"mode\" in MODEL_CONFIG for another kind)");
                self.write().insert(
                    name.to_string(),
                    Known::App {
                        mode: AppMode::Chat,
                        listing: Listing::default(),
                    },
                );
                return Ok(AppMode::Chat);
            }
            Err(error) => {
                let rejected = matches!(&error, DifyError::Http { status: 401, .. });
                if rejected && cold_start {
                    tracing::error!(
                        model = %name,
                        key = %model.app_key.masked(),
                        "Dify rejected this model's app key; requests for it answer dify_app_key_rejected. Put the app's current key in MODEL_CONFIG"
                    );
                    self.write()
                        .insert(name.to_string(), Known::Rejected(error.clone()));
                } else if cold_start {
                    tracing::warn!(model = %name, error = %error.summary(), "could not ask Dify which kind of app this model is; trying again on first use");
                } else if passing(&error) {
                    tracing::warn!(model = %name, error = %error.summary(), backoff_s = RETRY_BACKOFF.as_secs(), "could not ask Dify which kind of app this model is; asking again after the backoff");
                    self.write().insert(
                        name.to_string(),
                        Known::Failed {
                            error: error.clone(),
                            retry_at: Instant::now() + RETRY_BACKOFF,
                        },
                    );
                }
                return Err(error);
            }
        };
        let mode = match info.mode.as_deref().map(|m| (m, AppMode::from_dify(m))) {
            Some((_, Some(mode))) => mode,
            // A mode newer than this proxy: the chat endpoint is the most likely, and
            // Dify answers a clear error if not.
            Some((other, None)) => {
                tracing::warn!(model = %name, mode = other, "Dify reports an app mode this proxy does not know; treating it as a chat app");
                AppMode::Chat
            }
            None => AppMode::Chat,
        };
        tracing::info!(model = %name, mode = mode.label(), "Dify app described");
        let listing = Listing {
            name: info.name.filter(|n| !n.trim().is_empty()),
            description: info.description.filter(|d| !d.trim().is_empty()),
        };
        self.write()
            .insert(name.to_string(), Known::App { mode, listing });
        Ok(mode)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Known>> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Known>> {
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Dify answered, but not with a description: neither a rejected key, nor Dify down,
/// busy or failing (those are the request's error, and asked again).
fn undescribed(error: &DifyError) -> bool {
    match error {
        DifyError::Http { status, .. } => *status != 401 && !passing_status(*status),
        DifyError::Stream(_) => true,
        _ => false,
    }
}

/// A failure that may be gone on the next try (not a definite answer).
fn passing(error: &DifyError) -> bool {
    match error {
        DifyError::Http { status, .. } => passing_status(*status),
        DifyError::Timeout(_) | DifyError::Unreachable(_) => true,
        _ => false,
    }
}

fn passing_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dify_mode_has_its_endpoint() {
        let paths: Vec<_> = AppMode::NAMES
            .iter()
            .map(|m| AppMode::from_dify(m).unwrap().run_path())
            .collect();
        assert_eq!(
            paths,
            [
                "chat-messages",
                "chat-messages",
                "chat-messages",
                "chat-messages",
                "completion-messages",
                "workflows/run"
            ]
        );
        assert_eq!(AppMode::from_dify("rag-pipeline"), None);
    }

    #[test]
    fn only_definite_answers_are_kept() {
        let http = |status| DifyError::Http {
            status,
            code: String::new(),
            message: String::new(),
            retry_after: None,
            endpoint: "/v1/info".into(),
        };
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                passing(&http(status)) && !undescribed(&http(status)),
                "{status}"
            );
        }
        assert!(passing(&DifyError::Timeout(Duration::from_secs(1))));
        assert!(passing(&DifyError::Unreachable("refused".into())));
        for status in [400, 403, 404, 405] {
            assert!(
                undescribed(&http(status)) && !passing(&http(status)),
                "{status}"
            );
        }
        assert!(!undescribed(&http(401)) && !passing(&http(401)));
    }

    #[test]
    fn each_mode_stops_its_own_task() {
        assert_eq!(AppMode::Chat.stop_path("t1"), "chat-messages/t1/stop");
        assert_eq!(
            AppMode::Completion.stop_path("t1"),
            "completion-messages/t1/stop"
        );
        assert_eq!(AppMode::Workflow.stop_path("t1"), "workflows/tasks/t1/stop");
    }
}
