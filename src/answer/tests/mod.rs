//! Every shared Dify transcript through the decoder and the chat-completions encoder, both
//! streamed and aggregated, whole and re-split at every byte; the Responses encoder's
//! share in `responses`.

mod apps;
mod files;
mod reasoning;
mod responses;

use super::*;
use crate::dify::sse::{DecodeError, EventDecoder, decode_all};
use crate::dify::{DifyError, DifyEvent};
use crate::openai::chat::{ChunkEncoder, ChunkMeta, completion, content_text};
use crate::openai::{ChatCompletion, ChatCompletionChunk, ErrorBody, FinishReason};
use serde_json::Value;
use url::Url;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/dify/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn meta(include_usage: bool) -> ChunkMeta {
    ChunkMeta {
        id: "chatcmpl-test".into(),
        created: 1_767_225_600,
        model: "my-app".into(),
        include_usage,
    }
}

fn base() -> Url {
    Url::parse("https://dify.example/v1/").unwrap()
}

/// Dify's items through the decoder into pieces, as the routes drive it: up to the first
/// stop, then the end of the stream.
fn pieces(events: Vec<Result<DifyEvent, DecodeError>>) -> Vec<Piece> {
    let mut decoder = DifyDecoder::new("my-app", base());
    let mut out = Vec::new();
    for e in events {
        if decoder.on_item(e.map_err(DifyError::from), &mut out) == Flow::Stop {
            break;
        }
    }
    decoder.on_end(&mut out);
    out
}

/// What a streaming client receives, as SSE text.
fn stream_sse(events: Vec<Result<DifyEvent, DecodeError>>, include_usage: bool) -> String {
    let mut encoder = ChunkEncoder::new(meta(include_usage));
    let mut answer = Accumulator::without_content();
    let mut buf = Vec::new();
    StreamEncoder::start(&mut encoder, &mut buf);
    for piece in pieces(events) {
        answer.apply(&piece);
        encoder.encode(piece, &answer, &mut buf);
    }
    String::from_utf8(buf).unwrap()
}

/// Parses SSE text the way the OpenAI SDKs do: `data:` lines only, comments skipped.
struct Received {
    chunks: Vec<ChatCompletionChunk>,
    error: Option<ErrorBody>,
    done: bool,
    pings: usize,
}

fn receive(sse: &str) -> Received {
    let mut r = Received {
        chunks: vec![],
        error: None,
        done: false,
        pings: 0,
    };
    for frame in sse.split("\n\n").filter(|f| !f.is_empty()) {
        assert!(!r.done && r.error.is_none(), "data after the end: {frame}");
        if frame == ": ping" {
            r.pings += 1;
            continue;
        }
        let data = frame
            .strip_prefix("data: ")
            .expect("one data line per frame");
        assert!(!data.contains('\n'), "multi-line data: {data}");
        if data == "[DONE]" {
            r.done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if v.get("error").is_some() {
            r.error = Some(serde_json::from_value(v).unwrap());
        } else {
            r.chunks.push(serde_json::from_value(v).unwrap());
        }
    }
    r
}

fn text(r: &Received) -> String {
    r.chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.clone())
        .collect()
}

fn blocking(events: Vec<Result<DifyEvent, DecodeError>>) -> Result<ChatCompletion, Box<Failure>> {
    let mut answer = Accumulator::new();
    for piece in pieces(events) {
        answer.apply(&piece);
    }
    if let Some(failure) = answer.failure() {
        return Err(Box::new(failure.clone()));
    }
    let content = content_text(answer.take_content());
    let reasoning = answer.take_reasoning();
    Ok(completion(&meta(false), &answer, content, reasoning))
}

/// Checks the invariants every successful stream must hold and returns its text.
fn assert_well_formed(r: &Received, include_usage: bool) -> String {
    assert!(r.done, "no [DONE]");
    assert!(r.error.is_none());
    let first = &r.chunks[0];
    assert_eq!(first.choices[0].delta.role.as_deref(), Some("assistant"));
    for c in &r.chunks {
        assert_eq!(
            (c.id.as_str(), c.created, c.model.as_str()),
            ("chatcmpl-test", 1_767_225_600, "my-app")
        );
        assert_eq!(c.object, "chat.completion.chunk");
    }
    let finishes = r
        .chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter(|c| c.finish_reason.is_some())
        .count();
    assert_eq!(finishes, 1, "exactly one finish_reason");
    let last = r.chunks.last().unwrap();
    if include_usage {
        assert!(last.choices.is_empty());
        assert!(matches!(last.usage, crate::openai::UsageField::Value(_)));
        assert!(
            r.chunks[..r.chunks.len() - 1]
                .iter()
                .all(|c| c.usage == crate::openai::UsageField::Null(()))
        );
    } else {
        assert!(
            r.chunks
                .iter()
                .all(|c| c.usage.is_absent() && !c.choices.is_empty())
        );
    }
    text(r)
}

