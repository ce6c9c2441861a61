//! Completion and workflow apps, and each model's app learnt at cold start: what a client
//! sees of every kind of Dify app, streamed and whole, and what reaches Dify.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::{AppRun, FakeDify, Scenario, WorkflowSpec};

const WRITER_KEY: &str = "app-completion00000000c3";
const FLOW_KEY: &str = "app-workflow000000000d4";

/// `my-app` (chat), `writer` (completion) and `flow` (workflow).
fn models(flow_extra: &str) -> String {
    format!(
        r#"{{"{MODEL}":"{APP_KEY}","writer":"{WRITER_KEY}","flow":{{"key":"{FLOW_KEY}"{flow_extra}}}}}"#
    )
}

async fn spawn(flow_extra: &str) -> TestApp {
    spawn_app_with(&[("MODEL_CONFIG", &models(flow_extra))]).await
}

fn ask(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
        "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": text}]})
}

fn workflow(spec: WorkflowSpec) -> AppRun {
    AppRun::Workflow(spec)
}

fn usage_of(r: &SseResponse) -> Value {
    r.chunks()
        .last()
        .map(|c| c["usage"].clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn completion_app_streams_its_answer_with_usage() {
    let app = spawn("").await;
    app.dify.set_app(
        WRITER_KEY,
        "completion",
        AppRun::Replay("completion-stream.sse"),
    );
    let r = app
        .stream(ask("writer", "Greet the reader politely", true))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.done());
    assert_eq!(r.content(), "Bonjour, comment allez-vous ?");
    assert_eq!(
        usage_of(&r),
        json!({"prompt_tokens": 142, "completion_tokens": 18, "total_tokens": 160})
    );
    // The text goes in `inputs.query`, the system prompt folded in; no conversation.
    let sent = app.dify.app_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "completion-messages");
    assert_eq!(
        sent[0].body["inputs"],
        json!({"query": "System: Answer in French.\n\nUser: Greet the reader politely"})
    );
    assert_eq!(sent[0].body["response_mode"], "streaming");
    assert_eq!(sent[0].body["user"], default_user());
    assert!(sent[0].body.get("conversation_id").is_none());
    assert!(
        app.dify.requests().is_empty(),
        "nothing went to /chat-messages"
    );
}

#[tokio::test]
async fn completion_app_answers_whole_and_keeps_no_conversation() {
    let app = spawn("").await;
    app.dify.set_app(
        WRITER_KEY,
        "completion",
        AppRun::Completion {
            text: "Bonjour à tous.".into(),
            delay: Duration::ZERO,
        },
    );
    let mut body = ask("writer", "Greet everyone in the room", false);
    body["metadata"] = json!({"chat_id": "chat-42"});
    let (status, _, c) = app.chat(body.clone()).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "Bonjour à tous.");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(c["usage"]["total_tokens"], 9 + 3);
    // The next turn of the same chat is folded again: nothing was remembered.
    body["messages"] = json!([
        {"role": "user", "content": "Greet everyone in the room"},
        {"role": "assistant", "content": "Bonjour à tous."},
        {"role": "user", "content": "Now in German please"}]);
    let (status, _, _) = app.chat(body).await;
    assert_eq!(status, 200);
    let sent = app.dify.app_requests();
    assert_eq!(
        sent[1].body["inputs"]["query"],
        "User: Greet everyone in the room\n\nAssistant: Bonjour à tous.\n\nUser: Now in German please"
    );
}

#[tokio::test]
async fn workflow_app_streams_text_chunks() {
    let app = spawn("").await;
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        AppRun::Replay("workflow-run-stream.sse"),
    );
    let r = app.stream(ask("flow", "Summarise the article", true)).await;
    assert!(r.done());
    assert_eq!(
        r.content(),
        "Dify lets you build LLM apps without boilerplate."
    );
    // Dify counts a run's tokens only as a total.
    assert_eq!(
        usage_of(&r),
        json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 76})
    );
    let sent = app.dify.app_requests();
    assert_eq!(sent[0].path, "workflows/run");
    assert_eq!(
        sent[0].body["inputs"],
        json!({"query": "System: Answer in French.\n\nUser: Summarise the article"})
    );
}

