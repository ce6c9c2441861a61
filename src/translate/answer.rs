//! What each Dify event means for the answer text, shared by the streaming and the
//! aggregating translators so both treat every event the same way.

use url::Url;

use crate::dify::types::Usage;
use crate::dify::{DifyError, DifyEvent, Event};

/// The effect of one event on the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing for the client (progress, thoughts, audio, empty chunks, duplicates).
    Nothing,
    /// Dify kept the connection alive.
    KeepAlive,
    /// Text to append.
    Append(String),
    /// Output moderation replaced the whole answer with this text.
    Replace(String),
    /// The answer is complete (`message_end`), with Dify's token counts.
    End(Option<Usage>),
    /// Dify reported a failure; nothing more will come.
    Fail(DifyError),
}

/// Tracks the answer so far, to recognise duplicates and resolve file links.
#[derive(Debug)]
pub struct AnswerTracker {
    answer: String,
    agent_text_seen: bool,
    workflow_failure: Option<String>,
    file_base: Url,
    task_id: Option<String>,
    conversation_id: Option<String>,
}

impl AnswerTracker {
    /// `file_base` resolves the relative file URLs Dify sends (`/files/tools/...`).
    pub fn new(file_base: Url) -> Self {
        Self {
            answer: String::new(),
            agent_text_seen: false,
            workflow_failure: None,
            file_base,
            task_id: None,
            conversation_id: None,
        }
    }

    pub fn answer(&self) -> &str {
        &self.answer
    }

    /// Dify's task id, from the first frame that carries one (needed to stop the task).
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// The conversation id, from the first frame that carries a non-empty one.
    pub fn conversation_id(&self) -> Option<&str> {
        self.conversation_id.as_deref()
    }

    /// Records the frame's ids, then applies its event.
    pub fn apply_frame(&mut self, frame: DifyEvent) -> Step {
        if self.task_id.is_none() {
            self.task_id = frame.task_id;
        }
        if self.conversation_id.is_none() {
            self.conversation_id = frame.conversation_id.filter(|c| !c.is_empty());
        }
        self.apply(frame.event)
    }

    pub fn apply(&mut self, event: Event) -> Step {
        match event {
            Event::Ping => Step::KeepAlive,
            Event::AgentMessage { answer } => {
                if answer.is_empty() {
                    return Step::Nothing;
                }
                self.agent_text_seen = true;
                self.append(answer)
            }
            Event::Message { answer } => {
                // Some agent apps close with one `message` repeating the whole answer they
                // already streamed as `agent_message`: drop it rather than say it twice.
                if answer.is_empty() || (self.agent_text_seen && answer == self.answer) {
                    return Step::Nothing;
                }
                self.append(answer)
            }
            Event::TextChunk { text } => {
                if text.is_empty() {
                    return Step::Nothing;
                }
                self.append(text)
            }
            Event::MessageFile { kind, url, answer } => match (url, answer) {
                (Some(url), _) if !url.is_empty() => {
                    let link = match self.file_base.join(&url) {
                        Ok(u) => u.to_string(),
                        Err(_) => url,
                    };
                    let text = if kind.as_deref() == Some("image") {
                        format!("\n\n![image]({link})\n\n")
                    } else {
                        format!("\n\n[file]({link})\n\n")
                    };
                    self.append(text)
                }
                // Old builds sent plain text chunks as `message_file` with an answer.
                (_, Some(answer)) if !answer.is_empty() => self.append(answer),
                _ => Step::Nothing,
            },
            Event::MessageReplace { answer } => {
                self.answer = answer.clone();
                Step::Replace(answer)
            }
            Event::MessageEnd { usage } => Step::End(usage),
            // Chatflows also send `message_end`; for workflow runs this is the only end.
            Event::WorkflowFinished { status, error } => match status.as_deref() {
                Some("failed") => {
                    self.workflow_failure =
                        Some(error.unwrap_or_else(|| "the workflow failed".to_string()));
                    Step::Nothing
                }
                Some("succeeded" | "partial-succeeded" | "stopped") => Step::End(None),
                _ => Step::Nothing,
            },
            Event::Error {
                code,
                status,
                message,
            } => Step::Fail(DifyError::Event {
                code,
                status,
                message,
            }),
            Event::Other { .. } => Step::Nothing,
        }
    }

    /// The failure to report when the stream ends without `message_end`.
    pub fn incomplete(&self) -> DifyError {
        match &self.workflow_failure {
            Some(error) => DifyError::Event {
                code: "workflow_failed".to_string(),
                status: None,
                message: error.clone(),
            },
            None => {
                DifyError::Stream("Dify's stream ended before the answer was complete".to_string())
            }
        }
    }

    fn append(&mut self, text: String) -> Step {
        self.answer.push_str(&text);
        Step::Append(text)
    }
}
