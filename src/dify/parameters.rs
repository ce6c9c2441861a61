//! `GET /parameters`: an app's input form (its variables, which are required) and its
//! file-upload settings. Parsed leniently: Dify adds field types and settings over time,
//! and an item we cannot read is skipped rather than failing the whole form.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::client::DifyClient;
use super::error::DifyError;

/// Longest wait for `/parameters`: it runs before a new conversation's first answer.
const PARAMETERS_TIMEOUT: Duration = Duration::from_secs(5);
/// More than any real form; a larger body is not a parameters answer.
const MAX_PARAMETERS_BODY: usize = 1024 * 1024;

/// What the proxy uses of an app's `/parameters`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppParameters {
    /// The input variables, in the form's order.
    pub user_input_form: Vec<FormField>,
    pub file_upload: FileUpload,
    /// `speech_to_text.enabled`: whether `/audio-to-text` works for the app.
    pub speech_to_text: bool,
    /// `text_to_speech`: whether `/text-to-audio` works, and its default voice.
    pub text_to_speech: TextToSpeech,
}

/// The app's text-to-speech settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TextToSpeech {
    pub enabled: bool,
    /// The voice Dify uses when a request names none (empty: the provider's first).
    #[serde(deserialize_with = "lenient_string")]
    pub voice: String,
}

/// A string, or empty for `null` or any other JSON type.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        _ => String::new(),
    })
}

/// One input variable of the app's form.
#[derive(Debug, Clone, PartialEq)]
pub struct FormField {
    /// `text-input`, `paragraph`, `select`, `number`, `file`, `file-list`, …
    pub kind: String,
    pub variable: String,
    pub label: String,
    pub required: bool,
    pub default: Option<Value>,
    /// A `select`'s choices.
    pub options: Vec<String>,
}

/// The app's file-upload settings (`file_upload`): the legacy `image` block and the newer
/// general one.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FileUpload {
    pub enabled: bool,
    pub image: ImageUpload,
    pub allowed_file_types: Vec<String>,
    pub allowed_file_extensions: Vec<String>,
    pub allowed_file_upload_methods: Vec<String>,
    pub number_limits: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ImageUpload {
    pub enabled: bool,
    pub number_limits: Option<u32>,
    pub transfer_methods: Vec<String>,
}

impl AppParameters {
    /// Parses a `/parameters` body. Only a body that is not a JSON object is an error.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let Value::Object(top) = value else {
            return Err("the body is not a JSON object".to_string());
        };
        let user_input_form = top
            .get("user_input_form")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(form_field).collect())
            .unwrap_or_default();
        let file_upload = top
            .get("file_upload")
            .and_then(|f| FileUpload::deserialize(f).ok())
            .unwrap_or_default();
        let speech_to_text = top
            .get("speech_to_text")
            .and_then(|s| s.get("enabled"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let text_to_speech = top
            .get("text_to_speech")
            .and_then(|t| TextToSpeech::deserialize(t).ok())
            .unwrap_or_default();
        Ok(Self {
            user_input_form,
            file_upload,
            speech_to_text,
            text_to_speech,
        })
    }
}

