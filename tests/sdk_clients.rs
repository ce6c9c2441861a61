//! The official OpenAI SDKs against the real binary: the `openai` Python package
//! (`tests/clients/python_sdk.py`) and the `openai` npm package
//! (`tests/clients/node_sdk.mjs`), each run as a child process against `opendify` in
//! local mode, with Dify played by [`FakeDify`].
//!
//! Each SDK gets its own fake Dify and its own proxy. One script run does every case
//! (one process start per SDK); the test then checks the script's JSON report and what
//! the fake Dify recorded. Every model has its own app key, so the fake's requests are
//! told apart by key (and by the case's prompt).
//!
//! Needs the pinned SDKs (a missing or stale one fails the test with the command to run):
//!
//! ```sh
//! .venv-tools/bin/pip install -r tests/clients/requirements.txt
//! npm ci --prefix tests/clients
//! ```

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::clients::{ScriptRun, run_script};
use support::process::{Running, refs, start};
use support::{FakeDify, Recorded, Scenario, Script, fixture_bytes};

const PROXY_KEY: &str = "sk-sdk-clients-proxy-key-5150";

/// The Dify user of a request with [`PROXY_KEY`] that names no end user.
fn default_user() -> String {
    opendify::config::Tenant::of_key(PROXY_KEY).dify_user(opendify::plan::DEFAULT_USER.to_string())
}

/// The main model: replays Dify's `chat-app-stream.sse`.
const MODEL: &str = "my-app";
const KEY_MAIN: &str = "app-sdkmain00000000000000001";
/// Generated answers, conversation ids checked like Dify does.
const KEY_MEMORY: &str = "app-sdkmemory000000000000001";
/// First a Dify 429 `too_many_requests`, then an answer.
const KEY_BUSY: &str = "app-sdkbusy00000000000000001";
/// Never set in the fake: Dify answers 401 `unauthorized`.
const KEY_BROKEN: &str = "app-sdkbroken000000000000001";
/// A stream with an `error` event after two chunks.
const KEY_FLAKY: &str = "app-sdkflaky0000000000000001";
/// A stream that runs until `/stop`.
const KEY_ENDLESS: &str = "app-sdkendless00000000000001";
/// A Dify 429 `rate_limit_error` (workspace quota exhausted).
const KEY_QUOTA: &str = "app-sdkquota0000000000000001";
/// An app whose input form requires `topic` (see `set_scenarios`).
const KEY_INPUTS: &str = "app-sdkinputs000000000000001";
/// Answers whose text opens with `<think>…</think>`, tags cut across Dify's frames;
/// conversation ids checked like Dify does.
const KEY_THINKING: &str = "app-sdkthinking0000000000001";
/// Generated answers, conversation ids and files checked like Dify does.
const KEY_FILES: &str = "app-sdkfiles0000000000000001";
/// An app with file upload off (its `/parameters` says so).
const KEY_NOFILES: &str = "app-sdknofiles00000000000001";
const ENDLESS_TASK: &str = "6f1d2c3b-4a5e-4f60-8b7a-9c8d7e6f5a41";
const ENDLESS_TOKEN: &str = "tick ";

/// How long one script run may take (it normally takes 2-3 s).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);

/// Wall-clock seconds, comparable with the scripts' `time.time()` / `Date.now()`.
fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_config() -> String {
    serde_json::json!({
        MODEL: KEY_MAIN,
        "memory-app": KEY_MEMORY,
        "busy-app": KEY_BUSY,
        "broken-app": KEY_BROKEN,
        "flaky-app": KEY_FLAKY,
        "endless-app": KEY_ENDLESS,
        "quota-app": KEY_QUOTA,
        "inputs-app": {"key": KEY_INPUTS, "inputs": {"language": "en"}, "request_inputs": ["topic"]},
        "thinking-app": KEY_THINKING,
        "files-app": KEY_FILES,
        "nofiles-app": KEY_NOFILES,
    })
    .to_string()
}

const ALL_MODELS: [&str; 11] = [
    MODEL,
    "memory-app",
    "busy-app",
    "broken-app",
    "flaky-app",
    "endless-app",
    "quota-app",
    "inputs-app",
    "thinking-app",
    "files-app",
    "nofiles-app",
];

// ---------------------------------------------------------------------------
// The proxy

/// The running binary (killed by its own PID when dropped, however the test ends).
struct Proxy;

