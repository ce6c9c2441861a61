//! A fake AWS Lambda Runtime API for integration tests that run the real binary.
//!
//! It listens on loopback and serves the endpoints a custom runtime calls
//! (`lambda_runtime` 1.5 in `~/.cargo/registry/src/*/lambda_runtime-1.5.0/src/requests.rs`):
//!
//! - `GET /2018-06-01/runtime/invocation/next` hands out the events queued with
//!   [`FakeRuntime::invoke`], oldest first, with the `lambda-runtime-*` headers
//!   the runtime reads. While the queue is empty it long-polls, as Lambda does.
//! - `POST /2018-06-01/runtime/invocation/{id}/response` takes the function's
//!   answer. Each body frame is recorded with its arrival [`Instant`] as it
//!   comes in, so tests can tell a stream from a buffered answer. A streaming
//!   answer (`Lambda-Runtime-Function-Response-Mode: streaming`, chunked) is a
//!   JSON metadata prelude (`{"statusCode":..,"headers":{..},"cookies":[..]}`),
//!   then 8 NUL bytes, then the HTTP body; [`Invocation`] splits it.
//! - `POST /2018-06-01/runtime/invocation/{id}/error` and
//!   `POST /2018-06-01/runtime/init/error` are recorded.
//!
//! Anything else gets a 404 and is recorded in [`FakeRuntime::unexpected`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Header that marks a streamed response.
pub const RESPONSE_MODE_HEADER: &str = "lambda-runtime-function-response-mode";
/// Separates the metadata prelude from the body in a streamed response.
pub const PRELUDE_DELIMITER: [u8; 8] = [0; 8];
/// The ARN handed out with every event.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:opendify";
/// How long each invocation may run, as announced in `lambda-runtime-deadline-ms`.
pub const INVOCATION_TIMEOUT: Duration = Duration::from_secs(900);

/// One body frame of a response POST, as it arrived.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub at: Instant,
    pub bytes: Bytes,
}

/// What the function posted to `/invocation/{id}/response`.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Headers of the POST itself (not of the HTTP response inside it).
    pub headers: HeaderMap,
    /// When the POST's head arrived.
    pub started: Instant,
    /// Every body frame, in order.
    pub chunks: Vec<Chunk>,
    /// Trailers, if the body had any.
    pub trailers: Option<HeaderMap>,
    /// When the body ended; `None` while it is still streaming.
    pub finished: Option<Instant>,
    /// Set if reading the body failed (e.g. the function died mid-stream).
    pub body_error: Option<String>,
}

impl RawResponse {
    /// True when the POST announced `Lambda-Runtime-Function-Response-Mode: streaming`.
    pub fn is_streaming(&self) -> bool {
        self.headers
            .get(RESPONSE_MODE_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"))
    }

    /// All body bytes of the POST, prelude included.
    pub fn bytes(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .flat_map(|c| c.bytes.iter().copied())
            .collect()
    }
}

/// A POST to `/invocation/{id}/error` or `/init/error`.
#[derive(Clone, Debug)]
pub struct ErrorReport {
    /// The invocation's request id; `None` for an init error.
    pub request_id: Option<String>,
    /// `Lambda-Runtime-Function-Error-Type`, if sent.
    pub error_type: Option<String>,
    /// The body parsed as JSON (`{"errorType":..,"errorMessage":..}`), or a string
    /// of the raw text if it is not JSON.
    pub body: Value,
    pub headers: HeaderMap,
    pub at: Instant,
}

/// A request the fake does not serve.
#[derive(Clone, Debug)]
pub struct Unexpected {
    pub method: Method,
    pub uri: Uri,
    pub at: Instant,
}

/// One event and everything the function did with it.
#[derive(Clone, Debug)]
pub struct Record {
    pub request_id: String,
    /// Sent as `lambda-runtime-invocation-id`; the runtime echoes it back.
    pub invocation_id: String,
    pub event: Bytes,
    pub queued: Instant,
    /// When `/next` handed the event out.
    pub delivered: Option<Instant>,
    pub response: Option<RawResponse>,
    pub error: Option<ErrorReport>,
    /// How long the invocation may run from delivery (its `lambda-runtime-deadline-ms`).
    pub timeout: Duration,
}

/// A finished invocation, with a streamed response split into prelude and body.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub request_id: String,
    pub invocation_id: String,
    pub delivered: Instant,
    pub raw: RawResponse,
    /// True for a streamed response (prelude + NULs + body).
    pub streaming: bool,
    /// The metadata prelude as JSON (`Value::Null` for a buffered response).
    pub prelude: Value,
    /// `statusCode` from the prelude (200 for a buffered response without one).
    pub status: u16,
    /// Headers from the prelude. A header sent several times is kept once per value.
    pub headers: HeaderMap,
    /// `cookies` from the prelude.
    pub cookies: Vec<String>,
    /// The HTTP body the client would see.
    pub body: Bytes,
    /// The body as it arrived: the parts of each POST frame after the prelude,
    /// with that frame's arrival time. Empty parts are left out.
    pub body_chunks: Vec<Chunk>,
}