/// One form item: `{"<type>": {"variable", "label", "required", "default", "options"}}`.
fn form_field(item: &Value) -> Option<FormField> {
    let (kind, spec) = item.as_object()?.iter().next()?;
    let variable = spec.get("variable")?.as_str()?.to_string();
    Some(FormField {
        kind: kind.clone(),
        label: spec
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or(&variable)
            .to_string(),
        required: spec
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        default: spec.get("default").filter(|d| !d.is_null()).cloned(),
        options: spec
            .get("options")
            .and_then(Value::as_array)
            .map(|o| {
                o.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        variable,
    })
}

impl DifyClient {
    /// `GET /parameters` with the app's key, within [`PARAMETERS_TIMEOUT`].
    pub async fn parameters(&self, app_key: &str) -> Result<AppParameters, DifyError> {
        let timeout = PARAMETERS_TIMEOUT.min(self.timeout);
        let body = self
            .get_body("parameters", app_key, timeout, MAX_PARAMETERS_BODY)
            .await?;
        AppParameters::parse(&body)
            .map_err(|e| DifyError::Stream(format!("unreadable /parameters answer: {e}")))
    }
}

/// How long an app's form is trusted: an operator who changes it sees the change within
/// this time, and each warm instance asks Dify at most once per app in this time.
pub const PARAMETERS_TTL: Duration = Duration::from_secs(600);
/// After a failed `/parameters`, how long to go without (and not log the failure again).
const FAILURE_TTL: Duration = Duration::from_secs(60);

/// `/parameters` per app key, for [`PARAMETERS_TTL`]. A failure is remembered as `None`
/// for [`FAILURE_TTL`]: the proxy then skips its own check and Dify answers for itself.
#[derive(Default)]
pub struct ParametersCache {
    entries: Mutex<HashMap<String, Cached>>,
}

/// When it was fetched, and what (`None`: the fetch failed).
type Cached = (Instant, Option<Arc<AppParameters>>);

impl ParametersCache {
    /// The app's parameters, from the cache or Dify; `None` when Dify could not say.
    pub async fn get(
        &self,
        dify: &DifyClient,
        app_key: &str,
        model: &str,
    ) -> Option<Arc<AppParameters>> {
        if let Some((at, cached)) = self.lock().get(app_key) {
            let ttl = if cached.is_some() {
                PARAMETERS_TTL
            } else {
                FAILURE_TTL
            };
            if at.elapsed() < ttl {
                return cached.clone();
            }
        }
        let fetched = match dify.parameters(app_key).await {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(
                    model,
                    error = %e.summary(),
                    "could not read the app's /parameters from Dify; for a minute the proxy does not check required inputs (Dify still does) and sends a completion or workflow app's text in `query` unless query_variable is set"
                );
                None
            }
        };
        self.lock()
            .insert(app_key.to_string(), (Instant::now(), fetched.clone()));
        fetched
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Cached>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_of_every_kind_parses() {
        let body = br#"{
            "opening_statement": "", "suggested_questions": [],
            "user_input_form": [
                {"text-input": {"label": "Topic", "variable": "topic", "required": true, "max_length": 48, "default": ""}},
                {"paragraph": {"label": "Notes", "variable": "notes", "required": false}},
                {"select": {"label": "Language", "variable": "language", "required": true, "default": "en", "options": ["en", "de"]}},
                {"number": {"label": "Count", "variable": "count", "required": false, "default": 3}},
                {"file": {"label": "Doc", "variable": "doc", "required": false, "allowed_file_types": ["document"]}},
                {"external_data_tool": {"label": "x"}},
                "not an item"
            ],
            "file_upload": {"image": {"enabled": true, "number_limits": 3, "transfer_methods": ["remote_url", "local_file"]},
                            "enabled": true, "allowed_file_types": ["image"], "allowed_file_extensions": [".png"],
                            "allowed_file_upload_methods": ["remote_url"], "number_limits": 3, "fileUploadConfig": {}},
            "system_parameters": {"image_file_size_limit": 10}
        }"#;
        let p = AppParameters::parse(body).unwrap();
        let vars: Vec<(&str, &str, bool)> = p
            .user_input_form
            .iter()
            .map(|f| (f.kind.as_str(), f.variable.as_str(), f.required))
            .collect();
        assert_eq!(
            vars,
            [
                ("text-input", "topic", true),
                ("paragraph", "notes", false),
                ("select", "language", true),
                ("number", "count", false),
                ("file", "doc", false),
            ]
        );
        assert_eq!(p.user_input_form[0].label, "Topic");
        assert_eq!(p.user_input_form[2].options, ["en", "de"]);
        assert_eq!(p.user_input_form[3].default, Some(Value::from(3)));
        assert!(p.file_upload.enabled && p.file_upload.image.enabled);
        assert_eq!(
            p.file_upload.image.transfer_methods,
            ["remote_url", "local_file"]
        );
        assert_eq!(p.file_upload.allowed_file_types, ["image"]);
        assert!(!p.speech_to_text && !p.text_to_speech.enabled);
    }

    #[test]
    fn speech_settings_parse() {
        let body = br#"{"speech_to_text": {"enabled": true},
            "text_to_speech": {"enabled": true, "voice": "zh-CN-XiaoxiaoNeural", "language": "zh-Hans", "autoPlay": "enabled"}}"#;
        let p = AppParameters::parse(body).unwrap();
        assert!(p.speech_to_text);
        assert!(p.text_to_speech.enabled);
        assert_eq!(p.text_to_speech.voice, "zh-CN-XiaoxiaoNeural");
        let p = AppParameters::parse(br#"{"text_to_speech": {"enabled": true, "voice": null}}"#)
            .unwrap();
        assert!(p.text_to_speech.enabled);
        assert_eq!(p.text_to_speech.voice, "");
    }

    #[test]
    fn odd_bodies_do_not_fail_the_form() {
        let p = AppParameters::parse(br#"{"user_input_form": null, "file_upload": 5}"#).unwrap();
        assert_eq!(p, AppParameters::default());
        assert!(AppParameters::parse(b"[]").is_err());
        assert!(AppParameters::parse(b"<html>").is_err());
    }
}
