//! The Dify task behind an answer in progress, stopped if the answer is abandoned.

use super::DifyClient;
use crate::apps::AppMode;

/// The answer's Dify task. An answer that ends early is stopped with [`RunningTask::stop`];
/// dropped while still armed (a blocking request whose client went away, so axum dropped
/// the handler), the stop is spawned: Dify must not go on generating (and billing).
pub struct RunningTask {
    dify: DifyClient,
    app_key: String,
    user: String,
    task_id: Option<String>,
    armed: bool,
    /// Which stop endpoint the task has.
    mode: AppMode,
}

impl RunningTask {
    pub fn new(dify: DifyClient, app_key: String, user: String) -> Self {
        Self {
            dify,
            app_key,
            user,
            task_id: None,
            armed: true,
            mode: AppMode::Chat,
        }
    }

    /// A task of a completion or workflow app (stopped through that app's endpoint).
    pub fn of_mode(mut self, mode: AppMode) -> Self {
        self.mode = mode;
        self
    }

    /// Remembers the task id from the first frame that names it.
    pub fn learn(&mut self, task_id: Option<&str>) {
        if self.task_id.is_none() {
            self.task_id = task_id.map(str::to_string);
        }
    }

    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// Dify finished the run itself: nothing to stop.
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Deletes the conversation the task ran in (a background task's throwaway one).
    pub async fn delete_conversation(&self, conversation: &str) {
        self.dify
            .delete_conversation(&self.app_key, conversation, &self.user)
            .await;
    }

    /// Stops the task now (bounded by the client's stop timeout) and disarms. Awaited, so
    /// that under Lambda the request has left before the invocation ends and the
    /// environment freezes.
    pub async fn stop(&mut self, why: &str) {
        self.armed = false;
        let Some(task_id) = self.task_id.take() else {
            return;
        };
        tracing::info!(task_id, "stopping the Dify task: {why}");
        self.dify
            .stop(self.mode, &self.app_key, &task_id, &self.user)
            .await;
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(task_id) = self.task_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mode = self.mode;
        let (dify, key, user) = (
            self.dify.clone(),
            std::mem::take(&mut self.app_key),
            std::mem::take(&mut self.user),
        );
        tracing::info!(
            task_id,
            "client went away before the answer was complete; stopping the Dify task"
        );
        runtime.spawn(async move { dify.stop(mode, &key, &task_id, &user).await });
    }
}
