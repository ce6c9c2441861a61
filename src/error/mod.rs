//! Every error a client can see, and the one mapping of each to an HTTP status, an
//! OpenAI-shaped body and retry hints. Pure data: the HTTP edge (`routes::error`) turns a
//! [`ClientError`] into a response, the encoders into an in-stream error event.

/// Dify's failures → client errors: the table behind docs/errors.md.
pub mod dify;
/// A model provider's failure, read from the text Dify passes on.
pub mod provider;

use http::StatusCode;

use crate::dify::DifyError;
use crate::openai::{ErrorBody, ErrorObject};

/// Errors of the HTTP boundary.
#[derive(Debug, Clone)]
pub enum ApiError {
    BadRequest {
        message: String,
        param: Option<String>,
    },
    ModelNotFound {
        model: String,
        available: Vec<String>,
    },
    Unauthorized,
    /// A valid key asked for a model outside its allow-list.
    ModelNotAllowed {
        model: String,
    },
    NotFound {
        path: String,
    },
    MethodNotAllowed {
        method: String,
        path: String,
    },
    UnsupportedMediaType {
        media: String,
    },
    PayloadTooLarge {
        limit: usize,
    },
    /// An attached file over Dify's size limit for its type, refused before it is sent.
    FileTooLarge {
        message: String,
        param: String,
    },
    /// An attached file of a type that cannot be sent where it was put.
    UnsupportedFile {
        message: String,
        param: String,
    },
    /// Dify refused to take an attached file (`POST /files/upload`); `param` names it.
    Upload {
        model: String,
        param: String,
        error: Box<DifyError>,
    },
    Dify {
        model: String,
        error: DifyError,
    },
    /// `previous_response_id` names no response this caller may continue (unknown,
    /// expired, `store: false`, another key, user or model, or gone from Dify).
    PreviousResponseNotFound {
        id: String,
    },
    /// Another request is continuing the same `previous_response_id` right now: Dify's
    /// conversation is linear, so this one waits its turn (the client retries).
    PreviousResponseBusy {
        id: String,
    },
    /// The conversation store failed where continuing needs it.
    StoreUnavailable,
    /// A remote file URL that `REMOTE_FILE_URLS` does not let Dify fetch; `param` names it.
    RemoteUrlRefused {
        message: String,
        param: String,
    },
    /// The process is parsing as many request bytes as it may at once
    /// (`PARSE_BUDGET_BYTES`): retry shortly.
    Busy,
    /// The Dify app behind `model` has its speech feature off: Text to Speech, or (when
    /// `speech_to_text`) Speech to Text.
    SpeechDisabled {
        model: String,
        speech_to_text: bool,
    },
    /// An OpenAI path that has no Dify counterpart at all: 404 saying why.
    NoCounterpart {
        path: String,
        why: String,
    },
    /// A route of the OpenAI API that this proxy deliberately does not offer.
    NotSupported {
        what: String,
        why: String,
    },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param,
        }
    }
}

/// What a client receives for an error: status, body, and the retry hints the OpenAI SDKs
/// read (`x-should-retry`, `retry-after`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// `Some(false)` when a retry would replay work Dify already did or cannot succeed.
    pub should_retry: Option<bool>,
    pub retry_after: Option<String>,
}

impl ClientError {
    pub(crate) fn new(status: StatusCode, kind: &str, code: Option<&str>, message: String) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: ErrorObject {
                    message,
                    kind: kind.to_string(),
                    param: None,
                    code: code.map(str::to_string),
                },
            },
            should_retry: None,
            retry_after: None,
        }
    }

    pub(crate) fn no_retry(mut self) -> Self {
        self.should_retry = Some(false);
        self
    }
}

