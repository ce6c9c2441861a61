//! The fake Dify's speech endpoints, as Dify's `service_api/app/audio.py` and
//! `services/audio_service.py` answer them. A child module of `fake_dify`: it shares its
//! state and helpers.
//!
//! - `POST /v1/text-to-audio`: JSON `{"text" | "message_id", "voice", "streaming", "user"}`.
//!   Checks, in Dify's order: key (401), JSON body, no text → 400 `invalid_param` "Text is
//!   required", text-to-speech off → 400 `invalid_param` "TTS is not enabled". Then 200
//!   `audio/mpeg`, the app's audio chunks each written on its own (optionally held after
//!   the first until [`FakeDify::release_audio`]). `user` defaults to `DEFAULT-USER`.
//! - `POST /v1/audio-to-text`: multipart with `file` (and `user`). No `file` part → 400
//!   `bad_request_key_error`; speech-to-text off → 400 `invalid_param` "Speech to text is
//!   not enabled"; a part type outside `audio/{mp3,mp4,mpga,m4a,wav,webm,amr}` → 415
//!   `unsupported_audio_type` (so `audio/mpeg`, which older Dify versions refuse, is
//!   refused here too); over 30 MiB → 413 `audio_too_large`; an empty file → the
//!   provider's 400 `completion_request_error`. Then 200 `{"text": ...}`.
//! - `/parameters` reports each app's `speech_to_text` and `text_to_speech` settings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{
    FakeDify, JSON_CONTENT_TYPE, MSG_BAD_TOKEN, Shared, error_response, header_str,
    parse_authorization, parse_json_object, plain_response, unauthorized, user_arg,
};

/// Dify's `FILE_SIZE_LIMIT` for audio.
pub const AUDIO_LIMIT: usize = 30 * 1024 * 1024;
const ACCEPTED: &[&str] = &["mp3", "mp4", "mpga", "m4a", "wav", "webm", "amr"];
/// A held speech stream goes on by itself after this long.
const HOLD_CAP: Duration = Duration::from_secs(30);

/// One app's speech settings and what it answers.
#[derive(Clone, Debug)]
pub struct SpeechApp {
    pub text_to_speech: bool,
    pub speech_to_text: bool,
    /// The voice of the app's Text to Speech feature.
    pub voice: String,
    /// The audio `/text-to-audio` answers, one write per chunk.
    pub audio: Vec<Bytes>,
    /// Hold the audio after its first chunk until [`FakeDify::release_audio`].
    pub hold_after_first: bool,
    /// What `/audio-to-text` answers.
    pub transcript: String,
}

impl Default for SpeechApp {
    fn default() -> Self {
        SpeechApp {
            text_to_speech: true,
            speech_to_text: true,
            voice: "alloy".to_string(),
            audio: vec![
                Bytes::from_static(b"ID3\x04\x00fake-mp3-"),
                Bytes::from_static(b"frames"),
            ],
            hold_after_first: false,
            transcript: "Hello from the recording.".to_string(),
        }
    }
}

/// One call of a speech endpoint that passed the key check.
#[derive(Clone, Debug)]
pub struct AudioCall {
    /// `text-to-audio` or `audio-to-text`.
    pub endpoint: &'static str,
    pub key: String,
    /// The `user` as sent (`None`: Dify used `DEFAULT-USER`).
    pub user: Option<String>,
    /// `/text-to-audio`'s JSON body.
    pub body: Value,
    /// `/audio-to-text`'s file: name, part type, bytes.
    pub file: Option<(String, String, Bytes)>,
}

#[derive(Default)]
pub(super) struct Audio {
    apps: Mutex<HashMap<String, SpeechApp>>,
    calls: Mutex<Vec<AudioCall>>,
    release: Arc<Notify>,
}

impl Audio {
    pub(super) fn knows(&self, key: &str) -> bool {
        self.apps.lock().unwrap().contains_key(key)
    }

    /// `speech_to_text` and `text_to_speech` as `/parameters` reports them (off when unset).
    pub(super) fn parameters(&self, key: &str) -> (Value, Value) {
        match self.apps.lock().unwrap().get(key) {
            Some(app) => (
                json!({"enabled": app.speech_to_text}),
                json!({"enabled": app.text_to_speech, "voice": app.voice, "language": "en-US", "autoPlay": "disabled"}),
            ),
            None => (
                json!({"enabled": false}),
                json!({"enabled": false, "voice": "", "language": ""}),
            ),
        }
    }

