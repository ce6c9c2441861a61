//! Shared state built once at cold start and borrowed by every request.

use std::sync::Arc;

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
    /// Reported as every model's `created`: the time this instance loaded its config.
    started_at: i64,
    /// Each app's `/parameters` (input form, file upload), fetched when first needed.
    parameters: ParametersCache,
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
                started_at: crate::unix_now(),
                parameters: ParametersCache::default(),
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

    pub fn parameters(&self) -> &ParametersCache {
        &self.inner.parameters
    }

    pub fn started_at(&self) -> i64 {
        self.inner.started_at
    }
}
