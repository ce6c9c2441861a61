//! The Responses API encoder: answer pieces → the `response.*` event sequence for
//! streaming clients, or the accumulated answer → one response object.

pub mod types;

pub use types::ResponsesRequest;

use serde_json::{Map, Value};

use self::types::{
    EventData, OutputItem, OutputText, ResponseError, ResponseObject, ResponseUsage, Status,
};
use super::chat::{content_text, file_markdown};
use crate::answer::{Accumulator, Content, Piece, StreamEncoder};

/// What a response echoes of its request, shared by every event.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    /// The message item's id.
    pub item_id: String,
    pub created_at: i64,
    pub model: String,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_output_tokens: Option<u64>,
    pub parallel_tool_calls: Option<bool>,
    pub metadata: Map<String, Value>,
}

impl ResponseMeta {
    /// The response object with this status and output, before usage and errors.
    fn object(&self, status: Status, output: Vec<OutputItem>) -> ResponseObject {
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            status,
            error: None,
            incomplete_details: None,
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            model: self.model.clone(),
            output,
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            previous_response_id: self.previous_response_id.clone(),
            store: self.store,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            tool_choice: "auto",
            tools: [],
            text: serde_json::json!({"format": {"type": "text"}}),
            truncation: "disabled",
            usage: None,
            metadata: self.metadata.clone(),
        }
    }

    fn message(&self, status: Status, content: Vec<OutputText>) -> OutputItem {
        OutputItem {
            kind: "message",
            id: self.item_id.clone(),
            status,
            role: "assistant",
            content,
        }
    }
}

/// A finished answer as one response object (the blocking answer); `text` is its content.
pub fn response_object(meta: &ResponseMeta, answer: &Accumulator, text: String) -> ResponseObject {
    finished(meta, answer, text)
}

/// The answer's content as the text of its one `output_text` part.
pub fn output_text(parts: Vec<Content>) -> String {
    content_text(parts)
}

/// The terminal object for a completed (or content-filtered) answer.
fn finished(meta: &ResponseMeta, answer: &Accumulator, text: String) -> ResponseObject {
    let status = if answer.replaced() {
        Status::Incomplete
    } else {
        Status::Completed
    };
    let item = meta.message(status, vec![OutputText::new(text)]);
    let mut object = meta.object(status, vec![item]);
    if answer.replaced() {
        // Output moderation replaced the answer: OpenAI's content-filter stop.
        object.incomplete_details = Some(serde_json::json!({"reason": "content_filter"}));
    }
    object.usage = Some(usage(answer));
    object
}

fn usage(answer: &Accumulator) -> ResponseUsage {
    let u = answer.usage();
    ResponseUsage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
        ..ResponseUsage::default()
    }
}

/// Appends one SSE event: `event: <kind>`, then its data with `type` and `sequence_number`
/// first, as OpenAI sends them; numbers the event.
fn write_event(sequence: &mut u64, kind: &str, data: &EventData<'_>, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\ndata: {\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"sequence_number\":");
    buf.extend_from_slice(sequence.to_string().as_bytes());
    *sequence += 1;
    let start = buf.len();
    // Our own types always serialize to a non-empty object: its `{` becomes our comma.
    if serde_json::to_writer(&mut *buf, data).is_ok() && buf.get(start) == Some(&b'{') {
        buf[start] = b',';
    } else {
        buf.truncate(start);
        buf.push(b'}');
    }
    buf.extend_from_slice(b"\n\n");
}

/// Encodes one streamed answer as the Responses event sequence.
pub struct ResponseEncoder {
    meta: ResponseMeta,
    /// Numbers every event, from 0.
    sequence: u64,
    /// The text sent so far: the `done` events and the final object repeat it.
    text: String,
    /// The terminal event went out: nothing more may.
    finished: bool,
}

impl ResponseEncoder {
    pub fn new(meta: ResponseMeta) -> Self {
        Self {
            meta,
            sequence: 0,
            text: String::new(),
            finished: false,
        }
    }

