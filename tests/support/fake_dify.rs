//! A fake Dify service API for integration tests.
//!
//! It listens on loopback and speaks Dify's wire format (see
//! `tests/fixtures/dify/README.md` and the shared `dify-api.md`):
//!
//! - `POST /v1/chat-messages` with `Authorization: Bearer <app key>`;
//! - `POST /v1/files/upload` and the `files` of a chat message (see `fake_dify_files.rs`);
//! - `POST /v1/chat-messages/{task_id}/stop`, which always answers 200
//!   `{"result": "success"}` once the key and `user` are valid (after
//!   [`FakeDify::set_stop_delay`], if one is set);
//! - `GET /v1/parameters`: the app's input form (see `fake_dify_params.rs`);
//! - `POST /v1/text-to-audio` and `POST /v1/audio-to-text` (see `fake_dify_audio.rs`);
//! - any other path: 404 with a Dify error body.
//!
//! What `/chat-messages` answers is chosen per app key with [`FakeDify::set`].
//! A key that was never set is unknown and gets Dify's 401.
//!
//! Requests are checked in Dify's order: key, then JSON, then `user`, then the
//! pydantic payload (`inputs`, `query`, `response_mode`, `conversation_id`),
//! then the empty query. Only then is the scenario run. Error bodies are
//! written the way Flask writes them: `json.dumps` separators (`", "` and
//! `": "`), non-ASCII escaped, a trailing `\n`, `Content-Type: application/json`.
//!
//! Completion and workflow apps and `GET /info`: `fake_dify_apps.rs`.
//!
//! Streams are written through a channel into a streaming body. Every write
//! goes out as its own HTTP chunk, so delays between writes are real.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, watch};

#[path = "fake_dify_apps.rs"]
mod apps;
pub use apps::{AppRequest, AppRun, AppStop, WorkflowSpec};
#[path = "fake_dify_reasoning.rs"]
mod reasoning;
pub use reasoning::Script;
/// `/files/upload`, `files` in chat messages, the 1.12.x `message_file` quirk.
#[path = "fake_dify_files.rs"]
mod files;
/// `/parameters` and the input-form check.
#[path = "fake_dify_params.rs"]
mod params;
pub use files::Upload;
/// `/text-to-audio` and `/audio-to-text`.
#[path = "fake_dify_audio.rs"]
mod audio;
pub use audio::{AUDIO_LIMIT, AudioCall, SpeechApp};

/// Folder holding the Dify wire fixtures.
pub const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dify/");

/// An `Endless` stream ends by itself after this long.
pub const ENDLESS_CAP: Duration = Duration::from_secs(30);

/// A `Hang` request gives up after this long (or when the fake is dropped).
pub const HANG_CAP: Duration = Duration::from_secs(120);

/// `Content-Type` of every Dify stream.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

/// `Content-Type` of Dify's JSON bodies (errors and blocking answers).
pub const JSON_CONTENT_TYPE: &str = "application/json";

const MSG_NO_HEADER: &str = "Authorization header must be provided and start with 'Bearer'";
const MSG_BAD_SCHEME: &str = "Authorization scheme must be 'Bearer'";
const MSG_BAD_TOKEN: &str = "Access token is invalid";
const MSG_BAD_JSON: &str = "Invalid JSON payload received or JSON payload is empty.";
const MSG_NOT_JSON: &str = "Did not attempt to load JSON data because the request Content-Type was not 'application/json'.";
const MSG_NOT_FOUND: &str = "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.";
const MSG_NOT_ALLOWED: &str = "The method is not allowed for the requested URL.";
const MSG_INTERNAL: &str = "The server encountered an internal error and was unable to complete your request. Either the server is overloaded or there is an error in the application.";
const MSG_NO_CONVERSATION: &str = "Conversation Not Exists.";
const PYDANTIC_DOCS: &str = "https://errors.pydantic.dev/2.12/v/";

/// Path of a fixture file in `tests/fixtures/dify/`.
pub fn fixture_path(name: &str) -> String {
    format!("{FIXTURE_DIR}{name}")
}

/// Bytes of a fixture file in `tests/fixtures/dify/`. Panics if it cannot be read.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fake_dify: cannot read fixture {path}: {e}"))
}

/// How a replayed body is cut into writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// One write per SSE frame: cut after each `\n\n`.
    Frames,
    /// One write per byte. Multi-byte UTF-8 characters get split across writes.
    EveryByte,
    /// One write.
    Whole,
    /// Writes of `n` bytes (the last may be shorter). `0` counts as `1`.
    Chunks(usize),
}

/// What the fake answers on `/chat-messages` for one app key.
#[derive(Clone, Debug)]
pub enum Scenario {
    /// 200 and the bytes of a fixture file, written in pieces per `split` with
    /// `delay` between writes. `Content-Type` is the SSE one, or
    /// `application/json` for a `.json` fixture. Ignores `response_mode`.
    Replay {
        fixture: &'static str,
        split: Split,
        delay: Duration,
    },
    /// 200 SSE head, then these bytes, each part written after its delay.
    /// For truncated streams, invalid UTF-8, malformed frames, stalls.
    /// [`Scenario::raw_left_open`] keeps the connection open after the last part.
    Raw { parts: Vec<(Bytes, Duration)> },
    /// Like `Raw`, then the connection is cut mid-body (no final chunk): the client
    /// sees a transport error, as when a gateway or Dify's worker dies mid-answer.
    CutOff { parts: Vec<(Bytes, Duration)> },
    /// A plain response with any status (not only errors), sent at once.
    /// See [`Scenario::error`], [`Scenario::fixture_error`], [`Scenario::html_gateway`].
    HttpError {
        status: u16,
        body: String,
        content_type: &'static str,
    },
    /// Never send the response head. Ends when the client closes the connection,
    /// the fake is dropped, or [`HANG_CAP`] passes; see [`FakeDify::hang_ends`].
    Hang,
    /// A chat-app stream: one `message` frame with `token` every `delay` (the
    /// first at once) until `/stop` names `task_id` with the same key and user
    /// (then a `message_end` and the end, as Dify does when stopped), the
    /// client goes away, or [`ENDLESS_CAP`] passes. Ignores `response_mode`.
    Endless {
        token: String,
        delay: Duration,
        task_id: String,
    },
    /// A generated chat-app answer; see [`AnswerSpec`].
    Answer(AnswerSpec),
    /// Scripted chat-family frames (thinking, agent thoughts, citations); see [`Script`].
    Scripted(Script),
    /// The n-th valid request for the key gets the n-th scenario; the last one
    /// repeats. For retry tests (e.g. first 429, then an answer).
    Sequence(Vec<Scenario>),
}

