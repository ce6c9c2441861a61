//! Parameters a Dify app cannot honour: refused (400 naming the parameter) only when the
//! client forces something it will rely on; otherwise ignored, so Open WebUI's built-in
//! tools on every turn keep working.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::Scenario;

/// Open WebUI 0.12's chat request: its built-in tools on every turn, no `tool_choice`,
/// its sampling settings.
fn open_webui_request() -> Value {
    let tool = |name: &str| {
        json!({"type": "function", "function": {"name": name, "description": format!("Built-in {name}"),
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}})
    };
    let tools: Vec<Value> = [
        "search_web",
        "fetch_url",
        "query_knowledge_files",
        "get_current_timestamp",
        "search_notes",
        "view_note",
        "write_note",
        "search_chats",
    ]
    .iter()
    .map(|n| tool(n))
    .collect();
    json!({
        "model": MODEL, "stream": true,
        "messages": [{"role": "system", "content": "You are helpful."},
                     {"role": "user", "content": "What is the capital of France?"}],
        "tools": tools,
        "temperature": 0.8, "top_p": 0.9, "max_tokens": 1024, "seed": 42, "stop": ["<|end|>"],
        "frequency_penalty": 0, "presence_penalty": 0, "reasoning_effort": "medium",
        "stream_options": {"include_usage": true},
        "metadata": {"chat_id": "c-1", "message_id": "m-1", "session_id": "s-1"}
    })
}

#[tokio::test]
async fn open_webui_with_its_builtin_tools_is_answered() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Paris."));
    let r = app.stream(open_webui_request()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "Paris.");
    assert!(r.done());
    assert_eq!(app.dify.requests().len(), 1);
}

#[tokio::test]
async fn what_a_client_relies_on_is_refused_naming_the_parameter() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("never"));
    let weather = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let cases = [
        // LangChain's bind_tools(..., tool_choice="any") and with_structured_output's
        // function-calling method.
        (
            json!({"tools": [weather], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            "tool_choice",
        ),
        // with_structured_output(method="json_schema") / the SDK's parse().
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "Person", "strict": true,
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"logprobs": true, "top_logprobs": 2}), "logprobs"),
        (
            json!({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}),
            "modalities",
        ),
        (json!({"n": 2}), "n"),
    ];
    for (extra, param) in cases {
        for stream in [false, true] {
            let mut body = user_message("Weather in Paris?");
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body["stream"] = json!(stream);
            let (status, _, v) = app.chat(body).await;
            assert_eq!(status, 400, "{extra}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert_eq!(v["error"]["param"], param, "{v}");
            if param != "n" {
                let message = v["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("a Dify app runs its own prompt"),
                    "{message}"
                );
            }
        }
    }
    assert!(app.dify.requests().is_empty(), "nothing reaches Dify");

    // Not forced: ignored.
    for extra in [
        json!({"tools": [weather], "tool_choice": "auto"}),
        json!({"tools": [weather], "tool_choice": "none"}),
        json!({"response_format": {"type": "text"}, "logprobs": false, "parallel_tool_calls": false,
               "max_completion_tokens": 100, "store": false, "service_tier": "auto"}),
    ] {
        let mut body = user_message("Weather in Paris?");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, _, v) = app.chat(body).await;
        assert_eq!(status, 200, "{extra}: {v}");
    }
}

#[tokio::test]
async fn the_responses_api_follows_the_same_rule() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let tool = json!({"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}});
    for (extra, param) in [
        (
            json!({"tools": [tool], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"tools": [tool], "tool_choice": {"type": "function", "name": "get_weather"}}),
            "tool_choice",
        ),
        (
            json!({"text": {"format": {"type": "json_schema", "name": "P", "schema": {"type": "object"}}}}),
            "text.format",
        ),
    ] {
        let mut body = json!({"model": MODEL, "input": "Weather in Paris?"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = app.post_responses(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{extra}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    assert!(app.dify.requests().is_empty());
    // An Agents SDK agent with a function tool it does not force: answered by the app.
    let r = app
        .post_responses(
            &json!({"model": MODEL, "input": "Weather in Paris?", "tools": [tool],
                                 "tool_choice": "auto", "parallel_tool_calls": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["tools"], json!([]), "the tools were not used: {v}");
}
