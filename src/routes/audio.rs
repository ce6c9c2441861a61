//! `POST /v1/audio/speech` and `POST /v1/audio/transcriptions`: the model's Dify app
//! speaks (`/text-to-audio`) and listens (`/audio-to-text`). The rules are in
//! `plan::audio`; this is the HTTP glue.

use axum::body::Body;
use axum::extract::{Extension, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;

use super::chat::{USER_HEADER, allowed_model};
use super::extract::{JsonBody, OpenAiJson};
use crate::config::{ModelAccess, ModelConfig, Tenant};
use crate::dify::parameters::AppParameters;
use crate::error::ApiError;
use crate::plan::audio::{self, SpeechRequest};
use crate::plan::first_user;
use crate::state::AppState;

impl JsonBody for SpeechRequest {
    const SHAPE: &'static str = "`model` and `input`";
}

/// `POST /v1/audio/speech`: the audio streams through as Dify sends it.
pub async fn speech(
    State(state): State<AppState>,
    Extension(access): Extension<ModelAccess>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<SpeechRequest>,
) -> Result<Response, ApiError> {
    let model = allowed_model(&state, &access, &request.model)?;
    let from_field = request.user.as_ref().and_then(Value::as_str);
    let user = end_user(&tenant, from_field, &headers);
    // Checked before asking Dify anything: a bad format costs no `/parameters` call.
    audio::speech(&request, user.clone(), "")?;
    let parameters = app_parameters(&state, model, &request.model).await;
    if let Some(p) = &parameters
        && !p.text_to_speech.enabled
    {
        return Err(ApiError::SpeechDisabled {
            model: request.model.clone(),
            speech_to_text: false,
        });
    }
    let app_voice = parameters
        .as_ref()
        .map(|p| p.text_to_speech.voice.as_str())
        .unwrap_or("");
    let dify_request = audio::speech(&request, user, app_voice)?;
    let audio = state
        .dify()
        .text_to_audio(model.app_key.expose(), &dify_request)
        .await
        .map_err(|error| refused(&request.model, error))?;
    let name = request.model.clone();
    let body = audio.body.map(move |chunk| {
        chunk.map_err(|error| {
            // The head is sent: all that is left is to cut the body, which clients see
            // as an incomplete download.
            tracing::warn!(model = name, error = %error.summary(), "the speech audio from Dify broke off");
            std::io::Error::other(error.summary())
        })
    });
    let mut response = Response::new(Body::from_stream(body));
    let content_type = HeaderValue::from_str(&audio.content_type)
        .unwrap_or(HeaderValue::from_static("audio/mpeg"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    Ok(response)
}

/// What the transcription form holds; unknown fields are ignored.
#[derive(Default)]
struct TranscriptionForm {
    file: Option<(String, Option<String>, bytes::Bytes)>,
    model: Option<String>,
    response_format: Option<String>,
    stream: Option<String>,
    user: Option<String>,
}

/// `POST /v1/audio/transcriptions` (multipart): the whole transcript at once.
pub async fn transcriptions(
    State(state): State<AppState>,
    Extension(access): Extension<ModelAccess>,
    Extension(tenant): Extension<Tenant>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let form = read_form(request, state.config().max_request_bytes).await?;
    let Some(name) = form
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    else {
        return Err(ApiError::bad_request(
            "`model` is missing: send the model as a form field.",
            Some("model".into()),
        ));
    };
    let model = allowed_model(&state, &access, name)?;
    let format = audio::transcript_format(form.response_format.as_deref())?;
    if form.stream.as_deref().map(str::trim) == Some("true") {
        return Err(ApiError::bad_request(
            "`stream` is not available: Dify's speech-to-text answers with the whole transcript at once.",
            Some("stream".into()),
        ));
    }
    let Some((filename, content_type, bytes)) = form.file else {
        return Err(ApiError::bad_request(
            "`file` is missing: send the audio as a file part named `file`.",
            Some("file".into()),
        ));
    };
    audio::check_audio_size(bytes.len())?;
    let mime = audio::dify_audio_mime(content_type.as_deref(), &filename)?;
    let parameters = app_parameters(&state, model, name).await;
    if parameters.as_ref().is_some_and(|p| !p.speech_to_text) {
        return Err(ApiError::SpeechDisabled {
            model: name.to_string(),
            speech_to_text: true,
        });
    }
    let user = end_user(&tenant, form.user.as_deref(), &headers);
    // Dify only checks the type; a name keeps its logs readable.
    let filename = if filename.is_empty() {
        "audio"
    } else {
        &filename
    };
    let text = state
        .dify()
        .audio_to_text(model.app_key.expose(), &user, filename, mime, &bytes)
        .await
        .map_err(|error| refused(name, error))?;
    let (content_type, body) = audio::transcript_body(format, &text);
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Any method on `/v1/audio/translations`: Dify has nothing that translates audio.
pub async fn translations() -> ApiError {
    ApiError::NoCounterpart {
        path: "/v1/audio/translations".to_string(),
        why: "Dify has no audio translation endpoint, only speech-to-text in the audio's own language. Transcribe with POST /v1/audio/transcriptions, then translate the text with a chat model.".to_string(),
    }
}

/// Reads the multipart form (bounded by `MAX_REQUEST_BYTES` through the route's body
/// limit), keeping the fields the endpoint uses.
async fn read_form(request: Request, limit: usize) -> Result<TranscriptionForm, ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !is_multipart {
        return Err(ApiError::bad_request(
            "The request body must be multipart/form-data with the audio in a `file` part, as the OpenAI SDKs send it.",
            None,
        ));
    }
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| form_error(e.status(), &e.body_text(), limit))?;
    let mut form = TranscriptionForm::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(form_error(e.status(), &e.body_text(), limit)),
        };
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            let filename = field.file_name().unwrap_or("").to_string();
            let content_type = field.content_type().map(str::to_string);
            let bytes = field
                .bytes()
                .await
                .map_err(|e| form_error(e.status(), &e.body_text(), limit))?;
            form.file = Some((filename, content_type, bytes));
            continue;
        }
        let slot = match name.as_str() {
            "model" => &mut form.model,
            "response_format" => &mut form.response_format,
            "stream" => &mut form.stream,
            "user" => &mut form.user,
            // `language`, `prompt`, `temperature`, ...: Dify takes none of them.
            _ => continue,
        };
        let text = field
            .text()
            .await
            .map_err(|e| form_error(e.status(), &e.body_text(), limit))?;
        *slot = Some(text);
    }
    Ok(form)
}

fn form_error(status: StatusCode, text: &str, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge { limit };
    }
    ApiError::bad_request(
        format!("The multipart form could not be read: {text}."),
        None,
    )
}

/// The end user as for chat: the request's `user`, then Open WebUI's user header, then
/// the key's default.
fn end_user(tenant: &Tenant, from_request: Option<&str>, headers: &HeaderMap) -> String {
    let header = headers.get(USER_HEADER).and_then(|v| v.to_str().ok());
    tenant.dify_user(first_user([from_request, header]))
}

/// The app's `/parameters`, or `None` when Dify could not say (then Dify decides).
async fn app_parameters(
    state: &AppState,
    model: &ModelConfig,
    name: &str,
) -> Option<std::sync::Arc<AppParameters>> {
    state
        .parameters()
        .get(state.dify(), model.app_key.expose(), name)
        .await
}

fn refused(model: &str, error: crate::dify::DifyError) -> ApiError {
    tracing::warn!(model, error = %error.summary(), "Dify refused the audio request");
    ApiError::Dify {
        model: model.to_string(),
        error,
    }
}