#[tokio::test]
async fn workflow_query_variable_is_configurable() {
    let app = spawn(r#","query_variable":"article""#).await;
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        workflow(WorkflowSpec::new(&["Short."], json!({"text": "Short."}))),
    );
    let (status, _, _) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 200);
    let inputs = &app.dify.app_requests()[0].body["inputs"];
    assert_eq!(
        inputs,
        &json!({"article": "System: Answer in French.\n\nUser: Summarise the article"})
    );
}

#[tokio::test]
async fn workflow_inputs_and_its_text_variable_come_from_the_form() {
    // The form's only text field takes the text; `tone` is required, a request may set it.
    let app = spawn(r#","inputs":{"lang":"fr"},"request_inputs":["tone"]"#).await;
    app.dify.set_input_form(
        FLOW_KEY,
        json!([
            {"paragraph": {"variable": "article", "label": "Article", "required": true}},
            {"select": {"variable": "tone", "label": "Tone", "required": true, "options": ["formal", "casual"]}},
            {"number": {"variable": "words", "label": "Words", "required": false}}
        ]),
    );
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        workflow(WorkflowSpec::new(&["Short."], json!({"text": "Short."}))),
    );
    // Without the required `tone`: refused before Dify runs anything.
    let (status, _, e) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 400, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("`tone` (Tone)"), "{message}");
    assert!(app.dify.app_requests().is_empty());

    let mut body = ask("flow", "Summarise the article", false);
    body["inputs"] = json!({"tone": "formal"});
    let (status, _, c) = app.chat(body).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "Short.");
    assert_eq!(
        app.dify.app_requests()[0].body["inputs"],
        json!({"article": "System: Answer in French.\n\nUser: Summarise the article", "lang": "fr", "tone": "formal"})
    );
}

#[tokio::test]
async fn workflow_without_text_answers_with_its_outputs() {
    // (configuration, outputs, the answer)
    let cases = [
        ("", json!({"summary": "Short summary."}), "Short summary."),
        (
            "",
            json!({"summary": "Short summary.", "words": 2}),
            "Short summary.",
        ),
        (
            r#","output_variable":"title""#,
            json!({"summary": "Short summary.", "title": "A title"}),
            "A title",
        ),
        (
            "",
            json!({"a": "one", "b": "two"}),
            "{\n  \"a\": \"one\",\n  \"b\": \"two\"\n}",
        ),
        (
            "",
            json!({"scores": {"x": 1}}),
            "{\n  \"scores\": {\n    \"x\": 1\n  }\n}",
        ),
    ];
    for (extra, outputs, expected) in cases {
        let app = spawn(extra).await;
        app.dify.set_app(
            FLOW_KEY,
            "workflow",
            workflow(WorkflowSpec::new(&[], outputs.clone())),
        );
        let (status, _, c) = app.chat(ask("flow", "Summarise the article", false)).await;
        assert_eq!(status, 200, "{outputs}: {c}");
        assert_eq!(c["choices"][0]["message"]["content"], expected, "{outputs}");
        let r = app.stream(ask("flow", "Summarise the article", true)).await;
        assert!(r.done(), "{outputs}");
        assert_eq!(r.content(), expected, "{outputs}");
        assert!(!r.content().contains("[object Object]"));
    }
}

#[tokio::test]
async fn workflow_without_any_output_says_why() {
    let cases = [
        ("", json!({}), "its End node has no output variables"),
        (
            r#","output_variable":"answer""#,
            json!({"summary": "x"}),
            "its outputs have no variable `answer` (they have: summary)",
        ),
        ("", json!({"summary": ""}), "its output `summary` is empty"),
    ];
    for (extra, outputs, why) in cases {
        let app = spawn(extra).await;
        app.dify.set_app(
            FLOW_KEY,
            "workflow",
            workflow(WorkflowSpec::new(&[], outputs.clone())),
        );
        let (status, _, e) = app.chat(ask("flow", "Summarise the article", false)).await;
        assert_eq!(status, 502, "{outputs}");
        assert_eq!(e["error"]["code"], "dify_workflow_no_output", "{outputs}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("The Dify workflow behind model `flow` finished with no answer:"),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
    }
}

#[tokio::test]
async fn failed_workflow_is_an_error_streamed_or_whole() {
    let app = spawn("").await;
    let mut spec = WorkflowSpec::new(&["Partial "], Value::Null);
    spec.status = "failed";
    spec.error = Some("LLM node: rate limited by the provider".into());
    app.dify.set_app(FLOW_KEY, "workflow", workflow(spec));

    let (status, headers, e) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 502, "{e}");
    assert_eq!(e["error"]["code"], "dify_workflow_failed");
    assert_eq!(
        e["error"]["message"],
        "The Dify workflow behind model `flow` failed. Dify says: LLM node: rate limited by the provider."
    );
    assert_eq!(headers["x-should-retry"], "false");

    let r = app.stream(ask("flow", "Summarise the article", true)).await;
    assert_eq!(r.content(), "Partial ");
    let error = r.error().expect("an error event");
    assert_eq!(error["code"], "dify_workflow_failed");
    assert!(!r.done(), "a failed answer does not end with [DONE]");
}

