//! Completion and workflow apps through the official OpenAI SDKs (Python and npm), each
//! run as a child process (`tests/clients/apps_python.py`, `tests/clients/apps_node.mjs`)
//! against the real binary in front of a fake Dify. Also the audio endpoints through both
//! SDKs (`audio_python.py`, `audio_node.mjs`), and a context overflow through LangChain and
//! LiteLLM (`context_overflow.py`). Needs the clients that tests/sdk_clients.rs needs
//! (same install commands).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use support::clients::{ScriptRun, run_script};
use support::process::{Running, refs, start};
use support::{AppRun, AudioCall, FakeDify, Scenario, SpeechApp, WorkflowSpec};

const PROXY_KEY: &str = "sk-sdk-apps-proxy-key-0042";
const WRITER_KEY: &str = "app-sdkwriter000000000000001";
const FLOW_KEY: &str = "app-sdkflow00000000000000001";
const QUIET_KEY: &str = "app-sdkquiet0000000000000001";
const BROKEN_KEY: &str = "app-sdkbrokenflow00000000001";
/// A workflow whose form requires `tone`, which requests may set.
const FORM_KEY: &str = "app-sdkformflow0000000000001";
const SUMMARY: &str = "Dify lets you build LLM apps without boilerplate.";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn proxy(dify: &FakeDify) -> Running {
    dify.set_app(
        WRITER_KEY,
        "completion",
        AppRun::Replay("completion-stream.sse"),
    );
    dify.set_app(
        FLOW_KEY,
        "workflow",
        AppRun::Replay("workflow-run-stream.sse"),
    );
    dify.set_app(
        QUIET_KEY,
        "workflow",
        AppRun::Workflow(WorkflowSpec::new(&[], json!({"summary": SUMMARY}))),
    );
    let mut failing = WorkflowSpec::new(&[], Value::Null);
    failing.status = "failed";
    failing.error = Some("Node Summarise run failed: model quota exceeded".into());
    dify.set_app(BROKEN_KEY, "workflow", AppRun::Workflow(failing));
    dify.set_app(
        FORM_KEY,
        "workflow",
        AppRun::Workflow(WorkflowSpec::new(&["In a formal tone."], Value::Null)),
    );
    dify.set_input_form(
        FORM_KEY,
        json!([
            {"paragraph": {"variable": "article", "label": "Article", "required": true}},
            {"select": {"variable": "tone", "label": "Tone", "required": true, "options": ["formal", "casual"]}}
        ]),
    );
    let vars = [
        ("DIFY_API_BASE", dify.base_url()),
        (
            "MODEL_CONFIG",
            json!({"writer": WRITER_KEY, "flow": FLOW_KEY, "quiet-flow": QUIET_KEY, "broken-flow": BROKEN_KEY,
                "form-flow": {"key": FORM_KEY, "request_inputs": ["tone"]}})
                .to_string(),
        ),
        ("PROXY_API_KEYS", PROXY_KEY.to_string()),
    ];
    // Off the async runtime: the fake Dify answers the cold start's lookups meanwhile.
    tokio::task::spawn_blocking(move || start(&refs(&vars)))
        .await
        .unwrap()
}

