//! `POST /v1/responses` proven with the real clients, each run as a child process against
//! the real binary in local mode, with Dify played by [`FakeDify`]:
//!
//! - the official `openai` Python package (`tests/clients/responses_python.py`) and npm
//!   package (`tests/clients/responses_node.mjs`);
//! - the OpenAI Agents SDK (`tests/clients/agents_sdk.py`) with its default model, which
//!   speaks the Responses API;
//! - the Vercel AI SDK (`tests/clients/vercel_ai.mjs`) with `@ai-sdk/openai`'s default
//!   model, which speaks the Responses API too.
//!
//! Each client gets its own fake Dify and its own proxy; one script run does every case.
//! The test then checks the script's JSON report (what the SDK's user sees) and what the
//! fake Dify recorded (what Dify was asked). Every model has its own app key, so the fake's
//! requests are told apart by key (and by the case's prompt).
//!
//! Needs the pinned clients (a missing or stale one fails the test with the command to run):
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
use support::{FakeDify, Recorded, Scenario, fixture_bytes};

const PROXY_KEY: &str = "sk-sdk-responses-proxy-key-7291";

/// The Dify user of a request with [`PROXY_KEY`] that names no end user.
fn default_user() -> String {
    opendify::config::Tenant::of_key(PROXY_KEY).dify_user(opendify::plan::DEFAULT_USER.to_string())
}

/// The main model: replays Dify's `chat-app-stream.sse`.
const MODEL: &str = "my-app";
const KEY_MAIN: &str = "app-respmain00000000000000001";
/// Generated answers, conversation ids checked like Dify does.
const MEMORY_MODEL: &str = "memory-app";
const KEY_MEMORY: &str = "app-respmemory000000000000001";
/// A stream with an `error` event after two chunks (`chat-error-midstream.sse`).
const FLAKY_MODEL: &str = "flaky-app";
const KEY_FLAKY: &str = "app-respflaky0000000000000001";
/// A stream that runs until `/stop`.
const ENDLESS_MODEL: &str = "endless-app";
const KEY_ENDLESS: &str = "app-respendless00000000000001";
const ENDLESS_TASK: &str = "0b6c1f7e-2d43-4a9e-9c5b-7e8d1a2f3c64";
const ENDLESS_TOKEN: &str = "tick ";
/// A chatflow whose LLM node sends its thinking apart (`reasoning_chunk`), then answers.
const THINKING_MODEL: &str = "thinking-app";
const KEY_THINKING: &str = "app-respthinking0000000000001";
const THINKING: &str = "The user asks for a capital.";
const THINKING_ANSWER: &str = "Paris it is.";

const MEMORY_ANSWER: &str = "Nice to meet you, Ada.";
/// What `chat-error-midstream.sse` streams before its error event, and the error's text.
const FLAKY_PARTIAL: &str = "Sure, here is";
const FLAKY_MESSAGE: &str = "You exceeded your current quota";

/// How long one script run may take (each normally takes a few seconds).
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

fn start_proxy(dify: &FakeDify) -> Running {
    let models = serde_json::json!({
        MODEL: KEY_MAIN,
        MEMORY_MODEL: KEY_MEMORY,
        FLAKY_MODEL: KEY_FLAKY,
        ENDLESS_MODEL: KEY_ENDLESS,
        THINKING_MODEL: KEY_THINKING,
    });
    let vars = [
        ("DIFY_API_BASE", dify.base_url()),
        ("MODEL_CONFIG", models.to_string()),
        ("PROXY_API_KEYS", PROXY_KEY.to_string()),
        ("DIFY_TIMEOUT_SECONDS", "10".to_string()),
    ];
    start(&refs(&vars))
}

fn set_scenarios(dify: &FakeDify) {
    dify.set(KEY_MAIN, Scenario::replay("chat-app-stream.sse"));
    dify.set(
        KEY_MEMORY,
        Scenario::answer_with_conversations(MEMORY_ANSWER),
    );
    dify.set(KEY_FLAKY, Scenario::replay("chat-error-midstream.sse"));
    dify.set(
        KEY_ENDLESS,
        Scenario::endless(ENDLESS_TOKEN, Duration::from_millis(50), ENDLESS_TASK),
    );
    dify.set(
        KEY_THINKING,
        Scenario::raw([(reasoning_stream(), Duration::ZERO)]),
    );
}

