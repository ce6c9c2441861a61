//! Runs the real `opendify` binary under a fake Lambda Runtime API
//! (`tests/support/lambda_runtime.rs`), fed with the function-URL events in
//! `events/`, in front of the fake Dify: the path a deployed function takes, from
//! `/next` to the streamed response POST.

mod support;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::events::{event_json, event_text, fixture_answer};
use support::lambda_runtime::{FakeRuntime, Invocation};
use support::process::drain;
use support::{FakeDify, Scenario, Split};

/// The proxy key and model name the event files use (README: run locally with
/// `PROXY_API_KEYS=local-dev-key` and a `my-app` entry in MODEL_CONFIG).
const PROXY_KEY: &str = "local-dev-key";
const MODEL: &str = "my-app";
const APP_KEY: &str = "app-lambdatest0123456789abcd";
const FIXTURE: &str = "chat-app-stream.sse";
/// Generous: a debug binary on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// The `opendify` process, killed (by its own PID) and reaped on drop.
struct Function {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Function {
    /// Starts the binary the way Lambda does: only the runtime's variables plus `vars`.
    fn spawn(runtime: &FakeRuntime, vars: &[(&str, &str)]) -> Function {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opendify"));
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", runtime.runtime_api())
            .env("AWS_LAMBDA_FUNCTION_NAME", "opendify")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("cannot start the opendify binary");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().expect("piped stdout"), stdout.clone()),
            drain(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Function {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// A correctly configured function in front of `dify`.
    fn serving(runtime: &FakeRuntime, dify: &FakeDify) -> Function {
        let models = format!(r#"{{"{MODEL}":"{APP_KEY}"}}"#);
        Function::spawn(
            runtime,
            &[
                ("DIFY_API_BASE", &dify.base_url()),
                ("MODEL_CONFIG", &models),
                ("PROXY_API_KEYS", PROXY_KEY),
            ],
        )
    }

    /// Waits up to `timeout` for the process to exit, then collects all its output.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait failed") {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn logs(&self) -> String {
        format!(
            "--- opendify stdout ---\n{}\n--- opendify stderr ---\n{}",
            String::from_utf8_lossy(&self.stdout.lock().unwrap()),
            self.stderr()
        )
    }

    /// The complete response to `request_id`, or a panic that shows the logs.
    async fn response(&self, runtime: &FakeRuntime, request_id: &str) -> Invocation {
        match runtime.wait_for_response(request_id, WAIT).await {
            Ok(invocation) => invocation,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SSE event of the response body: its `data:` payload and when its last byte arrived.
struct SseEvent {
    data: String,
    at: Instant,
}

fn sse_events(response: &Invocation) -> Vec<SseEvent> {
    let body = &response.body[..];
    let mut events = Vec::new();
    let mut start = 0;
    while let Some(len) = body[start..].windows(2).position(|w| w == b"\n\n") {
        let end = start + len + 2;
        let block = String::from_utf8_lossy(&body[start..end]);
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            events.push(SseEvent {
                data: data.join("\n"),
                at: response
                    .arrival_of(end - 1)
                    .expect("offset inside the body"),
            });
        }
        start = end;
    }
    assert!(
        body[start..].iter().all(u8::is_ascii_whitespace),
        "the SSE body ends with an unterminated event: {:?}",
        String::from_utf8_lossy(&body[start..])
    );
    events
}

/// `choices[0].delta.content` of a chunk, if it has text.
fn delta_content(data: &str) -> Option<String> {
    let chunk: Value = serde_json::from_str(data).ok()?;
    let content = chunk["choices"][0]["delta"]["content"].as_str()?;
    (!content.is_empty()).then(|| content.to_string())
}

fn assert_openai_error(response: &Invocation, status: u16, code: Option<&str>) -> Value {
    assert_eq!(response.status, status, "body: {}", response.body_text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "content-type {:?}",
        response.header("content-type")
    );
    let body = response.json();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    if let Some(code) = code {
        assert_eq!(error["code"], code, "{body}");
    }
    body
}

#[test]
fn event_files_parse_as_function_url_requests() {
    use lambda_http::request::RequestContext;
    use lambda_http::{Body, RequestExt};

    let cases = [
        ("models.json", "GET", "/v1/models", true, None),
        (
            "chat-blocking.json",
            "POST",
            "/v1/chat/completions",
            true,
            Some(false),
        ),
        (
            "chat-streaming.json",
            "POST",
            "/v1/chat/completions",
            true,
            Some(true),
        ),
        (
            "chat-unknown-model.json",
            "POST",
            "/v1/chat/completions",
            true,
            Some(false),
        ),
        (
            "chat-bad-json.json",
            "POST",
            "/v1/chat/completions",
            true,
            None,
        ),
        (
            "chat-no-key.json",
            "POST",
            "/v1/chat/completions",
            false,
            Some(true),
        ),
        (
            "chat-wrong-method.json",
            "GET",
            "/v1/chat/completions",
            true,
            None,
        ),
    ];
    for (name, method, path, has_key, stream) in cases {
        let raw = event_json(name);
        assert_eq!(raw["version"], "2.0", "{name}");
        assert_eq!(raw["rawPath"], path, "{name}");
        assert_eq!(raw["requestContext"]["http"]["method"], method, "{name}");
        assert_eq!(raw["requestContext"]["http"]["path"], path, "{name}");
        assert_eq!(raw["isBase64Encoded"], false, "{name}");
        let host = raw["headers"]["host"].as_str().expect("host header");
        assert!(
            host.contains(".lambda-url.") && host.ends_with(".on.aws"),
            "{name}: {host}"
        );
        assert_eq!(raw["requestContext"]["domainName"], host, "{name}");

        let request = lambda_http::request::from_str(&event_text(name))
            .unwrap_or_else(|e| panic!("{name} is not a function URL event: {e}"));
        assert_eq!(request.method().as_str(), method, "{name}");
        assert_eq!(request.uri().path(), path, "{name}");
        assert_eq!(request.uri().host(), Some(host), "{name}");
        assert!(
            matches!(request.request_context(), RequestContext::ApiGatewayV2(_)),
            "{name} does not parse as an API Gateway v2 / function URL event"
        );
        let authorization = request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap());
        let expected_auth = format!("Bearer {PROXY_KEY}");
        assert_eq!(
            authorization,
            has_key.then_some(expected_auth.as_str()),
            "{name}"
        );

        if method == "GET" {
            assert!(matches!(request.body(), Body::Empty), "{name} has a body");
            continue;
        }
        assert_eq!(
            request.headers().get("content-type").unwrap(),
            "application/json",
            "{name}"
        );
        let Body::Text(text) = request.body() else {
            panic!("{name}: the body must be a JSON string, not base64");
        };
        let parsed = serde_json::from_str::<Value>(text);
        if name == "chat-bad-json.json" {
            assert!(parsed.is_err(), "{name} must not be JSON: {text}");
            continue;
        }
        let chat = parsed.unwrap_or_else(|e| panic!("{name}: body is not JSON: {e}"));
        let model = if name == "chat-unknown-model.json" {
            assert_ne!(chat["model"], MODEL);
            chat["model"].as_str().unwrap().to_string()
        } else {
            MODEL.to_string()
        };
        assert_eq!(chat["model"], model.as_str(), "{name}");
        assert_eq!(chat["stream"].as_bool(), stream, "{name}");
        assert!(
            chat["messages"].as_array().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn streaming_chat_reaches_the_runtime_api_incrementally() {
    const PACE: Duration = Duration::from_millis(150);
    let dify = FakeDify::start().await;
    dify.set(
        APP_KEY,
        Scenario::Replay {
            fixture: FIXTURE,
            split: Split::Frames,
            delay: PACE,
        },
    );
    let runtime = FakeRuntime::start().await;
    let function = Function::serving(&runtime, &dify);

    let id = runtime.invoke(event_text("chat-streaming.json"));
    let response = function.response(&runtime, &id).await;

    // The wire format of a streamed response, as lambda_runtime 1.5 writes it.
    let post = &response.raw.headers;
    assert!(response.streaming, "not streamed; POST headers: {post:?}");
    assert_eq!(
        post.get("content-type").unwrap(),
        "application/vnd.awslambda.http-integration-response"
    );
    assert_eq!(post.get("transfer-encoding").unwrap(), "chunked");
    assert_eq!(
        post.get("lambda-runtime-invocation-id").unwrap(),
        response.invocation_id.as_str(),
        "the runtime must echo the invocation id"
    );
    assert!(
        response.prelude["cookies"].is_array(),
        "{}",
        response.prelude
    );

    assert_eq!(response.status, 200, "{}", response.body_text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "content-type {content_type:?}"
    );
    assert_eq!(response.header("cache-control"), Some("no-cache"));

    let events = sse_events(&response);
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "{}",
        response.body_text()
    );
    let content: Vec<(String, Instant)> = events
        .iter()
        .filter_map(|e| delta_content(&e.data).map(|c| (c, e.at)))
        .collect();
    let text: String = content.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(text, fixture_answer(FIXTURE), "{}", response.body_text());
    assert_eq!(text, "The capital of France is Paris.");

    // The fixture has 5 `message` frames 150 ms apart: streamed, the first content
    // chunk reaches the Runtime API at least 4 × 150 ms before the last one (only
    // more under load). Buffered, they would all arrive together at the end.
    let first = content.first().expect("content chunks").1;
    let last = content.last().expect("content chunks").1;
    let done = events.last().unwrap().at;
    let spread = last.duration_since(first);
    let timeline: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "+{:>4} ms {}",
                e.at.duration_since(response.delivered).as_millis(),
                e.data.chars().take(60).collect::<String>()
            )
        })
        .collect();
    let timeline = timeline.join("\n");
    assert!(
        spread >= Duration::from_millis(300),
        "content arrived within {spread:?}, so it was buffered:\n{timeline}"
    );
    assert!(
        done.duration_since(first) >= Duration::from_millis(300),
        "[DONE] came too soon after the first chunk:\n{timeline}"
    );
    let distinct_arrivals = {
        let mut times: Vec<Instant> = content.iter().map(|(_, at)| *at).collect();
        times.dedup();
        times.len()
    };
    assert!(
        distinct_arrivals >= 3,
        "5 paced content chunks arrived in only {distinct_arrivals} frame(s):\n{timeline}"
    );
    assert!(
        response.body_chunks.len() >= 3,
        "{} body frame(s)",
        response.body_chunks.len()
    );

    let requests = dify.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].key, APP_KEY);
    assert_eq!(requests[0].response_mode(), Some("streaming"));
}

#[tokio::test]
async fn a_cut_answer_stops_dify_before_the_invocation_ends() {
    // Lambda may freeze the environment as soon as the response is complete: a stop
    // call still under way then never reaches Dify. So the stop must have been answered
    // before the function ends the response. A Dify slow to answer the stop (300 ms)
    // makes a stop that merely overlaps the end show.
    const TASK: &str = "task-lambda-cut-0001";
    let dify = FakeDify::start().await;
    dify.set_stop_delay(Duration::from_millis(300));
    // Paced slower than the 1 s limit: the proxy cuts the answer, Dify would go on.
    dify.set(
        APP_KEY,
        Scenario::endless(" tok", Duration::from_millis(200), TASK),
    );
    let runtime = FakeRuntime::start().await;
    let models = format!(r#"{{"{MODEL}":"{APP_KEY}"}}"#);
    let base = dify.base_url();
    let function = Function::spawn(
        &runtime,
        &[
            ("DIFY_API_BASE", &base),
            ("MODEL_CONFIG", &models),
            ("PROXY_API_KEYS", PROXY_KEY),
            ("MAX_STREAM_SECONDS", "1"),
        ],
    );

    let id = runtime.invoke(event_text("chat-streaming.json"));
    let response = function.response(&runtime, &id).await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    let events = sse_events(&response);
    let error: Value = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .find(|v| v.get("error").is_some())
        .unwrap_or_else(|| panic!("no error event: {}", response.body_text()));
    assert_eq!(error["error"]["code"], "dify_stream_error", "{error}");
    let finished = response.raw.finished.expect("a complete response");

    // Waited for only to say what happened when the order is wrong.
    let Some(stop) = dify.wait_for_stop_of(TASK, Duration::from_secs(10)).await else {
        panic!(
            "Dify's task was never stopped; stops: {:?}\n{}",
            dify.stops(),
            function.logs()
        );
    };
    assert_eq!(stop.call.key, APP_KEY);
    let ms = |t: Instant| t.saturating_duration_since(response.delivered).as_millis();
    assert!(
        stop.answered <= finished,
        "the invocation's response finished at +{} ms, but Dify received the stop at +{} ms \
         and answered it at +{} ms (after delivery): the environment may freeze before the \
         stop gets through",
        ms(finished),
        ms(stop.received),
        ms(stop.answered)
    );
}

#[tokio::test]
async fn event_files_get_openai_answers_through_the_runtime_api() {
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::replay(FIXTURE));
    let runtime = FakeRuntime::start().await;
    let function = Function::serving(&runtime, &dify);

    // The files are fed unchanged: their key and model match this configuration.
    let names = [
        "models.json",
        "chat-no-key.json",
        "chat-blocking.json",
        "chat-streaming.json",
        "chat-unknown-model.json",
        "chat-bad-json.json",
        "chat-wrong-method.json",
    ];
    let ids: Vec<String> = names
        .iter()
        .map(|name| runtime.invoke(event_text(name)))
        .collect();
    let mut responses = Vec::new();
    for id in &ids {
        responses.push(function.response(&runtime, id).await);
    }
    for (name, response) in names.iter().zip(&responses) {
        assert!(
            response.streaming,
            "{name}: every answer goes through the streaming runtime"
        );
    }
    let [
        models,
        no_key,
        blocking,
        streaming,
        unknown,
        bad_json,
        wrong_method,
    ] = &responses[..]
    else {
        unreachable!()
    };

    assert_eq!(models.status, 200, "{}", models.body_text());
    assert!(
        models
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let list = models.json();
    assert_eq!(list["object"], "list", "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL], "{list}");
    assert_eq!(list["data"][0]["object"], "model", "{list}");

    assert_openai_error(no_key, 401, Some("invalid_api_key"));

    assert_eq!(blocking.status, 200, "{}", blocking.body_text());
    let completion = blocking.json();
    assert_eq!(completion["object"], "chat.completion", "{completion}");
    assert_eq!(completion["model"], MODEL, "{completion}");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        fixture_answer(FIXTURE).as_str(),
        "{completion}"
    );

    assert_eq!(streaming.status, 200, "{}", streaming.body_text());
    let events = sse_events(streaming);
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let text: String = events
        .iter()
        .filter_map(|e| delta_content(&e.data))
        .collect();
    assert_eq!(text, fixture_answer(FIXTURE));

    let body = assert_openai_error(unknown, 404, Some("model_not_found"));
    assert_eq!(body["error"]["param"], "model", "{body}");
    let body = assert_openai_error(bad_json, 400, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid JSON")),
        "{body}"
    );
    assert_openai_error(wrong_method, 405, Some("method_not_allowed"));

    // Only the blocking and the streaming chat reached Dify.
    let requests = dify.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests.iter().all(|r| r.key == APP_KEY));
    assert!(
        runtime.unexpected().is_empty(),
        "{:?}",
        runtime.unexpected()
    );
}

#[tokio::test]
async fn an_event_that_is_not_http_is_reported_and_the_function_keeps_serving() {
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::replay(FIXTURE));
    let runtime = FakeRuntime::start().await;
    let function = Function::serving(&runtime, &dify);

