//! The real binary's cold start asks Dify about every model's app: a rejected key, a slow
//! Dify or an unreachable one never stop it from starting and serving the good models.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::process::{Running, refs, start};
use support::{FakeDify, Scenario};

const GOOD_KEY: &str = "app-coldgood0000000000a1";
const BAD_KEY: &str = "app-coldbad00000000000b2";
const PROXY_KEY: &str = "sk-cold-start-proxy-1";

fn vars(base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DIFY_API_BASE", base.to_string()),
        (
            "MODEL_CONFIG",
            format!(r#"{{"good":"{GOOD_KEY}","bad":"{BAD_KEY}"}}"#),
        ),
        ("PROXY_API_KEYS", PROXY_KEY.to_string()),
    ]
}

/// Starts the binary off the async runtime, so the fake Dify answers meanwhile; returns
/// it with the time until it listened.
async fn start_binary(base: &str) -> (Running, Duration) {
    let vars = vars(base);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let running = start(&refs(&vars));
        (running, started.elapsed())
    })
    .await
    .unwrap()
}

async fn chat(url: &str, model: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(PROXY_KEY)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "Hello there"}]}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn models(url: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/v1/models"))
        .bearer_auth(PROXY_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_is_logged_and_answered_without_asking_dify_again() {
    let dify = FakeDify::start().await;
    dify.set(GOOD_KEY, Scenario::answer("Hello from the good app."));
    dify.set_info(GOOD_KEY, "Good app", "Says hello.");
    // BAD_KEY is unknown to Dify.
    let (running, _) = start_binary(&dify.base_url()).await;
    let log = running.log();
    assert!(
        log.contains("Dify rejected this model's app key") && log.contains("app-…00b2"),
        "{log}"
    );
    assert!(!log.contains(BAD_KEY) && !log.contains(GOOD_KEY), "{log}");

    let (status, c) = chat(&running.url, "good").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        c["choices"][0]["message"]["content"],
        "Hello from the good app."
    );
    let lookups = dify.info_calls().len();
    let (status, e) = chat(&running.url, "bad").await;
    assert_eq!(status, 502);
    assert_eq!(e["error"]["code"], "dify_app_key_rejected");
    assert_eq!(dify.info_calls().len(), lookups, "no round trip");
    assert_eq!(dify.requests().len(), 1, "only the good model's answer");

    let list = models(&running.url).await;
    assert_eq!(list["data"][1]["id"], "good");
    assert_eq!(list["data"][1]["name"], "Good app");
    assert!(list["data"][0].get("name").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dify_holds_the_start_at_most_the_budget() {
    let dify = FakeDify::start().await;
    dify.set(GOOD_KEY, Scenario::answer("Hello from the good app."));
    dify.set_info_delay(Duration::from_secs(30));
    let (running, took) = start_binary(&dify.base_url()).await;
    // 1.5 s of budget, plus the process start on a busy machine.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(running.log().contains("looked up on first use"));

    dify.set_info_delay(Duration::ZERO);
    let (status, c) = chat(&running.url, "good").await;
    assert_eq!(status, 200, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dify_does_not_stop_the_start() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let (running, _) = start_binary(&base).await;
    assert!(running.log().contains("trying again on first use"));
    assert_eq!(
        models(&running.url).await["data"].as_array().unwrap().len(),
        2
    );
    let (status, e) = chat(&running.url, "good").await;
    assert_eq!(status, 502);
    assert_eq!(e["error"]["code"], "dify_unreachable");
}