/// A generated chat-app answer.
///
/// Streaming (`response_mode: "streaming"`): one `message` frame per word of
/// `text` (a word keeps its leading whitespace, as Dify's chunks do), then
/// `message_end` with `usage`. Otherwise (blocking, Dify's default): the
/// blocking JSON body. A non-empty `conversation_id` in the request is reused,
/// otherwise a new one is made. `task_id` and `message_id` are new each time
/// unless `task_id` is set. A `/stop` for the task ends the stream early with
/// `message_end`.
#[derive(Clone, Debug)]
pub struct AnswerSpec {
    pub text: String,
    /// Pause before every frame after the first.
    pub delay: Duration,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// When true, a `conversation_id` that this fake did not issue to the same
    /// key and user (or that was deleted) gets 404 "Conversation Not Exists.".
    pub conversations: bool,
    pub task_id: Option<String>,
}

impl AnswerSpec {
    pub const DEFAULT_PROMPT_TOKENS: u64 = 11;
    pub const DEFAULT_COMPLETION_TOKENS: u64 = 22;

    pub fn new(text: impl Into<String>) -> Self {
        AnswerSpec {
            text: text.into(),
            ..AnswerSpec::default()
        }
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl Default for AnswerSpec {
    fn default() -> Self {
        AnswerSpec {
            text: String::new(),
            delay: Duration::ZERO,
            prompt_tokens: Self::DEFAULT_PROMPT_TOKENS,
            completion_tokens: Self::DEFAULT_COMPLETION_TOKENS,
            conversations: false,
            task_id: None,
        }
    }
}

impl Scenario {
    /// Replay a fixture one frame per write, without delay.
    pub fn replay(fixture: &'static str) -> Self {
        Scenario::Replay {
            fixture,
            split: Split::Frames,
            delay: Duration::ZERO,
        }
    }

    /// Raw parts, each with the delay that comes before it.
    pub fn raw<B: Into<Bytes>>(parts: impl IntoIterator<Item = (B, Duration)>) -> Self {
        Scenario::Raw {
            parts: parts.into_iter().map(|(b, d)| (b.into(), d)).collect(),
        }
    }

    /// Raw parts, then nothing more, with the connection left open: it ends when the
    /// client closes it, the fake is dropped, or [`HANG_CAP`] passes (then it ends
    /// normally, `Completed`). For a Dify that lingers after its last event.
    pub fn raw_left_open<B: Into<Bytes>>(parts: impl IntoIterator<Item = (B, Duration)>) -> Self {
        let mut parts: Vec<(Bytes, Duration)> =
            parts.into_iter().map(|(b, d)| (b.into(), d)).collect();
        parts.push((Bytes::new(), HANG_CAP));
        Scenario::Raw { parts }
    }

    /// Raw parts, each with the delay that comes before it, then the connection is cut.
    pub fn cut_off<B: Into<Bytes>>(parts: impl IntoIterator<Item = (B, Duration)>) -> Self {
        Scenario::CutOff {
            parts: parts.into_iter().map(|(b, d)| (b.into(), d)).collect(),
        }
    }

    /// A Dify error body: `{"code": .., "message": .., "status": ..}` + `\n`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Scenario::HttpError {
            status,
            body: dify_error_body(status, code, message),
            content_type: JSON_CONTENT_TYPE,
        }
    }

    /// The first entry of `error-bodies.json` whose `body.code` equals
    /// `when_or_code` or whose `when` contains it, e.g. `"too_many_requests"`,
    /// `"forbidden"`, `"concurrency"`. Panics if none matches.
    pub fn fixture_error(when_or_code: &str) -> Self {
        let all: Value = serde_json::from_slice(&fixture_bytes("error-bodies.json"))
            .expect("fake_dify: error-bodies.json is not JSON");
        let entries = all.as_array().cloned().unwrap_or_default();
        let entry = entries
            .iter()
            .find(|e| e["body"]["code"].as_str() == Some(when_or_code))
            .or_else(|| {
                entries
                    .iter()
                    .find(|e| e["when"].as_str().is_some_and(|w| w.contains(when_or_code)))
            })
            .unwrap_or_else(|| {
                panic!("fake_dify: no entry for {when_or_code:?} in error-bodies.json")
            });
        let status = entry["http_status"].as_u64().unwrap_or(500) as u16;
        Scenario::error(
            status,
            entry["body"]["code"].as_str().unwrap_or_default(),
            entry["body"]["message"].as_str().unwrap_or_default(),
        )
    }

    /// An nginx-style HTML error page, e.g. `html_gateway(502)`.
    pub fn html_gateway(status: u16) -> Self {
        let line = match StatusCode::from_u16(status) {
            Ok(s) => format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or("Error")),
            Err(_) => format!("{status} Error"),
        };
        Scenario::HttpError {
            status,
            body: format!(
                "<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            ),
            content_type: "text/html",
        }
    }

    /// A generated answer with default usage (11 + 22 = 33 tokens).
    pub fn answer(text: impl Into<String>) -> Self {
        Scenario::Answer(AnswerSpec::new(text))
    }

    /// Like [`Scenario::answer`], but conversation ids are checked like Dify does.
    pub fn answer_with_conversations(text: impl Into<String>) -> Self {
        Scenario::Answer(AnswerSpec {
            conversations: true,
            ..AnswerSpec::new(text)
        })
    }

    pub fn endless(token: impl Into<String>, delay: Duration, task_id: impl Into<String>) -> Self {
        Scenario::Endless {
            token: token.into(),
            delay,
            task_id: task_id.into(),
        }
    }

    /// Panics (on the test side, in `set`) for a fixture that does not exist.
    fn check(&self) {
        match self {
            Scenario::Replay { fixture, .. } => {
                let path = fixture_path(fixture);
                assert!(
                    std::path::Path::new(&path).is_file(),
                    "fake_dify: fixture {path} does not exist"
                );
            }
            Scenario::Sequence(list) => list.iter().for_each(Scenario::check),
            _ => {}
        }
    }
}

/// One request to `/chat-messages`, recorded before any check.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The bearer token as Dify would parse it; `""` if the header was unusable.
    pub key: String,
    /// The raw `Authorization` header; `""` if absent.
    pub authorization: String,
    /// The parsed JSON body; if it was not JSON, a `Value::String` of the raw text.
    pub body: Value,
    pub headers: HeaderMap,
    pub at: Instant,
}