    fn delta(&mut self, text: &str, buf: &mut Vec<u8>) {
        let data = EventData::Delta {
            item_id: &self.meta.item_id,
            output_index: 0,
            content_index: 0,
            delta: text,
            logprobs: [],
        };
        write_event(&mut self.sequence, "response.output_text.delta", &data, buf);
        self.text.push_str(text);
    }

    fn end(&mut self, answer: &Accumulator, buf: &mut Vec<u8>) {
        let item_id = &self.meta.item_id;
        write_event(
            &mut self.sequence,
            "response.output_text.done",
            &EventData::TextDone {
                item_id,
                output_index: 0,
                content_index: 0,
                text: &self.text,
                logprobs: [],
            },
            buf,
        );
        // The text stays with the encoder: it is what the client saw, for the next turn.
        let part = OutputText::new(self.text.clone());
        write_event(
            &mut self.sequence,
            "response.content_part.done",
            &EventData::Part {
                item_id,
                output_index: 0,
                content_index: 0,
                part: &part,
            },
            buf,
        );
        let object = finished(&self.meta, answer, part.text);
        write_event(
            &mut self.sequence,
            "response.output_item.done",
            &EventData::Item {
                output_index: 0,
                item: &object.output[0],
            },
            buf,
        );
        let kind = if object.status == Status::Incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        write_event(
            &mut self.sequence,
            kind,
            &EventData::Response { response: &object },
            buf,
        );
    }

    fn fail(&mut self, error: &crate::openai::ErrorObject, buf: &mut Vec<u8>) {
        // The text so far stays visible as an incomplete message: nothing is lost.
        let item = self
            .meta
            .message(Status::Incomplete, vec![OutputText::new(self.text.clone())]);
        let mut object = self.meta.object(Status::Failed, vec![item]);
        object.error = Some(ResponseError::from(error));
        // The `error` event is what the SDKs raise on; `response.failed` closes the
        // response for clients that read on to a terminal event.
        write_event(
            &mut self.sequence,
            "error",
            &EventData::Error {
                code: error.code.as_deref(),
                message: &error.message,
                param: error.param.as_deref(),
                error,
            },
            buf,
        );
        write_event(
            &mut self.sequence,
            "response.failed",
            &EventData::Response { response: &object },
            buf,
        );
    }
}

impl StreamEncoder for ResponseEncoder {
    fn start(&mut self, buf: &mut Vec<u8>) {
        let object = self.meta.object(Status::InProgress, Vec::new());
        write_event(
            &mut self.sequence,
            "response.created",
            &EventData::Response { response: &object },
            buf,
        );
        write_event(
            &mut self.sequence,
            "response.in_progress",
            &EventData::Response { response: &object },
            buf,
        );
        let item = self.meta.message(Status::InProgress, Vec::new());
        write_event(
            &mut self.sequence,
            "response.output_item.added",
            &EventData::Item {
                output_index: 0,
                item: &item,
            },
            buf,
        );
        let part = OutputText::new(String::new());
        write_event(
            &mut self.sequence,
            "response.content_part.added",
            &EventData::Part {
                item_id: &self.meta.item_id,
                output_index: 0,
                content_index: 0,
                part: &part,
            },
            buf,
        );
    }

    fn encode(&mut self, piece: Piece, answer: &Accumulator, buf: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        match piece {
            Piece::KeepAlive => buf.extend_from_slice(b": ping\n\n"),
            Piece::Text(text) => self.delta(&text, buf),
            Piece::File { kind, url } => self.delta(&file_markdown(kind, &url), buf),
            Piece::Replace(text) => {
                // Streamed deltas cannot be withdrawn: the replacement follows them after
                // a blank line, and the response ends `incomplete` (content filter).
                let text = if self.text.is_empty() {
                    text
                } else {
                    format!("\n\n{text}")
                };
                self.delta(&text, buf);
            }
            Piece::Usage(_) => {}
            Piece::End => {
                self.finished = true;
                self.end(answer, buf);
            }
            Piece::Failed(failure) => {
                self.finished = true;
                self.fail(&failure.error.body.error, buf);
            }
        }
    }

    fn visible_text(&self) -> &str {
        &self.text
    }
}
