//! The function-URL events in `events/`, turned into HTTP requests the way Lambda turns
//! them (`lambda_http::request::from_str`, plus the invocation context lambda_http's
//! streaming adapter attaches) and sent straight to `opendify::app` with
//! `tower::ServiceExt::oneshot`, in front of the fake Dify: what a client of the function
//! URL gets for each event, in milliseconds, without a binary or a Runtime API.
//! (tests/lambda_runtime.rs and tests/cargo_lambda.rs run the same events through the
//! real binary.)

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use http_body_util::BodyExt;
use lambda_http::RequestExt;
use serde_json::Value;
use support::events::{event_files, event_text, fixture_answer, sse_data};
use support::{FakeDify, Scenario};
use tower::ServiceExt;

/// The proxy key and model name the event files use (README: run locally with
/// `PROXY_API_KEYS=local-dev-key` and a `my-app` entry in MODEL_CONFIG).
const PROXY_KEY: &str = "local-dev-key";
const MODEL: &str = "my-app";
const APP_KEY: &str = "app-lambdaevents0123456789ab";
/// A recorded Dify chat-app stream: "The capital of France is Paris.", 1156 tokens.
const FIXTURE: &str = "chat-app-stream.sse";
const FIXTURE_TOTAL_TOKENS: u64 = 1156;
/// The question every chat event asks.
const QUESTION: &str = "What is the capital of France?";

/// What the function answered, as the function URL hands it to the client.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
    /// The fake Dify behind the app, to see what reached it.
    dify: FakeDify,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Feeds `events/<name>` to the app, configured as the event files expect, in front of a
/// fresh fake Dify that replays the fixture.
async fn invoke(name: &str) -> Answer {
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::replay(FIXTURE));
    let vars = HashMap::from([
        ("DIFY_API_BASE".to_string(), dify.base_url()),
        (
            "MODEL_CONFIG".to_string(),
            format!(r#"{{"{MODEL}":"{APP_KEY}"}}"#),
        ),
        ("PROXY_API_KEYS".to_string(), PROXY_KEY.to_string()),
    ]);
    let config = opendify::Config::from_lookup(|name| vars.get(name).cloned())
        .expect("test config is valid");
    let store = Arc::new(opendify::store::MemoryStore::new(config.conversation_ttl));
    let state = opendify::AppState::new(config, store).expect("app state");

    let request = lambda_http::request::from_str(&event_text(name))
        .unwrap_or_else(|e| panic!("{name} is not a function URL event: {e}"))
        .with_lambda_context(lambda_http::Context::default());
    let response = opendify::app(state)
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{name}: the body failed: {e}"))
        .to_bytes();
    Answer {
        status: parts.status,
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ASCII content-type").to_string())
            .unwrap_or_default(),
        body: String::from_utf8(bytes.to_vec())
            .unwrap_or_else(|_| panic!("{name}: the body is not UTF-8")),
        dify,
    }
}

/// An OpenAI error body with this status, code, and a message; returns the body.
fn assert_openai_error(answer: &Answer, status: u16, code: Option<&str>) -> Value {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("application/json"),
        "content-type {:?}",
        answer.content_type
    );
    let body = answer.json();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    assert_eq!(error["code"].as_str(), code, "{body}");
    assert!(
        answer.dify.requests().is_empty(),
        "a refused request reached Dify"
    );
    body
}

/// The one Dify request a chat event made: the right app, streamed, the question asked.
fn assert_reached_dify_once(answer: &Answer) {
    let requests = answer.dify.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].key, APP_KEY);
    assert_eq!(requests[0].response_mode(), Some("streaming"));
    assert!(
        requests[0].query().is_some_and(|q| q.contains(QUESTION)),
        "{:?}",
        requests[0].query()
    );
}

#[tokio::test]
async fn models_event_lists_the_configured_model() {
    let answer = invoke("models.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    let list = answer.json();
    assert_eq!(list["object"], "list", "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|m| m["id"].as_str().expect("model id"))
        .collect();
    assert_eq!(ids, [MODEL], "{list}");
    assert_eq!(list["data"][0]["object"], "model", "{list}");
    assert!(answer.dify.requests().is_empty());
}

#[tokio::test]
async fn blocking_event_gets_one_completion() {
    let answer = invoke("chat-blocking.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    let completion = answer.json();
    assert_eq!(completion["object"], "chat.completion", "{completion}");
    assert_eq!(completion["model"], MODEL, "{completion}");
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant", "{completion}");
    assert_eq!(
        choice["message"]["content"],
        fixture_answer(FIXTURE).as_str(),
        "{completion}"
    );
    assert_eq!(choice["finish_reason"], "stop", "{completion}");
    assert_eq!(
        completion["usage"]["total_tokens"], FIXTURE_TOTAL_TOKENS,
        "{completion}"
    );
    assert_reached_dify_once(&answer);
}

#[tokio::test]
async fn streaming_event_gets_chunks_ending_in_done() {
    let answer = invoke("chat-streaming.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/event-stream"),
        "{}",
        answer.content_type
    );
    let data = sse_data(&answer.body);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        answer.body
    );
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}")))
        .collect();
    assert!(!chunks.is_empty(), "{}", answer.body);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == MODEL),
        "{}",
        answer.body
    );
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "{}",
        answer.body
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, fixture_answer(FIXTURE));
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, ["stop"], "{}", answer.body);
    assert_reached_dify_once(&answer);
}

#[tokio::test]
async fn event_without_a_key_is_401() {
    let answer = invoke("chat-no-key.json").await;
    assert_openai_error(&answer, 401, Some("invalid_api_key"));
}

#[tokio::test]
async fn unknown_model_event_is_404_naming_the_models() {
    let answer = invoke("chat-unknown-model.json").await;
    let body = assert_openai_error(&answer, 404, Some("model_not_found"));
    assert_eq!(body["error"]["param"], "model", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no-such-model") && message.contains(MODEL),
        "{body}"
    );
}

#[tokio::test]
async fn bad_json_event_is_400() {
    let answer = invoke("chat-bad-json.json").await;
    let body = assert_openai_error(&answer, 400, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid JSON")),
        "{body}"
    );
}

#[tokio::test]
async fn wrong_method_event_is_405() {
    let answer = invoke("chat-wrong-method.json").await;
    assert_openai_error(&answer, 405, Some("method_not_allowed"));
}

/// A new event file needs a test here too.
#[test]
fn every_event_file_has_a_test() {
    let covered = [
        "chat-bad-json.json",
        "chat-blocking.json",
        "chat-no-key.json",
        "chat-streaming.json",
        "chat-unknown-model.json",
        "chat-wrong-method.json",
        "models.json",
    ];
    let names = event_files();
    assert_eq!(names, covered, "add a test to tests/lambda_events.rs");
}
