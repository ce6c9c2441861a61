//! How answers end: a complete answer ends the client's response at once, even if Dify
//! keeps the connection open; every early end (a stalled client, a frame that cannot be
//! decoded, a broken connection) stops the Dify task, so it does not generate (and bill)
//! on its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::support::{Scenario, fixture_bytes};

/// "At once" for a complete answer: its end reaches the client this soon after the
/// request, well under the 5 s idle timeout these tests set, with room for a debug
/// build on a busy 2-core machine.
const AT_ONCE: Duration = Duration::from_millis(1500);
/// The idle timeout of the lingering-Dify tests: what a complete answer must not wait for.
const LINGER_IDLE_SECS: &str = "5";
/// How long a stop may take after an early end: the stop call plus scheduling on a
/// busy machine.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// A chat-app `message` frame naming `task_id`.
fn message(task_id: &str, answer: &str) -> Bytes {
    let frame = json!({
        "event": "message",
        "conversation_id": "45701982-8118-4bc5-8e9b-64562b4555f2",
        "message_id": "9da23599-e713-473b-982c-4328d4f5c78a",
        "created_at": 1705398420,
        "task_id": task_id,
        "id": "9da23599-e713-473b-982c-4328d4f5c78a",
        "answer": answer,
    });
    Bytes::from(format!("data: {frame}\n\n"))
}

fn at_once<B: Into<Bytes>>(parts: impl IntoIterator<Item = B>) -> Vec<(Bytes, Duration)> {
    parts
        .into_iter()
        .map(|b| (b.into(), Duration::ZERO))
        .collect()
}

// ---------------------------------------------------------------------------
// A client that stops reading

