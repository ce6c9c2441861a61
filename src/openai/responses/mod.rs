//! The Responses API encoder: answer pieces → the `response.*` event sequence for
//! streaming clients, or the accumulated answer → one response object.

pub mod types;

pub use types::ResponsesRequest;

use serde_json::{Map, Value};

use self::types::{
    EventData, OutputItem, OutputText, ResponseError, ResponseObject, ResponseUsage, Status,
    SummaryText, TEXT_FORMAT,
};
use super::chat::file_markdown;
use crate::answer::{Accumulator, Piece, StreamEncoder};

/// What a response echoes of its request, shared by every event.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    /// The message item's id.
    pub item_id: String,
    /// The reasoning item's id, if the answer has reasoning.
    pub reasoning_id: String,
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
            text: TEXT_FORMAT,
            truncation: "disabled",
            usage: None,
            metadata: self.metadata.clone(),
        }
    }

    fn message(&self, status: Status, content: Vec<OutputText>) -> OutputItem {
        OutputItem::Message {
            id: self.item_id.clone(),
            status,
            role: "assistant",
            content,
        }
    }

    fn reasoning(&self, status: Status, summary: Vec<SummaryText>) -> OutputItem {
        OutputItem::Reasoning {
            id: self.reasoning_id.clone(),
            status,
            summary,
        }
    }
}

/// A finished answer as one response object (the blocking answer): `text` is its content,
/// `reasoning` its thinking (empty: none), which comes first as a reasoning item.
pub fn response_object(
    meta: &ResponseMeta,
    answer: &Accumulator,
    text: String,
    reasoning: String,
) -> ResponseObject {
    let mut output = Vec::with_capacity(2);
    if !reasoning.is_empty() {
        output.push(meta.reasoning(Status::Completed, vec![SummaryText::new(reasoning)]));
    }
    finished(meta, answer, output, text)
}

/// The terminal object for a completed (or content-filtered) answer: `output` so far, then
/// the message with `text`.
fn finished(
    meta: &ResponseMeta,
    answer: &Accumulator,
    mut output: Vec<OutputItem>,
    text: String,
) -> ResponseObject {
    let status = if answer.replaced() {
        Status::Incomplete
    } else {
        Status::Completed
    };
    output.push(meta.message(status, vec![OutputText::new(text)]));
    let mut object = meta.object(status, output);
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

/// Where an output item stands in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemState {
    NotYet,
    Open(u32),
    Done(u32),
}

/// Encodes one streamed answer as the Responses event sequence. Items open when their
/// first piece comes: reasoning Dify sends apart becomes a reasoning item before the
/// message, and the message opens with the first text.
pub struct ResponseEncoder {
    meta: ResponseMeta,
    /// Numbers every event, from 0.
    sequence: u64,
    /// The next item's `output_index`.
    next_index: u32,
    message: ItemState,
    reasoning: ItemState,
    /// The text sent so far: the `done` events and the final object repeat it.
    text: String,
    reasoning_text: String,
    /// The terminal event went out: nothing more may.
    finished: bool,
}

impl ResponseEncoder {
    pub fn new(meta: ResponseMeta) -> Self {
        Self {
            meta,
            sequence: 0,
            next_index: 0,
            message: ItemState::NotYet,
            reasoning: ItemState::NotYet,
            text: String::new(),
            reasoning_text: String::new(),
            finished: false,
        }
    }

