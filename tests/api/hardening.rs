//! Security defaults and limits: per-key model allow-lists, 401 vs 403, content types,
//! message count, and the stream limits that end stalled or runaway answers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::{AnswerSpec, EndReason, Scenario};

#[tokio::test]
async fn keys_can_be_limited_to_models_with_a_distinct_403() {
    let app = spawn_app_with(&[(
        "PROXY_API_KEYS",
        &format!("{PROXY_KEY},sk-limited-key:zeta"),
    )])
    .await;
    app.dify.set(OTHER_KEY, Scenario::answer("from zeta"));
    let limited = |req: reqwest::RequestBuilder| req.bearer_auth("sk-limited-key");

    let models: Value = limited(app.client.get(format!("{}/v1/models", app.url)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["zeta"]);
    let r = limited(app.client.get(format!("{}/v1/models/{MODEL}", app.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let chat = |model: &str| {
        limited(app.client.post(format!("{}/v1/chat/completions", app.url)))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let denied = chat(MODEL).await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(
        (
            body["error"]["code"].as_str(),
            body["error"]["type"].as_str()
        ),
        (Some("model_not_allowed"), Some("permission_error"))
    );
    let allowed = chat("zeta").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        app.dify.requests().len(),
        1,
        "the denied request never reached Dify"
    );
    // An unknown model names only what this key may use.
    let unknown: Value = chat("nope").await.unwrap().json().await.unwrap();
    let message = unknown["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("zeta") && !message.contains(MODEL),
        "{message}"
    );
    // The unrestricted key still sees everything; a wrong key is 401, not 403.
    let all: Value = app
        .get("/v1/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let wrong = app
        .client
        .get(format!("{}/v1/models", app.url))
        .bearer_auth("sk-limited-key:zeta")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn wrong_content_types_are_415_but_curl_defaults_work() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    let body = serde_json::to_vec(&user_message("hi")).unwrap();
    let send = |ct: &'static str| {
        app.client
            .post(format!("{}/v1/chat/completions", app.url))
            .bearer_auth(PROXY_KEY)
            .header("content-type", ct)
            .body(body.clone())
            .send()
    };
    for ct in [
        "multipart/form-data; boundary=x",
        "application/xml",
        "image/png",
    ] {
        let r = send(ct).await.unwrap();
        assert_eq!(r.status(), 415, "{ct}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unsupported_media_type");
    }
    for ct in [
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",
        "text/plain",
    ] {
        assert_eq!(send(ct).await.unwrap().status(), 200, "{ct}");
    }
}

#[tokio::test]
async fn too_many_messages_is_400() {
    let app = spawn_app_with(&[("MAX_MESSAGES", "3")]).await;
    let messages: Vec<Value> = (0..4)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let (status, _, body) = app
        .chat(json!({"model": MODEL, "messages": messages}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "messages");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3")
    );
}

fn stall_after_first_token() -> Scenario {
    let first = "data: {\"event\":\"message\",\"task_id\":\"task-stall\",\"conversation_id\":\"c\",\"answer\":\"Thinking\"}\n\n";
    let late = "data: {\"event\":\"message_end\",\"task_id\":\"task-stall\",\"metadata\":{}}\n\n";
    Scenario::raw([
        (first.as_bytes().to_vec(), Duration::ZERO),
        (late.as_bytes().to_vec(), Duration::from_secs(20)),
    ])
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_and_the_task_is_stopped() {
    let app = spawn_app_with(&[("STREAM_IDLE_TIMEOUT_SECONDS", "1")]).await;
    app.dify.set(APP_KEY, stall_after_first_token());
    let started = Instant::now();
    let r = app.stream(streaming("hi")).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(r.content(), "Thinking");
    let e = r.error().expect("an error event");
    assert_eq!(e["code"], "dify_stream_error");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Dify sent nothing for 1 s"),
        "{e}"
    );
    let stop = app
        .dify
        .wait_for_stop(Duration::from_secs(5))
        .await
        .expect("the stalled task is stopped");
    assert_eq!(
        (stop.task_id.as_str(), stop.user.as_str()),
        ("task-stall", default_user().as_str())
    );

    // Blocking clients get a 502 instead of waiting forever.
    let (status, headers, body) = app.chat(user_message("hi")).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "dify_stream_error");
    assert_eq!(headers["x-should-retry"], "false");
}

#[tokio::test]
async fn answers_past_the_duration_limit_end_cleanly() {
    let app = spawn_app_with(&[("MAX_STREAM_SECONDS", "1")]).await;
    app.dify.set(
        APP_KEY,
        Scenario::endless(" more", Duration::from_millis(50), "task-long"),
    );
    let started = Instant::now();
    let r = app.stream(streaming("hi")).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(r.content().starts_with(" more more"));
    let e = r.error().expect("an error event");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("took longer than the limit of 1 s"),
        "{e}"
    );
    let stop = app
        .dify
        .wait_for_stop(Duration::from_secs(5))
        .await
        .expect("stopped");
    assert_eq!(stop.task_id, "task-long");
}

#[tokio::test]
async fn oversized_upstream_answers_are_cut() {
    let app = spawn_app_with(&[("MAX_UPSTREAM_BYTES", "4096")]).await;
    let text = "word ".repeat(2000);
    app.dify.set(
        APP_KEY,
        Scenario::Answer(AnswerSpec {
            task_id: Some("task-big".into()),
            ..AnswerSpec::new(text)
        }),
    );
    let r = app.stream(streaming("hi")).await;
    let e = r.error().expect("an error event");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit of 4096 bytes"),
        "{e}"
    );
    assert!(r.content().len() < 4096);
    assert_eq!(
        app.dify
            .wait_for_stop(Duration::from_secs(5))
            .await
            .expect("stopped")
            .task_id,
        "task-big"
    );
}

#[tokio::test]
async fn tls_and_dns_failures_are_clean_gateway_errors() {
    let app = spawn_app().await;
    // TLS to a server that speaks plain HTTP: the handshake fails.
    let tls = format!("https://{}/v1", app.dify.addr());
    let tls_app = spawn_app_with(&[("DIFY_API_BASE", &tls)]).await;
    let (status, _, body) = tls_app.chat(user_message("hi")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("dify_unreachable")),
        "{body}"
    );
    // A name that cannot resolve (.invalid is reserved): unreachable, or a timeout where
    // the resolver itself is slow; never a hang or a crash.
    let dns_app = spawn_app_with(&[
        ("DIFY_API_BASE", "http://dify.invalid/v1"),
        ("DIFY_TIMEOUT_SECONDS", "3"),
    ])
    .await;
    let (status, _, body) = dns_app.chat(user_message("hi")).await;
    assert!(matches!(status, 502 | 504), "{status} {body}");
    assert!(
        matches!(
            body["error"]["code"].as_str(),
            Some("dify_unreachable" | "dify_timeout")
        ),
        "{body}"
    );
}