impl Recorded {
    /// A string field of the body.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.body.get(name)?.as_str()
    }
    pub fn user(&self) -> Option<&str> {
        self.str_field("user")
    }
    pub fn query(&self) -> Option<&str> {
        self.str_field("query")
    }
    pub fn conversation_id(&self) -> Option<&str> {
        self.str_field("conversation_id")
    }
    pub fn response_mode(&self) -> Option<&str> {
        self.str_field("response_mode")
    }
}

/// One call to `/chat-messages/{task_id}/stop`, recorded before any check
/// (so a call with a bad key or no `user` shows up too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopCall {
    pub task_id: String,
    /// `user` from the JSON body as Dify would read it; `""` if missing.
    pub user: String,
    /// Bearer token; `""` if the header was unusable.
    pub key: String,
}

/// One `DELETE /conversations/{id}` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub key: String,
    pub user: String,
    pub conversation_id: String,
}

/// One call to the stop endpoint with its timing (see [`FakeDify::set_stop_delay`]).
#[derive(Clone, Debug)]
pub struct StopRecord {
    pub call: StopCall,
    /// When the request (head and body) had arrived.
    pub received: Instant,
    /// When the fake had finished handling it: its answer was ready to go out.
    pub answered: Instant,
}

/// Why a streamed response (Replay, Raw, CutOff, Endless, streaming Answer) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Everything was written.
    Completed,
    /// A matching `/stop` arrived (a `message_end` was sent).
    Stopped,
    /// The client closed the connection or dropped the body.
    ClientGone,
    /// [`ENDLESS_CAP`] passed.
    Cap,
    /// The fake was dropped.
    Shutdown,
}

/// How a `Hang` request ended (it never sent a response head).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HangEnd {
    pub key: String,
    /// `ClientGone` (the client closed the connection, so the server dropped the
    /// request), `Shutdown` or `Cap`.
    pub reason: EndReason,
    /// How long the request was held open.
    pub held: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    pub key: String,
    /// The generated stream's task id (Endless, Answer); `None` for Replay and Raw.
    pub task_id: Option<String>,
    pub reason: EndReason,
}

/// The fake server. Cloning shares it; it shuts down when the last clone is dropped.
#[derive(Clone)]
pub struct FakeDify {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _guard: Arc<ShutdownGuard>,
}

