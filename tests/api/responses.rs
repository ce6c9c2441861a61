//! `POST /v1/responses` over real HTTP: the response object, the streamed event sequence,
//! `previous_response_id` against the DynamoDB protocol server, and what is refused.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::moto::Moto;
use crate::support::{Scenario, fixture_bytes};

/// The answer of `chat-app-stream.sse`.
const FIXTURE_ANSWER: &str = "The capital of France is Paris.";

async fn respond(app: &TestApp, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = app.post_responses(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, json)
}

/// The streamed events as (name, data), checking that each frame is `event:` + `data:`
/// with the same type and that sequence numbers count from 0.
fn events(r: &SseResponse) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for frame in r.frames.iter().filter(|f| !f.text.starts_with(':')) {
        let (name, data) = frame
            .text
            .strip_prefix("event: ")
            .and_then(|f| f.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not an event: {:?}", frame.text));
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], name);
        assert_eq!(data["sequence_number"], out.len());
        out.push((name.to_string(), data));
    }
    out
}

fn output_text(response: &Value) -> String {
    response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no output text in {response}"))
        .to_string()
}

#[tokio::test]
async fn a_blocking_request_gets_one_response_object() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let (status, _, v) = respond(
        &app,
        json!({"model": MODEL, "input": "What is the capital of France?", "metadata": {"topic": "geo"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["model"], MODEL);
    assert_eq!(output_text(&v), FIXTURE_ANSWER);
    assert_eq!(v["output"][0]["role"], "assistant");
    assert_eq!(v["usage"]["total_tokens"], 1156);
    assert_eq!(v["usage"]["input_tokens"], 1070);
    assert_eq!(v["metadata"]["topic"], "geo");
    let sent = app.dify.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].query(), Some("What is the capital of France?"));
    assert_eq!(sent[0].response_mode(), Some("streaming"));
    assert_eq!(sent[0].conversation_id(), None);
}