impl Proxy {
    fn start(dify: &FakeDify) -> Running {
        let vars = [
            ("DIFY_API_BASE", dify.base_url()),
            ("MODEL_CONFIG", model_config()),
            ("PROXY_API_KEYS", PROXY_KEY.to_string()),
            ("DIFY_TIMEOUT_SECONDS", "10".to_string()),
            // Room for an image over Dify's 10 MiB limit in one request (image_too_large).
            ("MAX_REQUEST_BYTES", "16777216".to_string()),
        ];
        start(&refs(&vars))
    }
}

// ---------------------------------------------------------------------------
// The SDK scripts

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    Node,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::Python => "python",
            Sdk::Node => "node",
        }
    }

    /// The prefix the script puts in front of every prompt.
    fn prefix(self) -> &'static str {
        match self {
            Sdk::Python => "py",
            Sdk::Node => "node",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Sdk::Python => {
                "the Python openai SDK is needed in .venv-tools: from the repository root run\n  \
                 python3 -m venv .venv-tools   # if .venv-tools does not exist yet\n  \
                 .venv-tools/bin/pip install -r tests/clients/requirements.txt"
            }
            Sdk::Node => {
                "the openai npm package is needed in tests/clients/node_modules (node >= 20): \
                 from the repository root run\n  npm ci --prefix tests/clients"
            }
        }
    }

    /// The exact version pinned in `tests/clients/requirements.txt` / `package.json`.
    fn pinned_version(self) -> String {
        match self {
            Sdk::Python => {
                let text = std::fs::read_to_string(root().join("tests/clients/requirements.txt"))
                    .expect("tests/clients/requirements.txt");
                text.lines()
                    .find_map(|l| l.trim().strip_prefix("openai=="))
                    .expect("requirements.txt pins openai==<version>")
                    .trim()
                    .to_string()
            }
            Sdk::Node => {
                let text = std::fs::read_to_string(root().join("tests/clients/package.json"))
                    .expect("tests/clients/package.json");
                let pkg: Value = serde_json::from_str(&text).expect("package.json is JSON");
                pkg["dependencies"]["openai"]
                    .as_str()
                    .expect("package.json has dependencies.openai")
                    .to_string()
            }
        }
    }

    /// The program and the script it runs.
    fn command(self) -> (PathBuf, PathBuf) {
        let root = root();
        let (program, script) = match self {
            Sdk::Python => (
                root.join(".venv-tools/bin/python"),
                root.join("tests/clients/python_sdk.py"),
            ),
            Sdk::Node => (
                PathBuf::from("node"),
                root.join("tests/clients/node_sdk.mjs"),
            ),
        };
        if let Sdk::Python = self {
            assert!(
                program.exists(),
                "{} does not exist; {}",
                program.display(),
                self.install_hint()
            );
        }
        (program, script)
    }

    /// Runs every case of the script against `url` and returns its report.
    async fn run(self, url: &str) -> Report {
        let (program, script) = self.command();
        let vars = [
            ("OPENDIFY_BASE_URL", format!("{url}/v1")),
            ("OPENDIFY_API_KEY", PROXY_KEY.to_string()),
            ("OPENDIFY_MODEL", MODEL.to_string()),
        ];
        let run = run_script(
            self.name(),
            &program,
            &script,
            &vars,
            SCRIPT_DEADLINE,
            self.install_hint(),
        )
        .await;
        let version = run.json["sdk_version"].as_str().unwrap_or_default();
        let pinned = self.pinned_version();
        assert_eq!(
            version,
            pinned,
            "the installed {} openai SDK is {version}, but {pinned} is pinned; {}",
            self.name(),
            self.install_hint()
        );
        Report { sdk: self, run }
    }
}

struct Report {
    sdk: Sdk,
    run: ScriptRun,
}

impl std::ops::Deref for Report {
    type Target = ScriptRun;
    fn deref(&self) -> &ScriptRun {
        &self.run
    }
}

impl Report {
    fn prompt(&self, text: &str) -> String {
        format!("{} {text}", self.sdk.prefix())
    }
}

// ---------------------------------------------------------------------------
// What the fake Dify was set up to say