    /// Announces a new output item at the next `output_index`, which it returns.
    fn add_item(&mut self, item: OutputItem, buf: &mut Vec<u8>) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        let data = EventData::Item {
            output_index: index,
            item: &item,
        };
        write_event(&mut self.sequence, "response.output_item.added", &data, buf);
        index
    }

    fn open_message(&mut self, buf: &mut Vec<u8>) -> u32 {
        if let ItemState::Open(index) = self.message {
            return index;
        }
        self.close_reasoning(buf);
        let index = self.add_item(self.meta.message(Status::InProgress, Vec::new()), buf);
        self.message = ItemState::Open(index);
        write_event(
            &mut self.sequence,
            "response.content_part.added",
            &EventData::Part {
                item_id: &self.meta.item_id,
                output_index: index,
                content_index: 0,
                part: &OutputText::new(String::new()),
            },
            buf,
        );
        index
    }

    fn delta(&mut self, text: &str, buf: &mut Vec<u8>) {
        let index = self.open_message(buf);
        let data = EventData::Delta {
            item_id: &self.meta.item_id,
            output_index: index,
            content_index: 0,
            delta: text,
            logprobs: [],
        };
        write_event(&mut self.sequence, "response.output_text.delta", &data, buf);
        self.text.push_str(text);
    }

    fn reasoning_delta(&mut self, text: &str, buf: &mut Vec<u8>) {
        let index = match self.reasoning {
            ItemState::Open(index) => index,
            // Thinking after the answer started (or a second run of it): appended to the
            // one reasoning item, which stays where it is.
            ItemState::Done(index) => index,
            ItemState::NotYet => {
                let index = self.add_item(self.meta.reasoning(Status::InProgress, Vec::new()), buf);
                self.reasoning = ItemState::Open(index);
                write_event(
                    &mut self.sequence,
                    "response.reasoning_summary_part.added",
                    &EventData::SummaryPart {
                        item_id: &self.meta.reasoning_id,
                        output_index: index,
                        summary_index: 0,
                        part: &SummaryText::new(String::new()),
                    },
                    buf,
                );
                index
            }
        };
        if matches!(self.reasoning, ItemState::Done(_)) {
            // Its done events went out: the late text is kept for the final object only.
            self.reasoning_text.push_str(text);
            return;
        }
        write_event(
            &mut self.sequence,
            "response.reasoning_summary_text.delta",
            &EventData::SummaryDelta {
                item_id: &self.meta.reasoning_id,
                output_index: index,
                summary_index: 0,
                delta: text,
            },
            buf,
        );
        self.reasoning_text.push_str(text);
    }

    fn close_reasoning(&mut self, buf: &mut Vec<u8>) {
        let ItemState::Open(index) = self.reasoning else {
            return;
        };
        self.reasoning = ItemState::Done(index);
        let id = &self.meta.reasoning_id;
        write_event(
            &mut self.sequence,
            "response.reasoning_summary_text.done",
            &EventData::SummaryDone {
                item_id: id,
                output_index: index,
                summary_index: 0,
                text: &self.reasoning_text,
            },
            buf,
        );
        let part = SummaryText::new(self.reasoning_text.clone());
        write_event(
            &mut self.sequence,
            "response.reasoning_summary_part.done",
            &EventData::SummaryPart {
                item_id: id,
                output_index: index,
                summary_index: 0,
                part: &part,
            },
            buf,
        );
        let item = self.meta.reasoning(Status::Completed, vec![part]);
        write_event(
            &mut self.sequence,
            "response.output_item.done",
            &EventData::Item {
                output_index: index,
                item: &item,
            },
            buf,
        );
    }

    /// The reasoning item as it ends up in the final object, if there is one.
    fn reasoning_item(&self, status: Status) -> Option<OutputItem> {
        (self.reasoning != ItemState::NotYet).then(|| {
            self.meta
                .reasoning(status, vec![SummaryText::new(self.reasoning_text.clone())])
        })
    }

    fn end(&mut self, answer: &Accumulator, buf: &mut Vec<u8>) {
        // An answer without text still has its (empty) message.
        let index = self.open_message(buf);
        self.message = ItemState::Done(index);
        let item_id = &self.meta.item_id;
        write_event(
            &mut self.sequence,
            "response.output_text.done",
            &EventData::TextDone {
                item_id,
                output_index: index,
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
                output_index: index,
                content_index: 0,
                part: &part,
            },
            buf,
        );
        let before: Vec<OutputItem> = self.reasoning_item(Status::Completed).into_iter().collect();
        let object = finished(&self.meta, answer, before, part.text);
        let message = object.output.last();
        if let Some(item) = message {
            write_event(
                &mut self.sequence,
                "response.output_item.done",
                &EventData::Item {
                    output_index: index,
                    item,
                },
                buf,
            );
        }
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
        // What was sent so far stays in the final object, marked incomplete: nothing is lost.
        let mut output: Vec<OutputItem> = self
            .reasoning_item(Status::Incomplete)
            .into_iter()
            .collect();
        if self.message != ItemState::NotYet {
            output.push(
                self.meta
                    .message(Status::Incomplete, vec![OutputText::new(self.text.clone())]),
            );
        }
        let mut object = self.meta.object(Status::Failed, output);
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
    }

    fn encode(&mut self, piece: Piece, answer: &Accumulator, buf: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        match piece {
            Piece::KeepAlive => buf.extend_from_slice(b": ping\n\n"),
            Piece::Text(text) => self.delta(&text, buf),
            Piece::Reasoning(text) => self.reasoning_delta(&text, buf),
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
