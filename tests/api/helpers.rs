//! `spawn_app`: the real router on 127.0.0.1:0, configured against a fresh fake Dify.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::support::FakeDify;

pub const PROXY_KEY: &str = "sk-proxy-test-0001";

/// The Dify user of a request with [`PROXY_KEY`] that names no end user.
pub fn default_user() -> String {
    opendify::config::Tenant::of_key(PROXY_KEY).dify_user(opendify::plan::DEFAULT_USER.to_string())
}
/// The Dify user of a request with [`PROXY_KEY`] that names the end user `user`.
pub fn named_user(user: &str) -> String {
    opendify::config::Tenant::of_key(PROXY_KEY).dify_user(user.to_string())
}
pub const APP_KEY: &str = "app-testkey000000000000a1";
pub const OTHER_KEY: &str = "app-testkey000000000000b2";
pub const MODEL: &str = "my-app";

pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    pub dify: FakeDify,
}

/// Every test's traffic is logged at debug level into one buffer; when a test's app is
/// dropped, the buffer must hold no key, no Authorization value and no prompt text sent
/// so far. So the whole suite's traffic is checked for leaks, at a more verbose level
/// than the default.
static LOG: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Default::default);
/// Message texts the tests sent (long enough not to match ordinary log words).
static PROMPTS: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);
static INIT: Once = Once::new();

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(opendify::telemetry::filter_directives(
            Some("debug"),
        ));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn remember_prompts(body: &Value) {
    let mut prompts = PROMPTS.lock().unwrap_or_else(|e| e.into_inner());
    // Responses API bodies: `input` as a string, or items like messages; `instructions`.
    for field in ["input", "instructions"] {
        if let Some(text) = body
            .get(field)
            .and_then(Value::as_str)
            .filter(|t| t.len() >= 12)
        {
            prompts.insert(text.to_string());
        }
    }
    let items = body.get("messages").or_else(|| body.get("input"));
    let Some(messages) = items.and_then(Value::as_array) else {
        return;
    };
    for m in messages {
        if let Some(text) = m
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| t.len() >= 12)
        {
            prompts.insert(text.to_string());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let log =
            String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).to_string();
        assert!(log.contains("request"), "the log capture is not working");
        for secret in [APP_KEY, OTHER_KEY, PROXY_KEY, "sk-another-key", "Bearer "] {
            assert!(!log.contains(secret), "{secret:?} appears in the log");
        }
        for prompt in PROMPTS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            assert!(
                !log.contains(prompt.as_str()),
                "prompt text {prompt:?} appears in the log"
            );
        }
    }
}

/// Whether the log of the whole test binary so far contains `text`.
pub fn log_contains(text: &str) -> bool {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).contains(text)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Extra variables override the defaults; an empty value removes one.
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_on(overrides, None).await
}

/// The app with its conversations in a fresh table of the shared moto DynamoDB server.
pub async fn spawn_app_dynamo(overrides: &[(&str, &str)]) -> (TestApp, String) {
    let moto = crate::support::moto::Moto::shared().await;
    let table = moto.fresh_table().await;
    let app = spawn_app_on(overrides, Some(&table)).await;
    (app, table)
}

/// The app on a fresh moto table whose item writes arrive `delay` late.
pub async fn spawn_app_slow_writes(delay: std::time::Duration) -> (TestApp, String) {
    let moto = crate::support::moto::Moto::shared().await;
    let table = moto.fresh_table().await;
    let app = spawn_app_store(&[], Store::SlowWrites(&table, delay)).await;
    (app, table)
}