/// Sends a streaming chat request over a raw socket with a small receive buffer, reads
/// the response head and the first bytes of the body, and returns the socket without
/// reading more (the caller keeps it open).
async fn stalled_client(app: &TestApp, prompt: &str) -> tokio::net::TcpStream {
    let addr: SocketAddr = app.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    let body = serde_json::to_vec(&streaming(prompt)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {PROXY_KEY}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(20);
    // The head, then the first content of the body.
    while !seen.windows(6).any(|w| w == b"data: ") || !seen.starts_with(b"HTTP/1.1 200") {
        let n = tokio::time::timeout_at(deadline.into(), conn.read(&mut buf))
            .await
            .expect("the proxy answers the stalled client's request")
            .unwrap();
        assert!(
            n > 0,
            "the proxy closed the connection: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        assert!(
            seen.len() < 64 * 1024 || seen.starts_with(b"HTTP/1.1 200"),
            "not a 200: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    conn
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_the_dify_task_stopped() {
    let app = spawn_app_with(&[("STREAM_IDLE_TIMEOUT_SECONDS", "2")]).await;
    // An endless answer as fast as the proxy takes it: once the client stops reading,
    // the socket buffers and the proxy's queue fill, and the proxy is stuck sending.
    let token = " lorem".repeat(3000);
    app.dify.set(
        APP_KEY,
        Scenario::endless(token, Duration::ZERO, "task-stalled-client"),
    );
    let conn = stalled_client(&app, "tell me everything").await;
    let stalled = Instant::now();

    // The stream limits hold for a client that reads nothing: after the idle timeout
    // (2 s) the proxy gives up on it and stops Dify. Measured with a proxy that does:
    // 3.2-3.6 s after the client stopped reading (the buffers between take a second or
    // so to fill at a debug build's pace), up to 5.1 s with two CPU burners beside.
    let stop = app
        .dify
        .wait_for_stop_of("task-stalled-client", Duration::from_secs(15))
        .await;
    let Some(stop) = stop else {
        panic!(
            "no stop for the task within {:?} of the client ceasing to read (idle timeout \
             2 s); stops: {:?}, stream ends: {:?}",
            stalled.elapsed(),
            app.dify.stops(),
            app.dify.stream_ends()
        );
    };
    assert_eq!(stop.call.key, APP_KEY);
    drop(conn);
}

// ---------------------------------------------------------------------------
// A complete answer ends at once

#[tokio::test]
async fn a_complete_answer_ends_at_once_though_dify_keeps_the_connection_open() {
    let app = spawn_app_with(&[("STREAM_IDLE_TIMEOUT_SECONDS", LINGER_IDLE_SECS)]).await;
    // The whole answer, `message_end` included, then nothing: the connection stays open.
    app.dify.set(
        APP_KEY,
        Scenario::raw_left_open([(fixture_bytes("chat-app-stream.sse"), Duration::ZERO)]),
    );

    let asked = Instant::now();
    let r = app.stream(streaming("Capital of France?")).await;
    let ended = asked.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.error(),
        None,
        "a complete answer turned into an error after {ended:?}"
    );
    assert_eq!(r.content(), "The capital of France is Paris.");
    let finish = r.chunks().iter().rev().find_map(|c| {
        c["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(finish.as_deref(), Some("stop"), "no finish chunk");
    assert!(r.done(), "no [DONE]");
    assert!(
        ended < AT_ONCE,
        "the body ended {ended:?} after the request (idle timeout {LINGER_IDLE_SECS} s)"
    );

    // A blocking client gets the whole completion as soon, too.
    let asked = Instant::now();
    let (status, _, body) = app.chat(user_message("Capital of France?")).await;
    let answered = asked.elapsed();
    assert_eq!(
        status, 200,
        "after {answered:?} (idle timeout {LINGER_IDLE_SECS} s): {body}"
    );
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(
        answered < AT_ONCE,
        "answered {answered:?} after the request"
    );

    // Dify finished these runs itself: nothing to stop.
    let stop = app.dify.wait_for_stop(Duration::from_millis(500)).await;
    assert_eq!(stop, None, "a complete answer's task was stopped");
}

#[tokio::test]
async fn a_finished_workflow_ends_at_once_though_dify_keeps_the_connection_open() {
    let app = spawn_app_with(&[("STREAM_IDLE_TIMEOUT_SECONDS", LINGER_IDLE_SECS)]).await;
    // `text_chunk`s, then `workflow_finished` (succeeded); the connection stays open.
    app.dify.set(
        APP_KEY,
        Scenario::raw_left_open([(fixture_bytes("workflow-run-stream.sse"), Duration::ZERO)]),
    );
    const ANSWER: &str = "Dify lets you build LLM apps without boilerplate.";

    let asked = Instant::now();
    let r = app.stream(streaming("Summarise the article")).await;
    let ended = asked.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.error(),
        None,
        "a finished workflow turned into an error after {ended:?}"
    );
    assert_eq!(r.content(), ANSWER);
    assert!(r.done(), "no [DONE]");
    assert!(
        ended < AT_ONCE,
        "the body ended {ended:?} after the request (idle timeout {LINGER_IDLE_SECS} s)"
    );

    let asked = Instant::now();
    let (status, _, body) = app.chat(user_message("Summarise the article")).await;
    let answered = asked.elapsed();
    assert_eq!(status, 200, "after {answered:?}: {body}");
    assert_eq!(body["choices"][0]["message"]["content"], ANSWER);
    assert!(
        answered < AT_ONCE,
        "answered {answered:?} after the request"
    );
}

// ---------------------------------------------------------------------------
// Early ends stop Dify

/// Streamed and then blocking, Dify's answer breaks after "Once upon a time" (`dify` makes
/// that answer for a task id): the client gets `dify_stream_error`, and Dify's task is
/// stopped with the app's key within `STOP_WITHIN` of `what`.
async fn assert_broken_answer_stops_the_task(
    tasks: [&str; 2],
    dify: impl Fn(&str) -> Scenario,
    what: &str,
) {
    let app = spawn_app().await;
    for (mode, task) in ["streaming", "blocking"].into_iter().zip(tasks) {
        app.dify.set(APP_KEY, dify(task));
        if mode == "streaming" {
            let r = app.stream(streaming("Tell me a story")).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.content(), "Once upon a time");
            let e = r.error().expect("an error event");
            assert_eq!(e["code"], "dify_stream_error", "{e}");
            assert!(!r.done());
        } else {
            let (status, _, body) = app.chat(user_message("Tell me a story")).await;
            assert_eq!(status, 502, "{body}");
            assert_eq!(body["error"]["code"], "dify_stream_error", "{body}");
        }
        let stop = app.dify.wait_for_stop_of(task, STOP_WITHIN).await;
        let Some(stop) = stop else {
            panic!(
                "{mode}: Dify's task was not stopped within {STOP_WITHIN:?} of {what}; stops: {:?}",
                app.dify.stops()
            );
        };
        assert_eq!(stop.call.key, APP_KEY, "{mode}");
    }
}

#[tokio::test]
async fn a_frame_that_cannot_be_decoded_mid_answer_stops_the_dify_task() {
    // Two good frames, one that is not JSON, then Dify carries on (here: silently).
    assert_broken_answer_stops_the_task(
        ["task-bad-frame-s", "task-bad-frame-b"],
        |task| {
            Scenario::raw_left_open(at_once([
                message(task, "Once upon"),
                message(task, " a time"),
                Bytes::from_static(b"data: {\"event\": \"message\", \"answer\": \"tru\n\n"),
            ]))
        },
        "the undecodable frame",
    )
    .await;
}

#[tokio::test]
async fn a_connection_that_breaks_mid_answer_stops_the_dify_task() {
    assert_broken_answer_stops_the_task(
        ["task-cut-s", "task-cut-b"],
        |task| {
            Scenario::cut_off(at_once([
                message(task, "Once upon"),
                message(task, " a time"),
            ]))
        },
        "the broken connection",
    )
    .await;
}