/// Dify's frames for [`THINKING_MODEL`]: two `reasoning_chunk`s, two `message`s, the end.
fn reasoning_stream() -> Vec<u8> {
    let ids = r#""conversation_id":"5a1e2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b","message_id":"6b2f3c4d-5e6f-4a71-9b8c-0d1e2f3a4b5c","task_id":"7c3a4d5e-6f70-4b82-8c9d-1e2f3a4b5c6d","created_at":1784212345"#;
    let mut sse = String::new();
    for thought in ["The user asks", " for a capital."] {
        sse.push_str(&format!(
            "data: {{\"event\":\"reasoning_chunk\",{ids},\"data\":{{\"reasoning\":{thought:?},\"node_id\":\"llm\",\"is_final\":false}}}}\n\n"
        ));
    }
    for word in ["Paris", " it is."] {
        sse.push_str(&format!(
            "data: {{\"event\":\"message\",{ids},\"answer\":{word:?}}}\n\n"
        ));
    }
    sse.push_str(&format!(
        "data: {{\"event\":\"message_end\",{ids},\"metadata\":{{\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}}}}}\n\n"
    ));
    sse.into_bytes()
}

// ---------------------------------------------------------------------------
// The client scripts

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    /// The `openai` Python package.
    Python,
    /// The `openai` npm package.
    Node,
    /// The OpenAI Agents SDK (Python).
    Agents,
    /// The Vercel AI SDK (npm).
    Vercel,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Python => "python",
            Client::Node => "node",
            Client::Agents => "agents",
            Client::Vercel => "vercel",
        }
    }

    /// The prefix the script puts in front of every prompt.
    fn prefix(self) -> &'static str {
        match self {
            Client::Python => "py",
            Client::Node => "node",
            Client::Agents => "agents",
            Client::Vercel => "vercel",
        }
    }

    fn is_python(self) -> bool {
        matches!(self, Client::Python | Client::Agents)
    }

    fn install_hint(self) -> &'static str {
        if self.is_python() {
            "the Python clients are needed in .venv-tools: from the repository root run\n  \
             python3 -m venv .venv-tools   # if .venv-tools does not exist yet\n  \
             .venv-tools/bin/pip install -r tests/clients/requirements.txt"
        } else {
            "the npm clients are needed in tests/clients/node_modules (node >= 20): \
             from the repository root run\n  npm ci --prefix tests/clients"
        }
    }

    /// The packages whose installed version must be the pinned one.
    fn pinned(self) -> Vec<(&'static str, String)> {
        let requirement = |name: &str| -> String {
            let text = std::fs::read_to_string(root().join("tests/clients/requirements.txt"))
                .expect("tests/clients/requirements.txt");
            let prefix = format!("{name}==");
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(str::to_string))
                .unwrap_or_else(|| panic!("requirements.txt pins {name}==<version>"))
        };
        let dependency = |name: &str| -> String {
            let text = std::fs::read_to_string(root().join("tests/clients/package.json"))
                .expect("tests/clients/package.json");
            let pkg: Value = serde_json::from_str(&text).expect("package.json is JSON");
            pkg["dependencies"][name]
                .as_str()
                .unwrap_or_else(|| panic!("package.json has dependencies.{name}"))
                .to_string()
        };
        match self {
            Client::Python => vec![("openai", requirement("openai"))],
            Client::Agents => vec![
                ("openai", requirement("openai")),
                ("openai-agents", requirement("openai-agents")),
            ],
            Client::Node => vec![("openai", dependency("openai"))],
            Client::Vercel => vec![
                ("ai", dependency("ai")),
                ("@ai-sdk/openai", dependency("@ai-sdk/openai")),
            ],
        }
    }

    /// The program and the script it runs.
    fn command(self) -> (PathBuf, PathBuf) {
        let root = root();
        let script = root.join("tests/clients").join(match self {
            Client::Python => "responses_python.py",
            Client::Node => "responses_node.mjs",
            Client::Agents => "agents_sdk.py",
            Client::Vercel => "vercel_ai.mjs",
        });
        let program = if self.is_python() {
            let python = root.join(".venv-tools/bin/python");
            assert!(
                python.exists(),
                "{} does not exist; {}",
                python.display(),
                self.install_hint()
            );
            python
        } else {
            PathBuf::from("node")
        };
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
        for (package, pinned) in self.pinned() {
            let installed = run.json["versions"][package].as_str().unwrap_or_default();
            assert_eq!(
                installed,
                pinned,
                "the installed {package} is {installed:?}, but {pinned} is pinned; {}",
                self.install_hint()
            );
        }
        Report { client: self, run }
    }
}

struct Report {
    client: Client,
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
        format!("{} {text}", self.client.prefix())
    }
}

// ---------------------------------------------------------------------------
// What the fake Dify was set up to say

struct Fixture {
    answer: String,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    /// Dify's conversation, message and task ids, none of which a response id may show.
    dify_ids: Vec<String>,
}