impl From<&ApiError> for ClientError {
    fn from(e: &ApiError) -> Self {
        match e {
            ApiError::BadRequest { message, param } => {
                let mut c = ClientError::new(StatusCode::BAD_REQUEST, "invalid_request_error", None, message.clone());
                c.body.error.param = param.clone();
                c
            }
            ApiError::ModelNotFound { model, available } => {
                let mut c = ClientError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("model_not_found"),
                    format!(
                        "The model `{model}` does not exist. Available models: {}.",
                        if available.is_empty() { "none".to_string() } else { available.join(", ") }
                    ),
                );
                c.body.error.param = Some("model".to_string());
                c
            }
            ApiError::Unauthorized => ClientError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect or missing API key. Send one of the proxy's keys as `Authorization: Bearer <key>`."
                    .to_string(),
            ),
            ApiError::ModelNotAllowed { model } => {
                let mut c = ClientError::new(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    Some("model_not_allowed"),
                    format!("Your API key may not use the model `{model}`."),
                );
                c.body.error.param = Some("model".to_string());
                c
            }
            ApiError::NotFound { path } => ClientError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("unknown_url"),
                format!("Unknown path {path}. This server offers GET /v1/models, POST /v1/chat/completions, POST /v1/responses, POST /v1/audio/speech and POST /v1/audio/transcriptions."),
            ),
            ApiError::MethodNotAllowed { method, path } => ClientError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                Some("method_not_allowed"),
                format!("{method} is not allowed on {path}."),
            ),
            ApiError::UnsupportedMediaType { media } => ClientError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                Some("unsupported_media_type"),
                format!("The request body must be JSON (Content-Type: application/json), not `{media}`."),
            ),
            ApiError::PayloadTooLarge { limit } => ClientError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                format!("The request body is larger than the limit of {limit} bytes."),
            ),
            ApiError::FileTooLarge { message, param } => {
                let mut c = ClientError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("file_too_large"), message.clone());
                c.body.error.param = Some(param.clone());
                c.no_retry()
            }
            ApiError::UnsupportedFile { message, param } => {
                let mut c = ClientError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", Some("unsupported_file_type"), message.clone());
                c.body.error.param = Some(param.clone());
                c.no_retry()
            }
            ApiError::Upload { model, param, error } => {
                let mut c = dify::from_dify(model, error, false);
                c.body.error.message = format!("{param}: {}", c.body.error.message);
                c.body.error.param = Some(param.clone());
                c
            }
            ApiError::Dify { model, error } => dify::from_dify(model, error, false),
            ApiError::PreviousResponseNotFound { id } => {
                let mut c = ClientError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("previous_response_not_found"),
                    format!(
                        "Previous response with id '{id}' not found. A response can be continued by the API key, user and model that created it, while it is kept (stored responses expire; `store: false` keeps none)."
                    ),
                );
                c.body.error.param = Some("previous_response_id".to_string());
                c.no_retry()
            }
            ApiError::PreviousResponseBusy { id } => {
                let mut c = ClientError::new(
                    StatusCode::CONFLICT,
                    "invalid_request_error",
                    Some("previous_response_in_use"),
                    format!(
                        "Response '{id}' is being continued by another request right now; its Dify conversation takes one turn at a time. Retry when that answer has ended."
                    ),
                );
                c.body.error.param = Some("previous_response_id".to_string());
                c.should_retry = Some(true);
                c.retry_after = Some("2".to_string());
                c
            }
            ApiError::StoreUnavailable => {
                let mut c = ClientError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("conversation_store_unavailable"),
                    "The conversation store is unavailable, so `previous_response_id` cannot be looked up right now. Retry shortly."
                        .to_string(),
                );
                c.should_retry = Some(true);
                c.retry_after = Some("1".to_string());
                c
            }
            ApiError::RemoteUrlRefused { message, param } => {
                let mut c = ClientError::new(StatusCode::BAD_REQUEST, "invalid_request_error", Some("remote_url_refused"), message.clone());
                c.body.error.param = Some(param.clone());
                c.no_retry()
            }
            ApiError::Busy => {
                let mut c = ClientError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("server_busy"),
                    "The server is reading as many large requests as it can hold at once. Retry shortly."
                        .to_string(),
                );
                c.should_retry = Some(true);
                c.retry_after = Some("1".to_string());
                c
            }
            ApiError::SpeechDisabled { model, speech_to_text } => {
                let (feature, endpoint) = if *speech_to_text {
                    ("Speech to Text", "transcriptions")
                } else {
                    ("Text to Speech", "speech")
                };
                let mut c = ClientError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some(if *speech_to_text {
                        "speech_to_text_disabled"
                    } else {
                        "text_to_speech_disabled"
                    }),
                    format!(
                        "The Dify app behind model `{model}` has {feature} turned off, so /v1/audio/{endpoint} cannot use it: turn it on in the app's Features in Dify (and publish), or use another model."
                    ),
                );
                c.body.error.param = Some("model".to_string());
                c.no_retry()
            }
            ApiError::NoCounterpart { path, why } => ClientError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("unknown_url"),
                format!("{path} is not available: {why}"),
            )
            .no_retry(),
            ApiError::NotSupported { what, why } => ClientError::new(
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request_error",
                Some("unsupported"),
                format!("{what} is not supported by this proxy: {why}"),
            )
            .no_retry(),
        }
    }
}

/// serde_json's message without its trailing " at line L column C": a client sees the
/// field path instead, a configuration problem prints the position its own way.
pub fn json_error_text(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_text_drops_only_the_position() {
        let e = serde_json::from_str::<serde_json::Value>("[1,").unwrap_err();
        assert_eq!(
            e.to_string(),
            "EOF while parsing a value at line 1 column 3"
        );
        assert_eq!(json_error_text(&e), "EOF while parsing a value");
    }
}
