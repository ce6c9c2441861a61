//! Completion and workflow apps through the official OpenAI SDKs (Python and npm), each
//! run as a child process (`tests/clients/apps_python.py`, `tests/clients/apps_node.mjs`)
//! against the real binary in front of a fake Dify. Needs the SDKs that
//! tests/sdk_clients.rs needs (same install commands).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::clients::run_script;
use support::process::{Running, refs, start};
use support::{AppRun, FakeDify, WorkflowSpec};

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