impl Invocation {
    /// A prelude header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "lambda_runtime: response body of {} is not JSON ({e}): {}",
                self.request_id,
                self.body_text()
            )
        })
    }

    /// When the body byte at `offset` arrived.
    pub fn arrival_of(&self, offset: usize) -> Option<Instant> {
        let mut end = 0;
        for chunk in &self.body_chunks {
            end += chunk.bytes.len();
            if offset < end {
                return Some(chunk.at);
            }
        }
        None
    }

    fn from_record(record: &Record) -> Result<Invocation, String> {
        let raw = record
            .response
            .clone()
            .ok_or_else(|| format!("no response for {}", record.request_id))?;
        let delivered = record.delivered.unwrap_or(record.queued);
        let bytes = raw.bytes();
        let streaming = raw.is_streaming();
        let (prelude, body_start) = if streaming {
            let at = bytes
                .windows(PRELUDE_DELIMITER.len())
                .position(|w| w == PRELUDE_DELIMITER)
                .ok_or_else(|| {
                    format!(
                        "streamed response of {} has no 8-NUL prelude delimiter: {:?}",
                        record.request_id,
                        String::from_utf8_lossy(&bytes)
                    )
                })?;
            let prelude: Value = serde_json::from_slice(&bytes[..at]).map_err(|e| {
                format!(
                    "prelude of {} is not JSON ({e}): {:?}",
                    record.request_id,
                    String::from_utf8_lossy(&bytes[..at])
                )
            })?;
            (prelude, at + PRELUDE_DELIMITER.len())
        } else {
            (Value::Null, 0)
        };

        let status = match prelude.get("statusCode") {
            None if !streaming => 200,
            None => {
                return Err(format!(
                    "prelude of {} has no statusCode",
                    record.request_id
                ));
            }
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("statusCode of {} is {v}", record.request_id))?,
        };
        let mut headers = HeaderMap::new();
        if let Some(map) = prelude.get("headers").and_then(Value::as_object) {
            for (name, value) in map {
                let values: Vec<&Value> = match value {
                    Value::Array(list) => list.iter().collect(),
                    other => vec![other],
                };
                for v in values {
                    let text = v
                        .as_str()
                        .ok_or_else(|| format!("prelude header {name} is {v}"))?;
                    let name = axum::http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| format!("prelude header name {name:?}: {e}"))?;
                    let value = HeaderValue::from_str(text)
                        .map_err(|e| format!("prelude header {name}: {e}"))?;
                    headers.append(name, value);
                }
            }
        }
        let cookies = prelude
            .get("cookies")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();

        let mut body_chunks = Vec::new();
        let mut offset = 0;
        for chunk in &raw.chunks {
            let (start, end) = (offset, offset + chunk.bytes.len());
            offset = end;
            if end <= body_start {
                continue;
            }
            let from = body_start.saturating_sub(start);
            body_chunks.push(Chunk {
                at: chunk.at,
                bytes: chunk.bytes.slice(from..),
            });
        }
        Ok(Invocation {
            request_id: record.request_id.clone(),
            invocation_id: record.invocation_id.clone(),
            delivered,
            body: Bytes::copy_from_slice(&bytes[body_start..]),
            raw,
            streaming,
            prelude,
            status,
            headers,
            cookies,
            body_chunks,
        })
    }
}

#[derive(Default)]
struct Data {
    queue: VecDeque<String>,
    records: HashMap<String, Record>,
    next_polls: usize,
    init_errors: Vec<ErrorReport>,
    unexpected: Vec<Unexpected>,
}

