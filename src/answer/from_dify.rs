//! Dify's decoded stream → [`Piece`]s. Every app type's events (chat, agent, chatflow,
//! completion, workflow) meet here, so both OpenAI encoders treat each event the same way.

use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use super::think::ThinkSplitter;
use super::thoughts::{AgentThoughts, ThoughtUpdate};
use super::{AnswerOptions, Citations, FileKind, Flow, Piece, ReasoningMode, Usage};
use crate::answer::Failure;
use crate::apps::AppMode;
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
    /// The app's kind: a workflow app's run ends (and fails) at `workflow_finished`.
    mode: AppMode,
    /// Workflow apps: the output variable that answers when no text streamed.
    output_variable: Option<String>,
    /// Some answer content went out (text, a file, a replacement).
    content_seen: bool,
    /// Splits inline thinking off the answer text (`REASONING_MODE=separate`).
    think: Option<ThinkSplitter>,
    /// An agent's tool use, told as reasoning.
    thoughts: AgentThoughts,
    citations: Citations,
    /// The documents `message_end` cited, listed after the answer if asked for.
    sources: Vec<String>,
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
            mode: AppMode::Chat,
            output_variable: None,
            content_seen: false,
            think: Some(ThinkSplitter::new()),
            thoughts: AgentThoughts::default(),
            citations: Citations::Off,
            sources: Vec::new(),
        }
    }

    /// For an app of `mode` (chat, the default, reads every event the same way); a
    /// workflow's answer falls back to its outputs, `output_variable` first.
    pub fn for_app(mut self, mode: AppMode, output_variable: Option<&str>) -> Self {
        self.mode = mode;
        self.output_variable = output_variable.map(str::to_string);
        self
    }

    /// The deployment's choices about reasoning and citations.
    pub fn with_options(mut self, options: AnswerOptions) -> Self {
        self.think = match options.reasoning {
            ReasoningMode::Separate => Some(ThinkSplitter::new()),
            ReasoningMode::Inline => None,
        };
        self.citations = options.citations;
        self
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
        let before = out.len();
        let flow = self.decode(frame.event, out);
        self.content_seen |= out[before..]
            .iter()
            .any(|p| matches!(p, Piece::Text(_) | Piece::File { .. } | Piece::Replace(_)));
        flow
    }

    fn decode(&mut self, event: Event, out: &mut Vec<Piece>) -> Flow {
        match event {
            Event::Ping => out.push(Piece::KeepAlive),
            Event::AgentMessage { answer } if !answer.is_empty() => {
                let (len, digest) = self.agent_text.get_or_insert_default();
                *len += answer.len();
                digest.update(answer.as_bytes());
                self.text(answer, out);
            }
            Event::Message { answer } => {
                // Some agent apps close with one `message` repeating the whole answer they
                // already streamed as `agent_message`: drop it rather than say it twice.
                if !answer.is_empty() && !self.repeats_agent_text(&answer) {
                    self.saw_message = true;
                    self.text(answer, out);
                }
            }
            Event::TextChunk { text } if !text.is_empty() => self.text(text, out),
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
                    self.text(answer, out);
                }
                _ => {}
            },
            Event::MessageReplace { answer } => {
                // Text held back as a possible tag belongs to what is replaced: it goes
                // out first (nothing is lost), and the replacement is taken as it is.
                if let Some(mut think) = self.think.take() {
                    think.finish(out);
                }
                out.push(Piece::Replace(answer));
            }
            Event::AgentThought {
                id,
                tool,
                tool_input,
                observation,
            } => {
                let update = ThoughtUpdate {
                    id,
                    tool,
                    tool_input,
                    observation,
                };
                if let Some(text) = self.thoughts.update(update) {
                    out.push(Piece::Reasoning(text));
                }
            }
            // The answer is complete: it ends now, whatever trails it (`tts_message_end`,
            // a chatflow's `workflow_finished`) or however long Dify keeps the connection.
            Event::MessageEnd { usage, sources } => {
                self.sources = sources;
                self.finish_text(out);
                if let Some(u) = usage {
                    out.push(Piece::Usage(Usage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                        total_tokens: u.total_tokens,
                    }));
                }
                return self.end(out);
            }
            Event::WorkflowFinished {
                status,
                error,
                outputs,
                total_tokens,
            } if self.mode == AppMode::Workflow => {
                return self.finish_workflow(status.as_deref(), error, outputs, total_tokens, out);
            }
            Event::Paused { .. } => {
                // The run would wait for a person forever: end it with a reason (and
                // stop the paused task) rather than hang until the idle limit.
                let error = DifyError::Event {
                    code: "human_input_required".to_string(),
                    status: None,
                    message: String::new(),
                };
                self.fail_with(&error, false, out);
                return Flow::Stop;
            }
            Event::WorkflowFinished { status, error, .. } => match status.as_deref() {
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
            // Progress, audio, empty chunks: nothing for the client.
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

    /// A workflow app's run is over: its answer is the streamed text, else its outputs.
    fn finish_workflow(
        &mut self,
        status: Option<&str>,
        error: Option<String>,
        outputs: Option<Value>,
        total_tokens: Option<u64>,
        out: &mut Vec<Piece>,
    ) -> Flow {
        let failure = |code: &str, message: String| DifyError::Event {
            code: code.to_string(),
            status: None,
            message,
        };
        match status {
            // A workflow's failure comes only as this status (no `error` event follows).
            Some("failed") => {
                let message = error.unwrap_or_else(|| "the workflow failed".to_string());
                self.fail_with(&failure("workflow_failed", message), true, out);
                return Flow::Stop;
            }
            Some("stopped") => {
                self.fail_with(
                    &failure("workflow_stopped", error.unwrap_or_default()),
                    true,
                    out,
                );
                return Flow::Stop;
            }
            Some("partial-succeeded") => tracing::warn!(
                model = %self.model,
                "the workflow partially succeeded: some of its nodes failed and their error handling ran"
            ),
            _ => {}
        }
        // Text the thinking splitter still holds is content too.
        let before = out.len();
        self.finish_text(out);
        self.content_seen |= out[before..].iter().any(|p| matches!(p, Piece::Text(_)));
        if !self.content_seen {
            match outputs_text(outputs.as_ref(), self.output_variable.as_deref()) {
                Ok(text) => out.push(Piece::Text(text)),
                Err(why) => {
                    self.fail_with(&failure("workflow_no_output", why), true, out);
                    return Flow::Stop;
                }
            }
        }
        if let Some(total_tokens) = total_tokens {
            // Dify counts a run's tokens only as a total.
            out.push(Piece::Usage(Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens,
            }));
        }
        self.end(out)
    }

    fn end(&mut self, out: &mut Vec<Piece>) -> Flow {
        self.finish_text(out);
        self.over = true;
        out.push(Piece::End);
        Flow::Stop
    }

    /// Answer text, through the thinking splitter unless thinking stays inline.
    fn text(&mut self, text: String, out: &mut Vec<Piece>) {
        match &mut self.think {
            Some(think) => think.push(text, out),
            None => out.push(Piece::Text(text)),
        }
    }

    /// The answer's text is complete: what the splitter and the agent's thoughts still
    /// hold goes out, then the cited sources, if listed. Once.
    fn finish_text(&mut self, out: &mut Vec<Piece>) {
        if let Some(mut think) = self.think.take() {
            think.finish(out);
        }
        if let Some(text) = self.thoughts.flush() {
            out.push(Piece::Reasoning(text));
        }
        let sources = std::mem::take(&mut self.sources);
        if self.citations == Citations::Sources
            && let Some(list) = sources_list(sources)
        {
            out.push(Piece::Text(list));
        }
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
        // What was held back as a possible tag still goes out before the error.
        if let Some(mut think) = self.think.take() {
            think.finish(out);
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

/// A workflow's answer from its End node's `outputs`, when it streamed no text: the
/// configured output variable, else its only string output, else all outputs as JSON
/// text. `Err` says why there is no answer (worded to follow "finished with no answer: ").
pub fn outputs_text(outputs: Option<&Value>, variable: Option<&str>) -> Result<String, String> {
    let object = match outputs {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) if o.is_empty() => None,
        Some(Value::Object(o)) => Some(o),
        Some(other) => return Ok(json_text(other)),
    };
    let Some(object) = object else {
        return Err("its End node has no output variables.".to_string());
    };
    let empty = |name: &str| Err(format!("its output `{name}` is empty."));
    if let Some(name) = variable {
        return match object.get(name) {
            Some(Value::String(s)) if s.is_empty() => empty(name),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Null) => empty(name),
            Some(other) => Ok(json_text(other)),
            None => {
                let names: Vec<&str> = object.keys().map(String::as_str).collect();
                Err(format!(
                    "its outputs have no variable `{name}` (they have: {}); check `output_variable` in MODEL_CONFIG.",
                    names.join(", ")
                ))
            }
        };
    }
    let mut strings = object.iter().filter(|(_, v)| v.is_string());
    match (strings.next(), strings.next()) {
        (Some((name, Value::String(s))), None) if s.is_empty() && object.len() == 1 => empty(name),
        (Some((_, Value::String(s))), None) if !s.is_empty() => Ok(s.clone()),
        _ => Ok(json_text(&Value::Object(object.clone()))),
    }
}

/// Readable JSON (never `[object Object]`); our own values always serialize.
fn json_text(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// `Sources:` and the cited documents' names, numbered, each once, in Dify's order;
/// `None` when there are none.
fn sources_list(names: Vec<String>) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for name in names {
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    if seen.is_empty() {
        return None;
    }
    let mut list = String::from("\n\nSources:");
    for (i, name) in seen.iter().enumerate() {
        list.push_str(&format!("\n{}. {name}", i + 1));
    }
    Some(list)
}
