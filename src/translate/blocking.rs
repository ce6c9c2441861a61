//! Dify events → one `chat.completion` object, for clients that did not ask to stream.

use url::Url;

use super::answer::{AnswerTracker, Step};
use super::stream::{ChunkMeta, Flow, to_openai_usage};
use crate::dify::types::Usage as DifyUsage;
use crate::dify::{DifyError, DifyEvent};
use crate::openai::{ChatCompletion, Choice, FinishReason, ResponseMessage};

pub struct Aggregator {
    tracker: AnswerTracker,
    usage: Option<DifyUsage>,
    ended: bool,
    replaced: bool,
    failure: Option<DifyError>,
}

impl Aggregator {
    pub fn new(file_base: Url) -> Self {
        Self {
            tracker: AnswerTracker::new(file_base),
            usage: None,
            ended: false,
            replaced: false,
            failure: None,
        }
    }

    pub fn task_id(&self) -> Option<&str> {
        self.tracker.task_id()
    }

    pub fn conversation_id(&self) -> Option<&str> {
        self.tracker.conversation_id()
    }

    /// One item of Dify's decoded stream: an event, or the error that broke the stream.
    pub fn on_item(&mut self, item: Result<DifyEvent, DifyError>) -> Flow {
        match item {
            Ok(event) => self.on_event(event),
            Err(error) => {
                self.fail(error);
                Flow::Stop
            }
        }
    }

    pub fn on_event(&mut self, event: DifyEvent) -> Flow {
        if self.failure.is_some() {
            return Flow::Stop;
        }
        match self.tracker.apply_frame(event) {
            Step::Nothing | Step::KeepAlive | Step::Append(_) => {}
            Step::Replace(_) => self.replaced = true,
            Step::End(usage) => {
                self.ended = true;
                if usage.is_some() {
                    self.usage = usage;
                }
            }
            Step::Fail(error) => {
                self.failure = Some(error);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// The stream broke before its end.
    pub fn fail(&mut self, error: DifyError) {
        self.failure.get_or_insert(error);
    }

    /// End of Dify's stream: the completion, or why there is none.
    pub fn finish(self, meta: &ChunkMeta) -> Result<ChatCompletion, DifyError> {
        if let Some(error) = self.failure {
            return Err(error);
        }
        if !self.ended {
            return Err(self.tracker.incomplete());
        }
        Ok(ChatCompletion {
            id: meta.id.clone(),
            object: "chat.completion".to_string(),
            created: meta.created,
            model: meta.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: ResponseMessage {
                    role: "assistant".to_string(),
                    content: self.tracker.answer().to_string(),
                    refusal: None,
                },
                logprobs: None,
                finish_reason: if self.replaced {
                    FinishReason::ContentFilter
                } else {
                    FinishReason::Stop
                },
            }],
            usage: to_openai_usage(self.usage),
        })
    }
}