impl FakeDify {
    /// Binds 127.0.0.1 on a free port and serves in a background task.
    pub async fn start() -> FakeDify {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake_dify: cannot bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake_dify: no local address");
        let (tx, rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            data: Mutex::new(Data::default()),
            shutdown: rx.clone(),
            params: params::Params::default(),
            audio: audio::Audio::default(),
        });
        let app = apps::routes(Router::new())
            .route(
                "/v1/chat-messages",
                post(chat_messages).fallback(method_not_allowed),
            )
            .route(
                "/v1/chat-messages/{task_id}/stop",
                post(stop_task).fallback(method_not_allowed),
            )
            .route("/v1/parameters", get(params::parameters))
            .route("/v1/text-to-audio", post(audio::text_to_audio))
            .route("/v1/audio-to-text", post(audio::audio_to_text))
            .route(
                "/v1/files/upload",
                post(files::upload).fallback(method_not_allowed),
            )
            .route(
                "/v1/conversations/{id}",
                delete(delete_conversation).fallback(method_not_allowed),
            )
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                redirect_layer,
            ))
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        // Without TCP_NODELAY, Nagle holds back the small writes of a paced stream.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let mut stop_rx = rx;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { wait_shutdown(&mut stop_rx).await })
                .await;
        });
        FakeDify {
            addr,
            shared,
            _guard: Arc::new(ShutdownGuard(tx)),
        }
    }

    /// Every request (any path) is answered `status` with `Location: location`, as
    /// a Dify behind a proxy that moved it (http to https, another path). Requests
    /// for a path under `/moved/` (where such a redirect points) are counted in
    /// [`FakeDify::moved_hits`] and answered 404.
    pub fn set_redirect(&self, status: u16, location: &str) {
        self.shared.lock().redirect = Some((status, location.to_string()));
    }

    /// How many requests followed a redirect to `/moved/...`.
    pub fn moved_hits(&self) -> usize {
        self.shared.lock().moved_hits
    }

    /// `http://127.0.0.1:PORT/v1`: the proxy's `DIFY_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `key` a valid app key answering with `scenario` (replacing any
    /// earlier one and restarting its `Sequence` count).
    pub fn set(&self, key: &str, scenario: Scenario) {
        scenario.check();
        let mut d = self.shared.lock();
        d.scenarios.insert(key.to_string(), scenario);
        d.hits.remove(key);
    }

    /// Holds every `/chat-messages` answer (before its status line) until `n`
    /// requests have arrived, or 10 s passed: makes races between concurrent
    /// requests happen for sure instead of depending on the machine's speed.
    pub fn hold_answers_until(&self, n: usize) {
        self.shared.lock().hold_until = n;
    }

    /// Every request to `/chat-messages` so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Every call to the stop endpoint so far, oldest first.
    /// Every `DELETE /conversations/{id}` received, in order.
    pub fn deletions(&self) -> Vec<Deletion> {
        self.shared.lock().deletions.clone()
    }

    pub fn stops(&self) -> Vec<StopCall> {
        self.shared.lock().stops.clone()
    }

    /// Makes the stop endpoint wait `delay` before it answers (and before it signals
    /// the task): a slow Dify or network. Zero (the default) answers at once.
    pub fn set_stop_delay(&self, delay: Duration) {
        self.shared.lock().stop_delay = delay;
    }

    /// Every stop call that has been answered so far, with its timing, oldest first.
    pub fn stop_records(&self) -> Vec<StopRecord> {
        self.shared.lock().stop_records.clone()
    }

    /// The first answered stop call naming `task_id`, waiting up to `timeout` for one.
    pub async fn wait_for_stop_of(&self, task_id: &str, timeout: Duration) -> Option<StopRecord> {
        self.wait_for(timeout, |d| {
            d.stop_records
                .iter()
                .find(|r| r.call.task_id == task_id)
                .cloned()
        })
        .await
    }

    /// Every finished stream so far, oldest first.
    pub fn stream_ends(&self) -> Vec<StreamEnd> {
        self.shared.lock().ends.clone()
    }

    /// The first stop call, waiting up to `timeout` for one.
    pub async fn wait_for_stop(&self, timeout: Duration) -> Option<StopCall> {
        self.wait_for(timeout, |d| d.stops.first().cloned()).await
    }

    /// Every finished `Hang` request so far, oldest first.
    pub fn hang_ends(&self) -> Vec<HangEnd> {
        self.shared.lock().hang_ends.clone()
    }

    /// Waits up to `timeout` until at least `n` `Hang` requests have ended; returns all
    /// of them (fewer than `n` on timeout).
    pub async fn wait_for_hang_ends(&self, n: usize, timeout: Duration) -> Vec<HangEnd> {
        self.wait_for(timeout, |d| {
            (d.hang_ends.len() >= n).then(|| d.hang_ends.clone())
        })
        .await
        .unwrap_or_else(|| self.hang_ends())
    }

    /// The first finished stream, waiting up to `timeout` for one.
    pub async fn wait_for_stream_end(&self, timeout: Duration) -> Option<StreamEnd> {
        self.wait_for(timeout, |d| d.ends.first().cloned()).await
    }

    /// Waits up to `timeout` until at least `n` requests arrived; returns all of
    /// them (fewer than `n` on timeout).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_for(timeout, |d| {
            (d.requests.len() >= n).then(|| d.requests.clone())
        })
        .await
        .unwrap_or_else(|| self.requests())
    }

    /// Conversation ids issued to (or used by) `key` + `user`, oldest first.
    pub fn conversation_ids(&self, key: &str, user: &str) -> Vec<String> {
        self.shared
            .lock()
            .conversations
            .get(&(key.to_string(), user.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets a conversation, as if it was deleted in Dify. True if it was known.
    pub fn delete_conversation(&self, id: &str) -> bool {
        let id = normalize_uuid(id).unwrap_or_else(|| id.to_string());
        let mut d = self.shared.lock();
        let mut found = false;
        for ids in d.conversations.values_mut() {
            let before = ids.len();
            ids.retain(|c| *c != id);
            found |= ids.len() != before;
        }
        found
    }

    async fn wait_for<T>(&self, timeout: Duration, f: impl Fn(&Data) -> Option<T>) -> Option<T> {
        self.shared.wait_for(timeout, f).await
    }
}

struct ShutdownGuard(watch::Sender<bool>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shut down.
    let _ = rx.wait_for(|v| *v).await;
}

// ---------------------------------------------------------------------------
// Shared state

struct Shared {
    data: Mutex<Data>,
    shutdown: watch::Receiver<bool>,
    params: params::Params,
    audio: audio::Audio,
}

#[derive(Default)]
struct Data {
    scenarios: HashMap<String, Scenario>,
    hits: HashMap<String, usize>,
    requests: Vec<Recorded>,
    stops: Vec<StopCall>,
    /// See [`FakeDify::deletions`].
    deletions: Vec<Deletion>,
    /// See [`FakeDify::stop_records`].
    stop_records: Vec<StopRecord>,
    /// See [`FakeDify::set_stop_delay`].
    stop_delay: Duration,
    ends: Vec<StreamEnd>,
    hang_ends: Vec<HangEnd>,
    conversations: HashMap<(String, String), Vec<String>>,
    tasks: HashMap<String, Vec<TaskEntry>>,
    next_task_serial: u64,
    /// See [`FakeDify::hold_answers_until`].
    hold_until: usize,
    apps: apps::AppsData,
    /// See `fake_dify_files.rs`.
    files: files::FileStore,
    /// See [`FakeDify::set_redirect`].
    redirect: Option<(u16, String)>,
    /// Requests that reached a path under `/moved/` (a followed redirect).
    moved_hits: usize,
}

struct TaskEntry {
    serial: u64,
    key: String,
    user: String,
    stop: Arc<Notify>,
}

/// [`FakeDify::set_redirect`]: answers the redirect, or counts a followed one.
async fn redirect_layer(
    State(st): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path().starts_with("/moved/") {
        st.lock().moved_hits += 1;
        return not_found().await;
    }
    let redirect = st.lock().redirect.clone();
    match redirect {
        Some((status, location)) => Response::builder()
            .status(status)
            .header(header::LOCATION, location)
            .body(Body::empty())
            .expect("fake_dify: redirect response"),
        None => next.run(request).await,
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls `f` under the lock until it yields a value or `timeout` passes.
    async fn wait_for<T>(&self, timeout: Duration, f: impl Fn(&Data) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(&self.lock()) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(5))).await;
        }
    }

    fn knows_key(&self, key: &str) -> bool {
        let d = self.lock();
        d.scenarios.contains_key(key) || d.apps.modes.contains_key(key) || self.audio.knows(key)
    }

    fn next_scenario(&self, key: &str) -> Option<Scenario> {
        let mut d = self.lock();
        let scenario = d.scenarios.get(key)?.clone();
        let hits = d.hits.entry(key.to_string()).or_insert(0);
        let n = *hits;
        *hits += 1;
        Some(match scenario {
            // An empty list stays a `Sequence`, which `run_scenario` answers with a 500.
            Scenario::Sequence(list) => match list.get(n).or(list.last()) {
                Some(one) => one.clone(),
                None => Scenario::Sequence(list),
            },
            other => other,
        })
    }

    fn conversation_known(&self, key: &str, user: &str, id: &str) -> bool {
        self.lock()
            .conversations
            .get(&(key.to_string(), user.to_string()))
            .is_some_and(|ids| ids.iter().any(|c| c == id))
    }

    fn remember_conversation(&self, key: &str, user: &str, id: &str) {
        let mut d = self.lock();
        let ids = d
            .conversations
            .entry((key.to_string(), user.to_string()))
            .or_default();
        if !ids.iter().any(|c| c == id) {
            ids.push(id.to_string());
        }
    }

    fn register_task(self: &Arc<Self>, task_id: &str, key: &str, user: &str) -> TaskGuard {
        let stop = Arc::new(Notify::new());
        let mut d = self.lock();
        d.next_task_serial += 1;
        let serial = d.next_task_serial;
        d.tasks
            .entry(task_id.to_string())
            .or_default()
            .push(TaskEntry {
                serial,
                key: key.to_string(),
                user: user.to_string(),
                stop: stop.clone(),
            });
        TaskGuard {
            shared: self.clone(),
            task_id: task_id.to_string(),
            serial,
            stop,
        }
    }

    /// Dify stops a task only for the same app and the same end user.
    fn signal_stop(&self, task_id: &str, key: &str, user: &str) {
        let d = self.lock();
        for t in d.tasks.get(task_id).into_iter().flatten() {
            if t.key == key && t.user == user {
                t.stop.notify_one();
            }
        }
    }
}

