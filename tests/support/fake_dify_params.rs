//! The fake Dify's `GET /v1/parameters` and the input-form check of `/chat-messages`, as
//! Dify does them: a known key gets its app's form (by default none), an unknown key 401;
//! a new conversation whose `inputs` lack a required variable gets 400 `invalid_param`
//! "<variable> is required in input form". A child module of `fake_dify`, so it shares its
//! state and helpers.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{
    FakeDify, JSON_CONTENT_TYPE, MSG_BAD_TOKEN, Shared, error_response, header_str,
    parse_authorization, plain_response, unauthorized,
};
use std::sync::Arc;

/// Per app key: its input form, a failure to answer with instead, how often it was asked.
#[derive(Default)]
pub(super) struct Params {
    forms: Mutex<HashMap<String, Value>>,
    /// `file_upload` per app key; by default uploads of every type are on.
    uploads: Mutex<HashMap<String, Value>>,
    failures: Mutex<HashMap<String, u16>>,
    calls: Mutex<HashMap<String, usize>>,
}

impl Params {
    /// Dify's check of `inputs` against the app's form, on `/chat-messages`: the error
    /// response, if any.
    /// A continued conversation keeps the inputs it started with: Dify checks none then.
    pub(super) fn check_inputs(&self, key: &str, body: &Map<String, Value>) -> Option<Response> {
        let continued = body
            .get("conversation_id")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.trim().is_empty());
        if continued {
            return None;
        }
        let forms = self.forms.lock().unwrap_or_else(|e| e.into_inner());
        let form = forms.get(key).and_then(Value::as_array)?;
        let inputs = body.get("inputs").and_then(Value::as_object);
        for item in form {
            let Some(spec) = item.as_object().and_then(|o| o.values().next()) else {
                continue;
            };
            let variable = spec["variable"].as_str().unwrap_or_default();
            let value = inputs.and_then(|i| i.get(variable));
            let missing = matches!(value, None | Some(Value::Null))
                || value.and_then(Value::as_str) == Some("");
            if spec["required"].as_bool() == Some(true) && missing {
                let msg = format!("{variable} is required in input form");
                return Some(error_response(400, "invalid_param", &msg));
            }
        }
        None
    }
}

impl FakeDify {
    /// The input form (`user_input_form` items, e.g.
    /// `[{"text-input": {"variable": "topic", "label": "Topic", "required": true}}]`) of the
    /// app with `key`: served by `/parameters` and enforced on `/chat-messages`.
    pub fn set_input_form(&self, key: &str, form: Value) {
        let params = &self.shared.params;
        params.forms.lock().unwrap().insert(key.to_string(), form);
    }

    /// `/parameters` for `key` answers `status` with a Dify error body (the form, if one
    /// is set, is still enforced on `/chat-messages`).
    pub fn fail_parameters(&self, key: &str, status: u16) {
        let params = &self.shared.params;
        params
            .failures
            .lock()
            .unwrap()
            .insert(key.to_string(), status);
    }

    /// The app's `file_upload` settings as `/parameters` reports them (default: every
    /// type of file on, as in an app with vision and file upload enabled).
    pub fn set_file_upload(&self, key: &str, file_upload: Value) {
        let params = &self.shared.params;
        params
            .uploads
            .lock()
            .unwrap()
            .insert(key.to_string(), file_upload);
    }

    /// How many `/parameters` calls came with `key`.
    pub fn parameters_calls(&self, key: &str) -> usize {
        let calls = self.shared.params.calls.lock().unwrap();
        calls.get(key).copied().unwrap_or(0)
    }
}

/// `GET /v1/parameters`.
pub(super) async fn parameters(State(st): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let authorization = header_str(&headers, header::AUTHORIZATION);
    let key = match parse_authorization(authorization.as_deref()) {
        Ok(key) if st.knows_key(&key) => key,
        Ok(_) => return unauthorized(MSG_BAD_TOKEN),
        Err(msg) => return unauthorized(msg),
    };
    *st.params
        .calls
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_default() += 1;
    if let Some(status) = st.params.failures.lock().unwrap().get(&key).copied() {
        return error_response(
            status,
            "internal_server_error",
            "The server encountered an internal error.",
        );
    }
    let form = st
        .params
        .forms
        .lock()
        .unwrap()
        .get(&key)
        .cloned()
        .unwrap_or_else(|| json!([]));
    let file_upload = st
        .params
        .uploads
        .lock()
        .unwrap()
        .get(&key)
        .cloned()
        .unwrap_or_else(|| {
            json!({
                "image": {"enabled": true, "number_limits": 3, "transfer_methods": ["remote_url", "local_file"]},
                "enabled": true,
                "allowed_file_types": ["image", "document", "audio", "video"],
                "allowed_file_extensions": [],
                "allowed_file_upload_methods": ["remote_url", "local_file"],
                "number_limits": 10
            })
        });
    let (speech_to_text, text_to_speech) = st.audio.parameters(&key);
    let body = json!({
        "opening_statement": "",
        "suggested_questions": [],
        "suggested_questions_after_answer": {"enabled": false},
        "speech_to_text": speech_to_text,
        "text_to_speech": text_to_speech,
        "retriever_resource": {"enabled": true},
        "annotation_reply": {"enabled": false},
        "more_like_this": {"enabled": false},
        "sensitive_word_avoidance": {"enabled": false},
        "user_input_form": form,
        "file_upload": file_upload,
        "system_parameters": {
            "image_file_size_limit": 10,
            "video_file_size_limit": 100,
            "audio_file_size_limit": 50,
            "file_size_limit": 15,
            "workflow_file_upload_limit": 10
        }
    });
    plain_response(200, JSON_CONTENT_TYPE, body.to_string())
}