enum Store<'a> {
    Memory,
    Moto(&'a str),
    SlowWrites(&'a str, std::time::Duration),
}

async fn spawn_app_on(overrides: &[(&str, &str)], table: Option<&str>) -> TestApp {
    spawn_app_store(overrides, table.map_or(Store::Memory, Store::Moto)).await
}

async fn spawn_app_store(overrides: &[(&str, &str)], store: Store<'_>) -> TestApp {
    spawn_app_full(overrides, store, None).await.0
}

/// The app after a cold start's lookup of every model's Dify app (as `serve` does):
/// `prepare` sets the fake Dify up first. Also how the lookups went.
pub async fn spawn_app_cold(
    overrides: &[(&str, &str)],
    prepare: impl Fn(&FakeDify),
) -> (TestApp, opendify::apps::ColdStart) {
    let (app, report) = spawn_app_full(overrides, Store::Memory, Some(&prepare)).await;
    (app, report.expect("resolved at cold start"))
}

async fn spawn_app_full(
    overrides: &[(&str, &str)],
    store: Store<'_>,
    prepare: Option<&dyn Fn(&FakeDify)>,
) -> (TestApp, Option<opendify::apps::ColdStart>) {
    capture_logs();
    let dify = FakeDify::start().await;
    let mut vars: HashMap<String, String> = HashMap::from([
        ("DIFY_API_BASE".to_string(), dify.base_url()),
        (
            "MODEL_CONFIG".to_string(),
            format!(r#"{{"{MODEL}":"{APP_KEY}","zeta":{{"key":"{OTHER_KEY}"}}}}"#),
        ),
        (
            "PROXY_API_KEYS".to_string(),
            format!("sk-another-key,{PROXY_KEY}"),
        ),
    ]);
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    let config = opendify::Config::from_lookup(|name| vars.get(name).cloned())
        .expect("test config is valid");
    let ttl = config.conversation_ttl;
    let moto = || crate::support::moto::Moto::shared();
    let store: std::sync::Arc<dyn opendify::store::ConversationStore> = match store {
        Store::Moto(table) => std::sync::Arc::new(moto().await.store(table, ttl)),
        Store::SlowWrites(table, delay) => {
            std::sync::Arc::new(moto().await.store_with_slow_writes(table, ttl, delay).await)
        }
        Store::Memory => std::sync::Arc::new(opendify::store::MemoryStore::new(ttl)),
    };
    let state = opendify::AppState::new(config, store).unwrap();
    let report = match prepare {
        Some(prepare) => {
            prepare(&dify);
            Some(state.resolve_apps().await)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // The server setup `main` uses, socket options included.
    tokio::spawn(opendify::serve::serve_local(
        listener,
        opendify::app(state),
        std::future::pending(),
    ));
    let app = TestApp {
        url,
        client: reqwest::Client::new(),
        dify,
    };
    (app, report)
}

/// One SSE frame as the client received it, with its arrival time.
#[derive(Debug, Clone)]
pub struct Frame {
    pub at: Instant,
    pub text: String,
}

pub struct SseResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub frames: Vec<Frame>,
}

impl SseResponse {
    /// JSON of every `data:` frame except `[DONE]`.
    pub fn data(&self) -> Vec<Value> {
        self.frames
            .iter()
            .filter_map(|f| f.text.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad JSON {d:?}: {e}")))
            .collect()
    }

    pub fn chunks(&self) -> Vec<Value> {
        self.data()
            .into_iter()
            .filter(|v| v.get("error").is_none())
            .collect()
    }

    pub fn error(&self) -> Option<Value> {
        self.data()
            .into_iter()
            .find(|v| v.get("error").is_some())
            .map(|v| v["error"].clone())
    }

    pub fn content(&self) -> String {
        self.chunks()
            .iter()
            .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["delta"]["content"].as_str().map(str::to_string))
            .collect()
    }

    pub fn done(&self) -> bool {
        self.frames.last().is_some_and(|f| f.text == "data: [DONE]")
    }

    pub fn pings(&self) -> usize {
        self.frames
            .iter()
            .filter(|f| f.text.starts_with(':'))
            .count()
    }
}

impl TestApp {
    pub fn post_chat(&self, body: &Value) -> reqwest::RequestBuilder {
        remember_prompts(body);
        self.client
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(PROXY_KEY)
            .json(body)
    }

    /// `POST /v1/responses` with the main proxy key.
    pub fn post_responses(&self, body: &Value) -> reqwest::RequestBuilder {
        remember_prompts(body);
        self.client
            .post(format!("{}/v1/responses", self.url))
            .bearer_auth(PROXY_KEY)
            .json(body)
    }

    /// An authenticated GET of `path` (e.g. `/v1/models`).
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(PROXY_KEY)
    }

    pub async fn chat(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self.post_chat(&body).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, headers, json)
    }

    /// Sends a streaming request and reads the whole SSE body, frame by frame.
    pub async fn stream(&self, body: Value) -> SseResponse {
        let r = self.post_chat(&body).send().await.unwrap();
        read_sse(r).await
    }
}

pub async fn read_sse(r: reqwest::Response) -> SseResponse {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut body = r.bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), body.next()).await {
        let chunk = chunk.unwrap();
        let at = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let text = String::from_utf8(buf[..end].to_vec()).expect("the proxy sends UTF-8");
            buf.drain(..end + 2);
            frames.push(Frame { at, text });
        }
    }
    assert!(
        buf.is_empty(),
        "unterminated frame: {:?}",
        String::from_utf8_lossy(&buf)
    );
    SseResponse {
        status,
        headers,
        frames,
    }
}

pub fn user_message(text: &str) -> Value {
    serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": text}]})
}

pub fn streaming(text: &str) -> Value {
    let mut v = user_message(text);
    v["stream"] = Value::Bool(true);
    v
}
