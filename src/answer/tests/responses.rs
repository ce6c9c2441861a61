//! The shared transcripts through the Responses encoder: the event sequence a streaming
//! client parses, and the response object of a blocking one.

use super::*;
use crate::openai::responses::types::Status;
use crate::openai::responses::{ResponseEncoder, ResponseMeta, response_object};
use serde_json::json;

fn meta() -> ResponseMeta {
    ResponseMeta {
        id: "resp_test".into(),
        item_id: "msg_test".into(),
        reasoning_id: "rs_test".into(),
        created_at: 1_767_225_600,
        model: "my-app".into(),
        instructions: Some("Be brief.".into()),
        previous_response_id: None,
        store: true,
        temperature: None,
        top_p: None,
        max_output_tokens: None,
        parallel_tool_calls: None,
        metadata: serde_json::Map::new(),
    }
}

fn stream(events: Vec<Result<DifyEvent, DecodeError>>) -> String {
    let mut encoder = ResponseEncoder::new(meta());
    let mut answer = Accumulator::without_content();
    let mut buf = Vec::new();
    encoder.start(&mut buf);
    for piece in pieces(events) {
        answer.apply(&piece);
        encoder.encode(piece, &answer, &mut buf);
    }
    String::from_utf8(buf).unwrap()
}

/// The events as a client parses them: (`event:` name, data), checking on the way that
/// the name and `type` agree and that `sequence_number` counts from 0 without a gap.
fn events(sse: &str) -> (Vec<(String, Value)>, usize) {
    let mut out = Vec::new();
    let mut pings = 0;
    for frame in sse.split("\n\n").filter(|f| !f.is_empty()) {
        if frame == ": ping" {
            pings += 1;
            continue;
        }
        let (name, data) = frame
            .strip_prefix("event: ")
            .and_then(|f| f.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not an event: {frame}"));
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], name, "{frame}");
        assert_eq!(data["sequence_number"], out.len(), "{frame}");
        out.push((name.to_string(), data));
    }
    (out, pings)
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn deltas(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect()
}

/// The order of the reference, for an answer that completes.
fn assert_sequence(events: &[(String, Value)], terminal: &str) {
    let n = names(events);
    assert_eq!(
        n[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert!(
        n[4..n.len() - 4]
            .iter()
            .all(|e| *e == "response.output_text.delta"),
        "{n:?}"
    );
    assert_eq!(
        n[n.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            terminal
        ]
    );
    for (name, data) in &events[..2] {
        assert_eq!(data["response"]["status"], "in_progress", "{name}");
        assert_eq!(data["response"]["output"], json!([]), "{name}");
        assert_eq!(data["response"]["id"], "resp_test");
    }
    for (_, data) in &events[2..events.len() - 1] {
        let id = data
            .get("item_id")
            .or_else(|| data.get("item").map(|i| &i["id"]));
        assert_eq!(id, Some(&json!("msg_test")), "{data}");
        assert_eq!(data["output_index"], 0);
    }
}

const AGENT: &str = "agent-chat-stream.sse";

#[test]
fn agent_transcript_tells_its_tool_use_in_a_reasoning_item_first() {
    let (events, _) = events(&stream(decode_all(&fixture(AGENT))));
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[2..8],
        [
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
        ]
    );
    let tool = "Using tool `current_time` with {\"timezone\":\"Europe/Paris\"}.\nResult: 2026-07-16 14:32:25\n";
    assert_eq!(events[4].1["delta"], tool);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["type"], "reasoning");
    assert_eq!(done["output"][0]["summary"][0]["text"], tool);
    assert_eq!(
        done["output"][1]["content"][0]["text"],
        "It is 14:32 in Paris right now."
    );
    assert_eq!(done["output"][1]["id"], "msg_test");
}

