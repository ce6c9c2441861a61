//! Model-provider failures, which Dify wraps in `completion_request_error`: what the
//! provider said decides the status, code and retry hints a client sees, before the
//! stream (an HTTP error) and during it (the error event).

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::Scenario;

/// Provider texts as Dify passes them on (its category prefix, then the provider SDK's
/// message), with what the client must see: status, type, code, `x-should-retry`,
/// `retry-after`.
/// Message, status, type, code, `x-should-retry`, `retry-after`.
type Case = (
    &'static str,
    u16,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

fn cases() -> Vec<Case> {
    vec![
        (
            "[openai] Bad Request Error, Error code: 400 - {'error': {'message': \"This model's maximum context length is 8192 tokens. However, your messages resulted in 9013 tokens. Please reduce the length of the messages.\", 'type': 'invalid_request_error', 'param': 'messages', 'code': 'context_length_exceeded'}}",
            400,
            "invalid_request_error",
            "context_length_exceeded",
            Some("false"),
            None,
        ),
        (
            "[anthropic] Bad Request Error, Error code: 400 - {'type': 'error', 'error': {'type': 'invalid_request_error', 'message': 'prompt is too long: 215332 tokens > 200000 maximum'}}",
            400,
            "invalid_request_error",
            "context_length_exceeded",
            Some("false"),
            None,
        ),
        (
            "[openai] Rate Limit Error, Error code: 429 - {'error': {'message': 'Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29500, Requested 900. Please try again in 1.2s.', 'type': 'tokens', 'code': 'rate_limit_exceeded'}}",
            429,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            None,
            Some("2"),
        ),
        (
            "[azure_openai] Rate Limit Error, Error code: 429 - {'error': {'code': '429', 'message': 'Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-06-01 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds.'}}",
            429,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            None,
            Some("6"),
        ),
        (
            "[openai] Rate Limit Error, Error code: 429 - {'error': {'message': 'You exceeded your current quota, please check your plan and billing details.', 'type': 'insufficient_quota', 'code': 'insufficient_quota'}}",
            429,
            "insufficient_quota",
            "insufficient_quota",
            Some("false"),
            None,
        ),
        (
            "[anthropic] Error: Error code: 401 - {'type': 'error', 'error': {'type': 'authentication_error', 'message': 'invalid x-api-key'}}",
            502,
            "server_error",
            "dify_provider_auth_error",
            Some("false"),
            None,
        ),
        (
            "[anthropic] Server Unavailable Error, Error code: 529 - {'type': 'error', 'error': {'type': 'overloaded_error', 'message': 'Overloaded'}}",
            503,
            "server_error",
            "dify_provider_unavailable",
            None,
            None,
        ),
        (
            "[ollama] Error: model runner has unexpectedly stopped",
            502,
            "server_error",
            "dify_model_error",
            None,
            None,
        ),
    ]
}

#[tokio::test]
async fn provider_failures_before_the_stream_are_statuses_a_client_can_act_on() {
    let app = spawn_app().await;
    for (message, status, kind, code, should_retry, retry_after) in cases() {
        app.dify.set(
            APP_KEY,
            Scenario::error(400, "completion_request_error", message),
        );
        for stream in [false, true] {
            let mut body = user_message("hi");
            body["stream"] = json!(stream);
            let (got, headers, json) = app.chat(body).await;
            let shown = format!("{message} stream={stream}: {json}");
            assert_eq!(got, status, "{shown}");
            assert_eq!(json["error"]["type"], kind, "{shown}");
            assert_eq!(json["error"]["code"], code, "{shown}");
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            assert_eq!(header("x-should-retry"), should_retry, "{shown}");
            assert_eq!(header("retry-after"), retry_after, "{shown}");
            // The provider's own words reach the client, after ours.
            let text = json["error"]["message"].as_str().unwrap();
            assert!(text.contains("Dify says: ["), "{shown}");
        }
    }
    // The same through the Responses API.
    app.dify.set(
        APP_KEY,
        Scenario::error(400, "completion_request_error", cases()[0].0),
    );
    let r = app
        .post_responses(&json!({"model": MODEL, "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
}

/// Mid-stream Dify sends an `error` event: the same reading names the error event, and
/// a blocking client gets the status.
#[tokio::test]
async fn a_provider_failure_mid_stream_keeps_its_kind() {
    let app = spawn_app().await;
    let frames = |message: &str| {
        let error = json!({"event": "error", "conversation_id": "1b9e4d7a-2c5f-4e8b-a3d6-9f1c4b7e2a58",
            "message_id": "d4a7e1b9-3c6f-4a2d-8e5b-7c1f9a3d6e24", "created_at": 1784212400,
            "code": "completion_request_error", "status": 400, "message": message});
        let text = json!({"event": "message", "conversation_id": "1b9e4d7a-2c5f-4e8b-a3d6-9f1c4b7e2a58",
            "message_id": "d4a7e1b9-3c6f-4a2d-8e5b-7c1f9a3d6e24", "created_at": 1784212400,
            "task_id": "8e2b5d9f-1a4c-4e7b-b6d3-2f9a5c8e1b47", "id": "d4a7e1b9-3c6f-4a2d-8e5b-7c1f9a3d6e24",
            "answer": "Partly", "from_variable_selector": null});
        Scenario::raw([
            (format!("data: {text}\n\n"), Duration::ZERO),
            (format!("data: {error}\n\n"), Duration::ZERO),
        ])
    };
    let context = "[anthropic] Bad Request Error, Error code: 400 - prompt is too long: 215332 tokens > 200000 maximum";
    app.dify.set(APP_KEY, frames(context));
    let r = app.stream(streaming("hi")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "Partly");
    let e = r.error().expect("an error event");
    assert_eq!(e["type"], "invalid_request_error", "{e}");
    assert_eq!(e["code"], "context_length_exceeded", "{e}");

    let overloaded = "[anthropic] Server Unavailable Error, Error code: 529 - {'type': 'error', 'error': {'type': 'overloaded_error', 'message': 'Overloaded'}}";
    app.dify.set(APP_KEY, frames(overloaded));
    let (status, headers, json) = app.chat(user_message("hi")).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["error"]["code"], "dify_provider_unavailable");
    // Dify already ran the request: even a retryable kind is not replayed by the SDKs.
    assert_eq!(headers["x-should-retry"], "false");
}