#[tokio::test]
async fn stopped_workflow_is_an_error() {
    let app = spawn("").await;
    let mut spec = WorkflowSpec::new(&["Partial"], json!({"text": "Partial"}));
    spec.status = "stopped";
    app.dify.set_app(FLOW_KEY, "workflow", workflow(spec));
    let (status, _, e) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 502);
    assert_eq!(e["error"]["code"], "dify_workflow_stopped");
    assert_eq!(
        e["error"]["message"],
        "The Dify workflow run behind model `flow` was stopped before it finished."
    );
}

#[tokio::test]
async fn partially_succeeded_workflow_answers() {
    let app = spawn("").await;
    let mut spec = WorkflowSpec::new(&[], json!({"text": "Best effort."}));
    spec.status = "partial-succeeded";
    app.dify.set_app(FLOW_KEY, "workflow", workflow(spec));
    let (status, _, c) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "Best effort.");
    assert!(log_contains("the workflow partially succeeded"));
}

#[tokio::test]
async fn human_input_pause_ends_the_stream_with_a_reason() {
    let app = spawn("").await;
    let mut spec = WorkflowSpec::new(&["Draft ready."], Value::Null);
    spec.status = "paused";
    app.dify.set_app(FLOW_KEY, "workflow", workflow(spec));
    let started = Instant::now();
    let r = app
        .stream(ask("flow", "Write and approve a draft", true))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it did not hang"
    );
    assert_eq!(r.content(), "Draft ready.");
    let error = r.error().expect("an error event");
    assert_eq!(error["code"], "dify_human_input_required");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("paused for human input")
    );
    // The paused run is stopped through the workflow stop endpoint.
    let stop = app
        .dify
        .wait_for_app_stop(Duration::from_secs(10))
        .await
        .expect("the paused run is stopped");
    assert_eq!(stop.path, "workflows/tasks");
}

/// A client that goes away mid-answer: the task is stopped through its app's endpoint.
#[tokio::test]
async fn a_disconnect_stops_the_task_at_its_own_endpoint() {
    for (model, key, mode, path) in [
        ("writer", WRITER_KEY, "completion", "completion-messages"),
        ("flow", FLOW_KEY, "workflow", "workflows/tasks"),
    ] {
        let app = spawn("").await;
        let words = vec!["word "; 200].concat();
        let run = if mode == "completion" {
            AppRun::Completion {
                text: words,
                delay: Duration::from_millis(100),
            }
        } else {
            let mut spec = WorkflowSpec::new(&vec!["word "; 200], Value::Null);
            spec.delay = Duration::from_millis(100);
            AppRun::Workflow(spec)
        };
        app.dify.set_app(key, mode, run);
        let response = app
            .post_chat(&ask(model, "Write a very long essay", true))
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("word") {
            let chunk = body.next().await.expect("a chunk").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        drop(body);
        let stop = app
            .dify
            .wait_for_app_stop(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{mode}: no stop call"));
        assert_eq!(stop.path, path);
        assert_eq!(stop.call.key, key);
        assert_eq!(stop.call.user, default_user());
        assert!(app.dify.stops().is_empty(), "no chat stop for {mode}");
    }
}

#[tokio::test]
async fn responses_api_answers_from_a_workflow_but_cannot_continue_one() {
    let app = spawn("").await;
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        AppRun::Replay("workflow-run-stream.sse"),
    );
    let r = app
        .post_responses(&json!({"model": "flow", "input": "Summarise the article"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Dify lets you build LLM apps without boilerplate."
    );
    assert_eq!(body["usage"]["total_tokens"], 76);
    let id = body["id"].as_str().unwrap();

    let r = app
        .post_responses(
            &json!({"model": "flow", "input": "And shorter?", "previous_response_id": id}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "previous_response_id");
    assert_eq!(
        e["error"]["message"],
        "Model `flow` is a Dify workflow app, which keeps no conversations: `previous_response_id` cannot continue one. Send the earlier turns in `input` instead."
    );
    assert_eq!(
        app.dify.app_requests().len(),
        1,
        "nothing more reached Dify"
    );
}

/// A gateway in front of Dify that exposes only `/chat-messages`: chat apps answer as
/// they did before the proxy asked `/info`.
#[tokio::test]
async fn without_info_a_model_is_taken_for_a_chat_app() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Hello."));
    app.dify.set_info_missing(true);
    for _ in 0..2 {
        let (status, _, c) = app.chat(ask(MODEL, "Say hello to me", false)).await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(c["choices"][0]["message"]["content"], "Hello.");
    }
    assert_eq!(app.dify.info_calls().len(), 1, "asked once");
}

#[tokio::test]
async fn a_configured_mode_needs_no_lookup() {
    let app = spawn(r#","mode":"workflow""#).await;
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        AppRun::Replay("workflow-run-stream.sse"),
    );
    let (status, _, _) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 200);
    assert!(app.dify.info_calls().is_empty());
}

#[tokio::test]
async fn a_wrong_configured_mode_gets_a_hint() {
    let app = spawn(r#","mode":"chat""#).await;
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        AppRun::Replay("workflow-run-stream.sse"),
    );
    let (status, _, e) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 502);
    assert_eq!(e["error"]["code"], "dify_app_mode_unsupported");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("check its `mode` in MODEL_CONFIG"),
        "{e}"
    );
}