async fn exercise(name: &str, program: PathBuf, script: &str) {
    let dify = FakeDify::start().await;
    let running = proxy(&dify).await;
    let vars = [
        ("OPENDIFY_BASE_URL", format!("{}/v1", running.url)),
        ("OPENDIFY_API_KEY", PROXY_KEY.to_string()),
    ];
    let hint = "install the SDKs as tests/sdk_clients.rs says: .venv-tools/bin/pip install -r tests/clients/requirements.txt; npm ci --prefix tests/clients";
    let report = run_script(
        name,
        &program,
        &root().join(script),
        &vars,
        Duration::from_secs(90),
        hint,
    )
    .await;
    println!(
        "--- {name} report:\n{:#}\n--- proxy log:\n{}",
        report.json,
        running.log()
    );

    for (case, text, total) in [
        ("completion_blocking", "Bonjour, comment allez-vous ?", 160),
        ("completion_stream", "Bonjour, comment allez-vous ?", 160),
        ("workflow_blocking", SUMMARY, 76),
        ("workflow_stream", SUMMARY, 76),
        ("outputs_blocking", SUMMARY, 76),
        ("outputs_stream", SUMMARY, 76),
    ] {
        let v = report.ok(case);
        assert_eq!(v["text"], text, "{name} {case}");
        assert_eq!(v["finish_reason"], "stop", "{name} {case}");
        assert_eq!(v["total_tokens"], total, "{name} {case}");
    }
    let blocking = report.raised("workflow_failed_blocking");
    assert_eq!(blocking["status"], 502, "{name}");
    assert_eq!(blocking["code"], "dify_workflow_failed", "{name}");
    assert!(
        blocking["message"]
            .as_str()
            .unwrap()
            .contains("Node Summarise run failed: model quota exceeded"),
        "{name}: {blocking}"
    );
    let streamed = report.raised("workflow_failed_stream");
    assert!(
        streamed["message"]
            .as_str()
            .unwrap()
            .contains("The Dify workflow behind model `broken-flow` failed."),
        "{name}: {streamed}"
    );

    // What Dify got: the folded text in `inputs.query`, at each app's endpoint.
    let sent = dify.app_requests();
    let prefix = if name == "python" { "py" } else { "node" };
    let writer = sent.iter().find(|r| r.key == WRITER_KEY).unwrap();
    assert_eq!(writer.path, "completion-messages");
    assert_eq!(
        writer.body["inputs"],
        json!({"query": format!("System: Be brief.\n\nUser: {prefix} write a greeting")})
    );
    let flow = sent.iter().find(|r| r.key == FLOW_KEY).unwrap();
    assert_eq!(flow.path, "workflows/run");
    assert!(dify.requests().is_empty(), "nothing went to /chat-messages");

    // A workflow with a required input: refused without it (naming it), run with it
    // through `extra_body`, the text in the form's only text field.
    if name == "python" {
        let v = report.ok("workflow_required_input");
        let e = &v["missing"]["raised"];
        assert_eq!(e["status"], 400, "{v:#}");
        assert!(
            e["message"].as_str().unwrap().contains("`tone` (Tone)"),
            "{v:#}"
        );
        assert_eq!(v["text"], "In a formal tone.", "{v:#}");
        let runs: Vec<_> = sent.iter().filter(|r| r.key == FORM_KEY).collect();
        assert_eq!(runs.len(), 1, "only the run with its input reached Dify");
        assert_eq!(
            runs[0].body["inputs"],
            json!({"article": "System: Be brief.\n\nUser: py summarise formally", "tone": "formal"})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_with_completion_and_workflow_apps() {
    exercise(
        "python",
        root().join(".venv-tools/bin/python"),
        "tests/clients/apps_python.py",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_with_completion_and_workflow_apps() {
    exercise("node", PathBuf::from("node"), "tests/clients/apps_node.mjs").await;
}

/// Speech on and off, and two apps whose provider overflows its context window.
const SPEECH_KEY: &str = "app-sdkspeech000000000000001";
const MUTE_KEY: &str = "app-sdkmute00000000000000001";
const LONG_KEY: &str = "app-sdklong00000000000000001";
const LONG_STREAM_KEY: &str = "app-sdklongstream0000000001";
/// A provider's context overflow in words neither LangChain nor LiteLLM knows.
const OVERFLOW: &str = "[ollama] Error: the input is larger than the model's context window";

async fn speech_proxy(dify: &FakeDify) -> Running {
    for key in [SPEECH_KEY, MUTE_KEY] {
        dify.set(key, Scenario::answer("unused"));
    }
    dify.set_speech(
        SPEECH_KEY,
        SpeechApp {
            audio: vec![
                Bytes::from_static(b"ID3-sdk-first"),
                Bytes::from_static(b"-sdk-second"),
            ],
            transcript: "The memo, transcribed.".to_string(),
            ..SpeechApp::default()
        },
    );
    dify.set_speech(
        MUTE_KEY,
        SpeechApp {
            text_to_speech: false,
            speech_to_text: false,
            ..SpeechApp::default()
        },
    );
    dify.set(
        LONG_KEY,
        Scenario::error(400, "completion_request_error", OVERFLOW),
    );
    let text = json!({"event": "message", "conversation_id": "1b9e4d7a-2c5f-4e8b-a3d6-9f1c4b7e2a58",
        "message_id": "d4a7e1b9-3c6f-4a2d-8e5b-7c1f9a3d6e24", "created_at": 1784212400,
        "task_id": "8e2b5d9f-1a4c-4e7b-b6d3-2f9a5c8e1b47", "id": "d4a7e1b9-3c6f-4a2d-8e5b-7c1f9a3d6e24",
        "answer": "Partly", "from_variable_selector": null});
    let error = json!({"event": "error", "conversation_id": "1b9e4d7a-2c5f-4e8b-a3d6-9f1c4b7e2a58",
        "message_id": "d4a7e1b9-3c6f-4a2d-8e5b-7c1f9a3d6e24", "created_at": 1784212400,
        "code": "completion_request_error", "status": 400, "message": OVERFLOW});
    dify.set(
        LONG_STREAM_KEY,
        Scenario::raw([
            (format!("data: {text}\n\n"), Duration::ZERO),
            (format!("data: {error}\n\n"), Duration::ZERO),
        ]),
    );
    let vars = [
        ("DIFY_API_BASE", dify.base_url()),
        (
            "MODEL_CONFIG",
            json!({"voice-app": SPEECH_KEY, "mute-app": MUTE_KEY, "long-app": LONG_KEY,
                "long-stream-app": LONG_STREAM_KEY})
            .to_string(),
        ),
        ("PROXY_API_KEYS", PROXY_KEY.to_string()),
    ];
    tokio::task::spawn_blocking(move || start(&refs(&vars)))
        .await
        .unwrap()
}

async fn run_client(dify: &FakeDify, name: &str, program: PathBuf, script: &str) -> ScriptRun {
    let running = speech_proxy(dify).await;
    let vars = [
        ("OPENDIFY_BASE_URL", format!("{}/v1", running.url)),
        ("OPENDIFY_API_KEY", PROXY_KEY.to_string()),
    ];
    let hint = "install the clients as tests/sdk_clients.rs says: .venv-tools/bin/pip install -r tests/clients/requirements.txt; npm ci --prefix tests/clients";
    let report = run_script(
        name,
        &program,
        &root().join(script),
        &vars,
        // LiteLLM alone takes 10-40 s to import on a busy machine.
        Duration::from_secs(240),
        hint,
    )
    .await;
    println!(
        "--- {name} report:\n{:#}\n--- proxy log:\n{}",
        report.json,
        running.log()
    );
    report
}

async fn exercise_audio(name: &str, program: PathBuf, script: &str) {
    let dify = FakeDify::start().await;
    let report = run_client(&dify, name, program, script).await;

    // Speech: Dify's audio, byte for byte, as MP3.
    let v = report.ok("speech_stream");
    assert_eq!(v["content_type"], "audio/mpeg", "{name}");
    let audio: String = b"ID3-sdk-first-sdk-second"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["audio_hex"], audio, "{name}");
    for (case, status, code, param) in [
        (
            "speech_wav_refused",
            400,
            Value::Null,
            json!("response_format"),
        ),
        (
            "speech_app_off",
            400,
            json!("text_to_speech_disabled"),
            json!("model"),
        ),
        (
            "transcription_srt_refused",
            400,
            Value::Null,
            json!("response_format"),
        ),
        (
            "transcription_app_off",
            400,
            json!("speech_to_text_disabled"),
            json!("model"),
        ),
    ] {
        let e = report.raised(case);
        assert_eq!(e["class"], "BadRequestError", "{name} {case}: {e}");
        assert_eq!(e["status"], status, "{name} {case}: {e}");
        assert_eq!(e["code"], code, "{name} {case}: {e}");
        assert_eq!(e["param"], param, "{name} {case}: {e}");
    }
    assert!(
        report.raised("transcription_srt_refused")["message"]
            .as_str()
            .unwrap()
            .contains("without timestamps"),
        "{name}"
    );

    // Transcription: both formats as the SDK returns them.
    let json_case = report.ok("transcription_json");
    assert_eq!(json_case["text"], "The memo, transcribed.", "{name}");
    let text_case = report.ok("transcription_text");
    assert_eq!(text_case["text"], "The memo, transcribed.\n", "{name}");
    assert_eq!(
        text_case["type"],
        if name == "python" { "str" } else { "string" }
    );

    // What Dify got: the text to speak with the app's voice, and the SDK's .mp3 as a
    // type Dify accepts.
    let calls = dify.audio_calls();
    let spoken: Vec<&AudioCall> = calls
        .iter()
        .filter(|c| c.endpoint == "text-to-audio")
        .collect();
    assert_eq!(spoken.len(), 1, "{name}: refusals reach no Dify");
    let prefix = if name == "python" { "Python" } else { "Node" };
    assert_eq!(
        spoken[0].body,
        json!({"text": format!("{prefix} reads this aloud."), "voice": "alloy", "streaming": true,
            "user": opendify::config::Tenant::of_key(PROXY_KEY).dify_user(opendify::plan::DEFAULT_USER.to_string())})
    );
    let heard: Vec<(String, String)> = calls
        .iter()
        .filter_map(|c| c.file.as_ref())
        .map(|(file, mime, _)| (file.clone(), mime.clone()))
        .collect();
    let file = format!("{}-memo.mp3", if name == "python" { "py" } else { "node" });
    assert_eq!(
        heard,
        [
            (file.clone(), "audio/mp3".to_string()),
            (file, "audio/mp3".to_string())
        ],
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_speaks_and_transcribes() {
    exercise_audio(
        "python",
        root().join(".venv-tools/bin/python"),
        "tests/clients/audio_python.py",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_speaks_and_transcribes() {
    exercise_audio(
        "node",
        PathBuf::from("node"),
        "tests/clients/audio_node.mjs",
    )
    .await;
}

/// LangChain raises its ContextOverflowError (which its agents and summarisation
/// middleware trim history on) and LiteLLM its ContextWindowExceededError (which
/// `context_window_fallbacks` route on), though the provider's own words are ones
/// neither knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn langchain_and_litellm_recognise_a_context_overflow() {
    let dify = FakeDify::start().await;
    let report = run_client(
        &dify,
        "context_overflow",
        root().join(".venv-tools/bin/python"),
        "tests/clients/context_overflow.py",
    )
    .await;
    for case in [
        "langchain_invoke",
        "langchain_stream",
        "langchain_responses_stream",
    ] {
        let v = report.case(case);
        assert_eq!(v["context_overflow"], true, "{case}: {v:#}");
        assert!(
            v["message"].as_str().unwrap().contains(OVERFLOW),
            "{case}: Dify's text is kept: {v:#}"
        );
    }
    let v = report.case("litellm_completion");
    assert_eq!(v["context_window_exceeded"], true, "{v:#}");
    assert_eq!(v["class"], "ContextWindowExceededError", "{v:#}");
}
