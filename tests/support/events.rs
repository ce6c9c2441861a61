//! The function-URL events in `events/` and the SSE text the proxy answers them with, as
//! the Lambda-path tests (oneshot, fake Runtime API, cargo lambda) read them.

use serde_json::Value;

use super::fixture_bytes;

pub fn event_path(name: &str) -> String {
    format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn event_text(name: &str) -> String {
    let path = event_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

pub fn event_json(name: &str) -> Value {
    serde_json::from_str(&event_text(name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// Every `events/*.json` file name, sorted.
pub fn event_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/events"))
        .expect("events/ exists")
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// The answer text a Dify fixture streams: its `message` frames joined.
pub fn fixture_answer(fixture: &str) -> String {
    let text = String::from_utf8(fixture_bytes(fixture)).expect("fixture is UTF-8");
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|frame| frame["event"] == "message")
        .map(|frame| frame["answer"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The `data:` payloads of an SSE text, in order (comment lines skipped).
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
