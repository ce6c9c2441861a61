//! Issue 20, items 2 and 4 through the real HTTP stack: file URLs naming internal hosts
//! are refused before anything reaches Dify (`REMOTE_FILE_URLS`), and every field the
//! proxy reads is type-checked, a wrong type being a 400 naming it. (Item 3, memory by
//! bytes, is measured on the real binary in tests/load.rs.)

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::Scenario;

/// URLs Dify must never be asked to fetch under the default `REMOTE_FILE_URLS=public`,
/// in the spellings an attacker would try.
const INTERNAL: &[&str] = &[
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://127.0.0.1:8080/admin.png",
    "http://10.1.2.3/x.png",
    "http://192.168.0.10/x.png",
    "http://100.64.1.1/x.png",
    "http://localhost/x.png",
    "http://LOCALHOST./x.png",
    "http://dify.localhost/x.png",
    "http://[::1]/x.png",
    "http://[fd00::1]/x.png",
    "http://[fe80::1]/x.png",
    "http://0.0.0.0/x.png",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
];

fn chat_with_image(url: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}]})
}

#[tokio::test]
async fn internal_file_urls_are_refused_before_dify_sees_them() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("A cat."));
    for url in INTERNAL {
        let (status, headers, body) = app.chat(chat_with_image(url)).await;
        assert_eq!(status, 400, "{url}: {body}");
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error", "{url}: {body}");
        assert_eq!(error["code"], "remote_url_refused", "{url}: {body}");
        assert_eq!(
            error["param"], "messages[0].content[1].image_url",
            "{url}: {body}"
        );
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("only public addresses are allowed"),
            "{url}: {message}"
        );
        // The URL itself is not echoed (it may carry credentials).
        assert!(!message.contains(url), "{url}: {message}");
        assert_eq!(
            headers.get("x-should-retry").and_then(|v| v.to_str().ok()),
            Some("false")
        );
    }
    // The Responses API: `input_image` and `input_file.file_url`, streamed or not.
    for (part, param) in [
        (
            json!({"type": "input_image", "image_url": "http://169.254.169.254/latest/meta-data/"}),
            "input[0].content[1].image_url",
        ),
        (
            json!({"type": "input_file", "file_url": "http://[::ffff:10.0.0.1]/r.pdf"}),
            "input[0].content[1].file_url",
        ),
    ] {
        for stream in [false, true] {
            let r = app
                .post_responses(&json!({"model": MODEL, "stream": stream, "input": [{"role": "user", "content": [
                    {"type": "input_text", "text": "Read this."}, part,
                ]}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "remote_url_refused", "{body}");
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    }
    assert!(
        app.dify.requests().is_empty(),
        "reached Dify: {:?}",
        app.dify.requests()
    );
    assert_eq!(app.dify.parameters_calls(APP_KEY), 0);
    assert!(app.dify.uploads().is_empty());

    // A public host still goes to Dify as a remote URL.
    let (status, _, body) = app
        .chat(chat_with_image("https://images.example/cat.png"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        app.dify.requests()[0].body["files"][0]["url"],
        "https://images.example/cat.png"
    );
}

#[tokio::test]
async fn remote_file_urls_any_passes_internal_hosts_and_off_refuses_every_url() {
    let app = spawn_app_with(&[("REMOTE_FILE_URLS", "any")]).await;
    app.dify
        .set(APP_KEY, Scenario::answer("An internal chart."));
    let (status, _, body) = app.chat(chat_with_image("http://10.1.2.3/chart.png")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        app.dify.requests()[0].body["files"][0]["url"],
        "http://10.1.2.3/chart.png"
    );

    let app = spawn_app_with(&[("REMOTE_FILE_URLS", "off")]).await;
    app.dify.set(APP_KEY, Scenario::answer("unused"));
    let (status, _, body) = app
        .chat(chat_with_image("https://images.example/cat.png"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "remote_url_refused");
    assert_eq!(body["error"]["param"], "messages[0].content[1].image_url");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("turned remote file URLs off (REMOTE_FILE_URLS=off)"),
        "{message}"
    );
    assert!(app.dify.requests().is_empty());
    // Inline files still work with remote URLs off.
    let (status, _, body) = app
        .chat(json!({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}},
        ]}]}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// `(field, value)` pairs of the wrong type, and the param the 400 must name.
fn wrong_types() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("user", json!([]), "user"),
        ("user", json!({"id": 1}), "user.id"),
        ("user", json!(42), "user"),
        ("user", json!(true), "user"),
        ("metadata", json!("chat-1"), "metadata"),
        ("metadata", json!([1]), "metadata"),
        ("stream", json!("yes"), "stream"),
        ("model", json!(7), "model"),
        ("temperature", json!("hot"), "temperature"),
        ("top_p", json!([]), "top_p"),
        ("max_tokens", json!("many"), "max_tokens"),
        ("n", json!("one"), "n"),
        ("tools", json!({"type": "function"}), "tools"),
        (
            "stream_options",
            json!({"include_usage": "yes"}),
            "stream_options.include_usage",
        ),
    ]
}