/// The answer, usage and ids of `chat-app-stream.sse`, read from the fixture.
fn fixture() -> Fixture {
    let text = String::from_utf8(fixture_bytes("chat-app-stream.sse")).unwrap();
    let mut answer = String::new();
    let mut usage = None;
    let mut dify_ids = Vec::new();
    for frame in text.split("\n\n") {
        let Some(data) = frame.strip_prefix("data: ") else {
            continue;
        };
        let v: Value = serde_json::from_str(data).unwrap();
        for field in ["conversation_id", "message_id", "task_id"] {
            if let Some(id) = v[field].as_str() {
                let id = id.replace('-', "");
                if !dify_ids.contains(&id) {
                    dify_ids.push(id);
                }
            }
        }
        match v["event"].as_str() {
            Some("message") => answer.push_str(v["answer"].as_str().unwrap()),
            Some("message_end") => usage = Some(v["metadata"]["usage"].clone()),
            _ => {}
        }
    }
    let usage = usage.expect("message_end with usage");
    Fixture {
        answer,
        input_tokens: usage["prompt_tokens"].as_u64().unwrap(),
        output_tokens: usage["completion_tokens"].as_u64().unwrap(),
        total_tokens: usage["total_tokens"].as_u64().unwrap(),
        dify_ids,
    }
}

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

