//! OpenAI's audio endpoints → Dify's speech endpoints: what is sent, what is refused, and
//! how a transcript is answered. Pure.
//!
//! Dify speaks MP3 only (`/text-to-audio` answers `audio/mpeg`) and transcribes without
//! timestamps (`/audio-to-text` answers `{"text"}`), so formats it cannot produce are
//! refused with a 400 naming them rather than transcoded or faked. Settings Dify cannot
//! honour but a client does not rely on (`speed`, `instructions`, `language`, `prompt`,
//! `temperature`) are ignored, as for chat (see `unsupported.rs`).

use serde::Deserialize;
use serde_json::Value;

use crate::dify::audio::TextToAudioRequest;
use crate::error::ApiError;

/// Dify's limit for one audio file (`FILE_SIZE_LIMIT` in `audio_service.py`: 30 MiB).
pub const DIFY_AUDIO_LIMIT: usize = 30 * 1024 * 1024;

/// OpenAI's voice names. Open WebUI and the SDK examples send one of these (`alloy` by
/// default), which most Dify text-to-speech providers do not know.
pub const OPENAI_VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
];

/// `POST /v1/audio/speech`.
#[derive(Debug, Clone, Deserialize)]
pub struct SpeechRequest {
    pub model: String,
    pub input: String,
    #[serde(default)]
    pub voice: Option<Voice>,
    #[serde(default)]
    pub response_format: Option<String>,
    #[serde(default)]
    pub stream_format: Option<String>,
    /// Ignored: Dify's text-to-speech has no speed setting.
    #[serde(default)]
    pub speed: Option<Value>,
    /// Ignored: Dify's text-to-speech takes no instructions.
    #[serde(default)]
    pub instructions: Option<Value>,
    #[serde(default)]
    pub user: Option<Value>,
}

/// A voice: a name, or (newer API) `{"id": "..."}` for a custom voice.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Voice {
    Name(String),
    Custom { id: String },
}

impl Voice {
    fn name(&self) -> &str {
        match self {
            Voice::Name(n) => n,
            Voice::Custom { id } => id,
        }
    }
}

/// The Dify voice for a requested one. OpenAI's names mean "the app's voice" (Dify then
/// uses the voice set in the app's Text to Speech feature), unless that voice is itself
/// one of OpenAI's names: then the app's provider speaks OpenAI's voices and the requested
/// one is passed on. Any other name is a Dify voice name, passed on as it is.
pub fn dify_voice(requested: Option<&Voice>, app_voice: &str) -> Option<String> {
    let name = requested.map(Voice::name).map(str::trim)?;
    if name.is_empty() {
        return None;
    }
    let is_openai = |v: &str| OPENAI_VOICES.iter().any(|o| o.eq_ignore_ascii_case(v));
    if is_openai(name) && !is_openai(app_voice.trim()) {
        return None;
    }
    Some(name.to_string())
}

/// Checks a speech request and builds Dify's `/text-to-audio` body for `user`, with the
/// app's default voice `app_voice` (empty if unknown).
pub fn speech(
    request: &SpeechRequest,
    user: String,
    app_voice: &str,
) -> Result<TextToAudioRequest, ApiError> {
    if request.input.trim().is_empty() {
        return Err(ApiError::bad_request(
            "`input` is empty: there is no text to speak.",
            Some("input".into()),
        ));
    }
    match request.response_format.as_deref() {
        None | Some("mp3") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "`response_format` `{other}` is not available: Dify's text-to-speech gives MP3 audio only, and this proxy does not transcode. Send `response_format: \"mp3\"` or leave it out."
                ),
                Some("response_format".into()),
            ));
        }
    }
    match request.stream_format.as_deref() {
        None | Some("audio") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "`stream_format` `{other}` is not available: the audio streams as raw MP3 bytes. Send `stream_format: \"audio\"` or leave it out."
                ),
                Some("stream_format".into()),
            ));
        }
    }
    Ok(TextToAudioRequest {
        text: request.input.clone(),
        voice: dify_voice(request.voice.as_ref(), app_voice),
        user,
        streaming: true,
    })
}

/// How a transcript is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranscriptFormat {
    /// `{"text": "..."}`, the default.
    Json,
    /// The text as a plain body.
    Text,
}