struct TaskGuard {
    shared: Arc<Shared>,
    task_id: String,
    serial: u64,
    stop: Arc<Notify>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut d = self.shared.lock();
        if let Some(list) = d.tasks.get_mut(&self.task_id) {
            list.retain(|t| t.serial != self.serial);
            if list.is_empty() {
                d.tasks.remove(&self.task_id);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Handlers

async fn chat_messages(State(st): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = header_str(&headers, header::AUTHORIZATION);
    let token = parse_authorization(authorization.as_deref());
    let recorded_body = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    st.lock().requests.push(Recorded {
        key: token.clone().unwrap_or_default(),
        authorization: authorization.unwrap_or_default(),
        body: recorded_body,
        headers: headers.clone(),
        at: Instant::now(),
    });

    hold(&st).await;

    let (key, map, user) = match caller(&st, token, &headers, &body) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if let Some(refused) = apps::refuse_chat(&st, &key) {
        return refused;
    }
    let args = match validate_chat_payload(&map) {
        Ok(args) => args,
        Err(msg) => return error_response(400, "invalid_param", &msg),
    };
    if args.query.is_empty() {
        return error_response(400, "invalid_param", "query is required");
    }
    if let Some(response) = st.params.check_inputs(&key, &map) {
        return response;
    }
    let has_files = match files::check_chat_files(&st, &key, &user, &map) {
        Ok(has_files) => has_files,
        Err(response) => return *response,
    };
    let Some(scenario) = st.next_scenario(&key) else {
        return unauthorized(MSG_BAD_TOKEN);
    };
    let req = Request {
        key,
        user,
        args,
        has_files,
    };
    run_scenario(&st, req, scenario).await
}

/// What both endpoints check first, in Dify's order: a known app key, a JSON object
/// body, and its `user`. Returns the key, the body and the user.
fn caller(
    st: &Shared,
    token: Result<String, &'static str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Map<String, Value>, String), Box<Response>> {
    let key = match token {
        Ok(key) if st.knows_key(&key) => key,
        Ok(_) => return Err(Box::new(unauthorized(MSG_BAD_TOKEN))),
        Err(msg) => return Err(Box::new(unauthorized(msg))),
    };
    let map = parse_json_object(headers, body)
        .map_err(|(status, code, message)| Box::new(error_response(status, code, message)))?;
    let Some(user) = user_arg(&map) else {
        let msg = "Arg user must be provided.";
        return Err(Box::new(error_response(400, "invalid_param", msg)));
    };
    Ok((key, map, user))
}

async fn hold(st: &Shared) {
    st.wait_for(Duration::from_secs(10), |d| {
        (d.requests.len() >= d.hold_until).then_some(())
    })
    .await;
}

async fn stop_task(
    State(st): State<Arc<Shared>>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = header_str(&headers, header::AUTHORIZATION);
    let token = parse_authorization(authorization.as_deref());
    let loose_user = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.as_object().and_then(user_arg))
        .unwrap_or_default();
    let received = Instant::now();
    let call = StopCall {
        task_id: task_id.clone(),
        user: loose_user,
        key: token.clone().unwrap_or_default(),
    };
    let delay = {
        let mut d = st.lock();
        d.stops.push(call.clone());
        d.stop_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answered = |st: &Shared| {
        st.lock().stop_records.push(StopRecord {
            call,
            received,
            answered: Instant::now(),
        })
    };

    let (key, _, user) = match caller(&st, token, &headers, &body) {
        Ok(found) => found,
        Err(response) => {
            answered(&st);
            return *response;
        }
    };
    st.signal_stop(&task_id, &key, &user);
    answered(&st);
    plain_response(200, JSON_CONTENT_TYPE, "{\"result\": \"success\"}\n")
}

/// `DELETE /conversations/{id}` with `{"user"}`: 204 when that key's user has it (it is
/// forgotten), 404 "Conversation Not Exists." otherwise, as Dify answers.
async fn delete_conversation(
    State(st): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = parse_authorization(header_str(&headers, header::AUTHORIZATION).as_deref());
    let user = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.as_object().and_then(user_arg))
        .unwrap_or_default();
    let key = token.unwrap_or_default();
    let mut d = st.lock();
    d.deletions.push(Deletion {
        key: key.clone(),
        user: user.clone(),
        conversation_id: id.clone(),
    });
    let owned = d
        .conversations
        .get_mut(&(key, user))
        .filter(|ids| ids.contains(&id));
    match owned {
        Some(ids) => {
            ids.retain(|c| *c != id);
            plain_response(204, JSON_CONTENT_TYPE, "")
        }
        None => error_response(404, "not_found", "Conversation Not Exists."),
    }
}

async fn not_found() -> Response {
    error_response(404, "not_found", MSG_NOT_FOUND)
}

async fn method_not_allowed() -> Response {
    error_response(405, "method_not_allowed", MSG_NOT_ALLOWED)
}

// ---------------------------------------------------------------------------
// Scenarios

struct Request {
    key: String,
    user: String,
    args: ChatArgs,
    /// The message attaches files (valid ones).
    has_files: bool,
}

async fn run_scenario(st: &Arc<Shared>, req: Request, scenario: Scenario) -> Response {
    match scenario {
        Scenario::Replay {
            fixture,
            split,
            delay,
        } => {
            let bytes = match std::fs::read(fixture_path(fixture)) {
                Ok(b) => b,
                Err(e) => {
                    let msg = format!("fake_dify: cannot read fixture {fixture}: {e}");
                    return error_response(500, "internal_server_error", &msg);
                }
            };
            let content_type = if fixture.ends_with(".json") {
                JSON_CONTENT_TYPE
            } else {
                SSE_CONTENT_TYPE
            };
            let pieces = split_bytes(Bytes::from(bytes), split);
            spawn_stream(st, req.key, None, content_type, move |mut w| async move {
                for (i, piece) in pieces.into_iter().enumerate() {
                    if i > 0 {
                        w.pause(delay, None).await?;
                    }
                    w.send(piece).await?;
                }
                Ok(())
            })
        }
        Scenario::Raw { parts } => raw_stream(st, req.key, parts, false),
        Scenario::CutOff { parts } => raw_stream(st, req.key, parts, true),
        Scenario::HttpError {
            status,
            body,
            content_type,
        } => plain_response(status, content_type, body),
        Scenario::Hang => {
            // Dropped with the handler when the client closes the connection.
            let mut held = HangGuard {
                shared: st.clone(),
                key: req.key,
                since: Instant::now(),
                reason: EndReason::ClientGone,
            };
            let mut rx = st.shutdown.clone();
            held.reason = tokio::select! {
                _ = wait_shutdown(&mut rx) => EndReason::Shutdown,
                _ = tokio::time::sleep(HANG_CAP) => EndReason::Cap,
            };
            drop(held);
            error_response(504, "gateway_timeout", "fake_dify: Hang scenario gave up")
        }
        Scenario::Endless {
            token,
            delay,
            task_id,
        } => {
            let conversation_id = req.args.conversation_id.clone().unwrap_or_else(new_uuid);
            st.remember_conversation(&req.key, &req.user, &conversation_id);
            let g = Generated::new(conversation_id, task_id);
            let guard = st.register_task(&g.task_id, &req.key, &req.user);
            let task_id = Some(g.task_id.clone());
            spawn_stream(st, req.key, task_id, SSE_CONTENT_TYPE, move |w| {
                endless(w, g, guard, token, delay)
            })
        }
        Scenario::Answer(spec) => {
            let conversation_id = match req.args.conversation_id.clone() {
                Some(id) => {
                    if spec.conversations && !st.conversation_known(&req.key, &req.user, &id) {
                        return error_response(404, "not_found", MSG_NO_CONVERSATION);
                    }
                    id
                }
                None => new_uuid(),
            };
            st.remember_conversation(&req.key, &req.user, &conversation_id);
            let task_id = spec.task_id.clone().unwrap_or_else(new_uuid);
            let mut g = Generated::new(conversation_id, task_id);
            g.text_event = files::text_event(st, req.has_files);
            if !req.args.streaming {
                let body = g.blocking(&spec.text, spec.prompt_tokens, spec.completion_tokens);
                return plain_response(200, JSON_CONTENT_TYPE, body);
            }
            let guard = st.register_task(&g.task_id, &req.key, &req.user);
            let task_id = Some(g.task_id.clone());
            spawn_stream(st, req.key, task_id, SSE_CONTENT_TYPE, move |w| {
                answer(w, g, guard, spec)
            })
        }
        Scenario::Scripted(script) => reasoning::run(st, req, script),
        Scenario::Sequence(_) => error_response(
            500,
            "internal_server_error",
            "fake_dify: a Sequence must not be empty or nested",
        ),
    }
}

/// Records how a `Hang` request ended when it is dropped: by the handler on shutdown or
/// cap, or by the server with the handler when the client went away.
struct HangGuard {
    shared: Arc<Shared>,
    key: String,
    since: Instant,
    reason: EndReason,
}

impl Drop for HangGuard {
    fn drop(&mut self) {
        let end = HangEnd {
            key: std::mem::take(&mut self.key),
            reason: self.reason,
            held: self.since.elapsed(),
        };
        self.shared.lock().hang_ends.push(end);
    }
}

async fn endless(
    mut w: Writer,
    g: Generated,
    guard: TaskGuard,
    token: String,
    delay: Duration,
) -> Result<(), EndReason> {
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        w.send(g.message(&token)).await?;
        sent += 1;
        let left = ENDLESS_CAP.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(EndReason::Cap);
        }
        match w.pause(delay.min(left), Some(&guard.stop)).await {
            Ok(()) => {}
            Err(EndReason::Stopped) => {
                w.send(g.message_end(AnswerSpec::DEFAULT_PROMPT_TOKENS, sent))
                    .await?;
                return Err(EndReason::Stopped);
            }
            Err(other) => return Err(other),
        }
    }
}

