//! The function the way Lambda runs it, through cargo-lambda's emulator: `cargo lambda
//! watch` runs `cargo run --bin opendify` under its Runtime API and function-URL
//! emulation (`/lambda-url/opendify/...`), in front of the fake Dify.
//!
//! - every event in `events/` through `cargo lambda invoke`, and through the same raw
//!   invocation request invoke makes (to see the status code invoke hides);
//! - a streamed answer through the function-URL emulation arrives incrementally;
//! - `tests/smoke.py` passes against the emulated function URL.
//!
//! Needs cargo-lambda (`.venv-tools/bin/cargo-lambda`, or on PATH): the tests fail, never
//! skip, without it. Everything listens on 127.0.0.1. The first request makes watch run
//! `cargo run`, which finds the binary `cargo test` already built (allow a few minutes if
//! it has to compile).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::events::{event_files, sse_data};
use support::process::drain;
use support::{FakeDify, Scenario, Split};

const PROXY_KEY: &str = "local-dev-key";
const MODEL: &str = "my-app";
const APP_KEY: &str = "app-cargolambda0123456789ab";
const FIXTURE: &str = "chat-app-stream.sse";
/// What the fixture's `message` frames say, joined.
const FIXTURE_ANSWER: &str = "The capital of France is Paris.";
/// From spawning watch to the first answered request: cargo-lambda start, `cargo run`
/// (normally a no-op: `cargo test` built the binary; a cold debug build on a busy 2-core
/// machine takes several minutes), function init. `OPENDIFY_WATCH_STARTUP_SECS` overrides.
const STARTUP: Duration = Duration::from_secs(420);
/// How long one `cargo lambda invoke` or one smoke run may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause the fake Dify makes between the frames of the streamed fixture.
const FRAME_DELAY: Duration = Duration::from_millis(150);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// PATH with the project's tool venv first, so `cargo lambda` finds `cargo-lambda`.
fn tool_path() -> String {
    let tools = manifest_dir().join(".venv-tools/bin");
    match std::env::var_os("PATH") {
        Some(path) => {
            let mut all = vec![tools];
            all.extend(std::env::split_paths(&path));
            std::env::join_paths(all)
                .expect("PATH entries are joinable")
                .into_string()
                .expect("PATH is UTF-8")
        }
        None => tools.display().to_string(),
    }
}

/// The cargo that runs this test (`CARGO`), so `cargo lambda` uses the same toolchain.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Fails (never skips) when cargo-lambda is missing; returns its version line.
fn require_cargo_lambda() -> String {
    let out = Command::new(cargo())
        .args(["lambda", "--version"])
        .env("PATH", tool_path())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!(
            "cargo-lambda is not installed (`cargo lambda --version` failed: {}). Install it with \
             `pip install cargo-lambda==1.9.2` (here: `.venv-tools/bin/pip install cargo-lambda==1.9.2`).",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run cargo ({e}); cargo-lambda is needed too: `pip install cargo-lambda==1.9.2`"
        ),
    }
}

/// `[package.metadata.lambda.watch.env]` (Cargo.toml or CargoLambda.toml) would override
/// the variables these tests pass to watch, silently: keep it out.
fn assert_no_watch_env_metadata() {
    for file in ["Cargo.toml", "CargoLambda.toml"] {
        let Ok(text) = std::fs::read_to_string(manifest_dir().join(file)) else {
            continue;
        };
        assert!(
            !text.contains("lambda.watch.env") && !text.contains("[watch.env]"),
            "{file} sets watch env vars, which override --env-var/--env-file and the process \
             environment in cargo lambda watch; these tests (and .env) would silently lose their settings"
        );
    }
}

