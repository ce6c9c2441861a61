//! The chat-completions encoder: answer pieces → `chat.completion.chunk`s for streaming
//! clients, or the accumulated answer → one `chat.completion`.

use super::types::{
    ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta, ErrorBody, FinishReason,
    ResponseMessage, Usage, UsageField,
};
use crate::answer::{Accumulator, Content, FileKind, Piece, StreamEncoder};

/// Per-response settings shared by every chunk.
#[derive(Debug, Clone)]
pub struct ChunkMeta {
    pub id: String,
    pub created: i64,
    pub model: String,
    pub include_usage: bool,
}

/// One thing to send to a streaming client.
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

/// Encodes one streamed answer as chunks.
pub struct ChunkEncoder {
    meta: ChunkMeta,
    /// Some content went out (a replacement then starts on a new paragraph).
    emitted_text: bool,
    /// The finish chunk or an error went out: nothing more may.
    finished: bool,
    /// Every content delta sent so far: the answer as the client will send it back. Kept
    /// only when asked for (history matching needs it), to hold no copy otherwise.
    visible: Option<String>,
}

impl ChunkEncoder {
    pub fn new(meta: ChunkMeta) -> Self {
        Self {
            meta,
            emitted_text: false,
            finished: false,
            visible: None,
        }
    }

    /// Keeps the text the client received, for [`ChunkEncoder::visible_text`].
    pub fn keep_visible_text(mut self, keep: bool) -> Self {
        self.visible = keep.then(String::new);
        self
    }

    /// The opening chunk: `role: assistant` with empty content, sent as soon as Dify
    /// accepted the request.
    pub fn start(&self) -> Output {
        Output::Chunk(self.chunk(
            Delta {
                role: Some("assistant".to_string()),
                content: Some(String::new()),
                reasoning_content: None,
            },
            None,
        ))
    }

    /// The outputs for one piece; `answer` already includes it. Takes the piece by value
    /// so its text moves into the chunk instead of being copied.
    pub fn piece(&mut self, piece: Piece, answer: &Accumulator, out: &mut Vec<Output>) {
        if self.finished {
            return;
        }
        match piece {
            Piece::KeepAlive => out.push(Output::KeepAlive),
            Piece::Text(text) => out.push(self.content(text)),
            // Apart from the content: not part of what the client sends back as history.
            Piece::Reasoning(text) => out.push(Output::Chunk(self.chunk(
                Delta {
                    reasoning_content: Some(text),
                    ..Delta::default()
                },
                None,
            ))),
            Piece::File { kind, url } => out.push(self.content(file_markdown(kind, &url))),
            Piece::Replace(text) => {
                // Streamed deltas cannot be withdrawn: the replacement follows them after a
                // blank line, and the finish reason says a content filter acted.
                let text = if self.emitted_text {
                    format!("\n\n{text}")
                } else {
                    text
                };
                out.push(self.content(text));
            }
            // Sent with the end, when the client asked for it.
            Piece::Usage(_) => {}
            Piece::End => {
                self.finished = true;
                let reason = finish_reason(answer);
                out.push(Output::Chunk(self.chunk(Delta::default(), Some(reason))));
                if self.meta.include_usage {
                    let mut chunk = self.chunk(Delta::default(), None);
                    chunk.choices.clear();
                    chunk.usage = UsageField::Value(usage(answer));
                    out.push(Output::Chunk(chunk));
                }
                out.push(Output::Done);
            }
            Piece::Failed(failure) => {
                self.finished = true;
                out.push(Output::Error(failure.error.body));
            }
        }
    }

    /// The concatenated content the client received (empty unless kept).
    pub fn visible_text(&self) -> &str {
        self.visible.as_deref().unwrap_or("")
    }

    fn content(&mut self, text: String) -> Output {
        self.emitted_text = true;
        if let Some(visible) = &mut self.visible {
            visible.push_str(&text);
        }
        Output::Chunk(self.chunk(
            Delta {
                content: Some(text),
                ..Delta::default()
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

impl StreamEncoder for ChunkEncoder {
    fn start(&mut self, buf: &mut Vec<u8>) {
        ChunkEncoder::start(self).write_sse(buf);
    }

    fn encode(&mut self, piece: Piece, answer: &Accumulator, buf: &mut Vec<u8>) {
        let mut outputs = Vec::with_capacity(3);
        self.piece(piece, answer, &mut outputs);
        for output in &outputs {
            output.write_sse(buf);
        }
    }

    fn visible_text(&self) -> &str {
        ChunkEncoder::visible_text(self)
    }
}

/// A completed answer as one `chat.completion`; `content` is its text ([`content_text`]),
/// `reasoning` its thinking (empty: none).
pub fn completion(
    meta: &ChunkMeta,
    answer: &Accumulator,
    content: String,
    reasoning: String,
) -> ChatCompletion {
    ChatCompletion {
        id: meta.id.clone(),
        object: "chat.completion".to_string(),
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_string(),
                content,
                refusal: None,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            },
            logprobs: None,
            finish_reason: finish_reason(answer),
        }],
        usage: usage(answer),
    }
}

/// The answer's content as one string, files as Markdown links. Takes the parts by value
/// so that the common single-text answer moves instead of being copied.
pub fn content_text(parts: Vec<Content>) -> String {
    let mut parts = parts.into_iter();
    let mut text = match parts.next() {
        Some(Content::Text(t)) => t,
        Some(Content::File { kind, url }) => file_markdown(kind, &url),
        None => String::new(),
    };
    for part in parts {
        match part {
            Content::Text(t) => text.push_str(&t),
            Content::File { kind, url } => text.push_str(&file_markdown(kind, &url)),
        }
    }
    text
}

/// A file as its own Markdown paragraph, so chat UIs show images inline.
pub(crate) fn file_markdown(kind: FileKind, url: &str) -> String {
    match kind {
        FileKind::Image => format!("\n\n![image]({url})\n\n"),
        FileKind::Other => format!("\n\n[file]({url})\n\n"),
    }
}

fn finish_reason(answer: &Accumulator) -> FinishReason {
    if answer.replaced() {
        FinishReason::ContentFilter
    } else {
        FinishReason::Stop
    }
}

fn usage(answer: &Accumulator) -> Usage {
    let u = answer.usage();
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
    }
}