fn named_apps(dify: &FakeDify) {
    dify.set(APP_KEY, Scenario::answer("Hello."));
    dify.set_info(
        APP_KEY,
        "Support bot",
        "Answers questions about our product.",
    );
    dify.set_app(
        FLOW_KEY,
        "workflow",
        AppRun::Replay("workflow-run-stream.sse"),
    );
    dify.set_info(FLOW_KEY, "Summariser", "");
    // WRITER_KEY is unknown to Dify: rejected.
}

#[tokio::test]
async fn models_show_dify_app_names_when_known() {
    let (app, report) = spawn_app_cold(&[("MODEL_CONFIG", &models(""))], named_apps).await;
    assert_eq!(
        (report.resolved, report.rejected, report.unresolved),
        (2, 1, 0)
    );
    let body: Value = app
        .get("/v1/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["data"],
        json!([
            {"id": "flow", "object": "model", "created": body["data"][0]["created"], "owned_by": "dify",
             "name": "Summariser"},
            {"id": MODEL, "object": "model", "created": body["data"][0]["created"], "owned_by": "dify",
             "name": "Support bot", "description": "Answers questions about our product."},
            // Rejected: listed by its id only (the error comes on use, and in the log).
            {"id": "writer", "object": "model", "created": body["data"][0]["created"], "owned_by": "dify"},
        ])
    );
    let one: Value = app
        .get(&format!("/v1/models/{MODEL}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["name"], "Support bot");
}

#[tokio::test]
async fn a_key_rejected_at_cold_start_fails_at_once() {
    let (app, _) = spawn_app_cold(&[("MODEL_CONFIG", &models(""))], named_apps).await;
    let lookups = app.dify.info_calls().len();
    assert!(
        log_contains("app-…00c3"),
        "the cold-start log names the masked key"
    );
    for stream in [false, true] {
        let r = app
            .post_chat(&ask("writer", "Greet the reader politely", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "dify_app_key_rejected");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Dify rejected the app key configured for model `writer`."),
            "{e}"
        );
    }
    assert_eq!(app.dify.info_calls().len(), lookups, "no round trip");
    assert!(app.dify.app_requests().is_empty() && app.dify.requests().is_empty());
    // The good models answer.
    let (status, _, _) = app.chat(ask(MODEL, "Say hello to me", false)).await;
    assert_eq!(status, 200);
    let (status, _, _) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 200);
    assert_eq!(app.dify.info_calls().len(), lookups, "modes were known");
}

#[tokio::test]
async fn a_slow_dify_at_cold_start_is_asked_again_on_first_use() {
    let (app, report) = spawn_app_cold(&[("MODEL_CONFIG", &models(""))], |dify| {
        named_apps(dify);
        dify.set_info_delay(Duration::from_secs(4));
    })
    .await;
    assert_eq!(report.unresolved, 3);
    assert!(report.elapsed < Duration::from_millis(2500), "{report:?}");
    let body: Value = app
        .get("/v1/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["data"][0].get("name").is_none(), "not known yet");

    app.dify.set_info_delay(Duration::ZERO);
    let (status, _, c) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        c["choices"][0]["message"]["content"],
        "Dify lets you build LLM apps without boilerplate."
    );
    let asked = app.dify.info_calls().len();
    let (status, _, _) = app.chat(ask("flow", "Summarise the article", false)).await;
    assert_eq!(status, 200);
    assert_eq!(app.dify.info_calls().len(), asked, "the mode is kept");
    let body: Value = app
        .get("/v1/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"][0]["name"], "Summariser");
}

