//! `POST /v1/audio/speech` and `POST /v1/audio/transcriptions` in front of Dify's
//! `/text-to-audio` and `/audio-to-text`: streamed audio, both transcript formats, the
//! voice rule, and every refusal (before anything reaches Dify where the proxy can tell).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::{SpeechApp, fake_dify::AudioCall};

const SPOKEN: &str = "Read this sentence aloud, please.";

fn speech_app(voice: &str) -> SpeechApp {
    SpeechApp {
        voice: voice.to_string(),
        ..SpeechApp::default()
    }
}

impl TestApp {
    fn post_speech(&self, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/audio/speech", self.url))
            .bearer_auth(PROXY_KEY)
            .json(body)
    }

    fn post_transcription(&self, parts: &[Part<'_>]) -> reqwest::RequestBuilder {
        let (content_type, body) = multipart(parts);
        self.client
            .post(format!("{}/v1/audio/transcriptions", self.url))
            .bearer_auth(PROXY_KEY)
            .header("content-type", content_type)
            .body(body)
    }

    fn tts_calls(&self) -> Vec<AudioCall> {
        let calls = self.dify.audio_calls();
        calls
            .into_iter()
            .filter(|c| c.endpoint == "text-to-audio")
            .collect()
    }
}

/// A multipart part: a field, or a file with its name and type (`None`: no type).
enum Part<'a> {
    Field(&'a str, &'a str),
    File(&'a str, Option<&'a str>, &'a [u8]),
}

/// A `multipart/form-data` body as the SDKs write one.
fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "----opendify-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::Field(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(name, mime, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                    )
                    .as_bytes(),
                );
                if let Some(mime) = mime {
                    body.extend_from_slice(format!("Content-Type: {mime}\r\n").as_bytes());
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json["error"].clone())
}

const MP3: &[u8] = b"ID3\x04\x00\x00\x00\x00\x00\x00fake mp3 frames";