/// The transcript format asked for; those needing timestamps or speakers are refused.
pub fn transcript_format(value: Option<&str>) -> Result<TranscriptFormat, ApiError> {
    match value.map(str::trim) {
        None | Some("") | Some("json") => Ok(TranscriptFormat::Json),
        Some("text") => Ok(TranscriptFormat::Text),
        Some(f @ ("srt" | "vtt" | "verbose_json" | "diarized_json")) => Err(ApiError::bad_request(
            format!(
                "`response_format` `{f}` is not available: Dify's speech-to-text gives the text only, without timestamps or segments. Use `json` or `text`."
            ),
            Some("response_format".into()),
        )),
        Some(other) => Err(ApiError::bad_request(
            format!(
                "`response_format` `{other}` is not a transcript format. Use `json` or `text`."
            ),
            Some("response_format".into()),
        )),
    }
}

/// A transcript as OpenAI returns it: content type and body.
pub fn transcript_body(format: TranscriptFormat, text: &str) -> (&'static str, String) {
    match format {
        TranscriptFormat::Json => (
            "application/json",
            serde_json::json!({ "text": text }).to_string(),
        ),
        // OpenAI ends a text transcript with a line break.
        TranscriptFormat::Text => ("text/plain; charset=utf-8", format!("{text}\n")),
    }
}

/// The types Dify accepts, as the extensions the error message lists.
const ACCEPTED: &str = "mp3, mpga, m4a, mp4, wav, webm or amr";

/// The MIME type to send Dify for an uploaded audio file. Dify checks the part's type
/// against `audio/<ext>` for its own list of extensions, which lacks the `audio/mpeg`,
/// `audio/x-wav` or `audio/x-m4a` browsers and SDKs send: those become the spelling every
/// Dify version takes. A missing or generic type is read from the file name.
pub fn dify_audio_mime(
    content_type: Option<&str>,
    filename: &str,
) -> Result<&'static str, ApiError> {
    let media = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let by_type = match media.as_str() {
        "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg" | "audio/x-mp3" => {
            Some("audio/mp3")
        }
        "audio/mpga" => Some("audio/mpga"),
        "audio/m4a" | "audio/x-m4a" | "audio/mp4" | "audio/x-mp4" | "video/mp4" => {
            Some("audio/m4a")
        }
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Some("audio/wav"),
        "audio/amr" => Some("audio/amr"),
        "audio/webm" | "video/webm" => Some("audio/webm"),
        _ => None,
    };
    if let Some(mime) = by_type {
        return Ok(mime);
    }
    let generic = media.is_empty() || media == "application/octet-stream";
    let extension = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let by_name = match extension.as_str() {
        "mp3" | "mpeg" => Some("audio/mp3"),
        "mpga" => Some("audio/mpga"),
        "m4a" | "mp4" => Some("audio/m4a"),
        "wav" => Some("audio/wav"),
        "amr" => Some("audio/amr"),
        "webm" => Some("audio/webm"),
        _ => None,
    };
    match by_name {
        Some(mime) if generic => Ok(mime),
        _ => Err(ApiError::UnsupportedFile {
            message: format!(
                "The audio file{} of type `{}` is not a type Dify transcribes: send {ACCEPTED}.",
                if filename.is_empty() {
                    String::new()
                } else {
                    format!(" `{filename}`")
                },
                if media.is_empty() { "unknown" } else { &media }
            ),
            param: "file".to_string(),
        }),
    }
}

