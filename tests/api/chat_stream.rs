use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::helpers::*;
use crate::support::{EndReason, Scenario, Split};

fn with_usage(text: &str) -> serde_json::Value {
    let mut body = streaming(text);
    body["stream_options"] = json!({"include_usage": true});
    body
}

#[tokio::test]
async fn stream_is_well_formed_openai_sse_with_usage() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let r = app.stream(with_usage("Capital of France?")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(r.headers["cache-control"], "no-cache");
    assert!(r.done(), "ends with [DONE]");
    assert_eq!(r.content(), "The capital of France is Paris.");

    let chunks = r.chunks();
    let first = &chunks[0];
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for c in &chunks {
        assert_eq!(c["id"], first["id"]);
        assert_eq!(c["created"], first["created"]);
        assert!(c["created"].is_i64());
        assert_eq!(c["model"], MODEL);
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let finishes: Vec<_> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().clone())
        .filter(|c| !c["finish_reason"].is_null())
        .collect();
    assert_eq!(finishes.len(), 1);
    assert_eq!(finishes[0]["finish_reason"], "stop");
    assert_eq!(finishes[0]["delta"], json!({}));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens":1070,"completion_tokens":86,"total_tokens":1156})
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
}

#[tokio::test]
async fn without_include_usage_no_usage_key_appears() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let r = app.stream(streaming("Capital?")).await;
    assert!(r.done());
    assert!(
        r.chunks()
            .iter()
            .all(|c| c.get("usage").is_none() && !c["choices"].as_array().unwrap().is_empty())
    );
}

#[tokio::test]
async fn utf8_split_across_network_reads_loses_nothing() {
    let app = spawn_app().await;
    for (fixture, answer) in [
        ("chat-legacy-serializer.sse", "你好！请问有什么可以帮你？"),
        ("agent-chat-stream.sse", "It is 14:32 in Paris right now."),
    ] {
        app.dify.set(
            APP_KEY,
            Scenario::Replay {
                fixture,
                split: Split::EveryByte,
                delay: Duration::ZERO,
            },
        );
        let r = app.stream(streaming("hi")).await;
        assert!(r.done(), "{fixture}");
        assert_eq!(r.content(), answer, "{fixture}");
    }
    // Raw UTF-8 (orjson style) split inside multi-byte characters.
    let frame = "data: {\"event\":\"message\",\"task_id\":\"t1\",\"conversation_id\":\"c1\",\"answer\":\"héllo 世界 👋\"}\n\ndata: {\"event\":\"message_end\",\"task_id\":\"t1\",\"metadata\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}}\n\n";
    let parts: Vec<(Vec<u8>, Duration)> = frame
        .as_bytes()
        .chunks(3)
        .map(|c| (c.to_vec(), Duration::from_millis(1)))
        .collect();
    app.dify.set(APP_KEY, Scenario::raw(parts));
    let r = app.stream(streaming("hi")).await;
    assert_eq!(r.content(), "héllo 世界 👋");
    assert!(r.done());
}

#[tokio::test]
async fn dify_pings_become_sse_comments() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-ping-keepalive.sse"));
    let r = app.stream(streaming("Summarise the report")).await;
    assert_eq!(r.pings(), 3);
    assert!(
        r.frames
            .iter()
            .filter(|f| f.text.starts_with(':'))
            .all(|f| f.text == ": ping")
    );
    assert_eq!(
        r.content(),
        "Based on the 40-page report, revenue grew 12% year over year."
    );
    assert!(r.done());
}

#[tokio::test]
async fn tokens_are_forwarded_as_they_arrive() {
    let app = spawn_app().await;
    let pace = Duration::from_millis(200);
    app.dify.set(
        APP_KEY,
        Scenario::Replay {
            fixture: "chat-app-stream.sse",
            split: Split::Frames,
            delay: pace,
        },
    );
    let r = app.stream(streaming("Capital?")).await;
    let content_frames: Vec<_> = r
        .frames
        .iter()
        .filter(|f| f.text.contains("\"content\":\"") && !f.text.contains("\"content\":\"\""))
        .collect();
    assert_eq!(content_frames.len(), 5);
    // Five tokens written 200 ms apart by Dify reach the client spread out the same way,
    // not all together at the end. The slack absorbs a loaded machine's scheduling
    // hiccups; buffering would show as gaps near zero.
    for pair in content_frames.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= pace / 4, "tokens bunched together: {gap:?}");
    }
    let first_to_done = r.frames.last().unwrap().at - content_frames[0].at;
    assert!(
        first_to_done >= pace * 4,
        "first token arrived only {first_to_done:?} before the end"
    );
}

