//! Responses API wire types: the request as clients send it, the response object and the
//! streaming events they parse. Only what we read is typed; serde ignores the rest, so
//! newer fields keep working.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::openai::ErrorObject;
use crate::openai::bounded;

/// `POST /v1/responses` body. `input` and the tool fields stay loosely typed: the planner
/// checks them and names the exact item that is wrong. They are parsed within the
/// request's structure allowance ([`crate::openai::bounded`]).
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    #[serde(default, deserialize_with = "bounded::value")]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
    #[serde(default, deserialize_with = "bounded::object")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "bounded::array")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Dify app inputs (variables), sent with `extra_body={"inputs": {...}}`.
    #[serde(default, deserialize_with = "bounded::value")]
    pub inputs: Option<Value>,
    /// `text.format`, `top_logprobs`, `include`: looked at by `plan::unsupported` only.
    #[serde(default, deserialize_with = "bounded::value")]
    pub text: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub top_logprobs: Option<Value>,
    #[serde(default, deserialize_with = "bounded::value")]
    pub include: Option<Value>,
}

/// The response object: the blocking answer, and the payload of the lifecycle events.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: i64,
    pub status: Status,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub tool_choice: &'static str,
    pub tools: [(); 0],
    pub text: TextConfig,
    pub truncation: &'static str,
    pub usage: Option<ResponseUsage>,
    pub metadata: Map<String, Value>,
}

/// `text`: the output format, always plain text here.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TextConfig {
    pub format: TextFormat,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TextFormat {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

pub const TEXT_FORMAT: TextConfig = TextConfig {
    format: TextFormat { kind: "text" },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// An output item: the answer's message, and before it the model's reasoning when Dify
/// sends it apart.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        id: String,
        status: Status,
        role: &'static str,
        content: Vec<OutputText>,
    },
    Reasoning {
        id: String,
        status: Status,
        summary: Vec<SummaryText>,
    },
}

impl OutputItem {
    pub fn id(&self) -> &str {
        match self {
            OutputItem::Message { id, .. } | OutputItem::Reasoning { id, .. } => id,
        }
    }
}

/// One part of a reasoning item's summary.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
}

impl SummaryText {
    pub fn new(text: String) -> Self {
        Self {
            kind: "summary_text",
            text,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub annotations: [(); 0],
    pub logprobs: [(); 0],
}

impl OutputText {
    pub fn new(text: String) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: [],
            logprobs: [],
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    pub input_tokens_details: CachedTokens,
    pub output_tokens: u64,
    pub output_tokens_details: ReasoningTokens,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CachedTokens {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReasoningTokens {
    pub reasoning_tokens: u64,
}

/// One streaming event's payload; `type` and `sequence_number` are added when written.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EventData<'a> {
    Response {
        response: &'a ResponseObject,
    },
    Item {
        output_index: u32,
        item: &'a OutputItem,
    },
    Part {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        part: &'a OutputText,
    },
    Delta {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        delta: &'a str,
        logprobs: [(); 0],
    },
    TextDone {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        text: &'a str,
        logprobs: [(); 0],
    },
    SummaryPart {
        item_id: &'a str,
        output_index: u32,
        summary_index: u32,
        part: &'a SummaryText,
    },
    SummaryDelta {
        item_id: &'a str,
        output_index: u32,
        summary_index: u32,
        delta: &'a str,
    },
    SummaryDone {
        item_id: &'a str,
        output_index: u32,
        summary_index: u32,
        text: &'a str,
    },
    /// The flat fields are the SDKs' typed `ResponseErrorEvent`; the nested `error` is
    /// what makes the official SDKs raise (they raise on a truthy `error` key), as they
    /// do for a chat-completions error mid-stream.
    Error {
        code: Option<&'a str>,
        message: &'a str,
        param: Option<&'a str>,
        error: &'a ErrorObject,
    },
}

impl From<&ErrorObject> for ResponseError {
    fn from(e: &ErrorObject) -> Self {
        Self {
            code: e.code.clone().unwrap_or_else(|| e.kind.clone()),
            message: e.message.clone(),
        }
    }
}
