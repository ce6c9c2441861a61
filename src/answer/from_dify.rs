//! Dify's decoded stream → [`Piece`]s. Every app type's events (chat, agent, chatflow,
//! completion, workflow) meet here, so both OpenAI encoders treat each event the same way.

use sha2::{Digest, Sha256};
use url::Url;

use super::{FileKind, Flow, Piece, Usage};
use crate::answer::Failure;
use crate::dify::{DifyError, DifyEvent, Event};
use crate::error::dify::from_dify;

/// Reads one answer's Dify events, in order.
#[derive(Debug)]
pub struct DifyDecoder {
    /// Named in failure messages.
    model: String,
    /// Resolves the relative file URLs Dify sends (`/files/tools/...`).
    file_base: Url,
    task_id: Option<String>,
    conversation_id: Option<String>,
    /// Length and digest of the text that came as `agent_message`, to recognise an
    /// agent's closing repeat of it without holding a second copy of the answer.
    agent_text: Option<(usize, Sha256)>,
    /// A `message` event carried text: a chat-family app, whose end is `message_end`.
    saw_message: bool,
    /// A chatflow's `workflow_finished` came before its `message_end` (older builds).
    complete: bool,
    workflow_failure: Option<String>,
    /// An `End` or `Failed` piece went out: nothing more may.
    over: bool,
}

impl DifyDecoder {
    pub fn new(model: &str, file_base: Url) -> Self {
        Self {
            model: model.to_string(),
            file_base,
            task_id: None,
            conversation_id: None,
            agent_text: None,
            saw_message: false,
            complete: false,
            workflow_failure: None,
            over: false,
        }
    }

    /// Dify's task id, from the first frame that carries one (needed to stop the task).
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// The conversation id, from the first frame that carries a non-empty one.
    pub fn conversation_id(&self) -> Option<&str> {
        self.conversation_id.as_deref()
    }

    /// One item of Dify's decoded stream: an event, or the error that broke the stream.
    pub fn on_item(&mut self, item: Result<DifyEvent, DifyError>, out: &mut Vec<Piece>) -> Flow {
        match item {
            Ok(event) => self.on_event(event, out),
            Err(error) => {
                self.fail(&error, out);
                Flow::Stop
            }
        }
    }

    /// Records the frame's ids, then decodes its event.
    pub fn on_event(&mut self, frame: DifyEvent, out: &mut Vec<Piece>) -> Flow {
        if self.over {
            return Flow::Stop;
        }
        if self.task_id.is_none() {
            self.task_id = frame.task_id;
        }
        if self.conversation_id.is_none() {
            self.conversation_id = frame.conversation_id.filter(|c| !c.is_empty());
        }
        match frame.event {
            Event::Ping => out.push(Piece::KeepAlive),
            Event::AgentMessage { answer } if !answer.is_empty() => {
                let (len, digest) = self.agent_text.get_or_insert_default();
                *len += answer.len();
                digest.update(answer.as_bytes());
                out.push(Piece::Text(answer));
            }
            Event::Message { answer } => {
                // Some agent apps close with one `message` repeating the whole answer they
                // already streamed as `agent_message`: drop it rather than say it twice.
                if !answer.is_empty() && !self.repeats_agent_text(&answer) {
                    self.saw_message = true;
                    out.push(Piece::Text(answer));
                }
            }
            Event::TextChunk { text } if !text.is_empty() => out.push(Piece::Text(text)),
            Event::ReasoningChunk { text } if !text.is_empty() => out.push(Piece::Reasoning(text)),
            Event::MessageFile { kind, url, answer } => match (url, answer) {
                (Some(url), _) if !url.is_empty() => {
                    let url = match self.file_base.join(&url) {
                        Ok(u) => u.to_string(),
                        Err(_) => url,
                    };
                    let kind = match kind.as_deref() {
                        Some("image") => FileKind::Image,
                        _ => FileKind::Other,
                    };
                    out.push(Piece::File { kind, url });
                }
                // Dify 1.12.x sends a message's text chunks as `message_file` events with
                // an `answer` (and no `url`) once the message has a file, a user's upload
                // included: they are the answer, as a `message` would be.
                (_, Some(answer)) if !answer.is_empty() && !self.repeats_agent_text(&answer) => {
                    self.saw_message = true;
                    out.push(Piece::Text(answer));
                }
                _ => {}
            },
            Event::MessageReplace { answer } => out.push(Piece::Replace(answer)),
            // The answer is complete: it ends now, whatever trails it (`tts_message_end`,
            // a chatflow's `workflow_finished`) or however long Dify keeps the connection.
            Event::MessageEnd { usage } => {
                if let Some(u) = usage {
                    out.push(Piece::Usage(Usage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                        total_tokens: u.total_tokens,
                    }));
                }
                return self.end(out);
            }
            Event::WorkflowFinished { status, error } => match status.as_deref() {
                Some("failed") => {
                    self.workflow_failure =
                        Some(error.unwrap_or_else(|| "the workflow failed".to_string()));
                }
                // A workflow run's only end. A chatflow (it streamed `message`s) ends at its
                // `message_end`, which older builds send after this event, with the usage.
                Some("succeeded" | "partial-succeeded" | "stopped") if !self.saw_message => {
                    return self.end(out);
                }
                Some("succeeded" | "partial-succeeded" | "stopped") => self.complete = true,
                _ => {}
            },
            Event::Error {
                code,
                status,
                message,
            } => {
                let error = DifyError::Event {
                    code,
                    status,
                    message,
                };
                self.fail_with(&error, true, out);
                return Flow::Stop;
            }
            // Progress, thoughts, audio, empty chunks: nothing for the client.
            Event::AgentMessage { .. }
            | Event::TextChunk { .. }
            | Event::ReasoningChunk { .. }
            | Event::Other { .. } => {}
        }
        Flow::Continue
    }

    /// Dify's stream is over: if the answer did not end yet, it fails (or, for a chatflow
    /// that finished without `message_end`, ends).
    pub fn on_end(&mut self, out: &mut Vec<Piece>) {
        if self.over {
            return;
        }
        if self.complete {
            self.end(out);
            return;
        }
        match &self.workflow_failure {
            Some(error) => {
                let error = DifyError::Event {
                    code: "workflow_failed".to_string(),
                    status: None,
                    message: error.clone(),
                };
                self.fail_with(&error, true, out);
            }
            None => {
                let error = DifyError::Stream(
                    "Dify's stream ended before the answer was complete".to_string(),
                );
                self.fail(&error, out);
            }
        }
    }

    fn end(&mut self, out: &mut Vec<Piece>) -> Flow {
        self.over = true;
        out.push(Piece::End);
        Flow::Stop
    }

    fn repeats_agent_text(&self, text: &str) -> bool {
        self.agent_text.as_ref().is_some_and(|(len, digest)| {
            *len == text.len() && digest.clone().finalize() == Sha256::digest(text.as_bytes())
        })
    }

    /// The stream broke mid-answer (transport, an unreadable frame, a limit): one failure
    /// piece, then nothing more.
    pub fn fail(&mut self, error: &DifyError, out: &mut Vec<Piece>) {
        self.fail_with(error, false, out);
    }

    fn fail_with(&mut self, error: &DifyError, dify_ended: bool, out: &mut Vec<Piece>) {
        if self.over {
            return;
        }
        self.over = true;
        out.push(Piece::Failed(Failure {
            // The run had started: a retry would replay it.
            error: from_dify(&self.model, error, true),
            cause: error.summary(),
            dify_ended,
        }));
    }
}