    let bad = runtime.invoke(r#"{"hello":"world"}"#);
    let good = runtime.invoke(event_text("models.json"));

    let Some(report) = runtime.wait_for_error(&bad, WAIT).await else {
        panic!(
            "no invocation error for a non-HTTP event: {:?}\n{}",
            runtime.record(&bad),
            function.logs()
        );
    };
    assert!(report.error_type.is_some(), "{report:?}");
    assert!(
        report.body["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{report:?}"
    );
    assert!(runtime.record(&bad).unwrap().response.is_none());

    let models = function.response(&runtime, &good).await;
    assert_eq!(models.status, 200, "{}", models.body_text());
    assert_eq!(models.json()["data"][0]["id"], MODEL);
}

#[tokio::test]
async fn invalid_configuration_exits_without_polling_for_events() {
    let dify = FakeDify::start().await;
    let runtime = FakeRuntime::start().await;
    let queued = runtime.invoke(event_text("models.json"));
    let mut function = Function::spawn(
        &runtime,
        &[
            ("DIFY_API_BASE", &dify.base_url()),
            // Not JSON (a missing closing brace), and no PROXY_API_KEYS at all.
            (
                "MODEL_CONFIG",
                r#"{"my-app": "app-lambdatest0123456789abcd""#,
            ),
            ("DIFY_TIMEOUT_SECONDS", "soon"),
        ],
    );

    let Some(status) = function.wait_exit(WAIT).await else {
        panic!(
            "opendify kept running with a broken configuration\n{}",
            function.logs()
        );
    };
    assert!(
        !status.success(),
        "exit status {status}\n{}",
        function.logs()
    );
    assert_eq!(status.code(), Some(1), "{}", function.logs());

    let stderr = function.stderr();
    for needle in [
        "opendify cannot start",
        "3 problems",
        "MODEL_CONFIG is not valid JSON",
        "PROXY_API_KEYS is not set",
        "DIFY_TIMEOUT_SECONDS is \"soon\"",
    ] {
        assert!(
            stderr.contains(needle),
            "missing {needle:?} in stderr:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("app-lambdatest"),
        "a key leaked:\n{stderr}"
    );

    assert_eq!(
        runtime.next_polls(),
        0,
        "a broken function must not ask for events"
    );
    let record = runtime.record(&queued).unwrap();
    assert!(record.delivered.is_none() && record.response.is_none());
    assert!(dify.requests().is_empty());
}