#[test]
fn transcripts_stream_as_the_reference_event_sequence() {
    for &(name, answer, usage, _) in ANSWERS {
        if name == AGENT {
            // Its tool use comes first, as a reasoning item: see the test below.
            continue;
        }
        let (events, _) = events(&stream(decode_all(&fixture(name))));
        assert_sequence(&events, "response.completed");
        assert_eq!(deltas(&events), answer, "{name}");
        let n = events.len();
        assert_eq!(events[n - 4].1["text"], answer, "{name}");
        assert_eq!(events[n - 3].1["part"]["text"], answer, "{name}");
        let item = &events[n - 2].1["item"];
        assert_eq!(item["status"], "completed");
        assert_eq!(item["content"][0]["text"], answer);
        let done = &events[n - 1].1["response"];
        assert_eq!(done["status"], "completed", "{name}");
        assert_eq!(done["output"][0], *item);
        assert_eq!(done["instructions"], "Be brief.");
        assert_eq!(
            (
                done["usage"]["input_tokens"].as_u64().unwrap(),
                done["usage"]["output_tokens"].as_u64().unwrap(),
                done["usage"]["total_tokens"].as_u64().unwrap()
            ),
            usage,
            "{name}"
        );
    }
}

#[test]
fn transcripts_aggregate_into_one_response_object() {
    for &(name, answer, usage, _) in ANSWERS {
        let mut acc = Accumulator::new();
        for piece in pieces(decode_all(&fixture(name))) {
            acc.apply(&piece);
        }
        let text = content_text(acc.take_content());
        let v = serde_json::to_value(response_object(&meta(), &acc, text, String::new())).unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed", "{name}");
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["role"], "assistant");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(v["output"][0]["content"][0]["text"], answer, "{name}");
        assert_eq!(v["usage"]["total_tokens"], usage.2, "{name}");
        assert_eq!(v["tools"], json!([]));
    }
}

#[test]
fn pings_stay_comments_between_events() {
    let (events, pings) = events(&stream(decode_all(&fixture("chat-ping-keepalive.sse"))));
    assert!(pings > 0);
    assert_sequence(&events, "response.completed");
}

#[test]
fn every_byte_split_gives_the_same_events() {
    for &(name, ..) in ANSWERS {
        let bytes = fixture(name);
        let whole = stream(decode_all(&bytes));
        let mut decoder = EventDecoder::new();
        let mut items = Vec::new();
        for b in &bytes {
            decoder.push(std::slice::from_ref(b), &mut items);
        }
        decoder.finish(&mut items);
        assert_eq!(stream(items), whole, "{name}");
    }
}

#[test]
fn a_moderated_answer_ends_incomplete_with_the_replacement() {
    let bytes = fixture("chat-message-replace.sse");
    let (events, _) = events(&stream(decode_all(&bytes)));
    assert_sequence(&events, "response.incomplete");
    let last = &events.last().unwrap().1["response"];
    assert_eq!(last["status"], "incomplete");
    assert_eq!(last["incomplete_details"]["reason"], "content_filter");
    let text = deltas(&events);
    assert_eq!(last["output"][0]["content"][0]["text"], text.as_str());

    let mut acc = Accumulator::new();
    for piece in pieces(decode_all(&bytes)) {
        acc.apply(&piece);
    }
    let content = content_text(acc.take_content());
    let v = serde_json::to_value(response_object(&meta(), &acc, content, String::new())).unwrap();
    assert_eq!(v["status"], "incomplete");
    assert!(text.ends_with(v["output"][0]["content"][0]["text"].as_str().unwrap()));
}

#[test]
fn a_midstream_error_fails_the_response_and_keeps_the_text_so_far() {
    for name in ["chat-error-midstream.sse", "chatflow-failed-stream.sse"] {
        let (events, _) = events(&stream(decode_all(&fixture(name))));
        let n = names(&events);
        assert_eq!(n[n.len() - 2..], ["error", "response.failed"], "{name}");
        let error = &events[n.len() - 2].1;
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        // Nested too: the official SDKs raise on a truthy `error` key.
        assert_eq!(error["error"]["message"], error["message"]);
        assert_eq!(error["error"]["code"], error["code"]);
        let failed = &events[n.len() - 1].1["response"];
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"]["code"], error["code"]);
        assert_eq!(failed["error"]["message"], error["message"]);
        let text = deltas(&events);
        if text.is_empty() {
            // No text came: no message item was opened, none is reported.
            assert_eq!(failed["output"], json!([]), "{name}");
        } else {
            assert_eq!(failed["output"][0]["status"], "incomplete");
            assert_eq!(failed["output"][0]["content"][0]["text"], text.as_str());
        }
    }
    // A stream cut short is a failure too, never a short answer that looks complete.
    let bytes = fixture("chat-app-stream.sse");
    let (events, _) = events(&stream(decode_all(&bytes[..bytes.len() / 2])));
    assert_eq!(names(&events).last(), Some(&"response.failed"));
    assert!(!names(&events).contains(&"response.completed"));
}