async fn answer(
    mut w: Writer,
    g: Generated,
    guard: TaskGuard,
    spec: AnswerSpec,
) -> Result<(), EndReason> {
    let mut first = true;
    for piece in word_pieces(&spec.text) {
        if !first {
            pause_or_end(&mut w, &g, &guard, &spec).await?;
        }
        first = false;
        w.send(g.message(&piece)).await?;
    }
    if !first {
        pause_or_end(&mut w, &g, &guard, &spec).await?;
    }
    w.send(g.message_end(spec.prompt_tokens, spec.completion_tokens))
        .await
}

/// Pauses; if stopped meanwhile, sends `message_end` and ends with `Stopped`.
async fn pause_or_end(
    w: &mut Writer,
    g: &Generated,
    guard: &TaskGuard,
    spec: &AnswerSpec,
) -> Result<(), EndReason> {
    match w.pause(spec.delay, Some(&guard.stop)).await {
        Err(EndReason::Stopped) => {
            w.send(g.message_end(spec.prompt_tokens, spec.completion_tokens))
                .await?;
            Err(EndReason::Stopped)
        }
        other => other,
    }
}

/// `parts` as written, each after its delay; then, if `cut`, the connection is cut
/// mid-body instead of ending cleanly.
fn raw_stream(st: &Arc<Shared>, key: String, parts: Vec<(Bytes, Duration)>, cut: bool) -> Response {
    spawn_stream(st, key, None, SSE_CONTENT_TYPE, move |mut w| async move {
        for (bytes, delay) in parts {
            w.pause(delay, None).await?;
            w.send(bytes).await?;
        }
        if cut { w.cut().await } else { Ok(()) }
    })
}

