use serde_json::{Value, json};

use crate::helpers::*;

fn assert_openai_error(body: &Value, code: &str) {
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some(),
        "param key must be present: {body}"
    );
}

#[tokio::test]
async fn every_route_requires_a_valid_proxy_key() {
    let app = spawn_app().await;
    let routes = [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models/my-app"),
        ("GET", "/elsewhere"),
    ];
    for (method, path) in routes {
        let url = format!("{}{path}", app.url);
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic c2stcHJveHk="),
            Some("Bearer sk-proxy-test-000"),
        ] {
            let mut req = app
                .client
                .request(method.parse().unwrap(), &url)
                .json(&user_message("hi"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            assert_openai_error(&r.json().await.unwrap(), "invalid_api_key");
        }
    }
    assert!(
        app.dify.requests().is_empty(),
        "nothing reaches Dify without a key"
    );
    // Any configured key works, scheme in any case.
    let r = app
        .client
        .get(format!("{}/v1/models", app.url))
        .header("authorization", "bearer sk-another-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn unknown_path_and_wrong_method_are_openai_errors() {
    let app = spawn_app().await;
    let r = app.get("/v1/completions").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_openai_error(&r.json().await.unwrap(), "unknown_url");

    for (method, path) in [
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
        ("PUT", "/v1/chat/completions"),
    ] {
        let r = app
            .client
            .request(method.parse().unwrap(), format!("{}{path}", app.url))
            .bearer_auth(PROXY_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_openai_error(&r.json().await.unwrap(), "method_not_allowed");
    }
}

#[tokio::test]
async fn explicit_opt_out_serves_without_keys() {
    let app = spawn_app_with(&[("PROXY_API_KEYS", ""), ("ALLOW_UNAUTHENTICATED", "true")]).await;
    let r = app
        .client
        .get(format!("{}/v1/models", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let app = spawn_app().await;
    let r = app.get("/v1/models").send().await.unwrap();
    assert!(
        r.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let r = app
        .client
        .post(format!("{}/v1/chat/completions", app.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn browser_preflight_is_answered_without_a_key() {
    let app = spawn_app().await;
    let r = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", app.url),
        )
        .header("origin", "https://chat.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-os",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(h.contains_key("access-control-max-age"));
}

#[tokio::test]
async fn cors_headers_are_on_answers_errors_and_streams() {
    let app = spawn_app().await;
    app.dify.set(
        APP_KEY,
        crate::support::Scenario::replay("chat-app-stream.sse"),
    );
    let origin = "https://chat.example.com";
    let ok = app
        .get("/v1/models")
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    let denied = app
        .client
        .get(format!("{}/v1/models", app.url))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    let stream = app
        .post_chat(&streaming("hi"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    for r in [&ok, &denied, &stream] {
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "*",
            "{}",
            r.status()
        );
        let exposed = r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            exposed.contains("x-request-id") && exposed.contains("retry-after"),
            "{exposed}"
        );
    }
    assert_eq!(denied.status(), 401);
}

#[tokio::test]
async fn cors_origins_can_be_restricted_or_disabled() {
    let app = spawn_app_with(&[("CORS_ALLOW_ORIGINS", "https://chat.example.com")]).await;
    let get = |origin: &'static str| app.get("/v1/models").header("origin", origin).send();
    let allowed = get("https://chat.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    let other = get("https://evil.example.net").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let off = spawn_app_with(&[("CORS_ALLOW_ORIGINS", "none")]).await;
    let r = off
        .get("/v1/models")
        .header("origin", "https://a.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}
