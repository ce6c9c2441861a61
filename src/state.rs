//! Shared state built once at cold start and borrowed by every request.

use std::sync::Arc;

use crate::apps::{Apps, ColdStart};
use crate::config::Config;
use crate::dify::DifyClient;
use crate::dify::client::StreamLimits;
use crate::dify::parameters::ParametersCache;
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
    /// Each app's `/parameters` (input form, file upload), fetched when first needed.
    parameters: ParametersCache,
    /// Bytes of request bodies being parsed at once (`PARSE_BUDGET_BYTES`; see
    /// `routes::extract::reserve`).
    parse_budget: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn ConversationStore>) -> Result<Self, reqwest::Error> {
        let limits = StreamLimits {
            idle: config.stream_idle_timeout,
            total: config.max_stream_duration,
            max_bytes: config.max_upstream_bytes,
        };
        let dify = DifyClient::new(config.dify_api_base.clone(), config.dify_timeout, limits)?;
        let parse_budget = Arc::new(tokio::sync::Semaphore::new(config.parse_budget_bytes));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                dify,
                store,
                apps: Apps::new(),
                started_at: crate::unix_now(),
                parameters: ParametersCache::default(),
                parse_budget,
            }),
        })
    }

    pub fn store(&self) -> Arc<dyn ConversationStore> {
        self.inner.store.clone()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// See [`crate::routes::extract::reserve`].
    pub fn parse_budget(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.parse_budget
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

    pub fn parameters(&self) -> &ParametersCache {
        &self.inner.parameters
    }

    pub fn started_at(&self) -> i64 {
        self.inner.started_at
    }
}