fn usage_of(r: &Received) -> (u64, u64, u64) {
    match &r.chunks.last().unwrap().usage {
        crate::openai::UsageField::Value(u) => {
            (u.prompt_tokens, u.completion_tokens, u.total_tokens)
        }
        other => panic!("no usage: {other:?}"),
    }
}

/// (fixture, expected answer, expected usage, expected finish reason)
type Expected = (&'static str, &'static str, (u64, u64, u64), FinishReason);
const ANSWERS: &[Expected] = &[
    (
        "chat-app-stream.sse",
        "The capital of France is Paris.",
        (1070, 86, 1156),
        FinishReason::Stop,
    ),
    (
        "agent-chat-stream.sse",
        "It is 14:32 in Paris right now.",
        (1884, 52, 1936),
        FinishReason::Stop,
    ),
    (
        "chat-legacy-serializer.sse",
        "你好！请问有什么可以帮你？",
        (25, 9, 34),
        FinishReason::Stop,
    ),
    (
        "chat-ping-keepalive.sse",
        "Based on the 40-page report, revenue grew 12% year over year.",
        (2210, 57, 2267),
        FinishReason::Stop,
    ),
    (
        "chatflow-stream.sse",
        "The capital of France is Paris.",
        (38, 9, 47),
        FinishReason::Stop,
    ),
    (
        "completion-stream.sse",
        "Bonjour, comment allez-vous ?",
        (142, 18, 160),
        FinishReason::Stop,
    ),
    (
        "workflow-run-stream.sse",
        "Dify lets you build LLM apps without boilerplate.",
        (0, 0, 0),
        FinishReason::Stop,
    ),
];

#[test]
fn successful_transcripts_stream_and_aggregate() {
    for &(name, answer, usage, reason) in ANSWERS {
        let bytes = fixture(name);
        let r = receive(&stream_sse(decode_all(&bytes), true));
        assert_eq!(assert_well_formed(&r, true), answer, "{name}");
        assert_eq!(usage_of(&r), usage, "{name}");
        let finish = r
            .chunks
            .iter()
            .flat_map(|c| &c.choices)
            .find_map(|c| c.finish_reason)
            .unwrap();
        assert_eq!(finish, reason, "{name}");

        let r = receive(&stream_sse(decode_all(&bytes), false));
        assert_eq!(
            assert_well_formed(&r, false),
            answer,
            "{name} without usage"
        );

        let c = blocking(decode_all(&bytes)).unwrap();
        assert_eq!(c.choices[0].message.content, answer, "{name}");
        assert_eq!(
            (
                c.usage.prompt_tokens,
                c.usage.completion_tokens,
                c.usage.total_tokens
            ),
            usage
        );
        assert_eq!(c.choices[0].finish_reason, reason);
        assert_eq!(c.object, "chat.completion");
    }
}

#[test]
fn pings_become_comment_lines() {
    let r = receive(&stream_sse(
        decode_all(&fixture("chat-ping-keepalive.sse")),
        false,
    ));
    assert_eq!(r.pings, 3);
    let r = receive(&stream_sse(
        decode_all(&fixture("chatflow-stream.sse")),
        false,
    ));
    assert_eq!(r.pings, 1);
}

#[test]
fn every_byte_split_gives_the_same_stream() {
    for &(name, ..) in ANSWERS {
        let bytes = fixture(name);
        let whole = stream_sse(decode_all(&bytes), true);
        let mut decoder = EventDecoder::new();
        let mut events = Vec::new();
        for b in &bytes {
            decoder.push(std::slice::from_ref(b), &mut events);
        }
        decoder.finish(&mut events);
        assert_eq!(stream_sse(events, true), whole, "{name}");
    }
}

#[test]
fn message_replace_ends_with_the_moderated_text() {
    let bytes = fixture("chat-message-replace.sse");
    let r = receive(&stream_sse(decode_all(&bytes), false));
    let streamed = assert_well_formed(&r, false);
    assert_eq!(
        streamed,
        "Step one: obtain the restricted\n\nSorry, I can't help with that request."
    );
    let finish = r
        .chunks
        .iter()
        .flat_map(|c| &c.choices)
        .find_map(|c| c.finish_reason);
    assert_eq!(finish, Some(FinishReason::ContentFilter));

    let c = blocking(decode_all(&bytes)).unwrap();
    assert_eq!(
        c.choices[0].message.content,
        "Sorry, I can't help with that request."
    );
    assert_eq!(c.choices[0].finish_reason, FinishReason::ContentFilter);
}