/// The answer and total tokens of `chat-app-stream.sse`, read from the fixture.
fn fixture_answer() -> (String, u64) {
    let text = String::from_utf8(fixture_bytes("chat-app-stream.sse")).unwrap();
    let mut answer = String::new();
    let mut total = None;
    for frame in text.split("\n\n") {
        let Some(data) = frame.strip_prefix("data: ") else {
            continue;
        };
        let v: Value = serde_json::from_str(data).unwrap();
        match v["event"].as_str() {
            Some("message") => answer.push_str(v["answer"].as_str().unwrap()),
            Some("message_end") => total = v["metadata"]["usage"]["total_tokens"].as_u64(),
            _ => {}
        }
    }
    (answer, total.expect("message_end with usage"))
}

const MEMORY_ANSWER: &str = "Nice to meet you, Ada.";

fn set_scenarios(dify: &FakeDify) {
    dify.set(KEY_MAIN, Scenario::replay("chat-app-stream.sse"));
    dify.set(
        KEY_MEMORY,
        Scenario::answer_with_conversations(MEMORY_ANSWER),
    );
    dify.set(
        KEY_BUSY,
        Scenario::Sequence(vec![
            Scenario::fixture_error("too_many_requests"),
            Scenario::answer("ok"),
        ]),
    );
    dify.set(KEY_FLAKY, Scenario::replay("chat-error-midstream.sse"));
    dify.set(
        KEY_ENDLESS,
        Scenario::endless(ENDLESS_TOKEN, Duration::from_millis(50), ENDLESS_TASK),
    );
    dify.set(KEY_QUOTA, Scenario::fixture_error("rate_limit_error"));
    dify.set(KEY_INPUTS, Scenario::answer("About tides."));
    dify.set_input_form(
        KEY_INPUTS,
        serde_json::json!([{"text-input": {"variable": "topic", "label": "Topic", "required": true}}]),
    );
    dify.set(
        KEY_THINKING,
        Scenario::Scripted(Script::chunked(
            &format!("<think>\n{THINKING}</think>\n\n{ANSWER}"),
            3,
        )),
    );
    dify.set(KEY_FILES, Scenario::answer_with_conversations(FILES_ANSWER));
    dify.set(KEY_NOFILES, Scenario::answer("ok"));
    dify.set_file_upload(
        KEY_NOFILES,
        serde_json::json!({"image": {"enabled": false}, "enabled": false}),
    );
}

const THINKING: &str = "The user asks about Paris. Answer briefly.\n";
const ANSWER: &str = "Paris is the capital of France.";
const FILES_ANSWER: &str = "A red dot on white.";

fn requests_for(dify: &FakeDify, key: &str) -> Vec<Recorded> {
    dify.requests()
        .into_iter()
        .filter(|r| r.key == key)
        .collect()
}

fn summary(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("key={} body={}", r.key, r.body))
        .collect()
}

// ---------------------------------------------------------------------------
// The checks

async fn exercise(sdk: Sdk) {
    let dify = FakeDify::start().await;
    set_scenarios(&dify);
    // Off the async runtime, so the fake Dify answers the cold start's `/info` lookups.
    let proxy = {
        let dify = dify.clone();
        tokio::task::spawn_blocking(move || Proxy::start(&dify))
            .await
            .unwrap()
    };
    // Notes when the first /stop arrives (wall clock, as the script reports its times), to
    // tell a stop caused by the client closing its stream from one caused by the client
    // process exiting.
    let stop_watch = tokio::spawn({
        let dify = dify.clone();
        async move {
            let stop = dify.wait_for_stop(SCRIPT_DEADLINE).await;
            stop.map(|s| (s, unix_seconds()))
        }
    });
    let report = sdk.run(&proxy.url).await;
    let stop = tokio::time::timeout(Duration::from_secs(5), stop_watch)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    // Shown only when an assertion fails.
    println!(
        "--- {} report:\n{:#}\n--- script stderr:\n{}\n--- fake Dify saw:\n{:#?}\nstops: {:?}\n--- proxy log:\n{}",
        sdk.name(),
        report.json,
        report.stderr,
        summary(&dify.requests()),
        dify.stops(),
        proxy.log()
    );

    check_models(&report);
    check_plain_chats(&report, &dify);
    check_multi_turn(&report, &dify);
    check_reasoning(&report, &dify);
    check_client_errors(&report, &dify);
    check_midstream_error(&report, &dify);
    check_cancel(&report, &dify, stop);
    check_retries(&report, &dify);
    check_files(&report, &dify);
    if let Sdk::Python = sdk {
        check_structured_output_refused(&report, &dify);
        check_required_input(&report, &dify);
    }
}

