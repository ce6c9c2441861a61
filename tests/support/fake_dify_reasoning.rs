//! Scripted chat-family answers for reasoning tests: inline `<think>` text cut across
//! frames at any byte, older Dify's `<details>` thinking wrapper, an agent app's
//! `agent_thought` updates, and knowledge-base citations in `message_end`. The fake fills
//! in the ids every frame carries and keeps conversations like Dify (an unknown
//! `conversation_id` is a 404), so multi-turn continuity can be tested.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{
    Generated, MSG_NO_CONVERSATION, Request, SSE_CONTENT_TYPE, Shared, error_response, new_uuid,
    spawn_stream, sse_frame,
};

/// The frames of one answer, each a JSON object with its `event` and the fields of that
/// event; the common ids are added when it is sent.
#[derive(Clone, Debug, Default)]
pub struct Script {
    pub frames: Vec<Value>,
}

impl Script {
    /// A chat app's answer: `text` in `message` frames of `chunk` bytes (cut at any
    /// byte between characters, so tags are split), then `message_end`.
    pub fn chunked(text: &str, chunk: usize) -> Self {
        let mut frames = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = chunk.max(1).min(rest.len());
            while !rest.is_char_boundary(end) {
                end += 1;
            }
            frames.push(
                json!({"event": "message", "answer": &rest[..end], "from_variable_selector": null}),
            );
            rest = &rest[end..];
        }
        frames.push(message_end(Vec::new()));
        Script { frames }
    }

    /// A chat app's answer in these `message` chunks, then `message_end`.
    pub fn messages(parts: &[&str]) -> Self {
        let mut frames: Vec<Value> = parts
            .iter()
            .map(|p| json!({"event": "message", "answer": p, "from_variable_selector": null}))
            .collect();
        frames.push(message_end(Vec::new()));
        Script { frames }
    }

    /// `message_end` cites these documents (`retriever_resources`), as Dify does with
    /// citations on in the app.
    pub fn citing(mut self, documents: &[&str]) -> Self {
        let resources: Vec<Value> = documents
            .iter()
            .enumerate()
            .map(|(i, name)| resource(i + 1, name))
            .collect();
        if let Some(end) = self.frames.last_mut() {
            end["metadata"]["retriever_resources"] = Value::Array(resources);
        }
        self
    }

    /// An agent app looking up the time with a tool, as `agent-chat-stream.sse`: the
    /// thought re-sent as it fills in, the answer as `agent_message` (a trailing empty
    /// one), the final thought repeating the answer, then `message_end`.
    pub fn agent(answer_parts: &[&str]) -> Self {
        let p1 = new_uuid();
        let p2 = new_uuid();
        let input = r#"{"current_time": {"timezone": "Europe/Paris"}}"#;
        let observation = r#"{"current_time": "2026-07-16 14:32:25"}"#;
        let labels = json!({"current_time": {"en_US": "Current Time", "zh_Hans": "获取当前时间"}});
        let thought =
            |id: &str, position: u32, thought: &str, tool: &str, input: &str, obs: &str| {
                json!({
                    "event": "agent_thought", "id": id, "position": position, "thought": thought,
                    "observation": obs, "tool": tool,
                    "tool_labels": if tool.is_empty() { json!({}) } else { labels.clone() },
                    "tool_input": input, "message_files": []
                })
            };
        let mut frames = vec![
            thought(&p1, 1, "", "", "", ""),
            thought(&p1, 1, "", "current_time", input, ""),
            thought(&p1, 1, "", "current_time", input, observation),
            thought(&p2, 2, "", "", "", ""),
        ];
        for part in answer_parts {
            frames.push(json!({"event": "agent_message", "answer": part}));
        }
        frames.push(json!({"event": "agent_message", "answer": ""}));
        frames.push(thought(&p2, 2, &answer_parts.concat(), "", "", ""));
        frames.push(message_end(Vec::new()));
        Script { frames }
    }
}

fn message_end(resources: Vec<Value>) -> Value {
    json!({
        "event": "message_end",
        "metadata": {
            "annotation_reply": null,
            "retriever_resources": resources,
            "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33,
                      "total_price": "0.0000149", "currency": "USD", "latency": 0.5}
        },
        "files": null
    })
}

fn resource(position: usize, name: &str) -> Value {
    json!({
        "position": position, "dataset_id": new_uuid(), "dataset_name": "Knowledge",
        "document_id": new_uuid(), "document_name": name, "data_source_type": "upload_file",
        "segment_id": new_uuid(), "retriever_from": "api", "score": 0.87, "hit_count": 1,
        "word_count": 100, "segment_position": position, "index_node_hash": "0",
        "content": "…", "page": null, "doc_metadata": null, "title": null, "files": null,
        "summary": null
    })
}

/// Runs a script for one `/chat-messages` request (always streamed: the proxy streams).
pub(super) fn run(st: &Arc<Shared>, req: Request, script: Script) -> Response {
    let conversation_id = match req.args.conversation_id.clone() {
        Some(id) if !st.conversation_known(&req.key, &req.user, &id) => {
            return error_response(404, "not_found", MSG_NO_CONVERSATION);
        }
        Some(id) => id,
        None => new_uuid(),
    };
    st.remember_conversation(&req.key, &req.user, &conversation_id);
    let g = Generated::new(conversation_id, new_uuid());
    let guard = st.register_task(&g.task_id, &req.key, &req.user);
    let task_id = Some(g.task_id.clone());
    spawn_stream(
        st,
        req.key,
        task_id,
        SSE_CONTENT_TYPE,
        move |mut w| async move {
            let _guard = guard;
            for frame in script.frames {
                w.send(frame_bytes(&g, frame)).await?;
            }
            Ok(())
        },
    )
}

/// The frame with the ids every chat-family frame carries.
fn frame_bytes(g: &Generated, frame: Value) -> bytes::Bytes {
    let mut fields = Map::new();
    let Value::Object(frame) = frame else {
        return sse_frame(&frame.to_string());
    };
    fields.insert("event".into(), frame["event"].clone());
    fields.insert("conversation_id".into(), json!(g.conversation_id));
    fields.insert("message_id".into(), json!(g.message_id));
    fields.insert("created_at".into(), json!(g.created_at));
    fields.insert("task_id".into(), json!(g.task_id));
    fields.insert("id".into(), json!(g.message_id));
    fields.extend(frame);
    sse_frame(&Value::Object(fields).to_string())
}