/// The one request for `key` whose query is `query`.
fn sent(dify: &FakeDify, key: &str, query: &str) -> Recorded {
    let all = requests_for(dify, key);
    let found: Vec<&Recorded> = all.iter().filter(|q| q.query() == Some(query)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one Dify request with query {query:?}; saw {:#?}",
        summary(&all)
    );
    found[0].clone()
}

/// Requests whose query mentions `text` (any key).
fn mentioning(dify: &FakeDify, text: &str) -> Vec<Recorded> {
    dify.requests()
        .into_iter()
        .filter(|q| q.query().is_some_and(|s| s.contains(text)))
        .collect()
}

fn contains(v: &Value, text: &str) -> bool {
    v.as_str().is_some_and(|s| s.contains(text))
}

// ---------------------------------------------------------------------------
// Running one client

/// A client's run: its report, the fake Dify, the proxy, and when /stop of the endless
/// task arrived (wall clock, as the scripts report their times).
struct Run {
    report: Report,
    dify: FakeDify,
    stop_at: Option<f64>,
}

async fn run_client(client: Client) -> Run {
    let dify = FakeDify::start().await;
    set_scenarios(&dify);
    let proxy = start_proxy(&dify);
    // Notes when /stop for the endless task arrives, to tell a stop caused by the client
    // closing its stream from one caused by the client process exiting.
    let stop_watch = tokio::spawn({
        let dify = dify.clone();
        async move {
            dify.wait_for_stop_of(ENDLESS_TASK, SCRIPT_DEADLINE)
                .await
                .map(|_| unix_seconds())
        }
    });
    let report = client.run(&proxy.url).await;
    let stop_at = if matches!(client, Client::Python | Client::Node) {
        tokio::time::timeout(Duration::from_secs(5), stop_watch)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    } else {
        stop_watch.abort();
        None
    };
    // Shown only when an assertion fails (and with --nocapture).
    let seconds: serde_json::Map<String, Value> = report.json["cases"]
        .as_object()
        .map(|cases| {
            cases
                .iter()
                .map(|(k, v)| (k.clone(), v["seconds"].clone()))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "--- {} script run took {:.2} s; per case: {}\n--- report:\n{:#}\n--- script stderr:\n{}\n--- fake Dify saw:\n{:#?}\nstops: {:?}\n--- proxy log:\n{}",
        client.name(),
        report.took.as_secs_f64(),
        Value::Object(seconds),
        report.json,
        report.stderr,
        summary(&dify.requests()),
        dify.stops(),
        proxy.log()
    );
    Run {
        report,
        dify,
        stop_at,
    }
}

// ---------------------------------------------------------------------------
// The checks for the openai SDKs (Python and npm)

async fn exercise_openai_sdk(client: Client) {
    let run = run_client(client).await;
    let (r, dify) = (&run.report, &run.dify);
    let fx = fixture();
    check_blocking(r, dify, &fx);
    check_streaming(r, dify, &fx);
    check_stream_helper(r, dify, &fx);
    check_three_turns(r, dify);
    check_unknown_previous(r, dify);
    check_store_false(r, dify);
    check_midstream(r, dify);
    check_cancel(r, dify, run.stop_at);
    check_tools_refused(r, dify);
    if client == Client::Python {
        check_reasoning(r);
    }
}

/// Dify's separate reasoning reaches the SDK as a reasoning item before the message, and
/// `output_text` is the answer alone.
fn check_reasoning(r: &Report) {
    let v = r.ok("reasoning");
    let want = serde_json::json!([
        {"type": "reasoning", "text": THINKING},
        {"type": "message", "text": THINKING_ANSWER},
    ]);
    assert_eq!(v["blocking"], want, "{v:#}");
    assert_eq!(v["streamed"], want, "{v:#}");
    assert_eq!(v["blocking_text"], THINKING_ANSWER, "{v:#}");
    assert_eq!(v["streamed_text"], THINKING_ANSWER, "{v:#}");
    let types = v["types"].as_array().unwrap();
    assert!(
        types.contains(&serde_json::json!("response.reasoning_summary_text.delta")),
        "{v:#}"
    );
}

/// A response id: `resp_` and opaque, showing none of Dify's ids.
fn check_response_id(id: &Value, fx: &Fixture, context: &str) {
    let id = id.as_str().unwrap_or_default();
    assert!(id.starts_with("resp_") && id.len() > 5, "{context}: {id:?}");
    for dify_id in &fx.dify_ids {
        assert!(
            !id.replace('-', "").contains(dify_id.as_str()),
            "{context}: the response id {id} shows Dify's id {dify_id}"
        );
    }
}

/// The main model's answer as the user reads it from a Response object.
fn check_main_response(v: &Value, fx: &Fixture, context: &str) {
    assert_eq!(v["object"], "response", "{context}: {v:#}");
    assert_eq!(v["status"], "completed", "{context}: {v:#}");
    assert_eq!(v["model"], MODEL, "{context}: {v:#}");
    assert_eq!(v["output_text"], fx.answer.as_str(), "{context}: {v:#}");
    assert!(v["error"].is_null(), "{context}: {v:#}");
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{context}: one message item: {v:#}");
    assert_eq!(output[0]["type"], "message", "{context}: {v:#}");
    assert_eq!(output[0]["role"], "assistant", "{context}: {v:#}");
    assert_eq!(output[0]["status"], "completed", "{context}: {v:#}");
    assert_eq!(
        output[0]["content"],
        serde_json::json!(["output_text"]),
        "{context}: {v:#}"
    );
    let usage = &v["usage"];
    assert_eq!(usage["input_tokens"], fx.input_tokens, "{context}: {v:#}");
    assert_eq!(usage["output_tokens"], fx.output_tokens, "{context}: {v:#}");
    assert_eq!(usage["total_tokens"], fx.total_tokens, "{context}: {v:#}");
    check_response_id(&v["id"], fx, context);
}

fn check_blocking(r: &Report, dify: &FakeDify, fx: &Fixture) {
    let v = r.ok("blocking");
    check_main_response(v, fx, "blocking");
    assert!(
        v["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "the SDK exposes x-request-id: {v:#}"
    );
    let q = sent(
        dify,
        KEY_MAIN,
        &r.prompt("blocking: what is the capital of France?"),
    );
    assert_eq!(q.user(), Some(default_user().as_str()));
    assert!(q.conversation_id().unwrap_or("").is_empty(), "new: {q:?}");
}

/// `responses.create(stream=True)`: the full event sequence, read through the SDK.
fn check_streaming(r: &Report, dify: &FakeDify, fx: &Fixture) {
    let v = r.ok("streaming");
    let ct = v["content_type"].as_str().unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "{v:#}");
    assert!(v["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let events = v["events"].as_array().unwrap();
    // The order of the reference, deltas folded into one entry.
    let mut kinds: Vec<&str> = Vec::new();
    for e in events {
        let t = e["type"].as_str().unwrap();
        if kinds.last() != Some(&t) || t != "response.output_text.delta" {
            kinds.push(t);
        }
    }
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ],
        "{v:#}"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i, "sequence_number counts from 0 by one: {v:#}");
    }
    let by_type = |t: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == t).collect() };
    let deltas: String = by_type("response.output_text.delta")
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, fx.answer, "{v:#}");
    assert_eq!(
        by_type("response.output_text.done")[0]["text"],
        fx.answer.as_str(),
        "{v:#}"
    );
    assert_eq!(
        by_type("response.content_part.done")[0]["part"]["text"],
        fx.answer.as_str(),
        "{v:#}"
    );
    // One item id throughout.
    let item_id = &by_type("response.output_item.added")[0]["item"]["id"];
    assert!(item_id.as_str().is_some_and(|s| !s.is_empty()), "{v:#}");
    for e in events {
        if let Some(id) = e.get("item_id") {
            assert_eq!(id, item_id, "{v:#}");
        }
    }
    assert_eq!(
        by_type("response.output_item.done")[0]["item"]["id"],
        *item_id
    );
    assert_eq!(
        by_type("response.output_item.done")[0]["item"]["status"],
        "completed"
    );
    // One response id throughout; created is in progress, completed carries everything.
    let created = &by_type("response.created")[0]["response"];
    assert_eq!(created["status"], "in_progress", "{v:#}");
    let completed = &by_type("response.completed")[0]["response"];
    check_main_response(completed, fx, "streaming: response.completed");
    for e in events {
        if let Some(resp) = e.get("response") {
            assert_eq!(resp["id"], created["id"], "{v:#}");
        }
    }
    assert_ne!(
        completed["id"],
        r.case("blocking")["id"],
        "every response has its own id"
    );
    let q = sent(
        dify,
        KEY_MAIN,
        &r.prompt("streaming: what is the capital of France?"),
    );
    assert_eq!(q.response_mode(), Some("streaming"));
}