/// Refuses an empty file and one over Dify's limit before anything is sent.
pub fn check_audio_size(len: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::bad_request(
            "The audio file is empty.",
            Some("file".into()),
        ));
    }
    if len > DIFY_AUDIO_LIMIT {
        return Err(ApiError::FileTooLarge {
            message: format!(
                "The audio file is {len} bytes; Dify transcribes at most 30 MB ({DIFY_AUDIO_LIMIT} bytes)."
            ),
            param: "file".to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ClientError;

    fn request(body: Value) -> SpeechRequest {
        serde_json::from_value(body).unwrap()
    }

    fn refusal(e: ApiError) -> (u16, String, Option<String>) {
        let c = ClientError::from(&e);
        (c.status.as_u16(), c.body.error.message, c.body.error.param)
    }

    #[test]
    fn voices() {
        let name = |n: &str| Voice::Name(n.to_string());
        // OpenAI's names → the app's voice, unless the app speaks OpenAI's voices.
        assert_eq!(dify_voice(Some(&name("alloy")), "zh-CN-Xiaoxiao"), None);
        assert_eq!(dify_voice(Some(&name("Alloy")), ""), None);
        assert_eq!(
            dify_voice(Some(&name("nova")), "alloy"),
            Some("nova".to_string())
        );
        // Anything else is a Dify voice name.
        assert_eq!(
            dify_voice(Some(&name("zh-CN-YunxiNeural")), "alloy"),
            Some("zh-CN-YunxiNeural".to_string())
        );
        assert_eq!(
            dify_voice(Some(&Voice::Custom { id: "v1".into() }), ""),
            Some("v1".to_string())
        );
        assert_eq!(dify_voice(Some(&name(" ")), "alloy"), None);
        assert_eq!(dify_voice(None, "alloy"), None);
    }

    #[test]
    fn speech_request_to_dify() {
        let r = request(serde_json::json!({
            "model": "m", "input": "Hello there", "voice": "echo", "speed": 1.5,
            "instructions": "cheerful", "response_format": "mp3"
        }));
        let d = speech(&r, "u1".into(), "").unwrap();
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"text": "Hello there", "user": "u1", "streaming": true})
        );
        let r =
            request(serde_json::json!({"model": "m", "input": "Hi", "voice": {"id": "custom"}}));
        let d = speech(&r, "u".into(), "").unwrap();
        assert_eq!(d.voice.as_deref(), Some("custom"));
    }

    #[test]
    fn speech_refusals() {
        for (body, param, words) in [
            (
                serde_json::json!({"model": "m", "input": "  "}),
                "input",
                "empty",
            ),
            (
                serde_json::json!({"model": "m", "input": "Hi", "response_format": "opus"}),
                "response_format",
                "`opus`",
            ),
            (
                serde_json::json!({"model": "m", "input": "Hi", "response_format": "wav"}),
                "response_format",
                "MP3 audio only",
            ),
            (
                serde_json::json!({"model": "m", "input": "Hi", "stream_format": "sse"}),
                "stream_format",
                "`sse`",
            ),
        ] {
            let (status, message, p) = refusal(speech(&request(body), "u".into(), "").unwrap_err());
            assert_eq!(status, 400);
            assert_eq!(p.as_deref(), Some(param));
            assert!(message.contains(words), "{message}");
        }
    }

    #[test]
    fn transcript_formats() {
        assert_eq!(transcript_format(None).unwrap(), TranscriptFormat::Json);
        assert_eq!(
            transcript_format(Some("json")).unwrap(),
            TranscriptFormat::Json
        );
        assert_eq!(
            transcript_format(Some("text")).unwrap(),
            TranscriptFormat::Text
        );
        for f in ["srt", "vtt", "verbose_json"] {
            let (status, message, param) = refusal(transcript_format(Some(f)).unwrap_err());
            assert_eq!(status, 400);
            assert!(message.contains("without timestamps"), "{message}");
            assert!(message.contains(f));
            assert_eq!(param.as_deref(), Some("response_format"));
        }
        assert!(transcript_format(Some("xml")).is_err());
        assert_eq!(
            transcript_body(TranscriptFormat::Json, "Hi \"there\""),
            ("application/json", r#"{"text":"Hi \"there\""}"#.to_string())
        );
        assert_eq!(
            transcript_body(TranscriptFormat::Text, "Hi"),
            ("text/plain; charset=utf-8", "Hi\n".to_string())
        );
    }

    #[test]
    fn audio_types() {
        let ok = |t: Option<&str>, name: &str| dify_audio_mime(t, name).unwrap();
        assert_eq!(ok(Some("audio/mpeg"), "a.mp3"), "audio/mp3");
        assert_eq!(ok(Some("audio/x-wav"), "a.wav"), "audio/wav");
        assert_eq!(ok(Some("audio/x-m4a"), "a.m4a"), "audio/m4a");
        assert_eq!(ok(Some("audio/mp4; codecs=mp4a"), "a"), "audio/m4a");
        assert_eq!(ok(Some("audio/webm"), "rec"), "audio/webm");
        assert_eq!(ok(None, "speech.MP3"), "audio/mp3");
        assert_eq!(ok(Some("application/octet-stream"), "a.wav"), "audio/wav");
        let (status, message, param) =
            refusal(dify_audio_mime(Some("audio/ogg"), "a.ogg").unwrap_err());
        assert_eq!(status, 415);
        assert!(message.contains("`a.ogg`") && message.contains("`audio/ogg`"));
        assert_eq!(param.as_deref(), Some("file"));
        assert!(dify_audio_mime(None, "notes.txt").is_err());
        assert!(dify_audio_mime(Some("text/plain"), "a.mp3").is_err());
    }

    #[test]
    fn audio_sizes() {
        assert!(check_audio_size(1).is_ok());
        assert!(check_audio_size(DIFY_AUDIO_LIMIT).is_ok());
        let (status, message, _) = refusal(check_audio_size(0).unwrap_err());
        assert_eq!(
            (status, message.as_str()),
            (400, "The audio file is empty.")
        );
        let (status, message, _) = refusal(check_audio_size(DIFY_AUDIO_LIMIT + 1).unwrap_err());
        assert_eq!(status, 413);
        assert!(message.contains("30 MB"));
    }
}