#[test]
fn midstream_error_becomes_an_error_event() {
    let bytes = fixture("chat-error-midstream.sse");
    let r = receive(&stream_sse(decode_all(&bytes), false));
    assert!(!r.done);
    assert_eq!(text(&r), "Sure, here is");
    let streamed = r.error.clone().unwrap();
    let e = r.error.unwrap().error;
    assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
    assert!(e.message.contains("Rate Limit Error"), "{}", e.message);
    assert!(
        r.chunks
            .iter()
            .flat_map(|c| &c.choices)
            .all(|c| c.finish_reason.is_none())
    );

    match blocking(decode_all(&bytes)) {
        Err(f) => {
            // The same error, streamed or not.
            assert_eq!(f.error.body, streamed);
            assert!(f.cause.contains("completion_request_error"), "{}", f.cause);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_chatflow_reports_the_run_failure() {
    let bytes = fixture("chatflow-failed-stream.sse");
    let r = receive(&stream_sse(decode_all(&bytes), true));
    let e = r.error.unwrap().error;
    assert_eq!(e.code.as_deref(), Some("dify_workflow_failed"));
    assert!(e.message.contains("Incorrect API key provided"));
    assert!(blocking(decode_all(&bytes)).is_err());
}

#[test]
fn agent_closing_message_is_not_duplicated() {
    let mut bytes = fixture("agent-chat-stream.sse");
    // Some agent apps repeat the whole answer as a final `message` before message_end.
    let end = String::from_utf8(bytes.clone())
        .unwrap()
        .find("data: {\"event\":\"message_end\"")
        .unwrap();
    let dup = "data: {\"event\":\"message\",\"task_id\":\"t\",\"answer\":\"It is 14:32 in Paris right now.\"}\n\n";
    bytes.splice(end..end, dup.bytes());
    let r = receive(&stream_sse(decode_all(&bytes), false));
    assert_eq!(
        assert_well_formed(&r, false),
        "It is 14:32 in Paris right now."
    );
    assert_eq!(
        blocking(decode_all(&bytes)).unwrap().choices[0]
            .message
            .content,
        "It is 14:32 in Paris right now."
    );
}

#[test]
fn truncated_stream_is_an_error_not_a_short_answer() {
    let bytes = fixture("chat-app-stream.sse");
    let cut = String::from_utf8(bytes.clone())
        .unwrap()
        .find("data: {\"event\":\"message_end\"")
        .unwrap();
    for end in [cut, cut + 40] {
        let r = receive(&stream_sse(decode_all(&bytes[..end]), false));
        assert!(!r.done);
        assert_eq!(
            r.error.unwrap().error.code.as_deref(),
            Some("dify_stream_error")
        );
        assert!(blocking(decode_all(&bytes[..end])).is_err());
    }
}

#[test]
fn invalid_utf8_and_bad_json_end_the_stream_cleanly() {
    for bad in [
        &b"data: {\"event\":\"message\",\"answer\":\"\xff\"}\n\n"[..],
        b"data: {not json}\n\n",
    ] {
        let mut bytes =
            b"data: {\"event\":\"message\",\"task_id\":\"t\",\"answer\":\"ok\"}\n\n".to_vec();
        bytes.extend_from_slice(bad);
        let r = receive(&stream_sse(decode_all(&bytes), false));
        assert_eq!(text(&r), "ok");
        assert_eq!(
            r.error.unwrap().error.code.as_deref(),
            Some("dify_stream_error")
        );
    }
}

#[test]
fn tool_files_become_links_against_the_dify_origin() {
    let bytes = b"data: {\"event\":\"message_file\",\"task_id\":\"t\",\"type\":\"image\",\"url\":\"/files/tools/a.png?sign=x\"}\n\ndata: {\"event\":\"message_end\",\"task_id\":\"t\",\"metadata\":{}}\n\n";
    let c = blocking(decode_all(bytes)).unwrap();
    assert_eq!(
        c.choices[0].message.content,
        "\n\n![image](https://dify.example/files/tools/a.png?sign=x)\n\n"
    );
}

#[test]
fn task_and_conversation_ids_are_captured() {
    let mut t = DifyDecoder::new("my-app", base());
    let mut out = Vec::new();
    for e in decode_all(&fixture("chatflow-stream.sse")) {
        t.on_event(e.unwrap(), &mut out);
    }
    assert_eq!(t.task_id(), Some("3a6d9c2f-5e8b-4b1d-8f4a-7e2c5b8d1f43"));
    assert_eq!(
        t.conversation_id(),
        Some("8c1f4a7d-3e6b-4c9f-a2d5-7b1e4a8c3f62")
    );
}
