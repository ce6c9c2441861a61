//! Dify request and event types (see shared reference dify-api.md §2, §3, §8).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /chat-messages` body. We always stream upstream: agent apps reject blocking mode
/// and long blocking calls hit gateway timeouts.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessageRequest {
    pub query: String,
    pub inputs: Map<String, Value>,
    pub response_mode: &'static str,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// `false` for throwaway conversations: Dify then spends no model call on a title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_generate_name: Option<bool>,
    /// The new message's files (images, documents, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DifyFile>,
}

/// One entry of `files`: fetched by Dify from a URL, or uploaded before
/// (`POST /files/upload`) by the same `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DifyFile {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub transfer_method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_file_id: Option<String>,
}

impl DifyFile {
    pub fn remote(kind: &'static str, url: String) -> Self {
        Self {
            kind,
            transfer_method: "remote_url",
            url: Some(url),
            upload_file_id: None,
        }
    }

    pub fn uploaded(kind: &'static str, id: String) -> Self {
        Self {
            kind,
            transfer_method: "local_file",
            url: None,
            upload_file_id: Some(id),
        }
    }
}

/// The part of `POST /files/upload`'s 201 answer we read.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadedFile {
    pub id: String,
}

/// `POST /completion-messages` and `POST /workflows/run` body: the user's text is one of
/// the app's input variables; there is no conversation.
#[derive(Debug, Clone, Serialize)]
pub struct RunRequest {
    pub inputs: Map<String, Value>,
    pub response_mode: &'static str,
    pub user: String,
    /// A completion app's files (a workflow's go in its file input variable).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DifyFile>,
}

/// Body of any non-2xx Dify response.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorResponse {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// One decoded stream frame: the event plus the ids any frame may carry.
#[derive(Debug, Clone, PartialEq)]
pub struct DifyEvent {
    pub task_id: Option<String>,
    pub conversation_id: Option<String>,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `event: ping` keep-alive (no data line).
    Ping,
    /// Answer text from chat, chatflow and completion apps (and agent apps' annotation replies).
    Message { answer: String },
    /// The agent answer channel.
    AgentMessage { answer: String },
    /// Workflow `text_chunk`.
    TextChunk { text: String },
    /// `reasoning_chunk`: an LLM node's thinking, sent apart from the answer (chatflow and
    /// workflow LLM nodes with `reasoning_format: separated`).
    ReasoningChunk { text: String },
    /// A tool file; old builds also send text chunks as `message_file` with an `answer`.
    MessageFile {
        kind: Option<String>,
        url: Option<String>,
        answer: Option<String>,
    },
    /// Output moderation: the whole answer so far is replaced.
    MessageReplace { answer: String },
    MessageEnd {
        usage: Option<Usage>,
        /// The knowledge-base documents cited (`retriever_resources`), by name, in order.
        sources: Vec<String>,
    },
    /// An agent's thought about using a tool, re-sent (same `id`) as it fills in.
    AgentThought {
        id: String,
        /// Tool names, `;`-joined.
        tool: String,
        /// JSON text: per tool, its input.
        tool_input: String,
        observation: String,
    },
    WorkflowFinished {
        status: Option<String>,
        error: Option<String>,
        /// The End node's variables: a workflow app's result.
        outputs: Option<Value>,
        /// The only usage a workflow run reports.
        total_tokens: Option<u64>,
    },
    /// `human_input_required` or `workflow_paused`: the run waits for a person (a Human
    /// Input node), which no OpenAI client can answer.
    Paused { name: String },
    Error {
        code: String,
        status: Option<u16>,
        message: String,
    },
    /// Any other event (thoughts, node and workflow progress, tts, future events): no output.
    Other { name: String },
}

/// Why a data frame could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dify sent an unreadable event: {0}")]
pub struct EventParseError(pub String);

/// The fields we read from a data frame. Everything is optional so that unknown and
/// future events pass; only the fields of events we act on are checked.
#[derive(Deserialize)]
struct Wire {
    event: String,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Option<WireData>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<Usage>,
    /// Any shape: citations must never make an answer unreadable.
    #[serde(default)]
    retriever_resources: Option<Value>,
}

