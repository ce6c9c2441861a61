use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::Scenario;

fn assert_error(body: &Value, code: Option<&str>, kind: &str) {
    let e = &body["error"];
    assert_eq!(e["type"], kind, "{body}");
    match code {
        Some(c) => assert_eq!(e["code"], c, "{body}"),
        None => assert!(e["code"].is_null(), "{body}"),
    }
    assert!(e.get("param").is_some(), "{body}");
    assert!(!e["message"].as_str().unwrap().is_empty());
}

async fn raw_post(app: &TestApp, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = app
        .client
        .post(format!("{}/v1/chat/completions", app.url))
        .bearer_auth(PROXY_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn unknown_model_is_404_naming_the_available_ones() {
    let app = spawn_app().await;
    let (status, _, body) = app
        .chat(json!({"model": "gpt-4o", "messages": [{"role":"user","content":"hi"}]}))
        .await;
    assert_eq!(status, 404);
    assert_error(&body, Some("model_not_found"), "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gpt-4o") && message.contains("my-app, zeta"),
        "{message}"
    );
    assert!(app.dify.requests().is_empty());
}

#[tokio::test]
async fn malformed_requests_are_400_saying_what_is_wrong() {
    let app = spawn_app().await;
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"{\"model\": \"my-app\", \"messages\": [".to_vec(), "not valid JSON", None),
        (b"".to_vec(), "empty", None),
        (b"[1,2]".to_vec(), "must be a JSON object", None),
        (b"{\"model\": 5, \"messages\": []}".to_vec(), "`model`", Some("model")),
        (br#"{"model":"my-app","messages":"hi"}"#.to_vec(), "`messages`", Some("messages")),
        (br#"{"model":"my-app","messages":[]}"#.to_vec(), "`messages` is empty", Some("messages")),
        (br#"{"model":"my-app","messages":[{"role":"system","content":"x"}]}"#.to_vec(), "no message with role `user`", Some("messages")),
        (br#"{"model":"my-app","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#.to_vec(), "`stream`", Some("stream")),
        (br#"{"model":"my-app","messages":[{"content":"hi"}]}"#.to_vec(), "missing field `role`", Some("messages[0]")),
        (
            br#"{"model":"my-app","messages":[{"role":"user","content":[{"type":"video_url","video_url":{"url":"https://x.test/a.mp4"}}]}]}"#.to_vec(),
            "type `video_url`",
            Some("messages[0].content[0].type"),
        ),
        (b"{\"model\":\"my-app\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(), "not valid JSON", None),
    ];
    for (body, needle, param) in cases {
        let shown = String::from_utf8_lossy(&body).to_string();
        let (status, json) = raw_post(&app, body).await;
        assert_eq!(status, 400, "{shown}: {json}");
        assert_error(&json, None, "invalid_request_error");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{shown}: {message}");
        assert_eq!(json["error"]["param"].as_str(), param, "{shown}");
    }
    assert!(app.dify.requests().is_empty());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = spawn_app_with(&[("MAX_REQUEST_BYTES", "2048")]).await;
    let big = "x".repeat(4096);
    let (status, json) = raw_post(&app, serde_json::to_vec(&user_message(&big)).unwrap()).await;
    assert_eq!(status, 413);
    assert_error(&json, Some("request_too_large"), "invalid_request_error");
}

#[tokio::test]
async fn dify_http_errors_map_to_statuses_a_client_can_act_on() {
    let app = spawn_app().await;
    let cases: Vec<(Scenario, u16, &str)> = vec![
        (
            Scenario::fixture_error("forbidden"),
            502,
            "dify_app_unavailable",
        ),
        (
            Scenario::fixture_error("too_many_requests"),
            429,
            "rate_limit_exceeded",
        ),
        (
            Scenario::fixture_error("rate_limit_error"),
            429,
            "insufficient_quota",
        ),
        (
            Scenario::fixture_error("not_chat_app"),
            502,
            "dify_app_mode_unsupported",
        ),
        (
            // "[openai] Error: Incorrect API key provided": the provider refused the
            // app's credentials.
            Scenario::fixture_error("completion_request_error"),
            502,
            "dify_provider_auth_error",
        ),
        (
            Scenario::fixture_error("internal_server_error"),
            502,
            "dify_server_error",
        ),
        (
            Scenario::error(400, "invalid_param", "`topic` is required in input form"),
            400,
            "invalid_param",
        ),
        (Scenario::html_gateway(502), 502, "dify_bad_gateway"),
        (Scenario::html_gateway(504), 502, "dify_bad_gateway"),
    ];
    for (scenario, status, code) in cases {
        let shown = format!("{scenario:?}");
        app.dify.set(APP_KEY, scenario);
        for stream in [false, true] {
            let mut body = user_message("hi");
            body["stream"] = json!(stream);
            let (got, _, json) = app.chat(body).await;
            assert_eq!(got, status, "{shown} stream={stream}: {json}");
            assert_eq!(json["error"]["code"], code, "{shown}");
        }
    }
}

#[tokio::test]
async fn rejected_app_key_is_a_server_error_naming_the_model() {
    let app = spawn_app().await;
    // APP_KEY was never set on the fake: Dify answers 401 "Access token is invalid".
    let (status, headers, json) = app.chat(user_message("hi")).await;
    assert_eq!(status, 502, "{json}");
    assert_eq!(json["error"]["code"], "dify_app_key_rejected");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`my-app`") && message.contains("MODEL_CONFIG"),
        "{message}"
    );
    assert!(!message.contains(APP_KEY));
    assert_eq!(headers["x-should-retry"], "false");
}

#[tokio::test]
async fn unreachable_dify_is_502() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/v1");
    let app = spawn_app_with(&[("DIFY_API_BASE", &base)]).await;
    let (status, _, json) = app.chat(user_message("hi")).await;
    assert_eq!(status, 502, "{json}");
    assert_eq!(json["error"]["code"], "dify_unreachable");
}

#[tokio::test]
async fn slow_dify_is_504_after_the_configured_timeout() {
    let app = spawn_app_with(&[("DIFY_TIMEOUT_SECONDS", "1")]).await;
    app.dify.set(APP_KEY, Scenario::Hang);
    let started = Instant::now();
    let (status, _, json) = app.chat(user_message("hi")).await;
    assert_eq!(status, 504, "{json}");
    assert_eq!(json["error"]["code"], "dify_timeout");
    assert!(json["error"]["message"].as_str().unwrap().contains("1 s"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn wrong_base_path_is_explained() {
    let app = spawn_app().await;
    let base = app.dify.base_url().trim_end_matches("/v1").to_string();
    let app2 = spawn_app_with(&[("DIFY_API_BASE", &base)]).await;
    let (status, _, json) = app2.chat(user_message("hi")).await;
    assert_eq!(status, 502, "{json}");
    assert_eq!(json["error"]["code"], "dify_endpoint_not_found");
    drop(app);
}

#[tokio::test]
async fn hostile_inputs_never_crash_the_server() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("still here"));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let many = json!({"model": MODEL, "messages": (0..5000).map(|i| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": "x"})).collect::<Vec<_>>()});
    let bodies: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        b"\x00\x01\x02".to_vec(),
        br#"{"model":"my-app","messages":[{"role":"user","content":"a"}],"n":-1}"#.to_vec(),
        br#"{"model":"my-app","model":"zeta","messages":[{"role":"user","content":"a"}]}"#.to_vec(),
        serde_json::to_vec(&many).unwrap(),
    ];
    for body in bodies {
        let (status, json) = raw_post(&app, body).await;
        assert!((200..500).contains(&status), "{status}: {json}");
        assert!(
            json.get("error").is_some() || json["object"] == "chat.completion",
            "{json}"
        );
    }
    // Still serving.
    let (status, _, json) = app.chat(user_message("hi")).await;
    assert_eq!(
        (status, json["choices"][0]["message"]["content"].as_str()),
        (200, Some("still here"))
    );
}