/// `chat.completions.parse(response_format=Model)`: a BadRequestError naming the
/// parameter, and Dify is not called.
fn check_structured_output_refused(r: &Report, dify: &FakeDify) {
    let e = r.raised("structured_output_refused");
    assert_eq!(e["class"], "BadRequestError", "{e:#}");
    assert_eq!(e["status"], 400, "{e:#}");
    assert_eq!(e["param"], "response_format", "{e:#}");
    assert!(
        e["message"].as_str().unwrap().contains("json_schema"),
        "{e:#}"
    );
    let reached: Vec<Recorded> = dify
        .requests()
        .into_iter()
        .filter(|q| q.query().unwrap_or_default().contains("py structured"))
        .collect();
    assert!(reached.is_empty(), "reached Dify: {:#?}", summary(&reached));
}

/// A required input: refused by the proxy (naming it) without it, answered with it, and
/// Dify receives it along with the model's default inputs.
fn check_required_input(r: &Report, dify: &FakeDify) {
    let v = r.ok("required_input_via_extra_body");
    let e = &v["missing"]["raised"];
    assert_eq!(e["class"], "BadRequestError", "{v:#}");
    assert_eq!(e["param"], "inputs", "{v:#}");
    assert!(
        e["message"].as_str().unwrap().contains("`topic` (Topic)"),
        "{v:#}"
    );
    assert_eq!(v["content"], "About tides.", "{v:#}");
    let seen = requests_for(dify, KEY_INPUTS);
    assert_eq!(
        seen.len(),
        1,
        "only the request with the input reached Dify: {:#?}",
        summary(&seen)
    );
    assert_eq!(
        seen[0].body["inputs"],
        serde_json::json!({"language": "en", "topic": "tides"}),
        "{:#?}",
        summary(&seen)
    );
}

/// Thinking apart from the answer, streamed and blocking, read through the SDK; and a
/// reasoning model's chat without a chat id continues its Dify conversation.
fn check_reasoning(r: &Report, dify: &FakeDify) {
    for case in ["reasoning_stream", "reasoning_blocking"] {
        let v = r.ok(case);
        assert_eq!(v["reasoning"], THINKING, "{case}: {v:#}");
        assert_eq!(v["content"], ANSWER, "{case}: {v:#}");
    }
    assert_eq!(r.ok("reasoning_blocking")["total_tokens"], 33);
    let v = r.ok("reasoning_multi_turn");
    assert_eq!(v["turn1"], ANSWER, "{v:#}");
    assert_eq!(v["turn2"], ANSWER, "{v:#}");
    let seen: Vec<Recorded> = requests_for(dify, KEY_THINKING)
        .into_iter()
        .filter(|q| q.query().is_some_and(|t| t.contains("reasoning turn")))
        .collect();
    assert_eq!(seen.len(), 2, "{:#?}", summary(&seen));
    assert_eq!(seen[0].conversation_id(), None, "{:#?}", summary(&seen));
    let issued = dify.conversation_ids(KEY_THINKING, &default_user());
    assert!(
        seen[1]
            .conversation_id()
            .is_some_and(|c| issued.iter().any(|i| i == c)),
        "turn 2 continues turn 1's conversation: {:#?}",
        summary(&seen)
    );
    assert_eq!(
        seen[1].query(),
        Some(r.prompt("reasoning turn 2: and its population?").as_str()),
        "turn 2 sends only the new message"
    );
}

fn check_models(r: &Report) {
    let v = r.ok("list_models");
    let mut ids: Vec<&str> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = ALL_MODELS.to_vec();
    want.sort_unstable();
    assert_eq!(ids, want, "{v:#}");
    assert_eq!(v["objects"], serde_json::json!(["model"]), "{v:#}");
    assert_eq!(v["retrieved"]["id"], MODEL, "{v:#}");
    assert_eq!(v["retrieved"]["object"], "model", "{v:#}");
}