/// The cold-start cost of the lookups: ten models against a local Dify, and bounded when
/// Dify is slow. Prints the figures (`--nocapture`).
#[tokio::test]
async fn cold_start_lookups_are_concurrent_and_bounded() {
    let keys: Vec<String> = (0..10)
        .map(|i| format!("app-coldstart000000{i:04}"))
        .collect();
    let config = format!(
        "{{{}}}",
        keys.iter()
            .enumerate()
            .map(|(i, k)| format!(r#""m{i}":"{k}""#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let set_all = |dify: &FakeDify| {
        for k in &keys {
            dify.set(k, Scenario::answer("Hi."));
        }
    };
    let (_app, fast) = spawn_app_cold(&[("MODEL_CONFIG", &config)], set_all).await;
    assert_eq!(fast.resolved, 10);
    // Each lookup waits 300 ms: one after the other would take 3 s.
    let (_app, slowish) = spawn_app_cold(&[("MODEL_CONFIG", &config)], |dify| {
        set_all(dify);
        dify.set_info_delay(Duration::from_millis(300));
    })
    .await;
    assert_eq!(slowish.resolved, 10);
    assert!(slowish.elapsed < Duration::from_millis(1500), "{slowish:?}");
    let (_app, slow) = spawn_app_cold(&[("MODEL_CONFIG", &config)], |dify| {
        set_all(dify);
        dify.set_info_delay(Duration::from_secs(10));
    })
    .await;
    assert_eq!(slow.unresolved, 10);
    assert!(slow.elapsed < Duration::from_millis(2500), "{slow:?}");
    eprintln!(
        "cold-start lookups of 10 models: {} ms (local Dify), {} ms (300 ms per /info), {} ms (Dify silent, budget 1500 ms)",
        fast.elapsed.as_millis(),
        slowish.elapsed.as_millis(),
        slow.elapsed.as_millis()
    );
}

#[tokio::test]
async fn a_workflow_takes_attached_files_in_its_file_input() {
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let image = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let app = spawn("").await;
    app.dify.set_input_form(
        FLOW_KEY,
        json!([
            {"paragraph": {"variable": "question", "label": "Question", "required": true}},
            {"file-list": {"variable": "photos", "label": "Photos", "required": true}}
        ]),
    );
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        workflow(WorkflowSpec::new(
            &["Two cats."],
            json!({"text": "Two cats."}),
        )),
    );
    let body = json!({"model": "flow", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "How many cats?"},
        image("https://images.example/cats.png"),
        image(&format!("data:image/png;base64,{PNG}")),
    ]}]});
    let (status, _, c) = app.chat(body).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "Two cats.");
    let uploads = app.dify.uploads();
    assert_eq!(uploads.len(), 1);
    let sent = &app.dify.app_requests()[0].body;
    assert_eq!(
        sent["inputs"]["photos"],
        json!([
            {"type": "image", "transfer_method": "remote_url", "url": "https://images.example/cats.png"},
            {"type": "image", "transfer_method": "local_file", "upload_file_id": uploads[0].id}
        ])
    );
    assert_eq!(
        sent["inputs"]["question"],
        "How many cats?\n[image]\n[image]"
    );
    assert!(sent.get("files").is_none(), "{sent}");

    // A workflow without a file input says so instead of dropping the files.
    app.dify.set_input_form(FLOW_KEY, json!([]));
    let app = spawn("").await;
    app.dify.set_app(
        FLOW_KEY,
        "workflow",
        workflow(WorkflowSpec::new(&["x"], json!({}))),
    );
    let body = json!({"model": "flow", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "How many cats?"}, image("https://images.example/cats.png")]}]});
    let (status, _, e) = app.chat(body).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is a Dify workflow with no file input"),
        "{e}"
    );
    assert!(app.dify.app_requests().is_empty());
}
