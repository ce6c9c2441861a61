use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::{AnswerSpec, Scenario};

#[tokio::test]
async fn blocking_answer_from_a_chat_app() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let (status, headers, body) = app
        .chat(user_message("What is the capital of France?"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].is_i64());
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "The capital of France is Paris."
    );
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens":1070,"completion_tokens":86,"total_tokens":1156})
    );

    // What Dify received: streaming upstream even for a blocking client, the app key,
    // `inputs: {}`, the default user, the message alone.
    let sent = &app.dify.requests()[0];
    assert_eq!(sent.authorization, format!("Bearer {APP_KEY}"));
    assert_eq!(sent.response_mode(), Some("streaming"));
    assert_eq!(sent.body["inputs"], json!({}));
    assert_eq!(sent.query(), Some("What is the capital of France?"));
    assert_eq!(sent.user(), Some(default_user().as_str()));
    assert_eq!(sent.conversation_id(), None);
}

#[tokio::test]
async fn agent_app_answers_are_not_lost() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("agent-chat-stream.sse"));
    let (status, _, body) = app.chat(user_message("What time is it in Paris?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "It is 14:32 in Paris right now."
    );
    assert_eq!(body["usage"]["total_tokens"], 1936);
}

#[tokio::test]
async fn chatflow_answer_is_read_to_the_end() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chatflow-stream.sse"));
    let (status, _, body) = app.chat(user_message("Capital of France?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
    assert_eq!(body["usage"]["total_tokens"], 47);
}

#[tokio::test]
async fn moderated_answer_is_the_replacement() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-message-replace.sse"));
    let (status, _, body) = app
        .chat(user_message("How do I get the restricted thing?"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Sorry, I can't help with that request."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
}

#[tokio::test]
async fn earlier_messages_are_folded_into_the_query() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Sure."));
    let (status, _, body) = app
        .chat(json!({"model": MODEL, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}
        ]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Sure.");
    assert_eq!(
        app.dify.requests()[0].query(),
        Some(
            "System: You are terse.\n\nUser: My name is Ada.\n\nAssistant: Hello Ada.\n\nUser: What is my name?"
        )
    );
    assert_eq!(
        body["usage"]["total_tokens"],
        AnswerSpec::default().total_tokens()
    );
}

#[tokio::test]
async fn end_user_comes_from_field_then_header_then_metadata() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    let default = default_user();
    // Dify gets the end user behind the key's tag (see isolation.rs).
    let (alice, bob, carol) = (named_user("alice"), named_user("bob"), named_user("carol"));
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (
            json!({"user": "alice", "metadata": {"user_id": "carol"}}),
            Some("bob"),
            alice.as_str(),
        ),
        (
            json!({"metadata": {"user_id": "carol"}}),
            Some("bob"),
            bob.as_str(),
        ),
        (
            json!({"metadata": {"user_id": "carol"}}),
            None,
            carol.as_str(),
        ),
        (json!({}), None, default.as_str()),
    ];
    for (i, (extra, header, expected)) in cases.into_iter().enumerate() {
        let mut body = user_message("hi");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let mut req = app.post_chat(&body);
        if let Some(h) = header {
            req = req.header("X-OpenWebUI-User-Id", h);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        assert_eq!(app.dify.requests()[i].user(), Some(expected), "case {i}");
    }
}

#[tokio::test]
async fn unknown_request_fields_are_accepted() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("fine"));
    let mut body = user_message("hi");
    for (k, v) in [
        ("temperature", json!(0.3)),
        ("max_tokens", json!(50)),
        ("tools", json!([])),
        ("min_p", json!(0.1)),
        ("stream_options", json!({"include_usage": true})),
        ("stream", json!(false)),
    ] {
        body[k] = v;
    }
    let (status, _, body) = app.chat(body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "fine");
}