/// Pooled clients (the SDKs, Open WebUI) reuse one connection. With Nagle on the accepted
/// socket, every small SSE write after the first waits for the client's delayed ACK (40 ms
/// at least, on Linux), so each answer on a reused connection took ~40 ms longer
/// (tests/benches/RESULTS.md, finding A). The harness serves with `serve_local`, as `main`
/// does, so this guards the fix.
#[tokio::test]
async fn answers_on_a_reused_connection_do_not_stall() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::answer("one two three four five six"));
    // Opens the connection; Linux ACKs at once while a connection is new.
    assert!(app.stream(streaming("warm up")).await.done());
    let mut times = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let r = app.stream(streaming("Count to six")).await;
        assert!(r.done());
        times.push(started.elapsed());
    }
    times.sort();
    // A stall puts every request past 40 ms; a median under 30 ms leaves a busy machine
    // room for scheduling delays.
    let median = times[times.len() / 2];
    assert!(median < Duration::from_millis(30), "{times:?}");
}

#[tokio::test]
async fn midstream_dify_error_becomes_an_error_event() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-error-midstream.sse"));
    let r = app.stream(streaming("Write something")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "Sure, here is");
    let e = r.error().expect("an error event");
    // The provider said its quota is used up: the event says so, not a generic failure.
    assert_eq!(e["code"], "insufficient_quota");
    assert_eq!(e["type"], "insufficient_quota");
    assert!(e["message"].as_str().unwrap().contains("Rate Limit Error"));
    assert!(!r.done(), "no [DONE] after an error");
    assert!(
        r.frames.last().unwrap().text.contains("\"error\""),
        "the error is the last event"
    );
}

#[tokio::test]
async fn failed_chatflow_ends_with_an_error_event() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chatflow-failed-stream.sse"));
    let r = app.stream(streaming("hi")).await;
    let e = r.error().expect("an error event");
    assert_eq!(e["code"], "dify_workflow_failed");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key provided")
    );
}

#[tokio::test]
async fn moderation_replacement_is_what_the_stream_ends_with() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-message-replace.sse"));
    let r = app.stream(streaming("hi")).await;
    assert!(r.done());
    assert!(
        r.content()
            .ends_with("\n\nSorry, I can't help with that request."),
        "{}",
        r.content()
    );
    let finish = r.chunks().iter().find_map(|c| {
        c["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(finish.as_deref(), Some("content_filter"));
}

#[tokio::test]
async fn broken_upstream_streams_end_with_a_clean_error_event() {
    let app = spawn_app().await;
    let ok = "data: {\"event\":\"message\",\"task_id\":\"t1\",\"conversation_id\":\"c1\",\"answer\":\"partial\"}\n\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "cut mid-frame",
            [ok.as_bytes(), b"data: {\"event\":\"mess"].concat(),
        ),
        ("ended without message_end", ok.as_bytes().to_vec()),
        (
            "invalid UTF-8",
            [
                ok.as_bytes(),
                b"data: {\"event\":\"message\",\"answer\":\"\xff\xfe\"}\n\n",
            ]
            .concat(),
        ),
        (
            "malformed JSON",
            [ok.as_bytes(), b"data: {\"event\":\"message\",\n\n"].concat(),
        ),
    ];
    for (case, bytes) in cases {
        app.dify
            .set(APP_KEY, Scenario::raw([(bytes, Duration::ZERO)]));
        let r = app.stream(streaming("hi")).await;
        assert_eq!(r.content(), "partial", "{case}");
        let e = r
            .error()
            .unwrap_or_else(|| panic!("{case}: no error event"));
        assert_eq!(e["code"], "dify_stream_error", "{case}");
        assert!(!r.done(), "{case}");

        // The same for a blocking client: a 502, not a truncated answer.
        let (status, headers, body) = app.chat(user_message("hi")).await;
        assert_eq!(status, 502, "{case}: {body}");
        assert_eq!(body["error"]["code"], "dify_stream_error");
        assert_eq!(headers["x-should-retry"], "false");
    }
}

#[tokio::test]
async fn client_disconnect_stops_the_dify_task() {
    let app = spawn_app().await;
    app.dify.set(
        APP_KEY,
        Scenario::endless(" tok", Duration::from_millis(50), "task-0001"),
    );
    let mut body = streaming("Tell me a very long story");
    body["user"] = json!("user-77");
    let r = app.post_chat(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains(" tok") {
        seen.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    drop(stream); // the client goes away mid-answer

    let stop = app
        .dify
        .wait_for_stop(Duration::from_secs(10))
        .await
        .expect("the proxy stops the Dify task");
    assert_eq!(stop.task_id, "task-0001");
    assert_eq!(stop.user, named_user("user-77"));
    assert_eq!(stop.key, APP_KEY);
    let end = app
        .dify
        .wait_for_stream_end(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(end.reason, EndReason::Stopped | EndReason::ClientGone),
        "{end:?}"
    );
}

#[tokio::test]
async fn completed_streams_do_not_call_stop() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let r = app.stream(streaming("hi")).await;
    assert!(r.done());
    let (status, _, _) = app.chat(user_message("hi")).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.dify.stops().is_empty());
}