/// Blocking, streaming, streaming with usage, text parts: all against the replayed
/// `chat-app-stream.sse`.
fn check_plain_chats(r: &Report, dify: &FakeDify) {
    let (answer, total_tokens) = fixture_answer();
    let main = requests_for(dify, KEY_MAIN);
    let sent = |prompt: &str| -> Recorded {
        let found: Vec<&Recorded> = main.iter().filter(|q| q.query() == Some(prompt)).collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one Dify request with query {prompt:?}; saw {:#?}",
            r.sdk.name(),
            summary(&main)
        );
        found[0].clone()
    };

    // Blocking.
    let v = r.ok("blocking");
    assert_eq!(v["object"], "chat.completion", "{v:#}");
    assert_eq!(v["model"], MODEL, "{v:#}");
    assert_eq!(v["n_choices"], 1, "{v:#}");
    assert_eq!(v["role"], "assistant", "{v:#}");
    assert_eq!(v["content"], answer.as_str(), "{v:#}");
    assert_eq!(v["finish_reason"], "stop", "{v:#}");
    assert_eq!(v["usage"]["total_tokens"], total_tokens, "{v:#}");
    assert!(
        v["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "the SDK exposes x-request-id: {v:#}"
    );
    let q = sent(&r.prompt("blocking: what is the capital of France?"));
    assert_eq!(q.response_mode(), Some("streaming"));
    assert_eq!(q.user(), Some(default_user().as_str()));

    // The SDKs' accumulating stream helpers (strict about role and finish_reason).
    let v = r.ok("stream_helper");
    assert_eq!(v["content"], answer.as_str(), "{v:#}");
    assert_eq!(v["role"], "assistant", "{v:#}");
    assert_eq!(v["finish_reason"], "stop", "{v:#}");
    assert_eq!(v["usage"]["total_tokens"], total_tokens, "{v:#}");
    sent(&r.prompt("helper: what is the capital of France?"));

    // Text parts are joined with a newline.
    let v = r.ok("text_parts");
    assert_eq!(v["content"], answer.as_str(), "{v:#}");
    sent(&r.prompt("parts: first part.\nSecond part."));

    // Streaming, without and with usage.
    for (case, usage) in [("streaming", false), ("stream_usage", true)] {
        let v = r.ok(case);
        let chunks = v["chunks"].as_array().unwrap();
        assert!(!chunks.is_empty(), "{case}: {v:#}");
        let with_choices: Vec<&Value> = chunks.iter().filter(|c| c["n_choices"] != 0).collect();
        let joined: String = with_choices
            .iter()
            .filter_map(|c| c["content"].as_str())
            .collect();
        assert_eq!(joined, answer, "{case}: {v:#}");
        assert_eq!(with_choices[0]["role"], "assistant", "{case}: {v:#}");
        let finishes: Vec<&Value> = with_choices
            .iter()
            .map(|c| &c["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finishes, [&Value::from("stop")], "{case}: {v:#}");
        for c in chunks {
            assert_eq!(c["id"], chunks[0]["id"], "{case}: one id: {v:#}");
            assert_eq!(c["created"], chunks[0]["created"], "{case}: {v:#}");
            assert_eq!(c["object"], "chat.completion.chunk", "{case}: {v:#}");
            assert_eq!(c["model"], MODEL, "{case}: {v:#}");
        }
        // As OpenAI does: with include_usage every chunk has a `usage` key (null but in
        // the last one); without it, none has.
        for c in chunks {
            assert_eq!(c["has_usage_key"], usage, "{case}: {v:#}");
        }
        let last = chunks.last().unwrap();
        if usage {
            assert_eq!(last["n_choices"], 0, "{case}: usage chunk last: {v:#}");
            assert_eq!(last["usage"]["total_tokens"], total_tokens, "{case}: {v:#}");
            for c in &chunks[..chunks.len() - 1] {
                assert!(c["usage"].is_null(), "{case}: usage only last: {v:#}");
                assert_ne!(c["n_choices"], 0, "{case}: {v:#}");
            }
        } else {
            for c in chunks {
                assert_ne!(c["n_choices"], 0, "{case}: no usage chunk: {v:#}");
                assert!(c["usage"].is_null(), "{case}: {v:#}");
            }
        }
        let prompt = match case {
            "streaming" => {
                let ct = v["content_type"].as_str().unwrap_or_default();
                assert!(ct.starts_with("text/event-stream"), "{v:#}");
                assert!(v["request_id"].as_str().is_some_and(|id| !id.is_empty()));
                "streaming: what is the capital of France?"
            }
            _ => "usage: what is the capital of France?",
        };
        let q = sent(&r.prompt(prompt));
        assert_eq!(q.response_mode(), Some("streaming"));
    }
    assert_eq!(main.len(), 5, "{}: {:#?}", r.sdk.name(), summary(&main));
}

/// Two turns of one conversation: by chat-id header (`multi_turn`, the key's default user) and,
/// with no chat id, by history matching (`history_matching`, its own user).
fn check_multi_turn(r: &Report, dify: &FakeDify) {
    let history_user = opendify::config::Tenant::of_key(PROXY_KEY)
        .dify_user(format!("{}-history-user", r.sdk.prefix()));
    let chat_user = default_user();
    for (case, user, turn1, turn2) in [
        (
            "multi_turn",
            chat_user.as_str(),
            "turn 1: my name is Ada.",
            "turn 2: what is my name?",
        ),
        (
            "history_matching",
            history_user.as_str(),
            "history 1: my name is Grace.",
            "history 2: what is my name?",
        ),
    ] {
        let v = r.ok(case);
        assert_eq!(v["turn1"], MEMORY_ANSWER, "{case}: {v:#}");
        assert_eq!(v["turn2"], MEMORY_ANSWER, "{case}: {v:#}");
        let seen: Vec<Recorded> = requests_for(dify, KEY_MEMORY)
            .into_iter()
            .filter(|q| q.user() == Some(user))
            .collect();
        assert_eq!(seen.len(), 2, "{case}: {:#?}", summary(&seen));
        let issued = dify.conversation_ids(KEY_MEMORY, user);
        assert_eq!(issued.len(), 1, "{case}: one conversation: {issued:?}");
        assert!(
            seen[0].conversation_id().unwrap_or("").is_empty(),
            "{case}: turn 1 starts a conversation: {:#?}",
            summary(&seen)
        );
        assert_eq!(seen[0].query(), Some(r.prompt(turn1).as_str()), "{case}");
        assert_eq!(
            seen[1].conversation_id(),
            Some(issued[0].as_str()),
            "{case}: turn 2 continues turn 1's conversation: {:#?}",
            summary(&seen)
        );
        assert_eq!(
            seen[1].query(),
            Some(r.prompt(turn2).as_str()),
            "{case}: turn 2 sends only the new message: {:#?}",
            summary(&seen)
        );
    }
    assert_eq!(requests_for(dify, KEY_MEMORY).len(), 4);
}

fn check_client_errors(r: &Report, dify: &FakeDify) {
    for (case, class, status, code) in [
        (
            "unknown_model",
            "NotFoundError",
            404,
            Some("model_not_found"),
        ),
        (
            "bad_key",
            "AuthenticationError",
            401,
            Some("invalid_api_key"),
        ),
        ("empty_messages", "BadRequestError", 400, None),
    ] {
        let e = r.raised(case);
        assert_eq!(e["class"], class, "{case}: {e:#}");
        assert_eq!(e["status"], status, "{case}: {e:#}");
        assert_eq!(e["is_api_error"], true, "{case}: {e:#}");
        if let Some(code) = code {
            assert_eq!(e["code"], code, "{case}: {e:#}");
        }
        assert!(
            e["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{case}: the SDK exposes x-request-id: {e:#}"
        );
    }
    assert!(
        r.raised("unknown_model")["message"]
            .as_str()
            .unwrap()
            .contains(MODEL),
        "the 404 lists the available models"
    );
    assert_eq!(r.raised("empty_messages")["param"], "messages");
    // None of them reached Dify.
    for q in dify.requests() {
        let query = q.query().unwrap_or_default();
        assert!(
            !query.contains("unknown model") && !query.contains("bad key"),
            "reached Dify: {query:?}"
        );
    }
}

fn check_midstream_error(r: &Report, dify: &FakeDify) {
    let v = r.case("midstream_error");
    assert!(v.get("unexpected").is_none(), "{v:#}");
    assert_eq!(v["content_before_error"], "Sure, here is", "{v:#}");
    let e = &v["raised"];
    // The base class itself, with no HTTP status: the error came inside a 200 stream.
    assert_eq!(e["class"], "APIError", "{e:#}");
    assert_eq!(e["is_api_error"], true, "{e:#}");
    assert!(e["status"].is_null(), "{e:#}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("You exceeded your current quota"),
        "Dify's text reaches the client: {e:#}"
    );
    // The provider's quota is used up (Dify's completion_request_error says so).
    assert_eq!(e["code"], "insufficient_quota", "{e:#}");

    // The same Dify failure for a blocking client: a 429 the SDK must not retry, since
    // Dify already ran the request and the quota will not come back by itself.
    let e = r.raised("aggregate_error");
    assert_eq!(e["class"], "RateLimitError", "{e:#}");
    assert_eq!(e["status"], 429, "{e:#}");
    assert_eq!(e["code"], "insufficient_quota", "{e:#}");
    assert_eq!(e["x_should_retry"], "false", "{e:#}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("You exceeded your current quota"),
        "{e:#}"
    );
    let flaky = requests_for(dify, KEY_FLAKY);
    assert_eq!(flaky.len(), 2, "no retry: {:#?}", summary(&flaky));
}

fn check_cancel(r: &Report, dify: &FakeDify, stop: Option<(support::StopCall, f64)>) {
    let v = r.ok("cancel_stream");
    assert_eq!(v["first_content"], ENDLESS_TOKEN, "{v:#}");
    let user = opendify::config::Tenant::of_key(PROXY_KEY)
        .dify_user(format!("{}-cancel-user", r.sdk.prefix()));
    let seen = requests_for(dify, KEY_ENDLESS);
    assert_eq!(seen.len(), 1, "{:#?}", summary(&seen));
    assert_eq!(seen[0].user(), Some(user.as_str()));
    let (stop, stopped_at) = stop.unwrap_or_else(|| {
        panic!(
            "{}: the proxy never called /stop after the client closed the stream",
            r.sdk.name()
        )
    });
    // The script closes the stream, then stays alive (holding its client) until
    // `linger_until`: a stop after that came from the process exiting, not from the close.
    let closed_at = v["closed_at"].as_f64().unwrap();
    let linger_until = v["linger_until"].as_f64().unwrap();
    assert!(
        stopped_at <= linger_until,
        "{}: /stop came {:.3} s after the client closed the stream, only once its process exited",
        r.sdk.name(),
        stopped_at - closed_at
    );
    assert_eq!(stop.task_id, ENDLESS_TASK);
    assert_eq!(stop.user, user);
    assert_eq!(stop.key, KEY_ENDLESS);
    assert_eq!(dify.stops().len(), 1, "{:?}", dify.stops());
}

fn check_retries(r: &Report, dify: &FakeDify) {
    // A Dify 429 (concurrency limit) becomes a 429 the SDK retries, and the retry succeeds.
    let v = r.ok("retry_429");
    assert_eq!(v["content"], "ok", "{v:#}");
    let busy = requests_for(dify, KEY_BUSY);
    assert_eq!(busy.len(), 2, "one retry: {:#?}", summary(&busy));

    // A Dify 401 (our app key) becomes a 502 the SDK must not retry.
    let e = r.raised("no_retry_dify_401");
    assert_eq!(e["class"], "InternalServerError", "{e:#}");
    assert_eq!(e["status"], 502, "{e:#}");
    assert_eq!(e["code"], "dify_app_key_rejected", "{e:#}");
    assert_eq!(e["x_should_retry"], "false", "{e:#}");
    // Dify is asked once: its `/info` at cold start rejects the key, so every request
    // for it is answered without asking Dify again.
    let broken = requests_for(dify, KEY_BROKEN);
    let lookups = dify
        .info_calls()
        .iter()
        .filter(|k| *k == KEY_BROKEN)
        .count();
    assert_eq!(
        broken.len() + lookups,
        1,
        "no retry: {lookups} /info calls, {:#?}",
        summary(&broken)
    );

    // An exhausted Dify quota is a 429 the SDK must not retry either.
    let e = r.raised("no_retry_quota");
    assert_eq!(e["class"], "RateLimitError", "{e:#}");
    assert_eq!(e["status"], 429, "{e:#}");
    assert_eq!(e["code"], "insufficient_quota", "{e:#}");
    assert_eq!(e["x_should_retry"], "false", "{e:#}");
    let quota = requests_for(dify, KEY_QUOTA);
    assert_eq!(quota.len(), 1, "no retry: {:#?}", summary(&quota));
}

#[tokio::test]
async fn python_openai_sdk_against_the_binary() {
    exercise(Sdk::Python).await;
}

#[tokio::test]
async fn node_openai_sdk_against_the_binary() {
    exercise(Sdk::Node).await;
}

/// Images and files through the SDKs' own types: a remote image, a base64 image uploaded
/// as the chat's user, a PDF, a too-large image refused before Dify, and a second turn
/// after an image turn that continues the same conversation without uploading again.
fn check_files(r: &Report, dify: &FakeDify) {
    let files = requests_for(dify, KEY_FILES);
    let sent = |prompt: &str| -> Recorded {
        let found: Vec<&Recorded> = files
            .iter()
            .filter(|q| q.query().is_some_and(|t| t.starts_with(prompt)))
            .collect();
        assert_eq!(found.len(), 1, "{prompt}: {:#?}", summary(&files));
        found[0].clone()
    };
    let uploads: Vec<support::Upload> = dify
        .uploads()
        .into_iter()
        .filter(|u| u.key == KEY_FILES)
        .collect();
    let upload = |id: &Value| -> support::Upload {
        uploads
            .iter()
            .find(|u| Some(u.id.as_str()) == id.as_str())
            .unwrap_or_else(|| panic!("no upload {id}: {uploads:#?}"))
            .clone()
    };

    let v = r.ok("image_url");
    assert_eq!(v["content"], FILES_ANSWER, "{v:#}");
    let q = sent(&r.prompt("image url: what is this?"));
    assert_eq!(
        q.query(),
        Some(format!("{}\n[image]", r.prompt("image url: what is this?")).as_str())
    );
    assert_eq!(
        q.body["files"],
        serde_json::json!([{"type": "image", "transfer_method": "remote_url",
            "url": format!("https://images.example/{}-cat.png", r.sdk.prefix())}])
    );

    let v = r.ok("image_base64");
    assert_eq!(v["content"], FILES_ANSWER, "{v:#}");
    let q = sent(&r.prompt("image base64: describe it."));
    assert_eq!(
        q.body["files"][0]["transfer_method"], "local_file",
        "{}",
        q.body
    );
    let u = upload(&q.body["files"][0]["upload_file_id"]);
    assert_eq!(
        Some(u.user.as_str()),
        q.user(),
        "the upload's user is the chat's user"
    );
    assert!(
        u.user.contains(&format!("{}-alice", r.sdk.prefix())),
        "{u:?}"
    );
    assert_eq!(
        (u.filename.as_str(), u.mime.as_str()),
        ("image.png", "image/png")
    );
    assert_eq!(&u.bytes[1..4], b"PNG");

    let v = r.ok("pdf_file");
    assert_eq!(v["content"], FILES_ANSWER, "{v:#}");
    let q = sent(&r.prompt("pdf: summarise it."));
    assert_eq!(q.body["files"][0]["type"], "document", "{}", q.body);
    let u = upload(&q.body["files"][0]["upload_file_id"]);
    let filename = format!("{}-report.pdf", r.sdk.prefix());
    assert_eq!(
        (u.filename.as_str(), u.mime.as_str()),
        (filename.as_str(), "application/pdf")
    );
    assert!(u.bytes.starts_with(b"%PDF-1.4"));

    // An app with uploads off: refused (the SDK raises), never an answer that ignores it.
    let e = r.raised("image_uploads_off");
    assert_eq!(e["status"], 400, "{e:#}");
    assert_eq!(e["param"], "messages[0].content[1]", "{e:#}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`nofiles-app` does not accept images"),
        "{e:#}"
    );
    assert!(requests_for(dify, KEY_NOFILES).is_empty());

    let e = r.raised("image_too_large");
    assert_eq!(e["status"], 413, "{e:#}");
    assert_eq!(e["code"], "file_too_large", "{e:#}");
    assert_eq!(e["param"], "messages[0].content[1]", "{e:#}");
    assert!(
        files
            .iter()
            .all(|q| !q.query().unwrap_or("").contains("too large")),
        "nothing reached Dify: {:#?}",
        summary(&files)
    );

    let v = r.ok("image_multi_turn");
    assert_eq!(
        (v["first"].as_str(), v["second"].as_str()),
        (Some(FILES_ANSWER), Some(FILES_ANSWER)),
        "{v:#}"
    );
    let one = sent(&r.prompt("image turn one."));
    let two = sent(&r.prompt("image turn two."));
    assert_eq!(one.conversation_id(), None);
    // image_url, pdf_file, then the image turn: the second turn made no new one.
    let conversation = dify.conversation_ids(KEY_FILES, &default_user());
    assert_eq!(conversation.len(), 3, "{conversation:?}");
    assert_eq!(
        two.conversation_id(),
        conversation.last().map(String::as_str),
        "{:#?}",
        summary(&files)
    );
    assert_eq!(two.query(), Some(r.prompt("image turn two.").as_str()));
    assert!(
        two.body.get("files").is_none(),
        "not sent again: {}",
        two.body
    );
    // Three uploads in all: the base64 image, the PDF, the first image turn.
    assert_eq!(uploads.len(), 3, "{uploads:#?}");
}