#[tokio::test]
async fn a_streamed_response_is_the_reference_event_sequence_as_it_arrives() {
    let app = spawn_app().await;
    app.dify.set(
        APP_KEY,
        Scenario::Replay {
            fixture: "chat-app-stream.sse",
            split: crate::support::Split::Frames,
            delay: Duration::from_millis(150),
        },
    );
    let r = app
        .post_responses(
            &json!({"model": MODEL, "input": "Capital of France, please?", "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let r = read_sse(r).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(
        !r.frames.iter().any(|f| f.text.contains("[DONE]")),
        "the Responses API has no [DONE]"
    );
    let events = events(&r);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let deltas: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas.concat(), FIXTURE_ANSWER);
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(output_text(completed), FIXTURE_ANSWER);
    assert_eq!(completed["usage"]["output_tokens"], 86);
    assert_eq!(completed["id"], events[0].1["response"]["id"]);

    // Incremental: the deltas arrived spread over Dify's pacing, not in one burst.
    let delta_frames: Vec<_> = r
        .frames
        .iter()
        .filter(|f| f.text.starts_with("event: response.output_text.delta"))
        .collect();
    let spread = delta_frames.last().unwrap().at - delta_frames[0].at;
    assert!(
        spread >= Duration::from_millis(150),
        "deltas arrived within {spread:?}: buffered"
    );
}

/// Turn n of a `previous_response_id` chain; returns the response.
async fn chained(app: &TestApp, input: Value, previous: Option<&str>, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "input": input});
    if let Some(p) = previous {
        body["previous_response_id"] = json!(p);
    }
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    let (status, _, v) = respond(app, body).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn previous_response_id_continues_the_dify_conversation_with_only_the_new_input() {
    let (app, table) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted."));
    let r1 = chained(
        &app,
        json!("My name is Ada and I like chess."),
        None,
        json!({"instructions": "Answer in one short sentence.", "user": "lovelace"}),
    )
    .await;
    let id1 = r1["id"].as_str().unwrap();
    let r2 = chained(
        &app,
        json!([{"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]}]),
        Some(id1),
        json!({"instructions": "Answer in one short sentence.", "user": "lovelace"}),
    )
    .await;
    assert_eq!(r2["previous_response_id"], id1);
    let id2 = r2["id"].as_str().unwrap();
    // Streamed this time: the mapping is written as soon as Dify names the conversation.
    let r = app
        .post_responses(&json!({"model": MODEL, "input": "And my hobby?", "previous_response_id": id2, "user": "lovelace", "stream": true}))
        .send()
        .await
        .unwrap();
    let r3 = read_sse(r).await;
    let events = events(&r3);
    assert_eq!(events.last().unwrap().0, "response.completed");

    let sent = app.dify.requests();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[0].query(),
        Some("System: Answer in one short sentence.\n\nUser: My name is Ada and I like chess.")
    );
    assert_eq!(sent[0].conversation_id(), None);
    let conversation = app.dify.conversation_ids(APP_KEY, &named_user("lovelace"));
    assert_eq!(conversation.len(), 1, "one Dify conversation for the chain");
    assert_eq!(sent[1].query(), Some("What is my name?"));
    assert_eq!(sent[1].conversation_id(), Some(conversation[0].as_str()));
    assert_eq!(sent[2].query(), Some("And my hobby?"));
    assert_eq!(sent[2].conversation_id(), Some(conversation[0].as_str()));
    for s in &sent {
        assert_eq!(s.user(), Some(named_user("lovelace").as_str()));
    }

    // The table holds digests and conversation ids, never a response id or the user.
    let items = Moto::shared().await.scan_raw(&table).await;
    assert!(!items.is_empty());
    let dump = format!("{items:?}");
    // Words with letters outside hex digits: a digest can spell "ada" by chance.
    for secret in [id1, id2, "lovelace", "Ada", "chess"] {
        assert!(!dump.contains(secret), "{secret} is in the table: {dump}");
    }
}

#[tokio::test]
async fn a_response_is_continued_only_by_its_key_user_and_model() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted."));
    app.dify
        .set(OTHER_KEY, Scenario::answer_with_conversations("Noted."));
    let r1 = chained(
        &app,
        json!("Remember the word quartz."),
        None,
        json!({"user": "ada"}),
    )
    .await;
    let id = r1["id"].as_str().unwrap();
    let kept = chained(
        &app,
        json!("No store, please."),
        None,
        json!({"user": "ada", "store": false}),
    )
    .await;
    assert_eq!(kept["store"], false);

    let attempts = [
        // Unknown id.
        (
            PROXY_KEY,
            json!({"model": MODEL, "user": "ada", "previous_response_id": "resp_0123456789abcdef0123456789abcdef"}),
        ),
        // Another user of the same key.
        (
            PROXY_KEY,
            json!({"model": MODEL, "user": "eve", "previous_response_id": id}),
        ),
        // Another proxy key (tenant), same user.
        (
            "sk-another-key",
            json!({"model": MODEL, "user": "ada", "previous_response_id": id}),
        ),
        // Another model.
        (
            PROXY_KEY,
            json!({"model": "zeta", "user": "ada", "previous_response_id": id}),
        ),
        // `store: false` kept nothing.
        (
            PROXY_KEY,
            json!({"model": MODEL, "user": "ada", "previous_response_id": kept["id"]}),
        ),
    ];
    for (key, mut body) in attempts {
        body["input"] = json!("What was the word?");
        let shown = body.to_string();
        let r = app
            .client
            .post(format!("{}/v1/responses", app.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{shown}");
        assert_eq!(r.headers()["x-should-retry"], "false");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], "previous_response_id", "{shown}");
        assert_eq!(v["error"]["code"], "previous_response_not_found");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(body["previous_response_id"].as_str().unwrap())
        );
    }
    // None of them reached Dify.
    assert_eq!(app.dify.requests().len(), 2);

    // The owner still can.
    let r2 = chained(
        &app,
        json!("What was the word?"),
        Some(id),
        json!({"user": "ada"}),
    )
    .await;
    assert_eq!(r2["status"], "completed");
    let sent = app.dify.requests();
    assert_eq!(
        sent[2].conversation_id(),
        sent[0].conversation_id().or(Some(
            app.dify.conversation_ids(APP_KEY, &named_user("ada"))[0].as_str()
        ))
    );
}

#[tokio::test]
async fn a_conversation_deleted_in_dify_is_reported_not_replaced() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted."));
    let r1 = chained(&app, json!("Remember the word basalt."), None, json!({})).await;
    let conversation = app.dify.conversation_ids(APP_KEY, &default_user());
    assert!(app.dify.delete_conversation(&conversation[0]));
    let (status, _, v) = respond(
        &app,
        json!({"model": MODEL, "input": "What was the word?", "previous_response_id": r1["id"]}),
    )
    .await;
    // A new conversation would answer without the context the client asked for.
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "previous_response_id");
    assert_eq!(app.dify.requests().len(), 2);
}