#[test]
fn status_names_are_the_wire_names() {
    assert_eq!(
        serde_json::to_value([Status::InProgress, Status::Incomplete]).unwrap(),
        json!(["in_progress", "incomplete"])
    );
}

/// A chatflow whose LLM node sends its thinking apart (`reasoning_chunk`), then answers.
fn reasoning_transcript() -> Vec<u8> {
    let ids = r#""conversation_id":"c1","message_id":"m1","task_id":"t1","created_at":1"#;
    let mut sse = String::new();
    for thought in ["The user asks", " for a capital."] {
        sse.push_str(&format!(
            "data: {{\"event\":\"reasoning_chunk\",{ids},\"data\":{{\"message_id\":\"m1\",\"reasoning\":{thought:?},\"node_id\":\"llm\",\"is_final\":false}}}}\n\n"
        ));
    }
    for word in ["Paris", " it is."] {
        sse.push_str(&format!(
            "data: {{\"event\":\"message\",{ids},\"id\":\"m1\",\"answer\":{word:?}}}\n\n"
        ));
    }
    sse.push_str(&format!(
        "data: {{\"event\":\"message_end\",{ids},\"id\":\"m1\",\"metadata\":{{\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}}}}}\n\n"
    ));
    sse.into_bytes()
}

#[test]
fn reasoning_is_an_item_before_the_message() {
    let (events, _) = events(&stream(decode_all(&reasoning_transcript())));
    let n = names(&events);
    assert_eq!(
        n,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(events[2].1["item"]["type"], "reasoning");
    assert_eq!(events[2].1["output_index"], 0);
    assert_eq!(events[6].1["text"], "The user asks for a capital.");
    assert_eq!(events[9].1["item"]["type"], "message");
    assert_eq!(events[9].1["output_index"], 1);
    assert_eq!(events[11].1["output_index"], 1);
    assert_eq!(deltas(&events), "Paris it is.");
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["type"], "reasoning");
    assert_eq!(
        done["output"][0]["summary"][0]["text"],
        "The user asks for a capital."
    );
    assert_eq!(done["output"][1]["content"][0]["text"], "Paris it is.");

    // Blocking: the same two items.
    let mut acc = Accumulator::new();
    for piece in pieces(decode_all(&reasoning_transcript())) {
        acc.apply(&piece);
    }
    let text = content_text(acc.take_content());
    let reasoning = acc.take_reasoning();
    let v = serde_json::to_value(response_object(&meta(), &acc, text, reasoning)).unwrap();
    assert_eq!(v["output"][0]["type"], "reasoning");
    assert_eq!(
        v["output"][0]["summary"][0]["text"],
        "The user asks for a capital."
    );
    assert_eq!(v["output"][1]["content"][0]["text"], "Paris it is.");
}

#[test]
fn reasoning_reaches_chat_clients_as_reasoning_content_apart_from_the_answer() {
    let sse = super::stream_sse(decode_all(&reasoning_transcript()), false);
    let r = super::receive(&sse);
    let reasoning: String = r
        .chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.reasoning_content.clone())
        .collect();
    assert_eq!(reasoning, "The user asks for a capital.");
    assert_eq!(super::text(&r), "Paris it is.");
    let c = super::blocking(decode_all(&reasoning_transcript())).unwrap();
    assert_eq!(c.choices[0].message.content, "Paris it is.");
    assert_eq!(
        c.choices[0].message.reasoning_content.as_deref(),
        Some("The user asks for a capital.")
    );
}