/// The SDK's `responses.stream(...)` helper and its final response.
fn check_stream_helper(r: &Report, dify: &FakeDify, fx: &Fixture) {
    let v = r.ok("stream_helper");
    check_main_response(v, fx, "stream helper: final response");
    let deltas: String = v["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(deltas, fx.answer, "{v:#}");
    let types = v["types"].as_array().unwrap();
    assert_eq!(types.first().unwrap(), "response.created", "{v:#}");
    assert_eq!(types.last().unwrap(), "response.completed", "{v:#}");
    sent(
        dify,
        KEY_MAIN,
        &r.prompt("helper: what is the capital of France?"),
    );
    assert_eq!(
        requests_for(dify, KEY_MAIN).len(),
        3,
        "blocking, streaming, helper: {:#?}",
        summary(&requests_for(dify, KEY_MAIN))
    );
}

fn instructions(r: &Report) -> String {
    format!("{}: answer in one sentence.", r.client.prefix())
}

/// A new conversation's query: the instructions, then the input (folded like a system
/// message in chat completions).
fn check_folded(q: &Recorded, instructions: &str, input: &str) {
    let query = q.query().unwrap_or_default();
    let at_instructions = query.find(instructions);
    let at_input = query.find(input);
    assert!(
        matches!((at_instructions, at_input), (Some(i), Some(j)) if i < j),
        "the instructions reach Dify before the input {input:?}: {query:?}"
    );
}

/// `previous_response_id` over three turns: Dify's conversation continues, and turns 2
/// and 3 send only their new input.
fn check_three_turns(r: &Report, dify: &FakeDify) {
    let v = r.ok("three_turns");
    let (t1, t2, t3) = (&v["turn1"], &v["turn2"]["response"], &v["turn3"]);
    for (turn, resp) in [("turn 1", t1), ("turn 2", t2), ("turn 3", t3)] {
        assert_eq!(resp["status"], "completed", "{turn}: {v:#}");
        assert_eq!(resp["output_text"], MEMORY_ANSWER, "{turn}: {v:#}");
    }
    assert_eq!(t1["instructions"], instructions(r).as_str(), "{v:#}");
    assert!(t1["previous_response_id"].is_null(), "{v:#}");
    assert_eq!(t2["previous_response_id"], t1["id"], "{v:#}");
    assert_eq!(t3["previous_response_id"], t2["id"], "{v:#}");
    assert!(t1["id"] != t2["id"] && t2["id"] != t3["id"], "{v:#}");

    let user = opendify::config::Tenant::of_key(PROXY_KEY)
        .dify_user(format!("{}-turns-user", r.client.prefix()));
    let seen: Vec<Recorded> = requests_for(dify, KEY_MEMORY)
        .into_iter()
        .filter(|q| q.user() == Some(user.as_str()))
        .collect();
    assert_eq!(seen.len(), 3, "{:#?}", summary(&seen));
    let issued = dify.conversation_ids(KEY_MEMORY, &user);
    assert_eq!(issued.len(), 1, "one Dify conversation: {issued:?}");
    // Turn 1 starts it, with the instructions folded into the query before the input.
    assert!(
        seen[0].conversation_id().unwrap_or("").is_empty(),
        "{:#?}",
        summary(&seen)
    );
    check_folded(
        &seen[0],
        &instructions(r),
        &r.prompt("turn 1: my name is Ada."),
    );
    // Turns 2 and 3 continue it with only their new input: no history, no instructions.
    for (i, text) in [
        (1, "turn 2: what is my name?"),
        (2, "turn 3: and my name again?"),
    ] {
        assert_eq!(
            seen[i].conversation_id(),
            Some(issued[0].as_str()),
            "turn {}: continues turn 1's conversation: {:#?}",
            i + 1,
            summary(&seen)
        );
        assert_eq!(
            seen[i].query(),
            Some(r.prompt(text).as_str()),
            "turn {}: only the new input: {:#?}",
            i + 1,
            summary(&seen)
        );
    }
}

/// An error the SDK raised for an HTTP 400 naming `previous_response_id`.
fn check_previous_not_found(r: &Report, e: &Value, context: &str) {
    assert_eq!(e["class"], "BadRequestError", "{context}: {e:#}");
    assert_eq!(e["status"], 400, "{context}: {e:#}");
    assert_eq!(e["param"], "previous_response_id", "{context}: {e:#}");
    assert_eq!(e["code"], "previous_response_not_found", "{context}: {e:#}");
    assert_eq!(e["type"], "invalid_request_error", "{context}: {e:#}");
    if r.client == Client::Python {
        assert_eq!(e["is_status_error"], true, "{context}: {e:#}");
    }
}

fn check_unknown_previous(r: &Report, dify: &FakeDify) {
    let e = r.raised("unknown_previous");
    check_previous_not_found(r, e, "unknown previous_response_id");
    assert!(
        contains(&e["message"], "resp_00000000000000000000000000000000"),
        "the message names the id: {e:#}"
    );
    let reached = mentioning(dify, "unknown previous");
    assert!(reached.is_empty(), "reached Dify: {:#?}", summary(&reached));
}

/// `store: false`: answered, but its id cannot be continued.
fn check_store_false(r: &Report, dify: &FakeDify) {
    let v = r.case("store_false");
    assert!(v.get("unexpected").is_none(), "{v:#}");
    assert_eq!(v["first"]["status"], "completed", "{v:#}");
    assert_eq!(v["first"]["output_text"], MEMORY_ANSWER, "{v:#}");
    assert_eq!(v["first"]["store"], false, "{v:#}");
    check_previous_not_found(r, &v["raised"], "store: false, then continued");
    let reached = mentioning(dify, "unstored");
    assert_eq!(
        reached.len(),
        1,
        "only the first turn reached Dify: {:#?}",
        summary(&reached)
    );
}

/// Dify fails after two chunks: each way of reading the answer must end in an error the
/// user sees (an exception, or a failed response), never in a completed answer.
fn check_midstream(r: &Report, dify: &FakeDify) {
    // The plain stream: the events the SDK yields.
    let v = r.case("midstream_error");
    let events = v["events"].as_array().unwrap();
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, FLAKY_PARTIAL, "{v:#}");
    assert!(
        !events.iter().any(|e| e["type"] == "response.completed"),
        "a failed answer must not complete: {v:#}"
    );
    // The SDK raises on the `error` event (its nested `error` object), as it does for a
    // chat-completions error mid-stream: an APIError with Dify's code and text.
    let raised = &v["raised"];
    assert!(
        raised.is_object(),
        "no exception for a failed answer: {v:#}"
    );
    assert_eq!(raised["is_api_error"], true, "{v:#}");
    assert_eq!(raised["code"], "insufficient_quota", "{v:#}");
    assert!(contains(&raised["message"], FLAKY_MESSAGE), "{v:#}");

    // The helper: an exception, or a final response that says it failed.
    let v = r.case("midstream_helper");
    let text: String = v["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(text, FLAKY_PARTIAL, "{v:#}");
    // The helper raises the same APIError, Dify's text included.
    assert!(
        v["raised"].is_object(),
        "no exception from the helper: {v:#}"
    );
    assert!(v.get("final").is_none(), "{v:#}");
    assert!(contains(&v["raised"]["message"], FLAKY_MESSAGE), "{v:#}");

    // A blocking request: an HTTP error, as for chat completions (429 for the provider's
    // used-up quota, not to be retried: Dify already ran the request).
    let e = r.raised("midstream_blocking");
    assert_eq!(e["status"], 429, "{e:#}");
    assert_eq!(e["code"], "insufficient_quota", "{e:#}");
    assert_eq!(e["x_should_retry"], "false", "{e:#}");
    assert!(contains(&e["message"], FLAKY_MESSAGE), "{e:#}");
    let flaky = requests_for(dify, KEY_FLAKY);
    assert_eq!(
        flaky.len(),
        3,
        "stream, helper, blocking; no retry: {:#?}",
        summary(&flaky)
    );
}

fn check_cancel(r: &Report, dify: &FakeDify, stop_at: Option<f64>) {
    let v = r.ok("cancel_stream");
    assert_eq!(v["first_delta"], ENDLESS_TOKEN, "{v:#}");
    let user = opendify::config::Tenant::of_key(PROXY_KEY)
        .dify_user(format!("{}-cancel-user", r.client.prefix()));
    let seen = requests_for(dify, KEY_ENDLESS);
    assert_eq!(seen.len(), 1, "{:#?}", summary(&seen));
    assert_eq!(seen[0].user(), Some(user.as_str()), "safety_identifier");
    let stopped_at = stop_at.unwrap_or_else(|| {
        panic!(
            "{}: the proxy never called /stop after the client closed the stream",
            r.client.name()
        )
    });
    // The script closes the stream, then stays alive (holding its client) until
    // `linger_until`: a stop after that came from the process exiting, not from the close.
    let closed_at = v["closed_at"].as_f64().unwrap();
    let linger_until = v["linger_until"].as_f64().unwrap();
    assert!(
        stopped_at <= linger_until,
        "{}: /stop came {:.3} s after the client closed the stream, only once its process exited",
        r.client.name(),
        stopped_at - closed_at
    );
    let stops = dify.stops();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0].task_id, ENDLESS_TASK);
    assert_eq!(stops[0].user, user);
    assert_eq!(stops[0].key, KEY_ENDLESS);
}

fn check_tools_refused(r: &Report, dify: &FakeDify) {
    let e = r.raised("tools_refused");
    assert_eq!(e["class"], "BadRequestError", "{e:#}");
    assert_eq!(e["status"], 400, "{e:#}");
    assert_eq!(e["param"], "tool_choice", "{e:#}");
    let reached = mentioning(dify, "tools: what is the weather");
    assert!(reached.is_empty(), "reached Dify: {:#?}", summary(&reached));
}

#[tokio::test]
async fn python_openai_sdk_responses() {
    exercise_openai_sdk(Client::Python).await;
}

#[tokio::test]
async fn node_openai_sdk_responses() {
    exercise_openai_sdk(Client::Node).await;
}

// ---------------------------------------------------------------------------
// The OpenAI Agents SDK

#[tokio::test]
async fn openai_agents_sdk_default_responses_model() {
    let run = run_client(Client::Agents).await;
    let (r, dify) = (&run.report, &run.dify);
    let fx = fixture();

    let v = r.ok("model_class");
    assert_eq!(v["class"], "OpenAIResponsesModel", "{v:#}");

    // Runner.run and Runner.run_streamed: the answer, the usage, a response id.
    for case in ["run", "run_streamed"] {
        let v = r.ok(case);
        assert_eq!(v["final_output"], fx.answer.as_str(), "{case}: {v:#}");
        assert_eq!(v["n_model_responses"], 1, "{case}: {v:#}");
        assert_eq!(v["usage"]["total_tokens"], fx.total_tokens, "{case}: {v:#}");
        check_response_id(&v["last_response_id"], &fx, case);
    }
    let v = r.ok("run_streamed");
    let deltas: String = v["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(deltas, fx.answer, "streamed text: {v:#}");
    assert_eq!(
        v["raw_types"].as_array().unwrap().last().unwrap(),
        "response.completed",
        "{v:#}"
    );
    assert_ne!(r.case("run")["last_response_id"], v["last_response_id"]);
    // The agent's instructions reach Dify, folded into a new conversation's query.
    for prompt in [
        "run: what is the capital of France?",
        "streamed: what is the capital of France?",
    ] {
        let q = mentioning(dify, &r.prompt(prompt));
        assert_eq!(q.len(), 1, "{:#?}", summary(&q));
        check_folded(&q[0], &instructions(r), &r.prompt(prompt));
        assert_eq!(q[0].key, KEY_MAIN);
        assert_eq!(q[0].user(), Some(default_user().as_str()));
    }

    // Two turns through previous_response_id: one Dify conversation; the second turn sends
    // only its input, though the Agents SDK sends the instructions again.
    let v = r.ok("two_turns");
    assert_eq!(v["turn1"]["final_output"], MEMORY_ANSWER, "{v:#}");
    assert_eq!(v["turn2"]["final_output"], MEMORY_ANSWER, "{v:#}");
    assert_ne!(
        v["turn1"]["last_response_id"], v["turn2"]["last_response_id"],
        "{v:#}"
    );
    let seen = requests_for(dify, KEY_MEMORY);
    assert_eq!(seen.len(), 2, "{:#?}", summary(&seen));
    let issued = dify.conversation_ids(KEY_MEMORY, &default_user());
    assert_eq!(issued.len(), 1, "one Dify conversation: {issued:?}");
    assert!(seen[0].conversation_id().unwrap_or("").is_empty());
    assert!(
        seen[0]
            .query()
            .is_some_and(|q| q.contains(&r.prompt("turn 1: my name is Ada."))),
        "{:#?}",
        summary(&seen)
    );
    assert_eq!(seen[1].conversation_id(), Some(issued[0].as_str()));
    assert_eq!(
        seen[1].query(),
        Some(r.prompt("turn 2: what is my name?").as_str()),
        "{:#?}",
        summary(&seen)
    );

    // An unknown previous_response_id: the openai SDK's BadRequestError, unwrapped.
    let e = r.raised("unknown_previous");
    assert_eq!(e["class"], "BadRequestError", "{e:#}");
    assert_eq!(e["api_error"]["status"], 400, "{e:#}");
    assert_eq!(
        e["api_error"]["code"], "previous_response_not_found",
        "{e:#}"
    );
    assert_eq!(e["api_error"]["param"], "previous_response_id", "{e:#}");
    let reached = mentioning(dify, "unknown previous");
    assert!(reached.is_empty(), "reached Dify: {:#?}", summary(&reached));

    // Dify fails mid-answer: the agent's user gets an exception carrying Dify's text.
    let v = r.case("midstream_error");
    let e = &v["raised"];
    assert!(e.is_object(), "no silent success: {v:#}");
    assert!(
        contains(&e["message"], FLAKY_MESSAGE)
            || contains(&e["api_error"]["message"], FLAKY_MESSAGE),
        "{v:#}"
    );
    assert_eq!(requests_for(dify, KEY_FLAKY).len(), 1);

    // Dify's separate reasoning: the agent's answer is the message alone, the reasoning
    // an item of its own before it.
    let v = r.ok("reasoning");
    assert_eq!(v["final_output"], THINKING_ANSWER, "{v:#}");
    assert_eq!(
        v["items"],
        serde_json::json!(["ReasoningItem", "MessageOutputItem"]),
        "{v:#}"
    );
}

// ---------------------------------------------------------------------------
// The Vercel AI SDK

#[tokio::test]
async fn vercel_ai_sdk_default_openai_provider() {
    let run = run_client(Client::Vercel).await;
    let (r, dify) = (&run.report, &run.dify);
    let fx = fixture();

    let v = r.ok("generate_text");
    assert_eq!(v["text"], fx.answer.as_str(), "{v:#}");
    assert_eq!(v["finish_reason"], "stop", "{v:#}");
    assert_eq!(v["usage"]["total_tokens"], fx.total_tokens, "{v:#}");
    check_response_id(&v["response_id"], &fx, "generateText");

    let v = r.ok("stream_text");
    let chunks: String = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(chunks, fx.answer, "the text stream: {v:#}");
    assert_eq!(v["text"], fx.answer.as_str(), "{v:#}");
    assert_eq!(v["finish_reason"], "stop", "{v:#}");
    assert_eq!(v["usage"]["total_tokens"], fx.total_tokens, "{v:#}");
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}");
    check_response_id(&v["response_id"], &fx, "streamText");

    for prompt in [
        "generate: what is the capital of France?",
        "stream: what is the capital of France?",
    ] {
        let q = sent(dify, KEY_MAIN, &r.prompt(prompt));
        assert_eq!(q.user(), Some(default_user().as_str()));
    }

    // Two turns through the provider's previousResponseId: one Dify conversation, and the
    // second turn sends only its input.
    let v = r.ok("two_turns");
    assert_eq!(v["turn1"], MEMORY_ANSWER, "{v:#}");
    assert_eq!(v["turn2"], MEMORY_ANSWER, "{v:#}");
    assert_eq!(v["finish_reason"], "stop", "{v:#}");
    check_response_id(&v["response_id"], &fx, "two turns");
    let seen = requests_for(dify, KEY_MEMORY);
    assert_eq!(seen.len(), 2, "{:#?}", summary(&seen));
    let issued = dify.conversation_ids(KEY_MEMORY, &default_user());
    assert_eq!(issued.len(), 1, "one Dify conversation: {issued:?}");
    assert_eq!(
        seen[0].query(),
        Some(r.prompt("turn 1: my name is Ada.").as_str())
    );
    assert_eq!(seen[1].conversation_id(), Some(issued[0].as_str()));
    assert_eq!(
        seen[1].query(),
        Some(r.prompt("turn 2: what is my name?").as_str()),
        "{:#?}",
        summary(&seen)
    );

    // An unknown previousResponseId: the provider's APICallError with the 400.
    let e = r.raised("unknown_previous");
    assert_eq!(e["status"], 400, "{e:#}");
    assert!(contains(&e["body"], "previous_response_id"), "{e:#}");
    assert!(
        contains(&e["message"], "resp_00000000000000000000000000000000"),
        "{e:#}"
    );
    let reached = mentioning(dify, "unknown previous");
    assert!(reached.is_empty(), "reached Dify: {:#?}", summary(&reached));

    // Dify fails mid-answer: streamText's user sees an error part (or an exception) with
    // Dify's text, and no normal finish.
    let v = r.case("stream_error");
    let parts = v["parts"].as_array().unwrap();
    let text: String = parts
        .iter()
        .filter(|p| p["type"] == "text-delta")
        .filter_map(|p| p["text"].as_str())
        .collect();
    assert_eq!(text, FLAKY_PARTIAL, "{v:#}");
    let error_part = parts
        .iter()
        .any(|p| p["type"] == "error" && contains(&p["error"]["message"], FLAKY_MESSAGE));
    assert!(
        error_part || contains(&v["raised"]["message"], FLAKY_MESSAGE),
        "the user must see the failure: {v:#}"
    );
    assert_ne!(v["finish_reason"], "stop", "no normal finish: {v:#}");

    let v = r.case("generate_error");
    assert!(
        v.get("unexpected").is_none() && contains(&v["raised"]["message"], FLAKY_MESSAGE),
        "generateText raises with Dify's text: {v:#}"
    );
}