#[tokio::test]
async fn speech_reaches_the_client_before_dify_finishes() {
    let app = spawn_app().await;
    app.dify.set_speech(
        APP_KEY,
        SpeechApp {
            hold_after_first: true,
            audio: vec![
                Bytes::from_static(b"ID3-first-chunk"),
                Bytes::from_static(b"-second"),
                Bytes::from_static(b"-third"),
            ],
            ..speech_app("en-US-JennyNeural")
        },
    );
    // Dify holds the rest until released (or for 30 s): a proxy that buffered the audio
    // would send nothing, not even its head, within this bound.
    let (headers, mut body, first) = tokio::time::timeout(Duration::from_secs(20), async {
        let r = app
            .post_speech(&json!({"model": MODEL, "input": SPOKEN, "voice": "alloy", "speed": 1.25, "instructions": "Calm"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let headers = r.headers().clone();
        let mut body = r.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        (headers, body, first)
    })
    .await
    .expect("the first audio bytes arrive while Dify still holds the rest");
    assert_eq!(headers["content-type"], "audio/mpeg");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(&first[..], b"ID3-first-chunk");
    app.dify.release_audio();
    let mut all = first.to_vec();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), body.next())
        .await
        .expect("the rest of the audio follows")
    {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(all, b"ID3-first-chunk-second-third");

    let calls = app.tts_calls();
    assert_eq!(calls.len(), 1);
    // `alloy` is OpenAI's name and the app's voice is not: Dify uses the app's voice.
    assert_eq!(
        calls[0].body,
        json!({"text": SPOKEN, "user": default_user(), "streaming": true})
    );
    assert!(!log_contains(SPOKEN), "the text to speak is never logged");
}

/// The Dify voice sent for `requested` to an app whose own voice is `app_voice`.
async fn voice_sent(app_voice: &str, requested: Value) -> Option<Value> {
    // A fresh app each time: the proxy keeps an app's `/parameters` for minutes.
    let app = spawn_app().await;
    app.dify.set_speech(APP_KEY, speech_app(app_voice));
    let r = app
        .post_speech(&json!({"model": MODEL, "input": "Say hello", "voice": requested}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let calls = app.tts_calls();
    assert_eq!(calls.len(), 1);
    calls[0].body.get("voice").cloned()
}

#[tokio::test]
async fn the_voice_rule() {
    // The app speaks OpenAI's voices: the requested one is passed on.
    assert_eq!(
        voice_sent("alloy", json!("nova")).await,
        Some(json!("nova"))
    );
    // Another provider's voice: OpenAI's names mean the app's own voice.
    assert_eq!(
        voice_sent("zh-CN-XiaoxiaoNeural", json!("nova")).await,
        None
    );
    // Any other name is a Dify voice name.
    assert_eq!(
        voice_sent("zh-CN-XiaoxiaoNeural", json!("zh-CN-YunxiNeural")).await,
        Some(json!("zh-CN-YunxiNeural"))
    );
    assert_eq!(
        voice_sent("alloy", json!({"id": "voice_custom"})).await,
        Some(json!("voice_custom"))
    );
}

#[tokio::test]
async fn a_wrong_dify_base_names_the_endpoint_that_answered_404() {
    let app = spawn_app().await;
    let base = app.dify.base_url().trim_end_matches("/v1").to_string();
    let app2 = spawn_app_with(&[("DIFY_API_BASE", &base)]).await;
    let r = app2
        .post_speech(&json!({"model": MODEL, "input": "Hi"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (502, Some("dify_endpoint_not_found"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("Dify answered 404 for /text-to-audio:"),
        "{error}"
    );
}

#[tokio::test]
async fn speech_goes_to_dify_as_the_requests_end_user() {
    let app = spawn_app().await;
    app.dify.set_speech(APP_KEY, speech_app("alloy"));
    let r = app
        .post_speech(&json!({"model": MODEL, "input": "Hi", "user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = app
        .post_speech(&json!({"model": MODEL, "input": "Hi"}))
        .header("x-openwebui-user-id", "owui-7")
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap();
    let users: Vec<Option<String>> = app.tts_calls().into_iter().map(|c| c.user).collect();
    assert_eq!(
        users,
        [Some(named_user("alice")), Some(named_user("owui-7"))]
    );
}

#[tokio::test]
async fn speech_refusals_name_the_cause_and_reach_no_dify() {
    let app = spawn_app().await;
    app.dify.set_speech(APP_KEY, speech_app("alloy"));
    for (body, status, param, words) in [
        (
            json!({"model": MODEL, "input": "Hi", "response_format": "opus"}),
            400,
            Some("response_format"),
            "`opus` is not available",
        ),
        (
            json!({"model": MODEL, "input": "Hi", "response_format": "wav"}),
            400,
            Some("response_format"),
            "MP3 audio only",
        ),
        (
            json!({"model": MODEL, "input": "Hi", "stream_format": "sse"}),
            400,
            Some("stream_format"),
            "`sse`",
        ),
        (
            json!({"model": MODEL, "input": ""}),
            400,
            Some("input"),
            "no text to speak",
        ),
        (json!({"model": MODEL}), 400, None, "missing field `input`"),
        (
            json!({"model": "nope", "input": "Hi"}),
            404,
            Some("model"),
            "does not exist",
        ),
    ] {
        let r = app.post_speech(&body).send().await.unwrap();
        let (got, error) = error_of(r).await;
        assert_eq!(got, status, "{body}: {error}");
        assert_eq!(error["param"].as_str(), param, "{body}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
    }
    assert!(app.dify.audio_calls().is_empty());
}

#[tokio::test]
async fn speech_from_an_app_with_text_to_speech_off_is_a_400() {
    let app = spawn_app().await;
    app.dify.set_speech(
        APP_KEY,
        SpeechApp {
            text_to_speech: false,
            ..SpeechApp::default()
        },
    );
    let r = app
        .post_speech(&json!({"model": MODEL, "input": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-should-retry"], "false");
    let (status, error) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], "text_to_speech_disabled");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("has Text to Speech turned off")
    );
    assert!(app.dify.audio_calls().is_empty(), "refused before Dify");

    // When `/parameters` cannot say, Dify's own refusal reads the same.
    let other = spawn_app().await;
    other.dify.set_speech(
        APP_KEY,
        SpeechApp {
            text_to_speech: false,
            ..SpeechApp::default()
        },
    );
    other.dify.fail_parameters(APP_KEY, 500);
    let r = other
        .post_speech(&json!({"model": MODEL, "input": "Hi"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], "text_to_speech_disabled");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .ends_with("Dify says: TTS is not enabled."),
        "{error}"
    );
    assert_eq!(other.tts_calls().len(), 1);
}

#[tokio::test]
async fn speech_keys_limited_to_other_models_get_a_403() {
    let app = spawn_app_with(&[(
        "PROXY_API_KEYS",
        &format!("{PROXY_KEY},sk-limited-key:zeta"),
    )])
    .await;
    app.dify.set_speech(APP_KEY, speech_app("alloy"));
    let r = app
        .client
        .post(format!("{}/v1/audio/speech", app.url))
        .bearer_auth("sk-limited-key")
        .json(&json!({"model": MODEL, "input": "Hi"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    let (content_type, body) = multipart(&[
        Part::Field("model", MODEL),
        Part::File("a.mp3", Some("audio/mpeg"), MP3),
    ]);
    let r = app
        .client
        .post(format!("{}/v1/audio/transcriptions", app.url))
        .bearer_auth("sk-limited-key")
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    assert!(app.dify.audio_calls().is_empty());
}

#[tokio::test]
async fn transcription_as_json_and_as_text() {
    let app = spawn_app().await;
    app.dify.set_speech(APP_KEY, speech_app("alloy"));
    let r = app
        .post_transcription(&[
            Part::Field("model", MODEL),
            Part::Field("language", "en"),
            Part::Field("temperature", "0.2"),
            Part::File("speech.mp3", Some("audio/mpeg"), MP3),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"text": "Hello from the recording."}));

    let r = app
        .post_transcription(&[
            Part::Field("model", MODEL),
            Part::Field("response_format", "text"),
            Part::File("memo.wav", Some("audio/x-wav"), b"RIFF....WAVEfmt "),
        ])
        .header("x-openwebui-user-id", "owui-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "Hello from the recording.\n");

    let calls = app.dify.audio_calls();
    let files: Vec<(String, String, Bytes)> = calls.iter().filter_map(|c| c.file.clone()).collect();
    // The SDKs' `audio/mpeg` goes to Dify as `audio/mp3`, which every Dify version takes.
    assert_eq!(
        files,
        [
            (
                "speech.mp3".into(),
                "audio/mp3".into(),
                Bytes::from_static(MP3)
            ),
            (
                "memo.wav".into(),
                "audio/wav".into(),
                Bytes::from_static(b"RIFF....WAVEfmt ")
            ),
        ]
    );
    let users: Vec<Option<String>> = calls.iter().map(|c| c.user.clone()).collect();
    assert_eq!(users, [Some(default_user()), Some(named_user("owui-9"))]);
}

#[tokio::test]
async fn a_file_without_a_type_is_read_by_its_name() {
    let app = spawn_app().await;
    app.dify.set_speech(APP_KEY, speech_app("alloy"));
    let r = app
        .post_transcription(&[
            Part::Field("model", MODEL),
            Part::File(
                "clip.m4a",
                Some("application/octet-stream"),
                b"....ftypM4A ",
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls = app.dify.audio_calls();
    assert_eq!(calls[0].file.as_ref().unwrap().1, "audio/m4a");
}

#[tokio::test]
async fn transcription_refusals_name_the_cause_and_reach_no_dify() {
    let app = spawn_app_with(&[("MAX_REQUEST_BYTES", "4096")]).await;
    app.dify.set_speech(APP_KEY, speech_app("alloy"));
    let big = vec![7u8; 5000];
    let cases: Vec<(Vec<Part<'_>>, u16, Option<&str>, &str)> = vec![
        (
            vec![
                Part::Field("model", MODEL),
                Part::Field("response_format", "srt"),
                Part::File("a.mp3", Some("audio/mpeg"), MP3),
            ],
            400,
            Some("response_format"),
            "without timestamps",
        ),
        (
            vec![
                Part::Field("model", MODEL),
                Part::Field("response_format", "vtt"),
                Part::File("a.mp3", Some("audio/mpeg"), MP3),
            ],
            400,
            Some("response_format"),
            "`vtt`",
        ),
        (
            vec![
                Part::Field("model", MODEL),
                Part::Field("response_format", "verbose_json"),
                Part::File("a.mp3", Some("audio/mpeg"), MP3),
            ],
            400,
            Some("response_format"),
            "`verbose_json`",
        ),
        (
            vec![
                Part::Field("model", MODEL),
                Part::File("a.ogg", Some("audio/ogg"), MP3),
            ],
            415,
            Some("file"),
            "`audio/ogg` is not a type Dify transcribes",
        ),
        (
            vec![
                Part::Field("model", MODEL),
                Part::File("a.mp3", Some("audio/mpeg"), b""),
            ],
            400,
            Some("file"),
            "The audio file is empty.",
        ),
        (
            vec![Part::Field("model", MODEL)],
            400,
            Some("file"),
            "`file` is missing",
        ),
        (
            vec![Part::File("a.mp3", Some("audio/mpeg"), MP3)],
            400,
            Some("model"),
            "`model` is missing",
        ),
        (
            vec![
                Part::Field("model", MODEL),
                Part::Field("stream", "true"),
                Part::File("a.mp3", Some("audio/mpeg"), MP3),
            ],
            400,
            Some("stream"),
            "whole transcript at once",
        ),
        (
            vec![
                Part::Field("model", MODEL),
                Part::File("a.mp3", Some("audio/mpeg"), &big),
            ],
            413,
            None,
            "larger than the limit of 4096 bytes",
        ),
    ];
    for (parts, status, param, words) in cases {
        let r = app.post_transcription(&parts).send().await.unwrap();
        let (got, error) = error_of(r).await;
        assert_eq!(got, status, "{error}");
        assert_eq!(error["param"].as_str(), param, "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(words), "{message}");
    }
    // Not a form at all.
    let r = app
        .client
        .post(format!("{}/v1/audio/transcriptions", app.url))
        .bearer_auth(PROXY_KEY)
        .json(&json!({"model": MODEL, "file": "speech.mp3"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("multipart/form-data")
    );
    assert!(app.dify.audio_calls().is_empty());
}

#[tokio::test]
async fn transcription_from_an_app_with_speech_to_text_off_is_a_400() {
    let app = spawn_app().await;
    let off = SpeechApp {
        speech_to_text: false,
        ..SpeechApp::default()
    };
    app.dify.set_speech(APP_KEY, off.clone());
    let parts = [
        Part::Field("model", MODEL),
        Part::File("a.mp3", Some("audio/mpeg"), MP3),
    ];
    let r = app.post_transcription(&parts).send().await.unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("speech_to_text_disabled"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("has Speech to Text turned off")
    );
    assert!(app.dify.audio_calls().is_empty());

    // Dify's own refusal (its `/parameters` unreadable to the proxy) reads the same.
    let other = spawn_app().await;
    other.dify.set_speech(APP_KEY, off);
    other.dify.fail_parameters(APP_KEY, 500);
    let r = other.post_transcription(&parts).send().await.unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("speech_to_text_disabled"))
    );
    assert_eq!(other.dify.audio_calls().len(), 1);
}

#[tokio::test]
async fn translations_say_dify_has_none() {
    let app = spawn_app().await;
    let (content_type, body) = multipart(&[
        Part::Field("model", MODEL),
        Part::File("a.mp3", Some("audio/mpeg"), MP3),
    ]);
    let r = app
        .client
        .post(format!("{}/v1/audio/translations", app.url))
        .bearer_auth(PROXY_KEY)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "unknown_url");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("Dify has no audio translation endpoint"),
        "{message}"
    );
    assert!(message.contains("/v1/audio/transcriptions"), "{message}");
}
