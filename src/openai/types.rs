//! OpenAI chat-completions wire types: what clients send and what they expect back.
//! Only the fields we read or write are typed; serde ignores the rest, so clients that send
//! newer fields keep working.

use serde::{Deserialize, Serialize, de};
use serde_json::{Map, Value};

use super::bounded;

/// `POST /v1/chat/completions` body. Every field the proxy reads is type-checked here, so
/// a wrong type is a 400 naming the field; the free-form ones (content, `metadata`,
/// `inputs`, the fields only looked at) are parsed within the request's structure
/// allowance ([`super::bounded`]); fields not listed are skipped unbuilt.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    #[serde(deserialize_with = "bounded::list")]
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// A string from the SDKs; an object `{id, name, ...}` from Open WebUI pipelines
    /// (kept as `{"id": ...}`).
    #[serde(default, deserialize_with = "bounded::end_user")]
    pub user: Option<Value>,
    #[serde(default, deserialize_with = "bounded::object")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub n: Option<u32>,
    /// Dify app inputs (variables), sent with `extra_body={"inputs": {...}}`.
    #[serde(default, deserialize_with = "bounded::value")]
    pub inputs: Option<Value>,
    /// What a Dify app cannot honour when forced (`plan::unsupported`); loosely typed, only
    /// looked at.
    #[serde(default, deserialize_with = "bounded::value")]
    pub tool_choice: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub function_call: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub response_format: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub logprobs: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub top_logprobs: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub modalities: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub audio: Option<Value>,
    /// Sampling settings a Dify app takes from its own configuration: not sent on, but
    /// type-checked as OpenAI does, so a client's mistake is not silently ignored.
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Open WebUI sends a ~20 KB array on every turn; only whether it is an array matters.
    #[serde(default)]
    pub tools: Option<Vec<de::IgnoredAny>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    pub role: Role,
    /// String, array of parts, or null (assistant turns with tool calls).
    #[serde(default, deserialize_with = "bounded::content")]
    pub content: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::Developer => "Developer",
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::Tool => "Tool",
            Role::Function => "Function",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    ContentFilter,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// Non-streaming answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    pub logprobs: Option<Value>,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: String,
    pub content: String,
    pub refusal: Option<String>,
    /// The thinking, apart from the answer (the DeepSeek convention Open WebUI and
    /// LibreChat read); omitted when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// One streamed chunk. `usage` is omitted unless the client asked for it; then it is
/// `null` on every chunk but the last, as OpenAI sends it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "UsageField::is_absent")]
    pub usage: UsageField,
}

/// Tri-state so that "absent", `null` and a value serialize differently.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UsageField {
    #[default]
    #[serde(skip)]
    Absent,
    Value(Usage),
    Null(()),
}

impl UsageField {
    pub fn is_absent(&self) -> bool {
        matches!(self, UsageField::Absent)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<FinishReason>,
}

/// Absent keys are omitted, never `null`: JS clients concatenate `delta.content`.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
    /// The Dify app's name and description, when Dify described it (Open WebUI's model
    /// picker shows the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Model {
    pub fn new(id: &str, created: i64) -> Self {
        Self {
            id: id.to_string(),
            object: "model".to_string(),
            created,
            owned_by: "dify".to_string(),
            name: None,
            description: None,
        }
    }
}

/// `{"error": {...}}`, the body of every error response and of an in-stream error event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunk_omits_absent_keys_and_usage() {
        let chunk = ChatCompletionChunk {
            id: "c1".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    content: Some("Hi".into()),
                    ..Delta::default()
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: UsageField::Absent,
        };
        let v = serde_json::to_value(&chunk).unwrap();
        assert_eq!(
            v,
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
                   "choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]})
        );
    }

    #[test]
    fn usage_field_is_null_or_value_when_requested() {
        let mut chunk = ChatCompletionChunk {
            id: "c1".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage: UsageField::Null(()),
        };
        assert_eq!(serde_json::to_value(&chunk).unwrap()["usage"], Value::Null);
        chunk.usage = UsageField::Value(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        });
        assert_eq!(
            serde_json::to_value(&chunk).unwrap()["usage"],
            json!({"prompt_tokens":1,"completion_tokens":2,"total_tokens":3})
        );
    }

    #[test]
    fn request_accepts_unknown_fields_and_null_content() {
        let r: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m", "temperature": 0.2, "tools": [], "min_p": 0.1,
            "messages": [{"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":"x","name":"bob"}],
            "stream": null
        }))
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.stream, None);
        assert!(r.messages[0].content.is_none());
    }

    #[test]
    fn finish_reason_serializes_snake_case() {
        assert_eq!(
            serde_json::to_value(FinishReason::ContentFilter).unwrap(),
            json!("content_filter")
        );
    }
}
