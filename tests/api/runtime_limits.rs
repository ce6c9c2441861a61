//! The runtime's own limits on what Dify can make the proxy do: no redirect followed,
//! no id from Dify that could change a URL path, `/info` failures asked again (once per
//! backoff), and every request bounded by its time limit from its start.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::{AppRun, Scenario};

const FLOW_KEY: &str = "app-workflow000000000d4";

#[tokio::test]
async fn a_dify_redirect_is_not_followed_and_named_in_the_error() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Hello."));
    app.dify
        .set_redirect(301, "/moved/v1/chat-messages?sig=s3cr3t-query#frag");
    for stream in [false, true] {
        let r = app
            .post_chat(&json!({"model": MODEL, "stream": stream,
                "messages": [{"role": "user", "content": "Where did Dify go?"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "stream {stream}");
        assert_eq!(r.headers()["x-should-retry"], "false");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "dify_redirect", "{body}");
        assert_eq!(body["error"]["type"], "server_error", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("HTTP 301 to /moved/v1/chat-messages")
                && message.contains("set DIFY_API_BASE to the final URL"),
            "{message}"
        );
        assert!(
            !message.contains("s3cr3t") && !message.contains("frag"),
            "{message}"
        );
    }
    assert_eq!(app.dify.moved_hits(), 0, "the redirect was followed");
}

/// A frame naming a task and a conversation, with `id` in place of one of them.
fn frames(task: &str, conversation: &str) -> Vec<(String, Duration)> {
    let message = json!({"event": "message", "task_id": task, "conversation_id": conversation,
        "message_id": "m-1", "id": "m-1", "created_at": 1, "answer": "Hi"});
    let end = json!({"event": "message_end", "task_id": task, "conversation_id": conversation,
        "message_id": "m-1", "id": "m-1", "created_at": 1, "metadata": {}});
    vec![
        (format!("data: {message}\n\n"), Duration::ZERO),
        (format!("data: {end}\n\n"), Duration::ZERO),
    ]
}

#[tokio::test]
async fn ids_from_dify_that_would_change_a_path_are_a_protocol_error() {
    let app = spawn_app_with(&[(
        "MODEL_CONFIG",
        &format!(r#"{{"{MODEL}":{{"key":"{APP_KEY}","mode":"chat"}}}}"#),
    )])
    .await;
    let good = "6a9d2c5f-1e4b-4a7d-b8c3-5f2e9a6d1c84";
    for (task, conversation) in [
        ("../../files/upload", good),
        ("t 1", good),
        (good, "../conversations/x?user=y"),
        (good, "c%2F1"),
    ] {
        app.dify
            .set(APP_KEY, Scenario::raw(frames(task, conversation)));
        let (status, headers, body) = app.chat(user_message("Is this id sane?")).await;
        assert_eq!(status, 502, "{task} {conversation}: {body}");
        assert_eq!(body["error"]["code"], "dify_stream_error", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Dify sent a task or conversation id that is not an id"),
            "{body}"
        );
        assert!(headers.get("retry-after").is_none());

        let r = app.stream(streaming("Is this id sane?")).await;
        let e = r
            .error()
            .unwrap_or_else(|| panic!("no error event for {task} {conversation}"));
        assert_eq!(e["code"], "dify_stream_error", "{e}");
    }
    // The ids Dify does hand out still work.
    app.dify.set(APP_KEY, Scenario::raw(frames(good, good)));
    let (status, _, body) = app.chat(user_message("Is this id sane?")).await;
    assert_eq!(status, 200, "{body}");
    assert!(app.dify.stops().iter().all(|s| !s.task_id.contains('.')));
}

fn flow_only() -> String {
    format!(r#"{{"flow":"{FLOW_KEY}"}}"#)
}

fn ask_flow() -> Value {
    json!({"model": "flow", "messages": [{"role": "user", "content": "Summarise the article"}]})
}

#[tokio::test]
async fn a_busy_info_at_cold_start_is_asked_again_after_a_backoff() {
    // Cold start meets a 429, the first request a 503: neither decides the app's kind.
    let (app, report) = spawn_app_cold(&[("MODEL_CONFIG", &flow_only())], |dify| {
        dify.set_app(
            FLOW_KEY,
            "workflow",
            AppRun::Replay("workflow-run-stream.sse"),
        );
        dify.set_info_failures(&[429, 503]);
    })
    .await;
    assert_eq!(report.unresolved, 1, "{report:?}");

    let (status, _, body) = app.chat(ask_flow()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "dify_server_error", "{body}");
    // Within the backoff: the same answer, without asking Dify again.
    let (status, _, body) = app.chat(ask_flow()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        app.dify.info_calls().len(),
        2,
        "asked again within the backoff"
    );
    assert!(
        app.dify.app_requests().is_empty(),
        "run before its kind was known"
    );

    // After the backoff, one lookup and the workflow runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, _, body) = app.chat(ask_flow()).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "never recovered: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Dify lets you build LLM apps without boilerplate."
    );
    assert_eq!(app.dify.info_calls().len(), 3);
    let (status, _, _) = app.chat(ask_flow()).await;
    assert_eq!(status, 200);
    assert_eq!(app.dify.info_calls().len(), 3, "the kind is kept");
}

#[tokio::test]
async fn a_burst_on_first_use_makes_one_info_lookup() {
    let app = spawn_app_with(&[("MODEL_CONFIG", &flow_only())]).await;
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        AppRun::Replay("workflow-run-stream.sse"),
    );
    app.dify.set_info_delay(Duration::from_millis(300));
    let burst = (0..8).map(|_| app.chat(ask_flow()));
    for (status, _, body) in futures_util::future::join_all(burst).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(app.dify.info_calls().len(), 1);
}

#[tokio::test]
async fn a_request_is_bounded_from_its_start_not_from_difys_answer() {
    // Dify never starts answering; its own timeout (60 s) would hold the client.
    let app = spawn_app_with(&[
        ("MAX_STREAM_SECONDS", "2"),
        ("DIFY_TIMEOUT_SECONDS", "60"),
        (
            "MODEL_CONFIG",
            &format!(r#"{{"{MODEL}":{{"key":"{APP_KEY}","mode":"chat"}}}}"#),
        ),
    ])
    .await;
    app.dify.set(APP_KEY, Scenario::Hang);
    for stream in [false, true] {
        let started = Instant::now();
        let r = app
            .post_chat(&json!({"model": MODEL, "stream": stream,
                "messages": [{"role": "user", "content": "Are you there?"}]}))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()["x-should-retry"], "false");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "request_time_limit", "{body}");
        assert_eq!(
            body["error"]["message"],
            "The request reached the limit of 2 s before Dify's answer started."
        );
        assert!(took < Duration::from_secs(20), "{took:?}");
    }
}
