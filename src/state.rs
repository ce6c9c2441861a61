//! Shared state built once at cold start and borrowed by every request.

use std::sync::Arc;

use crate::apps::{Apps, ColdStart};
use crate::config::Config;
use crate::dify::DifyClient;
use crate::dify::client::StreamLimits;
use crate::store::ConversationStore;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    dify: DifyClient,
    store: Arc<dyn ConversationStore>,
    apps: Apps,
    /// Reported as every model's `created`: the time this instance loaded its config.
    started_at: i64,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn ConversationStore>) -> Result<Self, reqwest::Error> {
        let limits = StreamLimits {
            idle: config.stream_idle_timeout,
            total: config.max_stream_duration,
            max_bytes: config.max_upstream_bytes,
        };
        let dify = DifyClient::new(config.dify_api_base.clone(), config.dify_timeout, limits)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                dify,
                store,
                apps: Apps::new(),
                started_at: crate::unix_now(),
            }),
        })
    }

    pub fn store(&self) -> Arc<dyn ConversationStore> {
        self.inner.store.clone()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn dify(&self) -> &DifyClient {
        &self.inner.dify
    }

    /// Each model's kind of Dify app and its name, as far as known.
    pub fn apps(&self) -> &Apps {
        &self.inner.apps
    }

    /// Asks Dify about every model's app at once, within the cold-start budget (see
    /// [`crate::apps`]); logs what it found and how long it took.
    pub async fn resolve_apps(&self) -> ColdStart {
        let report = self
            .inner
            .apps
            .resolve_at_cold_start(&self.inner.dify, &self.inner.config.models)
            .await;
        tracing::info!(
            resolved = report.resolved,
            rejected = report.rejected,
            unresolved = report.unresolved,
            ms = report.elapsed.as_millis() as u64,
            "Dify apps described"
        );
        report
    }

    pub fn started_at(&self) -> i64 {
        self.inner.started_at
    }
}