/// Answers 200 with a streaming body fed by `f` in a background task, and
/// records how the stream ended.
fn spawn_stream<F, Fut>(
    st: &Arc<Shared>,
    key: String,
    task_id: Option<String>,
    content_type: &'static str,
    f: F,
) -> Response
where
    F: FnOnce(Writer) -> Fut,
    Fut: Future<Output = Result<(), EndReason>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let fut = f(Writer {
        tx,
        shutdown: st.shutdown.clone(),
    });
    let shared = st.clone();
    tokio::spawn(async move {
        let reason = fut.await.err().unwrap_or(EndReason::Completed);
        shared.lock().ends.push(StreamEnd {
            key,
            task_id,
            reason,
        });
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    plain_response(200, content_type, Body::from_stream(stream))
}

struct Writer {
    /// An `Err` makes the server drop the connection mid-body.
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    shutdown: watch::Receiver<bool>,
}

impl Writer {
    /// One write, which becomes one HTTP chunk.
    async fn send(&mut self, bytes: Bytes) -> Result<(), EndReason> {
        if bytes.is_empty() {
            return Ok(());
        }
        tokio::select! {
            r = self.tx.send(Ok(bytes)) => r.map_err(|_| EndReason::ClientGone),
            _ = wait_shutdown(&mut self.shutdown) => Err(EndReason::Shutdown),
        }
    }

    /// Ends the body with an error, so the connection is dropped without the final
    /// chunk. Counts as `Completed`: everything was written.
    async fn cut(&mut self) -> Result<(), EndReason> {
        let cut = std::io::Error::other("fake_dify: connection cut mid-answer");
        tokio::select! {
            r = self.tx.send(Err(cut)) => r.map_err(|_| EndReason::ClientGone),
            _ = wait_shutdown(&mut self.shutdown) => Err(EndReason::Shutdown),
        }
    }

    /// Sleeps, noticing a stop, a client that went away, and shutdown.
    async fn pause(&mut self, d: Duration, stop: Option<&Notify>) -> Result<(), EndReason> {
        let stopped = async move {
            match stop {
                Some(n) => n.notified().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = stopped => Err(EndReason::Stopped),
            _ = self.tx.closed() => Err(EndReason::ClientGone),
            _ = wait_shutdown(&mut self.shutdown) => Err(EndReason::Shutdown),
            _ = nap(d) => Ok(()),
        }
    }
}

/// Sleeps for `d`. A zero `sleep` would still wait for the next timer tick
/// (about 1 ms), which makes `Split::EveryByte` crawl, so it only yields.
async fn nap(d: Duration) {
    if d.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(d).await;
    }
}

fn split_bytes(bytes: Bytes, split: Split) -> Vec<Bytes> {
    match split {
        Split::Whole => vec![bytes],
        Split::EveryByte => (0..bytes.len()).map(|i| bytes.slice(i..i + 1)).collect(),
        Split::Chunks(n) => {
            let n = n.max(1);
            (0..bytes.len())
                .step_by(n)
                .map(|i| bytes.slice(i..(i + n).min(bytes.len())))
                .collect()
        }
        Split::Frames => {
            let mut out = Vec::new();
            let mut start = 0;
            let mut i = 0;
            while i + 1 < bytes.len() {
                if bytes[i] == b'\n' && bytes[i + 1] == b'\n' {
                    out.push(bytes.slice(start..i + 2));
                    start = i + 2;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            if start < bytes.len() {
                out.push(bytes.slice(start..));
            }
            out
        }
    }
}

/// Cuts text the way LLM chunks look: each piece is a word with the
/// whitespace before it ("The", " capital", " of").
fn word_pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has_word = false;
    for c in text.chars() {
        if c.is_whitespace() && has_word {
            out.push(std::mem::take(&mut cur));
            has_word = false;
        }
        has_word |= !c.is_whitespace();
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------
// Generated chat-app frames

struct Generated {
    /// `message`, or `message_file` for a message with files on Dify 1.12.x.
    text_event: &'static str,
    conversation_id: String,
    message_id: String,
    task_id: String,
    created_at: u64,
}

impl Generated {
    fn new(conversation_id: String, task_id: String) -> Self {
        Generated {
            text_event: "message",
            conversation_id,
            message_id: new_uuid(),
            task_id,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// The fields every chat-family frame starts with, in Dify's order.
    fn head(&self, event: &str, s: Style) -> Vec<(&'static str, String)> {
        vec![
            ("event", s.str(event)),
            ("conversation_id", s.str(&self.conversation_id)),
            ("message_id", s.str(&self.message_id)),
            ("created_at", self.created_at.to_string()),
            ("task_id", s.str(&self.task_id)),
            ("id", s.str(&self.message_id)),
        ]
    }

    fn message(&self, answer: &str) -> Bytes {
        let s = Style::Orjson;
        let mut fields = self.head(self.text_event, s);
        fields.push(("answer", s.str(answer)));
        fields.push(("from_variable_selector", "null".into()));
        sse_frame(&s.obj(&fields))
    }

    fn message_end(&self, prompt_tokens: u64, completion_tokens: u64) -> Bytes {
        let s = Style::Orjson;
        let mut fields = self.head("message_end", s);
        fields.push(("metadata", metadata(s, prompt_tokens, completion_tokens)));
        fields.push(("files", "null".into()));
        sse_frame(&s.obj(&fields))
    }

    /// The blocking body (`json.dumps` style, no trailing newline).
    fn blocking(&self, answer: &str, prompt_tokens: u64, completion_tokens: u64) -> String {
        let s = Style::JsonDumps;
        s.obj(&[
            ("event", s.str("message")),
            ("task_id", s.str(&self.task_id)),
            ("id", s.str(&self.message_id)),
            ("message_id", s.str(&self.message_id)),
            ("conversation_id", s.str(&self.conversation_id)),
            ("mode", s.str("chat")),
            ("answer", s.str(answer)),
            ("metadata", metadata(s, prompt_tokens, completion_tokens)),
            ("created_at", self.created_at.to_string()),
        ])
    }
}

fn sse_frame(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

fn metadata(s: Style, prompt_tokens: u64, completion_tokens: u64) -> String {
    // Prices as Dify computes them: tokens * unit price * price unit,
    // quantized to 7 decimals; here 0.15 and 0.6 per million tokens.
    let prompt_price = price(prompt_tokens * 15);
    let completion_price = price(completion_tokens * 60);
    let total_price = price(prompt_tokens * 15 + completion_tokens * 60);
    let usage = s.obj(&[
        ("prompt_tokens", prompt_tokens.to_string()),
        ("prompt_unit_price", s.str("0.15")),
        ("prompt_price_unit", s.str("0.000001")),
        ("prompt_price", s.str(&prompt_price)),
        ("completion_tokens", completion_tokens.to_string()),
        ("completion_unit_price", s.str("0.6")),
        ("completion_price_unit", s.str("0.000001")),
        ("completion_price", s.str(&completion_price)),
        (
            "total_tokens",
            (prompt_tokens + completion_tokens).to_string(),
        ),
        ("total_price", s.str(&total_price)),
        ("currency", s.str("USD")),
        ("latency", "0.4213".into()),
        ("time_to_first_token", "null".into()),
        ("time_to_generate", "null".into()),
    ]);
    s.obj(&[
        ("annotation_reply", "null".into()),
        ("retriever_resources", "[]".into()),
        ("usage", usage),
    ])
}

/// A Python `Decimal` quantized to 7 places, from units of 1e-8.
fn price(units_1e8: u64) -> String {
    let q = (units_1e8 + 5) / 10;
    if q == 0 {
        return "0E-7".into();
    }
    format!("{}.{:07}", q / 10_000_000, q % 10_000_000)
}

/// The two JSON writers Dify uses.
#[derive(Clone, Copy)]
enum Style {
    /// orjson (SSE frames since 2025-08): compact, raw UTF-8.
    Orjson,
    /// Python `json.dumps`: `", "` / `": "` separators, non-ASCII as `\uXXXX`.
    JsonDumps,
}

impl Style {
    fn str(self, s: &str) -> String {
        match self {
            Style::Orjson => Value::String(s.to_string()).to_string(),
            Style::JsonDumps => py_json_str(s),
        }
    }

    fn obj(self, fields: &[(&str, String)]) -> String {
        let (colon, comma) = match self {
            Style::Orjson => (":", ","),
            Style::JsonDumps => (": ", ", "),
        };
        let inner: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}{colon}{v}", self.str(k)))
            .collect();
        format!("{{{}}}", inner.join(comma))
    }
}

/// A string as Python's `json.dumps` (ensure_ascii) writes it.
fn py_json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Request checks, as Dify does them

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Dify's `validate_and_get_api_token`: a space is required, the header is
/// split at the first whitespace, and the scheme is compared case-insensitively.
fn parse_authorization(raw: Option<&str>) -> Result<String, &'static str> {
    let raw = raw.ok_or(MSG_NO_HEADER)?;
    if !raw.contains(' ') {
        return Err(MSG_NO_HEADER);
    }
    let (scheme, token) = raw
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or(MSG_NO_HEADER)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(MSG_BAD_SCHEME);
    }
    Ok(token.trim_start().to_string())
}

/// Flask's `request.get_json()` followed by `.get(...)`.
/// On failure: the status, code and message of Dify's error.
fn parse_json_object(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, (u16, &'static str, &'static str)> {
    let mime = header_str(headers, header::CONTENT_TYPE)
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json =
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    if !is_json {
        return Err((415, "unsupported_media_type", MSG_NOT_JSON));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        // `None.get(...)` / `[].get(...)` in Dify: an unhandled error.
        Ok(_) => Err((500, "internal_server_error", MSG_INTERNAL)),
        Err(_) => Err((400, "bad_request", MSG_BAD_JSON)),
    }
}

/// `user` as Dify reads it: falsy means missing, anything else goes through `str()`.
fn user_arg(map: &Map<String, Value>) -> Option<String> {
    match map.get("user")? {
        Value::Null | Value::Bool(false) => None,
        Value::Bool(true) => Some("True".into()),
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        Value::Number(n) => Some(n.to_string()),
        Value::Array(a) if a.is_empty() => None,
        Value::Object(o) if o.is_empty() => None,
        other => Some(py_repr(other)),
    }
}

struct ChatArgs {
    query: String,
    streaming: bool,
    /// Normalized (lower-case, hyphenated); `None` when absent or blank.
    conversation_id: Option<String>,
}

struct PydanticError {
    loc: &'static str,
    kind: &'static str,
    msg: String,
    input: String,
    input_type: &'static str,
}

/// `ChatRequestPayload.model_validate`: on failure, the text of pydantic's
/// `ValidationError`, which Dify sends as a 400 `invalid_param` message.
fn validate_chat_payload(map: &Map<String, Value>) -> Result<ChatArgs, String> {
    let whole = Value::Object(map.clone());
    let mut errors = Vec::new();
    let missing = |loc| PydanticError {
        loc,
        kind: "missing",
        msg: "Field required".into(),
        input: py_repr(&whole),
        input_type: "dict",
    };
    let wrong = |loc, kind, msg: &str, v: &Value| PydanticError {
        loc,
        kind,
        msg: msg.into(),
        input: py_repr(v),
        input_type: py_type(v),
    };

    match map.get("inputs") {
        None => errors.push(missing("inputs")),
        Some(Value::Object(_)) => {}
        Some(v) => errors.push(wrong(
            "inputs",
            "dict_type",
            "Input should be a valid dictionary",
            v,
        )),
    }
    let query = match map.get("query") {
        None => {
            errors.push(missing("query"));
            String::new()
        }
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            errors.push(wrong(
                "query",
                "string_type",
                "Input should be a valid string",
                v,
            ));
            String::new()
        }
    };
    match map.get("files") {
        None | Some(Value::Null) | Some(Value::Array(_)) => {}
        Some(v) => errors.push(wrong(
            "files",
            "list_type",
            "Input should be a valid list",
            v,
        )),
    }
    let streaming = match map.get("response_mode") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "blocking" => false,
        Some(Value::String(s)) if s == "streaming" => true,
        Some(v) => {
            let msg = "Input should be 'blocking' or 'streaming'";
            errors.push(wrong("response_mode", "literal_error", msg, v));
            false
        }
    };
    let conversation_id = match map.get("conversation_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(v) => match v.as_str().and_then(|s| normalize_uuid(s.trim())) {
            Some(id) => Some(id),
            None => {
                let msg = "Value error, conversation_id must be a valid UUID";
                errors.push(wrong("conversation_id", "value_error", msg, v));
                None
            }
        },
    };

    if errors.is_empty() {
        return Ok(ChatArgs {
            query,
            streaming,
            conversation_id,
        });
    }
    let plural = if errors.len() == 1 { "" } else { "s" };
    let mut text = format!(
        "{} validation error{plural} for ChatRequestPayload",
        errors.len()
    );
    for e in errors {
        text.push_str(&format!(
            "\n{}\n  {} [type={}, input_value={}, input_type={}]\n    For further information visit {PYDANTIC_DOCS}{}",
            e.loc, e.msg, e.kind, e.input, e.input_type, e.kind
        ));
    }
    Err(text)
}

/// Python's `str(uuid.UUID(s))`, or `None` where `uuid.UUID` would raise.
fn normalize_uuid(s: &str) -> Option<String> {
    let hex = s.replace("urn:", "").replace("uuid:", "");
    let hex = hex.trim_matches(|c| c == '{' || c == '}').replace('-', "");
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Roughly Python's `repr()` of the decoded JSON value.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::from(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        out.push_str(&format!("\\x{:02x}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

// ---------------------------------------------------------------------------
// Responses

fn plain_response(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// `{"code": .., "message": .., "status": ..}` + `\n`, as Dify's error handler writes it.
pub fn dify_error_body(status: u16, code: &str, message: &str) -> String {
    format!(
        "{{\"code\": {}, \"message\": {}, \"status\": {status}}}\n",
        py_json_str(code),
        py_json_str(message)
    )
}

fn error_response(status: u16, code: &str, message: &str) -> Response {
    plain_response(
        status,
        JSON_CONTENT_TYPE,
        dify_error_body(status, code, message),
    )
}

fn unauthorized(message: &str) -> Response {
    let mut resp = error_response(401, "unauthorized", message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"api\""),
    );
    resp
}

// ---------------------------------------------------------------------------
// Ids

/// A random version-4 UUID string (no `uuid` crate needed).
pub fn new_uuid() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = RandomState::new();
    let mut h = seed.build_hasher();
    h.write_u64(n);
    h.write_u128(nanos);
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