#[tokio::test]
async fn chat_fields_of_the_wrong_type_are_a_400_naming_them() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Hi."));
    for (field, value, param) in wrong_types() {
        let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]});
        body[field] = value.clone();
        let (status, _, error) = app.chat(body).await;
        assert_eq!(status, 400, "{field}: {value}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], param, "{field}: {value}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{param}`")), "{message}");
    }
    assert!(app.dify.requests().is_empty());
    // What the SDKs and Open WebUI send keeps working: `user` as a string, as an Open
    // WebUI pipeline's object, null sampling fields.
    for user in [
        json!("alice"),
        json!({"id": "u-1", "name": "Ann", "role": "user"}),
        Value::Null,
    ] {
        let (status, _, body) = app
            .chat(
                json!({"model": MODEL, "user": user, "temperature": null, "max_tokens": 100,
                         "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .await;
        assert_eq!(status, 200, "{user}: {body}");
    }
    let sent = app.dify.requests();
    assert_eq!(sent[0].body["user"], named_user("alice").as_str());
    assert_eq!(sent[1].body["user"], named_user("u-1").as_str());
}

#[tokio::test]
async fn responses_fields_of_the_wrong_type_are_a_400_naming_them() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Hi."));
    for (field, value) in [
        ("user", json!([])),
        ("user", json!({"id": 1})),
        ("user", json!(42)),
        ("metadata", json!("x")),
        ("instructions", json!(["Be brief."])),
        ("temperature", json!("hot")),
        ("max_output_tokens", json!(-1)),
        ("store", json!("no")),
        ("tools", json!({"type": "function"})),
        ("previous_response_id", json!(5)),
    ] {
        let mut body = json!({"model": MODEL, "input": "Hi"});
        body[field] = value.clone();
        let r = app.post_responses(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{field}: {value}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["param"], field, "{field}: {value}: {error}");
    }
    assert!(app.dify.requests().is_empty());
}

#[tokio::test]
async fn open_webui_turns_with_large_tools_and_metadata_keep_working() {
    // Open WebUI sends its tools (~20 KB), a large `metadata` and `user` as an object on
    // every turn: well within the structure a request may hold.
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Done."));
    let tools: Vec<Value> = (0..40)
        .map(|i| {
            json!({"type": "function", "function": {
                "name": format!("tool_{i}"),
                "description": "Looks something up in a long list of places, carefully and slowly.",
                "parameters": {"type": "object", "properties": {
                    "query": {"type": "string", "description": "What to look for."},
                    "limit": {"type": "integer", "description": "How many.", "default": 5},
                    "filters": {"type": "array", "items": {"type": "string"}},
                }, "required": ["query"]},
            }})
        })
        .collect();
    let metadata = json!({
        "user_id": "u-1", "chat_id": "c-1", "message_id": "m-1", "session_id": "s-1",
        "features": {"web_search": false, "image_generation": false, "code_interpreter": false},
        "variables": (0..50).map(|i| (format!("{{{{VAR_{i}}}}}"), json!(format!("value {i}")))).collect::<serde_json::Map<_, _>>(),
        "model": {"id": MODEL, "name": "My app", "info": {"meta": {"capabilities": {"vision": true}}}},
    });
    let body = json!({
        "model": MODEL, "stream": false, "tools": tools, "metadata": metadata,
        "user": {"id": "u-1", "name": "Ann", "email": "ann@example.com", "role": "user"},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    });
    assert!(body["tools"].to_string().len() > 15_000);
    let (status, _, reply) = app.chat(body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "Done.");
}

#[tokio::test]
async fn too_many_content_parts_or_too_much_structure_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("unused"));
    let parts: Vec<Value> = (0..1001)
        .map(|_| json!({"type": "text", "text": "a"}))
        .collect();
    let (status, _, body) = app
        .chat(json!({"model": MODEL, "messages": [{"role": "user", "content": parts}]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "messages[0].content", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("more than 1000 content parts"),
        "{message}"
    );

    let tiny: Vec<Value> = (0..20_000).map(|_| json!({"a": 0})).collect();
    let (status, _, body) = app
        .chat(json!({"model": MODEL, "metadata": {"x": tiny},
                     "messages": [{"role": "user", "content": "Hi"}]}))
        .await;
    assert_eq!(status, 400, "{body}");
    let param = body["error"]["param"].as_str().unwrap();
    assert!(param.starts_with("metadata.x["), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("more objects and arrays than one request may hold"),
        "{message}"
    );
    assert!(app.dify.requests().is_empty());
}

#[tokio::test]
async fn a_remote_file_in_the_app_inputs_is_checked_like_a_file_part() {
    // A workflow's file variable can be filled through `inputs` with a remote URL, which
    // Dify fetches the same way: the same rule applies.
    let config = json!({
        MODEL: {"key": APP_KEY, "request_inputs": ["doc"]},
    })
    .to_string();
    let app = spawn_app_with(&[("MODEL_CONFIG", &config)]).await;
    app.dify.set(APP_KEY, Scenario::answer("Read it."));
    let with_doc = |url: &str| {
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Summarise the doc."}],
               "inputs": {"doc": {"type": "document", "transfer_method": "remote_url", "url": url}}})
    };
    let (status, _, body) = app
        .chat(with_doc("http://169.254.169.254/latest/meta-data/"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "remote_url_refused");
    assert_eq!(body["error"]["param"], "inputs.doc.url");
    assert!(app.dify.requests().is_empty());
    let (status, _, body) = app.chat(with_doc("https://docs.example/a.pdf")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        app.dify.requests()[0].body["inputs"]["doc"]["url"],
        "https://docs.example/a.pdf"
    );
}