#[tokio::test]
async fn a_midstream_dify_error_fails_the_response() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-error-midstream.sse"));
    let r = app
        .post_responses(&json!({"model": MODEL, "input": "Tell me a long story.", "stream": true}))
        .send()
        .await
        .unwrap();
    let r = read_sse(r).await;
    assert_eq!(r.status, 200);
    let events = events(&r);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[names.len() - 2..],
        ["error", "response.failed"],
        "{names:?}"
    );
    assert!(!names.contains(&"response.completed"));
    let failed = &events.last().unwrap().1["response"];
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );

    // Blocking: an HTTP error, as for chat completions.
    let (status, _, v) = respond(
        &app,
        json!({"model": MODEL, "input": "Tell me a long story."}),
    )
    .await;
    assert!(status >= 400, "{status} {v}");
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn a_cancelled_stream_stops_the_dify_task() {
    let app = spawn_app().await;
    let task = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
    app.dify.set(
        APP_KEY,
        Scenario::endless("tick ", Duration::from_millis(30), task),
    );
    let r = app
        .post_responses(&json!({"model": MODEL, "input": "Count forever, please.", "stream": true, "user": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    use futures_util::StreamExt;
    let mut seen = String::new();
    while !seen.contains("response.output_text.delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a delta in time")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    let stop = app
        .dify
        .wait_for_stop(Duration::from_secs(10))
        .await
        .expect("the Dify task is stopped");
    assert_eq!(
        (stop.task_id.as_str(), stop.user.as_str(), stop.key.as_str()),
        (task, named_user("bob").as_str(), APP_KEY)
    );
}

#[tokio::test]
async fn what_a_dify_app_cannot_do_is_refused_by_name() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let cases = [
        (
            json!({"model": MODEL, "input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": MODEL, "input": "x", "background": true}),
            "background",
        ),
        (
            json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "aGk=", "format": "mp3"}}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c1", "output": "42"}]}),
            "input[0]",
        ),
        (json!({"model": MODEL}), "input"),
    ];
    for (body, param) in cases {
        let shown = body.to_string();
        let (status, _, v) = respond(&app, body).await;
        assert_eq!(status, 400, "{shown}: {v}");
        assert_eq!(v["error"]["param"], param, "{shown}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // The harmless defaults the SDKs send are accepted.
    let (status, _, v) = respond(
        &app,
        json!({"model": MODEL, "input": "What is the capital of France?", "tools": [], "tool_choice": "auto",
               "parallel_tool_calls": true, "temperature": 0.3, "truncation": "disabled", "include": [],
               "text": {"format": {"type": "text"}}, "store": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["temperature"], 0.3);
    assert_eq!(app.dify.requests().len(), 1);

    // Unknown models and keys answer as for chat completions.
    let (status, _, v) = respond(&app, json!({"model": "nope", "input": "x"})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let r = app
        .client
        .post(format!("{}/v1/responses", app.url))
        .json(&json!({"model": MODEL, "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn stored_responses_cannot_be_retrieved_and_say_why() {
    let app = spawn_app().await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/responses/resp_123"),
        (reqwest::Method::DELETE, "/v1/responses/resp_123"),
        (reqwest::Method::GET, "/v1/responses/resp_123/input_items"),
        (reqwest::Method::POST, "/v1/responses/resp_123/cancel"),
    ] {
        let r = app
            .client
            .request(method.clone(), format!("{}{path}", app.url))
            .bearer_auth(PROXY_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 501, "{method} {path}");
        // A retry cannot help: the SDKs must not replay it.
        assert_eq!(r.headers()["x-should-retry"], "false");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unsupported");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("previous_response_id")
        );
    }
    let _ = fixture_bytes;
}

#[tokio::test]
async fn continuing_one_response_twice_is_logged_as_a_branch() {
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted."));
    let r1 = chained(
        &app,
        json!("Remember the word granite."),
        None,
        json!({"user": "bo"}),
    )
    .await;
    let id = r1["id"].as_str().unwrap();
    const BRANCH: &str = "was already continued";
    chained(
        &app,
        json!("What was the word?"),
        Some(id),
        json!({"user": "bo"}),
    )
    .await;
    assert!(!log_contains(BRANCH), "a first continuation is no branch");
    // A retry or a branch from the same response: Dify's conversation already has the
    // first continuation's turn, which this answer will see; that must not go unnoticed.
    chained(
        &app,
        json!("And the word again?"),
        Some(id),
        json!({"user": "bo"}),
    )
    .await;
    assert!(log_contains(BRANCH), "the branch was not logged");
    let sent = app.dify.requests();
    assert_eq!(sent[2].conversation_id(), sent[1].conversation_id());
}