fn startup_budget() -> Duration {
    std::env::var("OPENDIFY_WATCH_STARTUP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(STARTUP, Duration::from_secs)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

/// Variables that would change how the function behaves if the caller's shell had them.
const INHERITED_SETTINGS: &[&str] = &[
    "ALLOW_UNAUTHENTICATED",
    "CHAT_ID_HEADER",
    "CONVERSATION_DB_PATH",
    "CONVERSATION_HISTORY_MATCHING",
    "CONVERSATION_STORE",
    "CONVERSATION_TABLE",
    "CONVERSATION_TTL_DAYS",
    "CORS_ALLOW_ORIGINS",
    "DIFY_TIMEOUT_SECONDS",
    "MAX_MESSAGES",
    "MAX_REQUEST_BYTES",
    "MAX_STREAM_SECONDS",
    "MAX_UPSTREAM_BYTES",
    "MODEL_CONFIG_PARAMETER",
    "PROXY_API_KEYS_PARAMETER",
    "SERVER_HOST",
    "SERVER_PORT",
    "STREAM_IDLE_TIMEOUT_SECONDS",
];

/// `cargo lambda watch` in its own process group, stopped (with the function it started)
/// when dropped.
struct Watch {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Watch {
    fn start(dify: &FakeDify) -> Watch {
        println!("using {}", require_cargo_lambda());
        assert_no_watch_env_metadata();
        let port = free_port();
        let mut command = Command::new(cargo());
        command
            .args(["lambda", "watch", "-A", "127.0.0.1", "-P"])
            .arg(port.to_string())
            // No rebuild-and-restart when someone edits src/ while the tests run.
            .arg("--ignore-changes")
            // The emulator's own CORS layer adds headers a function URL without a CORS
            // config never adds (access-control-allow-credentials: true): keep it out.
            .arg("--disable-cors")
            .current_dir(manifest_dir())
            .env("PATH", tool_path())
            .env("CARGO_TERM_COLOR", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The function inherits watch's environment (there is no Cargo.toml watch env):
        // nothing from the caller's shell that configures opendify or AWS may leak in.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("AWS_") || INHERITED_SETTINGS.contains(&name.as_ref()) {
                command.env_remove(name.as_ref());
            }
        }
        command
            .env("DIFY_API_BASE", dify.base_url())
            .env("MODEL_CONFIG", format!(r#"{{"{MODEL}":"{APP_KEY}"}}"#))
            .env("PROXY_API_KEYS", PROXY_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info");
        // Its own process group: cargo-lambda and what it runs directly end with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `cargo lambda watch`: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().expect("piped stdout"), log.clone()),
            drain(child.stderr.take().expect("piped stderr"), log.clone()),
        ];
        Watch {
            child,
            port,
            log,
            readers,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The function-URL emulation: `/lambda-url/<bin>` + the path the function sees.
    fn url(&self, path: &str) -> String {
        format!("{}/lambda-url/opendify{path}", self.base())
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// The log's last lines (watch prints a huge metadata dump when it stops).
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.len() < 2000).collect();
        let from = lines.len().saturating_sub(80);
        format!(
            "--- cargo lambda watch log (tail) ---\n{}",
            lines[from..].join("\n")
        )
    }

    /// Waits until the function answers `GET /v1/models` through the function URL.
    ///
    /// One request, never abandoned: cargo-lambda keeps an invocation queued after its
    /// client gave up, and when the function (still being built by `cargo run`) finally
    /// takes it, posting the response fails (the emulator answers 500, then drops the
    /// connection), the runtime loop ends ("opendify stopped: client error (SendRequest)")
    /// and watch does not restart the function: every later request hangs.
    async fn wait_ready(&mut self) -> Duration {
        let started = Instant::now();
        let budget = startup_budget();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            self.assert_alive(started, budget);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let request = reqwest::Client::new()
            .get(self.url("/v1/models"))
            .bearer_auth(PROXY_KEY)
            .send();
        tokio::pin!(request);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut next_note = Duration::from_secs(30);
        loop {
            tokio::select! {
                r = &mut request => {
                    let r = r.unwrap_or_else(|e| panic!("readiness request failed: {e}\n{}", self.log_tail()));
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    assert_eq!(status, 200, "GET /v1/models: {body}\n{}", self.log_tail());
                    return started.elapsed();
                }
                _ = tick.tick() => {
                    self.assert_alive(started, budget);
                    if started.elapsed() >= next_note {
                        println!("still waiting for the function after {:?} (is `cargo run` building?)", started.elapsed());
                        next_note += Duration::from_secs(30);
                    }
                }
            }
        }
    }

    /// Panics with the log when watch or the function died, or the startup budget is spent.
    fn assert_alive(&mut self, started: Instant, budget: Duration) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "cargo lambda watch exited with {status}\n{}",
                self.log_tail()
            );
        }
        // watch logs this when `cargo run` fails (a compile error) or the function exits;
        // it does not restart it, so requests would hang.
        if self.log().contains("ERROR command exited") {
            panic!("the function exited before answering\n{}", self.log_tail());
        }
        if started.elapsed() >= budget {
            panic!(
                "the function did not answer within {budget:?} (OPENDIFY_WATCH_STARTUP_SECS raises it)\n{}",
                self.log_tail()
            );
        }
    }

    /// Process groups cargo-lambda created for the function (`process group spawned pgid=N`).
    fn function_groups(&self) -> Vec<u32> {
        self.log()
            .lines()
            .filter_map(|l| l.split("process group spawned pgid=").nth(1))
            .filter_map(|rest| {
                rest.trim()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

/// `kill -SIGNAL -- -PGID`: the whole group, named by the id of the process we started.
fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Watch {
    fn drop(&mut self) {
        let pgid = self.child.id();
        // SIGTERM: cargo-lambda stops the function instances it started, then exits.
        signal_group(pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(pgid, "KILL");
        let _ = self.child.wait();
        // The function runs in a process group of its own (watchexec makes one): if
        // cargo-lambda could not stop it, end that group too. Only groups named in this
        // watch's own log, i.e. started by it.
        for group in self.function_groups() {
            if signal_group(group, "0") {
                signal_group(group, "KILL");
            }
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// A command's exit status and output, killed if it runs longer than `COMMAND_TIMEOUT`.
struct Ran {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(program: &str, args: &[&str]) -> Ran {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(manifest_dir())
        .env("PATH", tool_path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`{program} {}` took longer than {COMMAND_TIMEOUT:?}",
                args.join(" ")
            )
        })
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}"));
    Ran {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `cargo lambda invoke opendify --data-file events/<name>` against this watch.
async fn invoke(watch: &Watch, name: &str) -> Ran {
    let port = watch.port.to_string();
    let file = format!("events/{name}");
    run(
        &cargo(),
        &[
            "lambda",
            "invoke",
            "opendify",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port,
            "--data-file",
            &file,
        ],
    )
    .await
}

fn check_openai_stream(text: &str) -> String {
    let data = sse_data(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}")))
        .collect();
    assert!(!chunks.is_empty(), "{text}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "{text}"
    );
    let ids: std::collections::HashSet<&str> = chunks
        .iter()
        .map(|c| c["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids.len(), 1, "one id for every chunk: {text}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == MODEL)
    );
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")], "{text}");
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn check_error_body(body: &Value, code: Option<&str>) {
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(err["type"], "invalid_request_error", "{body}");
    assert_eq!(
        err["code"],
        code.map_or(Value::Null, |c| json!(c)),
        "{body}"
    );
}

/// What each event must return: status, and a check of the body the function sent.
fn expectation(name: &str) -> (u16, &'static str, fn(&str)) {
    match name {
        "models.json" => (200, "application/json", |body| {
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["object"], "list", "{body}");
            let ids: Vec<&str> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["id"].as_str())
                .collect();
            assert_eq!(ids, [MODEL], "{body}");
        }),
        "chat-blocking.json" => (200, "application/json", |body| {
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["object"], "chat.completion", "{body}");
            assert_eq!(v["model"], MODEL, "{body}");
            assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{body}");
            assert_eq!(
                v["choices"][0]["message"]["content"], FIXTURE_ANSWER,
                "{body}"
            );
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "{body}");
            assert_eq!(v["usage"]["total_tokens"], 1156, "{body}");
        }),
        "chat-streaming.json" => (200, "text/event-stream", |body| {
            assert_eq!(check_openai_stream(body), FIXTURE_ANSWER);
        }),
        "chat-bad-json.json" => (400, "application/json", |body| {
            let v: Value = serde_json::from_str(body).unwrap();
            check_error_body(&v, None);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("not valid JSON"),
                "{body}"
            );
        }),
        "chat-no-key.json" => (401, "application/json", |body| {
            check_error_body(
                &serde_json::from_str(body).unwrap(),
                Some("invalid_api_key"),
            );
        }),
        "chat-unknown-model.json" => (404, "application/json", |body| {
            let v: Value = serde_json::from_str(body).unwrap();
            check_error_body(&v, Some("model_not_found"));
            assert_eq!(v["error"]["param"], "model", "{body}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(MODEL),
                "lists the models: {body}"
            );
        }),
        "chat-wrong-method.json" => (405, "application/json", |body| {
            check_error_body(
                &serde_json::from_str(body).unwrap(),
                Some("method_not_allowed"),
            );
        }),
        other => panic!(
            "events/{other} has no expectation in tests/cargo_lambda.rs (fn expectation): add what it must return"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_every_event_file() {
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::replay(FIXTURE));
    let mut watch = Watch::start(&dify);
    let ready = watch.wait_ready().await;
    println!("function ready after {ready:.1?}");

    let names = event_files();
    assert!(names.len() >= 7, "events/: {names:?}");
    let raw = reqwest::Client::new();
    for name in &names {
        let (status, content_type, check) = expectation(name);
        let dify_before = dify.requests().len();

        // 1. What `cargo lambda invoke` prints. For a response-streaming function, watch
        // turns the streaming prelude into the HTTP status of the invoke request: invoke
        // prints the body on 200 (JSON or SSE text, after the stream ended: buffered), and
        // on any other status fails, reading the body as a Lambda error payload
        // (errorType/errorMessage), so the function's own status and body are not shown.
        let out = invoke(&watch, name).await;
        if status == 200 {
            assert!(
                out.success,
                "{name}: invoke failed: {}\n{}",
                out.stderr,
                watch.log_tail()
            );
            let printed = out.stdout.strip_suffix('\n').unwrap_or(&out.stdout);
            check(printed);
        } else {
            assert_eq!(
                out.code,
                Some(1),
                "{name}: invoke should fail on HTTP {status}: {}",
                out.stdout
            );
            assert!(
                out.stderr
                    .contains("invalid error payload missing field `errorType`"),
                "{name}: {}",
                out.stderr
            );
            assert!(out.stdout.is_empty(), "{name}: {}", out.stdout);
        }

        // 2. The request invoke makes, to see the status and body it hides.
        let event = std::fs::read(manifest_dir().join("events").join(name)).unwrap();
        let r = raw
            .post(format!(
                "{}/2015-03-31/functions/opendify/invocations",
                watch.base()
            ))
            .body(event)
            .timeout(COMMAND_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: raw invocation failed: {e}"));
        assert_eq!(r.status().as_u16(), status, "{name}");
        let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            ctype.starts_with(content_type),
            "{name}: content-type {ctype}"
        );
        assert_eq!(
            r.headers()["lambda-runtime-function-response-mode"],
            "streaming",
            "{name}: served through the streaming runtime"
        );
        assert!(r.headers().contains_key("x-request-id"), "{name}");
        check(&r.text().await.unwrap());

        // Errors are answered before anything reaches Dify.
        let to_dify = dify.requests().len() - dify_before;
        let expected_dify = if status == 200 && name.starts_with("chat-") {
            2
        } else {
            0
        };
        assert_eq!(to_dify, expected_dify, "{name}: requests that reached Dify");
        println!(
            "{name}: HTTP {status} {content_type} (invoke exit {:?})",
            out.code
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_incrementally_through_the_function_url() {
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::replay(FIXTURE));
    let mut watch = Watch::start(&dify);
    watch.wait_ready().await;
    dify.set(
        APP_KEY,
        Scenario::Replay {
            fixture: FIXTURE,
            split: Split::Frames,
            delay: FRAME_DELAY,
        },
    );

    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(watch.url("/v1/chat/completions"))
        .bearer_auth(PROXY_KEY)
        .timeout(COMMAND_TIMEOUT)
        .json(&json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "What is the capital of France?"}]}))
        .send()
        .await
        .expect("streaming request");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(
        r.headers()["lambda-runtime-function-response-mode"],
        "streaming"
    );
    assert!(
        !r.headers().contains_key("content-length"),
        "a streamed body has no content-length"
    );

    // Every SSE event with the time its last byte arrived.
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut events: Vec<(String, Duration)> = Vec::new();
    let mut reads = 0;
    while let Some(piece) = body.next().await {
        let piece = piece.expect("stream read");
        let at = started.elapsed();
        reads += 1;
        text.push_str(std::str::from_utf8(&piece).expect("UTF-8 pieces at frame boundaries"));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            for data in sse_data(&block) {
                events.push((data, at));
            }
        }
    }
    let total = started.elapsed();
    let full: String = events
        .iter()
        .map(|(d, _)| format!("data: {d}\n\n"))
        .collect();
    assert_eq!(check_openai_stream(&full), FIXTURE_ANSWER, "{full}");

    let content_at: Vec<Duration> = events
        .iter()
        .filter(|(d, _)| {
            serde_json::from_str::<Value>(d).is_ok_and(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            })
        })
        .map(|(_, at)| *at)
        .collect();
    let timeline: Vec<String> = events
        .iter()
        .map(|(d, at)| {
            let v: Value = serde_json::from_str(d).unwrap_or(Value::Null);
            let shown = match &v["choices"][0] {
                Value::Null => d.clone(),
                choice => format!(
                    "delta {} finish_reason {}",
                    choice["delta"], choice["finish_reason"]
                ),
            };
            format!("{:>5}ms {shown}", at.as_millis())
        })
        .collect();
    println!("{reads} reads, total {total:?}\n{}", timeline.join("\n"));

    // Dify sends the 5 content frames 150 ms apart, then message_end 150 ms later.
    assert_eq!(content_at.len(), 5, "{}", timeline.join("\n"));
    let spread = content_at[4] - content_at[0];
    assert!(
        spread >= FRAME_DELAY * 3,
        "content arrived within {spread:?}, not spread over ~600 ms:\n{}",
        timeline.join("\n")
    );
    let paced_gaps = content_at
        .windows(2)
        .filter(|w| w[1] - w[0] >= FRAME_DELAY / 2)
        .count();
    assert!(
        paced_gaps >= 3,
        "only {paced_gaps} of 4 gaps between content chunks kept Dify's pacing:\n{}",
        timeline.join("\n")
    );
    assert!(
        total - content_at[0] >= FRAME_DELAY * 3,
        "the first token arrived only {:?} before the end: buffered\n{}",
        total - content_at[0],
        timeline.join("\n")
    );
    assert!(reads >= 5, "{reads} reads: the body came in one piece");

    // The Responses API through the same function URL: its events, as they arrive.
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(watch.url("/v1/responses"))
        .bearer_auth(PROXY_KEY)
        .timeout(COMMAND_TIMEOUT)
        .json(&json!({"model": MODEL, "stream": true, "input": "What is the capital of France?"}))
        .send()
        .await
        .expect("streaming Responses request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["lambda-runtime-function-response-mode"],
        "streaming"
    );
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut events: Vec<(Value, Duration)> = Vec::new();
    while let Some(piece) = body.next().await {
        let at = started.elapsed();
        text.push_str(std::str::from_utf8(&piece.expect("stream read")).expect("UTF-8"));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            for data in sse_data(&block) {
                events.push((serde_json::from_str(&data).expect("event JSON"), at));
            }
        }
    }
    let names: Vec<&str> = events
        .iter()
        .map(|(v, _)| v["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names.first(), Some(&"response.created"), "{names:?}");
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    let deltas: Vec<&(Value, Duration)> = events
        .iter()
        .filter(|(v, _)| v["type"] == "response.output_text.delta")
        .collect();
    let answer: String = deltas
        .iter()
        .map(|(v, _)| v["delta"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(answer, FIXTURE_ANSWER);
    assert_eq!(deltas.len(), 5, "{names:?}");
    let spread = deltas[4].1 - deltas[0].1;
    assert!(
        spread >= FRAME_DELAY * 3,
        "Responses deltas arrived within {spread:?}, not spread over ~600 ms: buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_script_passes_against_the_function_url() {
    let dify = FakeDify::start().await;
    dify.set(
        APP_KEY,
        Scenario::answer_with_conversations("Hello from the fake Dify."),
    );
    let mut watch = Watch::start(&dify);
    watch.wait_ready().await;

    let base = watch.url("/v1");
    let out = run(
        "python3",
        &[
            "tests/smoke.py",
            "--base-url",
            &base,
            "--key",
            PROXY_KEY,
            "--model",
            MODEL,
            "--timeout",
            "60",
        ],
    )
    .await;
    println!("{}{}", out.stdout, out.stderr);
    assert!(
        out.success,
        "smoke.py failed ({:?}):\n{}{}\n{}",
        out.code,
        out.stdout,
        out.stderr,
        watch.log_tail()
    );
    assert!(
        out.stdout.contains("smoke: 7 passed, 0 failed"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(PROXY_KEY), "the key is never printed");

    // Turn 2 of the continuity check continued the Dify conversation of turn 1: only the
    // new message was sent, with the conversation id Dify issued for turn 1.
    let requests = dify.requests();
    let continued: Vec<_> = requests
        .iter()
        .filter(|r| r.conversation_id().is_some())
        .collect();
    assert_eq!(continued.len(), 1, "{requests:#?}");
    let issued = dify.conversation_ids(APP_KEY, "opendify-smoke");
    assert_eq!(
        continued[0].conversation_id(),
        issued.last().map(String::as_str),
        "continues the latest conversation (turn 1's): {issued:?}"
    );
    let query = continued[0].query().unwrap_or_default();
    assert!(
        !query.is_empty() && !query.contains("Assistant:") && !query.contains("code word"),
        "only the new message goes to Dify: {query:?}"
    );
}

#[test]
fn watch_env_is_not_overridden_by_cargo_metadata() {
    assert_no_watch_env_metadata();
}