/// The fields of an `agent_thought` frame we read (read apart from [`Wire`], so that a
/// thought of an unexpected shape is skipped rather than failing the answer).
#[derive(Deserialize)]
struct ThoughtWire {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    tool_input: Option<String>,
    #[serde(default)]
    observation: Option<String>,
}

#[derive(Deserialize)]
struct WireData {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    outputs: Option<Value>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// Only the name, for frames whose other fields did not fit [`Wire`].
#[derive(Deserialize)]
struct NameOnly {
    event: String,
}

const ACTED_ON: &[&str] = &[
    "message",
    "agent_message",
    "text_chunk",
    "message_file",
    "message_replace",
    "message_end",
    "workflow_finished",
    "error",
];

/// Events that pause a run for a person's input.
const PAUSES: &[&str] = &["human_input_required", "workflow_paused"];

impl DifyEvent {
    /// Parses the JSON of one `data:` line.
    pub fn parse(data: &str) -> Result<Self, EventParseError> {
        let wire: Wire = match serde_json::from_str(data) {
            Ok(w) => w,
            Err(full) => {
                // An event we ignore anyway may carry fields of other types (new Dify
                // versions): let it pass instead of failing the answer.
                return match serde_json::from_str::<NameOnly>(data) {
                    Ok(n) if PAUSES.contains(&n.event.as_str()) => Ok(DifyEvent {
                        task_id: None,
                        conversation_id: None,
                        event: Event::Paused { name: n.event },
                    }),
                    Ok(n) if !ACTED_ON.contains(&n.event.as_str()) => Ok(DifyEvent {
                        task_id: None,
                        conversation_id: None,
                        event: Event::Other { name: n.event },
                    }),
                    Ok(n) => Err(EventParseError(format!("`{}` event: {full}", n.event))),
                    Err(_) => Err(EventParseError(full.to_string())),
                };
            }
        };
        let missing =
            |field: &str| EventParseError(format!("`{}` event without `{field}`", wire.event));
        let event = match wire.event.as_str() {
            "message" => Event::Message {
                answer: wire.answer.ok_or_else(|| missing("answer"))?,
            },
            "agent_message" => Event::AgentMessage {
                answer: wire.answer.ok_or_else(|| missing("answer"))?,
            },
            "text_chunk" => Event::TextChunk {
                text: wire.data.and_then(|d| d.text).unwrap_or_default(),
            },
            "reasoning_chunk" => Event::ReasoningChunk {
                text: wire.data.and_then(|d| d.reasoning).unwrap_or_default(),
            },
            "message_file" => Event::MessageFile {
                kind: wire.kind,
                url: wire.url,
                answer: wire.answer,
            },
            "message_replace" => Event::MessageReplace {
                answer: wire.answer.ok_or_else(|| missing("answer"))?,
            },
            "message_end" => {
                let (usage, resources) = wire
                    .metadata
                    .map_or((None, None), |m| (m.usage, m.retriever_resources));
                Event::MessageEnd {
                    usage,
                    sources: source_names(resources),
                }
            }
            "agent_thought" => match serde_json::from_str::<ThoughtWire>(data) {
                Ok(t) => Event::AgentThought {
                    id: t.id.unwrap_or_default(),
                    tool: t.tool.unwrap_or_default(),
                    tool_input: t.tool_input.unwrap_or_default(),
                    observation: t.observation.unwrap_or_default(),
                },
                Err(_) => Event::Other { name: wire.event },
            },
            "workflow_finished" => match wire.data {
                Some(d) => Event::WorkflowFinished {
                    status: d.status,
                    error: d.error,
                    outputs: d.outputs,
                    total_tokens: d.total_tokens,
                },
                None => Event::WorkflowFinished {
                    status: None,
                    error: None,
                    outputs: None,
                    total_tokens: None,
                },
            },
            name if PAUSES.contains(&name) => Event::Paused {
                name: name.to_string(),
            },
            "error" => Event::Error {
                code: wire
                    .code
                    .unwrap_or_else(|| "internal_server_error".to_string()),
                status: wire.status,
                message: wire.message.unwrap_or_default(),
            },
            _ => Event::Other { name: wire.event },
        };
        Ok(DifyEvent {
            task_id: wire.task_id,
            conversation_id: wire.conversation_id,
            event,
        })
    }
}

/// The cited documents' names (`document_name`, else `title`), in Dify's order.
fn source_names(resources: Option<Value>) -> Vec<String> {
    let Some(Value::Array(items)) = resources else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            ["document_name", "title"]
                .iter()
                .filter_map(|field| item.get(*field).and_then(Value::as_str))
                .map(str::trim)
                .find(|name| !name.is_empty())
                .map(str::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_message_with_ids() {
        let e = DifyEvent::parse(
            r#"{"event":"message","conversation_id":"c","message_id":"m","created_at":1,"task_id":"t","id":"m","answer":"Hi","from_variable_selector":null}"#,
        )
        .unwrap();
        assert_eq!(e.task_id.as_deref(), Some("t"));
        assert_eq!(e.conversation_id.as_deref(), Some("c"));
        assert_eq!(
            e.event,
            Event::Message {
                answer: "Hi".into()
            }
        );
    }

    #[test]
    fn error_event_has_no_task_id() {
        let e = DifyEvent::parse(
            r#"{"event":"error","code":"invalid_param","status":400,"message":"Run failed"}"#,
        )
        .unwrap();
        assert_eq!(e.task_id, None);
        assert_eq!(
            e.event,
            Event::Error {
                code: "invalid_param".into(),
                status: Some(400),
                message: "Run failed".into()
            }
        );
    }

    #[test]
    fn unknown_event_with_odd_fields_is_ignored_not_fatal() {
        let e = DifyEvent::parse(
            r#"{"event":"human_input_form_x","status":"paused","message":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(
            e.event,
            Event::Other {
                name: "human_input_form_x".into()
            }
        );
    }

    #[test]
    fn known_event_with_wrong_types_is_an_error() {
        assert!(DifyEvent::parse(r#"{"event":"message","answer":5}"#).is_err());
        assert!(DifyEvent::parse(r#"{"event":"message"}"#).is_err());
        assert!(DifyEvent::parse("not json").is_err());
        assert!(DifyEvent::parse(r#"{"no_event":1}"#).is_err());
    }

    #[test]
    fn message_end_usage_ignores_price_strings() {
        let e = DifyEvent::parse(
            r#"{"event":"message_end","task_id":"t","metadata":{"usage":{"prompt_tokens":3,"prompt_price":"0.1","completion_tokens":4,"total_tokens":7,"latency":0.5,"time_to_first_token":null}},"files":null}"#,
        )
        .unwrap();
        assert_eq!(
            e.event,
            Event::MessageEnd {
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    total_tokens: 7
                }),
                sources: vec![]
            }
        );
    }

    #[test]
    fn message_end_names_its_cited_documents_whatever_their_shape() {
        let e = DifyEvent::parse(
            r#"{"event":"message_end","task_id":"t","metadata":{"retriever_resources":[{"position":1,"document_name":"france.md","score":0.8},{"document_name":null,"title":"Guide"},{"document_name":""},"odd",{"document_name":"france.md"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            e.event,
            Event::MessageEnd {
                usage: None,
                sources: vec!["france.md".into(), "Guide".into(), "france.md".into()]
            }
        );
        let e = DifyEvent::parse(
            r#"{"event":"message_end","task_id":"t","metadata":{"retriever_resources":{"not":"a list"}}}"#,
        )
        .unwrap();
        assert_eq!(
            e.event,
            Event::MessageEnd {
                usage: None,
                sources: vec![]
            }
        );
    }

    #[test]
    fn agent_thought_is_read_and_an_odd_one_skipped() {
        let e = DifyEvent::parse(
            r#"{"event":"agent_thought","task_id":"t","id":"a","position":1,"thought":"","observation":"","tool":"current_time","tool_labels":{"current_time":{"en_US":"Current Time"}},"tool_input":"{\"current_time\": {}}","message_files":[]}"#,
        )
        .unwrap();
        assert_eq!(
            e.event,
            Event::AgentThought {
                id: "a".into(),
                tool: "current_time".into(),
                tool_input: r#"{"current_time": {}}"#.into(),
                observation: String::new(),
            }
        );
        let e = DifyEvent::parse(r#"{"event":"agent_thought","id":"a","tool":["x"]}"#).unwrap();
        assert_eq!(
            e.event,
            Event::Other {
                name: "agent_thought".into()
            }
        );
    }
}