#[tokio::test]
async fn client_leaving_during_a_slow_dify_step_stops_the_task_at_once() {
    let app = spawn_app().await;
    // One token, then a long silent step.
    app.dify.set(
        APP_KEY,
        Scenario::endless(" tok", Duration::from_secs(20), "task-slow"),
    );
    let r = app.post_chat(&streaming("hi")).send().await.unwrap();
    let mut body = r.bytes_stream();
    use futures_util::StreamExt;
    let mut seen = String::new();
    while !seen.contains(" tok") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    let left = Instant::now();
    drop(body);
    let stop = app
        .dify
        .wait_for_stop(Duration::from_secs(10))
        .await
        .expect("stopped");
    assert_eq!(stop.task_id, "task-slow");
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "noticed only after {:?}",
        left.elapsed()
    );
}

/// A client that gives up before the proxy has sent it a byte: its request must not keep
/// anything running upstream, and the server keeps answering.
#[tokio::test]
async fn client_leaving_before_the_first_byte_releases_dify_and_leaves_the_server_healthy() {
    // The proxy's own limits are far away: only the client leaving can end anything
    // within the waits below.
    let app = spawn_app_with(&[
        ("DIFY_TIMEOUT_SECONDS", "120"),
        ("STREAM_IDLE_TIMEOUT_SECONDS", "120"),
    ])
    .await;
    let wait = Duration::from_secs(5);
    let post = |body: &Value| {
        app.client
            .post(format!("{}/v1/chat/completions", app.url))
            .bearer_auth(PROXY_KEY)
            .json(body)
    };

    // 1. Dify never sends its response head. The client times out; the proxy drops its
    // request to Dify with it (the fake sees the connection close), instead of holding
    // it until DIFY_TIMEOUT_SECONDS.
    app.dify.set(APP_KEY, Scenario::Hang);
    for (n, stream) in [true, false].into_iter().enumerate() {
        let mut body = user_message("hi");
        body["stream"] = json!(stream);
        let err = post(&body)
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .expect_err("nothing can answer while Dify hangs");
        assert!(err.is_timeout(), "stream {stream}: {err:?}");
        let ends = app.dify.wait_for_hang_ends(n + 1, wait).await;
        assert_eq!(
            ends.iter().map(|e| e.reason).collect::<Vec<_>>(),
            vec![EndReason::ClientGone; n + 1],
            "stream {stream}: the proxy kept its Dify request open after the client left"
        );
    }
    assert_eq!(app.dify.requests().len(), 2);

    // 2. Dify has started the task (its first frame names it), then thinks for a long
    // time. A blocking client gets no byte until the answer is complete; when it gives up,
    // the proxy stops the task.
    app.dify.set(APP_KEY, stall_after_first_token());
    let sent = post(&user_message("hi")).send();
    let give_up = async {
        // Counted from Dify's receipt, so a slow start cannot eat the proxy's time to
        // read the first frame.
        app.dify.wait_for_requests(3, wait).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::select! {
        r = sent => panic!("answered while Dify was thinking: {r:?}"),
        _ = give_up => {}
    }
    let stop = app
        .dify
        .wait_for_stop(wait)
        .await
        .expect("the abandoned task is stopped");
    assert_eq!(
        (stop.task_id.as_str(), stop.key.as_str(), stop.user.as_str()),
        ("task-stall", APP_KEY, default_user().as_str())
    );

    // 3. The server is still healthy.
    app.dify.set(APP_KEY, Scenario::answer("healthy"));
    let (status, _, body) = app.chat(user_message("hi")).await;
    assert_eq!(
        (status, body["choices"][0]["message"]["content"].as_str()),
        (200, Some("healthy"))
    );
    assert_eq!(app.dify.stops().len(), 1, "{:?}", app.dify.stops());
}
