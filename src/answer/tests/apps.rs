//! Completion and workflow transcripts through a decoder that knows its app's kind.

use serde_json::json;

use super::*;
use crate::answer::from_dify::outputs_text;
use crate::apps::AppMode;

fn pieces_of(mode: AppMode, output_variable: Option<&str>, bytes: &[u8]) -> Vec<Piece> {
    let mut decoder = DifyDecoder::new("my-app", base()).for_app(mode, output_variable);
    let mut out = Vec::new();
    for e in decode_all(bytes) {
        if decoder.on_item(e.map_err(DifyError::from), &mut out) == Flow::Stop {
            break;
        }
    }
    decoder.on_end(&mut out);
    out
}

fn answer_of(pieces: &[Piece]) -> (String, Option<Usage>, bool) {
    let text = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let usage = pieces.iter().find_map(|p| match p {
        Piece::Usage(u) => Some(*u),
        _ => None,
    });
    (text, usage, pieces.last() == Some(&Piece::End))
}

fn failure_of(pieces: &[Piece]) -> &Failure {
    match pieces.last() {
        Some(Piece::Failed(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn frame(v: serde_json::Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

#[test]
fn completion_transcript_is_an_answer_with_usage() {
    let p = pieces_of(AppMode::Completion, None, &fixture("completion-stream.sse"));
    let (text, usage, ended) = answer_of(&p);
    assert_eq!(text, "Bonjour, comment allez-vous ?");
    assert_eq!(usage.map(|u| u.total_tokens), Some(160));
    assert!(ended);
}

#[test]
fn workflow_transcript_reports_its_total_tokens() {
    let p = pieces_of(AppMode::Workflow, None, &fixture("workflow-run-stream.sse"));
    let (text, usage, ended) = answer_of(&p);
    // The streamed text, not the outputs again.
    assert_eq!(text, "Dify lets you build LLM apps without boilerplate.");
    assert_eq!(
        usage,
        Some(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 76
        })
    );
    assert!(ended);
}

/// The blocking body's `data` as a streamed `workflow_finished` with no text before it.
#[test]
fn workflow_without_text_answers_with_its_outputs() {
    let blocking: serde_json::Value =
        serde_json::from_slice(&fixture("blocking-workflow-response.json")).unwrap();
    let finished = frame(
        json!({"event": "workflow_finished", "task_id": blocking["task_id"],
        "workflow_run_id": blocking["workflow_run_id"], "data": blocking["data"]}),
    );
    let p = pieces_of(AppMode::Workflow, None, &finished);
    let (text, usage, ended) = answer_of(&p);
    assert_eq!(text, "Dify lets you build LLM apps without boilerplate.");
    assert_eq!(usage.map(|u| u.total_tokens), Some(76));
    assert!(ended);
}

#[test]
fn failed_workflow_fails_at_once_as_dify_ended_it() {
    let failed = frame(json!({"event": "workflow_finished", "task_id": "t",
        "data": {"status": "failed", "error": "Node LLM run failed: quota", "outputs": null, "total_tokens": 3}}));
    let p = pieces_of(AppMode::Workflow, None, &failed);
    let f = failure_of(&p);
    assert!(f.dify_ended);
    assert_eq!(
        f.error.body.error.code.as_deref(),
        Some("dify_workflow_failed")
    );
    assert_eq!(
        f.error.body.error.message,
        "The Dify workflow behind model `my-app` failed. Dify says: Node LLM run failed: quota."
    );
    // As a chat app's decoder reads it (a chatflow), an `error` event is awaited instead.
    let chatflow = pieces_of(AppMode::Chat, None, &fixture("chatflow-failed-stream.sse"));
    assert_eq!(
        failure_of(&chatflow).error.body.error.code.as_deref(),
        Some("dify_workflow_failed")
    );
}

#[test]
fn a_pause_for_human_input_fails_and_leaves_the_task_to_stop() {
    let mut bytes = fixture("workflow-run-stream.sse");
    bytes.truncate(
        bytes
            .windows(b"text_chunk".len())
            .rposition(|w| w == b"text_chunk")
            .unwrap(),
    );
    let cut = bytes.iter().rposition(|&b| b == b'\n').unwrap() + 1;
    bytes.truncate(cut);
    bytes.extend(frame(json!({"event": "human_input_required", "task_id": "t",
        "data": {"form_id": "f", "node_id": "n", "form_content": "Approve?", "actions": [{"id": 1}]}})));
    let p = pieces_of(AppMode::Workflow, None, &bytes);
    let f = failure_of(&p);
    assert!(!f.dify_ended, "the paused run is stopped");
    assert_eq!(
        f.error.body.error.code.as_deref(),
        Some("dify_human_input_required")
    );
}

#[test]
fn outputs_become_text() {
    let ok = |outputs: serde_json::Value, var: Option<&str>| outputs_text(Some(&outputs), var);
    assert_eq!(ok(json!({"a": "x"}), None).unwrap(), "x");
    assert_eq!(ok(json!({"a": "x", "n": 1}), None).unwrap(), "x");
    assert_eq!(ok(json!({"a": "x", "b": "y"}), Some("b")).unwrap(), "y");
    assert_eq!(ok(json!({"a": [1]}), Some("a")).unwrap(), "[\n  1\n]");
    assert_eq!(
        ok(json!({"a": "x", "b": "y"}), None).unwrap(),
        "{\n  \"a\": \"x\",\n  \"b\": \"y\"\n}"
    );
    assert!(ok(json!({}), None).is_err());
    assert!(outputs_text(None, None).is_err());
    assert!(ok(json!({"a": ""}), None).is_err());
    assert!(ok(json!({"a": null}), Some("a")).is_err());
    assert_eq!(
        ok(json!({"a": "x"}), Some("b")).unwrap_err(),
        "its outputs have no variable `b` (they have: a); check `output_variable` in MODEL_CONFIG."
    );
}