    fn record(&self, call: AudioCall) {
        self.calls.lock().unwrap().push(call);
    }
}

impl FakeDify {
    /// Makes `key` an app with these speech settings (and a known key).
    pub fn set_speech(&self, key: &str, app: SpeechApp) {
        let audio = &self.shared.audio;
        audio.apps.lock().unwrap().insert(key.to_string(), app);
    }

    /// Lets a held speech stream send the rest of its audio.
    pub fn release_audio(&self) {
        // Wakes the held stream, or lets it through at once if it has not waited yet.
        self.shared.audio.release.notify_one();
    }

    /// Every speech call that passed the key check, in order.
    pub fn audio_calls(&self) -> Vec<AudioCall> {
        self.shared.audio.calls.lock().unwrap().clone()
    }
}

fn app_key(st: &Shared, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let authorization = header_str(headers, header::AUTHORIZATION);
    match parse_authorization(authorization.as_deref()) {
        Ok(key) if st.knows_key(&key) => Ok(key),
        Ok(_) => Err(Box::new(unauthorized(MSG_BAD_TOKEN))),
        Err(msg) => Err(Box::new(unauthorized(msg))),
    }
}

/// `POST /v1/text-to-audio`.
pub(super) async fn text_to_audio(
    State(st): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match app_key(&st, &headers) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let map = match parse_json_object(&headers, &body) {
        Ok(map) => map,
        Err((status, code, message)) => return error_response(status, code, message),
    };
    st.audio.record(AudioCall {
        endpoint: "text-to-audio",
        key: key.clone(),
        user: user_arg(&map),
        body: Value::Object(map.clone()),
        file: None,
    });
    let text = map.get("text").and_then(Value::as_str).unwrap_or("");
    if text.is_empty() {
        return error_response(400, "invalid_param", "Text is required");
    }
    let app = st.audio.apps.lock().unwrap().get(&key).cloned();
    let Some(app) = app.filter(|a| a.text_to_speech) else {
        return error_response(400, "invalid_param", "TTS is not enabled");
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let release = st.audio.release.clone();
    tokio::spawn(async move {
        for (i, chunk) in app.audio.into_iter().enumerate() {
            if i == 1 && app.hold_after_first {
                let _ = tokio::time::timeout(HOLD_CAP, release.notified()).await;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    plain_response(200, "audio/mpeg", Body::from_stream(stream))
}

/// `POST /v1/audio-to-text`.
pub(super) async fn audio_to_text(State(st): State<Arc<Shared>>, request: Request) -> Response {
    let key = match app_key(&st, request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let mut user = None;
    let mut file = None;
    if let Ok(mut form) = Multipart::from_request(request, &()).await {
        while let Ok(Some(field)) = form.next_field().await {
            match field.name() {
                Some("file") => {
                    let name = field.file_name().unwrap_or("").to_string();
                    let mime = field.content_type().unwrap_or("").to_string();
                    let bytes = field.bytes().await.unwrap_or_default();
                    file = Some((name, mime, bytes));
                }
                Some("user") => user = field.text().await.ok().filter(|u| !u.is_empty()),
                _ => {}
            }
        }
    }
    st.audio.record(AudioCall {
        endpoint: "audio-to-text",
        key: key.clone(),
        user,
        body: Value::Null,
        file: file.clone(),
    });
    let Some((_, mime, bytes)) = file else {
        return error_response(
            400,
            "bad_request_key_error",
            "The browser (or proxy) sent a request that this server could not understand.",
        );
    };
    let app = st.audio.apps.lock().unwrap().get(&key).cloned();
    let Some(app) = app.filter(|a| a.speech_to_text) else {
        return error_response(400, "invalid_param", "Speech to text is not enabled");
    };
    if !ACCEPTED.iter().any(|ext| mime == format!("audio/{ext}")) {
        return error_response(415, "unsupported_audio_type", "Audio type not allowed.");
    }
    if bytes.len() > AUDIO_LIMIT {
        return error_response(
            413,
            "audio_too_large",
            "Audio size exceeded. Audio size larger than 30 mb",
        );
    }
    if bytes.is_empty() {
        return error_response(
            400,
            "completion_request_error",
            "[openai] Bad Request Error, Error code: 400 - {'error': {'message': 'Audio file is too short.', 'type': 'invalid_request_error'}}",
        );
    }
    plain_response(
        200,
        JSON_CONTENT_TYPE,
        json!({ "text": app.transcript }).to_string(),
    )
}
