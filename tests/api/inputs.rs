//! App inputs: the model's defaults, what a request may set, and the app's required
//! variables checked before a new conversation reaches Dify.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::Scenario;

/// `my-app` with default inputs; requests may set `topic` and `language`.
fn config() -> String {
    json!({
        MODEL: {"key": APP_KEY, "inputs": {"language": "en", "tone": "dry"}, "request_inputs": ["topic", "language"]},
        "zeta": OTHER_KEY,
    })
    .to_string()
}

fn topic_form() -> Value {
    json!([
        {"paragraph": {"variable": "notes", "label": "Notes", "required": false}},
        {"text-input": {"variable": "topic", "label": "Topic of the day", "required": true, "max_length": 48}}
    ])
}

fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn defaults_and_request_inputs_reach_dify() {
    let app = spawn_app_with(&[("MODEL_CONFIG", &config())]).await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    app.dify.set(OTHER_KEY, Scenario::answer("ok"));

    let (status, _, v) = app.chat(user_message("first")).await;
    assert_eq!(status, 200, "{v}");
    // The extra_body form, and metadata.inputs as the JSON string OpenAI's metadata holds.
    let (status, _, v) = app
        .chat(with(
            user_message("second"),
            json!({"inputs": {"topic": "tides"}}),
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = app
        .chat(with(
            user_message("third"),
            json!({"metadata": {"inputs": "{\"language\": \"de\"}"}, "inputs": {"topic": "moon"}}),
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    let r = app
        .post_responses(&json!({"model": MODEL, "input": "fourth", "inputs": {"topic": "sun"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A model without inputs sends `{}`, as before.
    let (status, _, v) = app
        .chat(json!({"model": "zeta", "messages": [{"role": "user", "content": "fifth"}]}))
        .await;
    assert_eq!(status, 200, "{v}");

    let sent: Vec<Value> = app
        .dify
        .requests()
        .iter()
        .map(|r| r.body["inputs"].clone())
        .collect();
    assert_eq!(
        sent,
        [
            json!({"language": "en", "tone": "dry"}),
            json!({"language": "en", "tone": "dry", "topic": "tides"}),
            json!({"language": "de", "tone": "dry", "topic": "moon"}),
            json!({"language": "en", "tone": "dry", "topic": "sun"}),
            json!({}),
        ]
    );
}

#[tokio::test]
async fn an_input_outside_the_allow_list_is_refused_naming_it() {
    let app = spawn_app_with(&[("MODEL_CONFIG", &config())]).await;
    app.dify.set(APP_KEY, Scenario::answer("never"));
    let (status, headers, v) = app
        .chat(with(
            user_message("hi"),
            json!({"inputs": {"tone": "warm"}}),
        ))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "inputs");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`tone`") && message.contains("\"request_inputs\""),
        "{message}"
    );
    assert!(headers.get("x-request-id").is_some());
    // A model that allows none.
    let (status, _, v) = app
        .chat(
            json!({"model": "zeta", "messages": [{"role": "user", "content": "hi"}],
                     "metadata": {"inputs": {"topic": "x"}}}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "metadata.inputs");
    // Not an object.
    let (status, _, v) = app
        .chat(with(user_message("hi"), json!({"inputs": "topic=tides"})))
        .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("inputs"))
    );
    assert!(app.dify.requests().is_empty());
}

#[tokio::test]
async fn a_missing_required_input_is_refused_before_dify_is_called() {
    let app = spawn_app_with(&[("MODEL_CONFIG", &config())]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("ok"));
    app.dify.set_input_form(APP_KEY, topic_form());

    for stream in [false, true] {
        let (status, headers, v) = app
            .chat(with(user_message("hi"), json!({"stream": stream})))
            .await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], "inputs");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`topic` (Topic of the day)")
                && message.contains("extra_body={\"inputs\": {\"topic\": ...}}"),
            "{message}"
        );
        assert!(headers.get("x-should-retry").is_none());
    }
    let r = app
        .post_responses(&json!({"model": MODEL, "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`topic`"),
        "{v}"
    );
    assert!(app.dify.requests().is_empty(), "Dify was not called");

    // With the input the conversation starts; its next turn continues it without the
    // input (Dify keeps a conversation's inputs), and the form was fetched once.
    let first = with(
        user_message("My name is Ada."),
        json!({"inputs": {"topic": "names"}}),
    );
    let (status, _, v) = app.chat(first).await;
    assert_eq!(status, 200, "{v}");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, v) = app
        .chat(json!({"model": MODEL, "messages": [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "What is my name?"}]}))
        .await;
    assert_eq!(status, 200, "{v}");
    let seen = app.dify.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].conversation_id().is_some(),
        "continued: {:?}",
        seen[1].body
    );
    assert_eq!(app.dify.parameters_calls(APP_KEY), 1, "the form is cached");
}

#[tokio::test]
async fn when_parameters_fail_the_request_goes_to_dify() {
    let app = spawn_app_with(&[("MODEL_CONFIG", &config())]).await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    app.dify.set_input_form(APP_KEY, topic_form());
    app.dify.fail_parameters(APP_KEY, 500);

    // The proxy cannot check: Dify answers its own 400 for the missing input.
    let (status, _, v) = app.chat(user_message("hi")).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_param");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("topic is required in input form"),
        "{v}"
    );
    // With the input, answered.
    let (status, _, v) = app
        .chat(with(user_message("hi"), json!({"inputs": {"topic": "x"}})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(app.dify.requests().len(), 2);
    assert!(log_contains("could not read the app's /parameters"));
    // The failure is remembered for a while: one call, one log line.
    assert_eq!(app.dify.parameters_calls(APP_KEY), 1);
}
