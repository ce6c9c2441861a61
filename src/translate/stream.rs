//! Dify events → OpenAI `chat.completion.chunk`s for streaming clients. A state machine
//! with no I/O: feed it events, write what it returns.

use url::Url;

use super::answer::{AnswerTracker, Step};
use crate::dify::types::Usage as DifyUsage;
use crate::dify::{DifyError, DifyEvent};
use crate::error::from_dify;
use crate::openai::{
    ChatCompletionChunk, ChunkChoice, Delta, ErrorBody, FinishReason, Usage, UsageField,
};

/// One thing to send to the client.
#[derive(Debug)]
pub enum Output {
    Chunk(ChatCompletionChunk),
    /// `: ping` comment line: keeps proxies and clients from timing out, ignored by parsers.
    KeepAlive,
    /// `data: {"error": ...}`, after which the stream ends.
    Error(ErrorBody),
    /// `data: [DONE]`.
    Done,
}

impl Output {
    /// Appends the SSE bytes of this output.
    pub fn write_sse(&self, buf: &mut Vec<u8>) {
        match self {
            Output::Chunk(chunk) => write_data(buf, chunk),
            Output::Error(body) => write_data(buf, body),
            Output::KeepAlive => buf.extend_from_slice(b": ping\n\n"),
            Output::Done => buf.extend_from_slice(b"data: [DONE]\n\n"),
        }
    }
}

fn write_data(buf: &mut Vec<u8>, value: &impl serde::Serialize) {
    buf.extend_from_slice(b"data: ");
    // Our own types always serialize; the fallback keeps a clean error on the wire anyway.
    if serde_json::to_writer(&mut *buf, value).is_err() {
        buf.extend_from_slice(br#"{"error":{"message":"internal serialization error","type":"server_error","param":null,"code":null}}"#);
    }
    buf.extend_from_slice(b"\n\n");
}

/// Whether the stream goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Per-response settings shared by every chunk.
#[derive(Debug, Clone)]
pub struct ChunkMeta {
    pub id: String,
    pub created: i64,
    pub model: String,
    pub include_usage: bool,
}

pub struct StreamTranslator {
    meta: ChunkMeta,
    tracker: AnswerTracker,
    usage: Option<DifyUsage>,
    ended: bool,
    replaced: bool,
    emitted_text: bool,
    finished: bool,
    error_code: Option<String>,
    /// Every content delta sent so far: the answer as the client will send it back.
    visible: String,
}

impl StreamTranslator {
    pub fn new(meta: ChunkMeta, file_base: Url) -> Self {
        Self {
            meta,
            tracker: AnswerTracker::new(file_base),
            usage: None,
            ended: false,
            replaced: false,
            emitted_text: false,
            finished: false,
            error_code: None,
            visible: String::new(),
        }
    }

    /// The concatenated content the client received.
    pub fn visible_text(&self) -> &str {
        &self.visible
    }

    /// The client-facing error code the stream ended with, if it failed.
    pub fn error_code(&self) -> Option<&str> {
        self.error_code.as_deref()
    }

    /// Dify's task id, known from the first frame that carries it (needed to stop the task).
    pub fn task_id(&self) -> Option<&str> {
        self.tracker.task_id()
    }

    pub fn conversation_id(&self) -> Option<&str> {
        self.tracker.conversation_id()
    }

    pub fn model(&self) -> &str {
        &self.meta.model
    }

    /// The opening chunk: `role: assistant` with empty content, sent as soon as Dify
    /// accepted the request.
    pub fn start(&self) -> Output {
        Output::Chunk(self.chunk(
            Delta {
                role: Some("assistant".to_string()),
                content: Some(String::new()),
            },
            None,
        ))
    }

    /// One item of Dify's decoded stream: an event, or the error that broke the stream.
    pub fn on_item(&mut self, item: Result<DifyEvent, DifyError>, out: &mut Vec<Output>) -> Flow {
        match item {
            Ok(event) => self.on_event(event, out),
            Err(error) => {
                self.fail(&error, out);
                Flow::Stop
            }
        }
    }

    pub fn on_event(&mut self, event: DifyEvent, out: &mut Vec<Output>) -> Flow {
        if self.finished {
            return Flow::Stop;
        }
        match self.tracker.apply_frame(event) {
            Step::Nothing => {}
            Step::KeepAlive => out.push(Output::KeepAlive),
            Step::Append(text) => {
                self.emitted_text = true;
                out.push(self.content(text));
            }
            Step::Replace(text) => {
                // Streamed deltas cannot be withdrawn: the replacement follows them after a
                // blank line, and the finish reason says a content filter acted.
                self.replaced = true;
                let text = if self.emitted_text {
                    format!("\n\n{text}")
                } else {
                    text
                };
                self.emitted_text = true;
                out.push(self.content(text));
            }
            Step::End(usage) => {
                self.ended = true;
                if usage.is_some() {
                    self.usage = usage;
                }
            }
            Step::Fail(error) => {
                self.fail(&error, out);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// End of Dify's stream: the finish chunk, the usage chunk when asked for, `[DONE]`;
    /// or an error if the answer never completed.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        if self.finished {
            return;
        }
        if !self.ended {
            let error = self.tracker.incomplete();
            self.fail(&error, out);
            return;
        }
        self.finished = true;
        let reason = if self.replaced {
            FinishReason::ContentFilter
        } else {
            FinishReason::Stop
        };
        out.push(Output::Chunk(self.chunk(Delta::default(), Some(reason))));
        if self.meta.include_usage {
            let mut chunk = self.chunk(Delta::default(), None);
            chunk.choices.clear();
            chunk.usage = UsageField::Value(to_openai_usage(self.usage));
            out.push(Output::Chunk(chunk));
        }
        out.push(Output::Done);
    }

    /// The stream failed (Dify error event, broken connection): one error event, then the end.
    pub fn fail(&mut self, error: &DifyError, out: &mut Vec<Output>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let body = from_dify(&self.meta.model, error, true).body;
        self.error_code = body.error.code.clone();
        out.push(Output::Error(body));
    }

    fn content(&mut self, text: String) -> Output {
        self.visible.push_str(&text);
        Output::Chunk(self.chunk(
            Delta {
                role: None,
                content: Some(text),
            },
            None,
        ))
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk".to_string(),
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: if self.meta.include_usage {
                UsageField::Null(())
            } else {
                UsageField::Absent
            },
        }
    }
}

pub fn to_openai_usage(usage: Option<DifyUsage>) -> Usage {
    let u = usage.unwrap_or_default();
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
    }
}