struct Shared {
    data: Mutex<Data>,
    /// Woken on every change (event queued, poll, response frame, error).
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Data> {
        // A panicking test thread must not hide the data from the others.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update<T>(&self, f: impl FnOnce(&mut Data) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_waiters();
        out
    }

    /// Waits until `check` returns `Some`, or `timeout` passes.
    async fn wait_for<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&Data) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = check(&self.lock()) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check(&self.lock());
            }
        }
    }
}

/// The fake Runtime API. Cloning shares it; the server stops with the test's runtime.
#[derive(Clone)]
pub struct FakeRuntime {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl FakeRuntime {
    /// Binds 127.0.0.1 on a free port and serves in a background task.
    pub async fn start() -> FakeRuntime {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("lambda_runtime: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("lambda_runtime: no local address");
        let shared = Arc::new(Shared {
            data: Mutex::new(Data::default()),
            changed: Notify::new(),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .fallback(unexpected)
            .with_state(shared.clone());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRuntime { addr, shared }
    }

    /// `127.0.0.1:PORT`: the value of `AWS_LAMBDA_RUNTIME_API`, as Lambda sets it.
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues an event and returns its request id.
    pub fn invoke(&self, event: impl Into<Bytes>) -> String {
        self.invoke_with_timeout(event, INVOCATION_TIMEOUT)
    }

    /// Queues an event whose deadline is `timeout` after `/next` hands it out (a
    /// function with a short timeout).
    pub fn invoke_with_timeout(&self, event: impl Into<Bytes>, timeout: Duration) -> String {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("8f5d2c1a-0000-4000-8000-{n:012x}");
        let record = Record {
            request_id: request_id.clone(),
            invocation_id: format!("inv-{n:08x}"),
            event: event.into(),
            queued: Instant::now(),
            delivered: None,
            response: None,
            error: None,
            timeout,
        };
        self.shared.update(|d| {
            d.records.insert(request_id.clone(), record);
            d.queue.push_back(request_id.clone());
        });
        request_id
    }

    /// Queues a JSON event.
    pub fn invoke_json(&self, event: &Value) -> String {
        self.invoke(serde_json::to_vec(event).expect("lambda_runtime: event is not serializable"))
    }

    /// How many times `/next` was called so far.
    pub fn next_polls(&self) -> usize {
        self.shared.lock().next_polls
    }

    /// Waits up to `timeout` until `/next` was called at least `n` times.
    pub async fn wait_for_polls(&self, n: usize, timeout: Duration) -> bool {
        self.shared
            .wait_for(timeout, |d| (d.next_polls >= n).then_some(()))
            .await
            .is_some()
    }

    /// Everything known about one event so far.
    pub fn record(&self, request_id: &str) -> Option<Record> {
        self.shared.lock().records.get(request_id).cloned()
    }

    /// Waits up to `timeout` for the complete response to `request_id`.
    /// `Err` says what was seen instead (nothing, an error report, a broken body).
    pub async fn wait_for_response(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Invocation, String> {
        let done = self
            .shared
            .wait_for(timeout, |d| {
                let record = d.records.get(request_id)?;
                let finished = record
                    .response
                    .as_ref()
                    .is_some_and(|r| r.finished.is_some());
                (finished || record.error.is_some()).then(|| record.clone())
            })
            .await;
        let Some(record) = done else {
            let seen = match self.record(request_id) {
                None => "the request id is unknown".to_string(),
                Some(r) if r.delivered.is_none() => {
                    format!(
                        "the event was never fetched ({} polls of /next)",
                        self.next_polls()
                    )
                }
                Some(r) => match &r.response {
                    None => "the event was fetched but nothing was posted back".to_string(),
                    Some(raw) => format!(
                        "the response is still streaming; {} frame(s) so far: {:?}",
                        raw.chunks.len(),
                        String::from_utf8_lossy(&raw.bytes())
                    ),
                },
            };
            return Err(format!(
                "no complete response for {request_id} within {timeout:?}: {seen}"
            ));
        };
        if let Some(error) = &record.error {
            return Err(format!(
                "the function reported an invocation error for {request_id}: type {:?}, body {}",
                error.error_type, error.body
            ));
        }
        let raw = record.response.as_ref().expect("checked above");
        if let Some(e) = &raw.body_error {
            return Err(format!("the response body for {request_id} broke off: {e}"));
        }
        Invocation::from_record(&record)
    }

    /// Waits up to `timeout` for an `/invocation/{id}/error` report.
    pub async fn wait_for_error(&self, request_id: &str, timeout: Duration) -> Option<ErrorReport> {
        self.shared
            .wait_for(timeout, |d| d.records.get(request_id)?.error.clone())
            .await
    }

    /// Every `/init/error` report so far.
    pub fn init_errors(&self) -> Vec<ErrorReport> {
        self.shared.lock().init_errors.clone()
    }

    /// Requests to paths the fake does not serve.
    pub fn unexpected(&self) -> Vec<Unexpected> {
        self.shared.lock().unexpected.clone()
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    shared.update(|d| d.next_polls += 1);
    // Long-poll: wait (without limit, as Lambda does) until an event is queued.
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let taken = {
            let mut d = shared.lock();
            match d.queue.pop_front() {
                Some(id) => {
                    let record = d.records.get_mut(&id).expect("queued ids are recorded");
                    record.delivered = Some(Instant::now());
                    Some(record.clone())
                }
                None => None,
            }
        };
        if let Some(record) = taken {
            shared.changed.notify_waiters();
            return event_response(&record);
        }
        notified.await;
    }
}

fn event_response(record: &Record) -> Response {
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(record.timeout)
        .as_millis()
        .to_string();
    let trace = format!(
        "Root=1-{:08x}-{:0>24};Parent={:0>16};Sampled=0",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        record.request_id.rsplit('-').next().unwrap_or("0"),
        record.invocation_id.trim_start_matches("inv-"),
    );
    let mut response = Response::new(Body::from(record.event.clone()));
    let headers = response.headers_mut();
    let pairs = [
        ("content-type", "application/json".to_string()),
        ("lambda-runtime-aws-request-id", record.request_id.clone()),
        ("lambda-runtime-deadline-ms", deadline),
        (
            "lambda-runtime-invoked-function-arn",
            FUNCTION_ARN.to_string(),
        ),
        ("lambda-runtime-trace-id", trace),
        ("lambda-runtime-invocation-id", record.invocation_id.clone()),
    ];
    for (name, value) in pairs {
        headers.insert(
            name,
            HeaderValue::from_str(&value).expect("runtime headers are ASCII"),
        );
    }
    response
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let known = shared.update(|d| match d.records.get_mut(&id) {
        Some(record) if record.delivered.is_some() && record.response.is_none() => {
            record.response = Some(RawResponse {
                headers,
                started: Instant::now(),
                chunks: Vec::new(),
                trailers: None,
                finished: None,
                body_error: None,
            });
            true
        }
        _ => false,
    });
    if !known {
        return runtime_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            &format!("no open invocation {id}"),
        );
    }
    let mut body = body;
    loop {
        let frame = body.frame().await;
        let at = Instant::now();
        let mut ended = false;
        shared.update(|d| {
            let raw = d
                .records
                .get_mut(&id)
                .and_then(|r| r.response.as_mut())
                .expect("response was opened above");
            match frame {
                None => {
                    raw.finished = Some(at);
                    ended = true;
                }
                Some(Err(e)) => {
                    raw.body_error = Some(e.to_string());
                    raw.finished = Some(at);
                    ended = true;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(bytes) => {
                        if !bytes.is_empty() {
                            raw.chunks.push(Chunk { at, bytes });
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            raw.trailers = Some(trailers);
                        }
                    }
                },
            }
        });
        if ended {
            break;
        }
    }
    accepted()
}

async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let report = error_report(Some(id.clone()), headers, &body);
    let known = shared.update(|d| match d.records.get_mut(&id) {
        Some(record) if record.delivered.is_some() => {
            record.error = Some(report);
            true
        }
        _ => false,
    });
    if known {
        accepted()
    } else {
        runtime_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            &format!("no open invocation {id}"),
        )
    }
}

async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let report = error_report(None, headers, &body);
    shared.update(|d| d.init_errors.push(report));
    accepted()
}

async fn unexpected(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    shared.update(|d| {
        d.unexpected.push(Unexpected {
            method,
            uri: uri.clone(),
            at: Instant::now(),
        })
    });
    runtime_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the fake Runtime API does not serve {uri}"),
    )
}

fn error_report(request_id: Option<String>, headers: HeaderMap, body: &[u8]) -> ErrorReport {
    let error_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    ErrorReport {
        request_id,
        error_type,
        body,
        headers,
        at: Instant::now(),
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn runtime_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorType": kind, "errorMessage": message})),
    )
        .into_response()
}
