//! Dify's failures, before or during an answer, as the client sees them: one table of
//! status, code, message and retry hints. Pure.

use http::StatusCode;

use super::ClientError;
use super::provider::{self, ProviderFailure};
use crate::dify::DifyError;

/// Maps a Dify failure to what the client sees. `started` is true once Dify had begun the
/// run (an in-stream error): retrying would replay it, so the SDKs are told not to.
pub fn from_dify(model: &str, error: &DifyError, started: bool) -> ClientError {
    let c = match error {
        DifyError::Unreachable(_) => ClientError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("dify_unreachable"),
            "The Dify service could not be reached. Try again later.".to_string(),
        ),
        // Dify may already be running the request it was slow to acknowledge: a retry
        // could run it twice.
        DifyError::Timeout(t) => ClientError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("dify_timeout"),
            format!("Dify did not start answering within {} s.", t.as_secs()),
        )
        .no_retry(),
        // A wrong DIFY_API_BASE (http for https, a missing /v1): retrying cannot help.
        DifyError::Redirect { status, location } => ClientError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("dify_redirect"),
            format!(
                "Dify answered a redirect (HTTP {status} to {location}), which the proxy does not follow; set DIFY_API_BASE to the final URL."
            ),
        )
        .no_retry(),
        DifyError::Http {
            status,
            code,
            message,
            retry_after,
            endpoint,
        } => {
            let mut c = from_dify_code(model, Some(*status), code, message, endpoint);
            if c.status == StatusCode::TOO_MANY_REQUESTS
                && c.should_retry != Some(false)
                && retry_after.is_some()
            {
                c.retry_after = retry_after.clone();
            }
            c
        }
        DifyError::Event {
            code,
            status,
            message,
        } => from_dify_code(model, *status, code, message, ""),
        DifyError::Stream(message) => ClientError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("dify_stream_error"),
            format!("The answer from Dify was interrupted: {message}."),
        ),
    };
    if started { c.no_retry() } else { c }
}

/// The request reached its time limit (`limit`, as [`crate::deadline::Deadline`] names
/// it) before its answer started. Dify may be running it already: no automatic retry.
pub fn deadline_reached(limit: &str) -> ClientError {
    ClientError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "server_error",
        Some("request_time_limit"),
        format!("The request reached {limit} before Dify's answer started."),
    )
    .no_retry()
}

/// `endpoint`: the path that answered, empty for an in-stream error.
fn from_dify_code(
    model: &str,
    status: Option<u16>,
    code: &str,
    message: &str,
    endpoint: &str,
) -> ClientError {
    use StatusCode as S;
    // Dify's messages may or may not end in a full stop; ours follow them.
    let quoted = match message.trim_end() {
        "" => String::new(),
        m if m.ends_with(['.', '!', '?']) => format!(" Dify says: {m}"),
        m => format!(" Dify says: {m}."),
    };
    match (status, code) {
        (_, "unauthorized") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_app_key_rejected"),
            format!(
                "Dify rejected the app key configured for model `{model}`.{quoted} The proxy's MODEL_CONFIG needs a valid key for this app; your own API key is fine."
            ),
        )
        .no_retry(),
        (_, "forbidden") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_app_unavailable"),
            format!("The Dify app behind model `{model}` is not available.{quoted}"),
        )
        .no_retry(),
        (_, "not_chat_app" | "app_unavailable" | "not_workflow_app") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_app_mode_unsupported"),
            format!(
                "Model `{model}` points to a Dify app of another kind than the request was sent for: check its `mode` in MODEL_CONFIG, or leave `mode` out so the proxy asks Dify.{quoted}"
            ),
        )
        .no_retry(),
        (_, "provider_quota_exceeded" | "rate_limit_error") => ClientError::new(
            S::TOO_MANY_REQUESTS,
            "insufficient_quota",
            Some("insufficient_quota"),
            format!("The Dify app behind model `{model}` has run out of quota.{quoted}"),
        )
        .no_retry(),
        (_, "too_many_requests") => ClientError::new(
            S::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            Some("rate_limit_exceeded"),
            format!("The Dify app behind model `{model}` is busy.{quoted}"),
        ),
        (_, "provider_not_initialize" | "model_currently_not_support") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_model_unavailable"),
            format!("The model provider of the Dify app behind `{model}` is not set up.{quoted}"),
        )
        .no_retry(),
        (_, "completion_request_error") => provider_failure(model, message, &quoted),
        // `POST /files/upload`: the route names the file (`param`) in front of these.
        (_, "file_too_large") => ClientError::new(
            S::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("file_too_large"),
            format!(
                "Dify refused the file as too large (its upload limit for this type of file is lower than Dify's default).{quoted}"
            ),
        )
        .no_retry(),
        (_, "unsupported_file_type") => ClientError::new(
            S::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            Some("unsupported_file_type"),
            format!("Dify does not accept this type of file.{quoted}"),
        )
        .no_retry(),
        (_, "file_extension_blocked") => ClientError::new(
            S::BAD_REQUEST,
            "invalid_request_error",
            Some("file_extension_blocked"),
            format!("Dify does not accept files with this extension.{quoted}"),
        )
        .no_retry(),
        // `/audio-to-text` and `/text-to-audio` (the routes check most of these first).
        (_, "invalid_param") if is_speech_off(message).is_some() => {
            let speech_to_text = is_speech_off(message) == Some(true);
            let mut c = ClientError::from(&super::ApiError::SpeechDisabled {
                model: model.to_string(),
                speech_to_text,
            });
            c.body.error.message.push_str(&quoted);
            c
        }
        (_, "unsupported_audio_type") => ClientError::new(
            S::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            Some("unsupported_file_type"),
            format!("Dify does not accept this type of audio.{quoted}"),
        )
        .no_retry(),
        (_, "audio_too_large") => ClientError::new(
            S::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("file_too_large"),
            format!("Dify refused the audio as too large.{quoted}"),
        )
        .no_retry(),
        (_, "provider_not_support_speech_to_text") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_model_unavailable"),
            format!(
                "The Dify workspace of the app behind `{model}` has no speech-to-text model set up (Settings → Model Provider → System Model Settings).{quoted}"
            ),
        )
        .no_retry(),
        // The proxy builds the upload: these mean Dify and the proxy disagree on its form.
        (
            _,
            "no_file_uploaded"
            | "too_many_files"
            | "filename_not_exists_error"
            | "no_audio_uploaded"
            | "bad_request_key_error",
        ) => {
            ClientError::new(
                S::BAD_GATEWAY,
                "server_error",
                Some("dify_upload_rejected"),
                format!("Dify did not take the proxy's upload of the file ({code}).{quoted}"),
            )
            .no_retry()
        }
        (_, "not_found") if message.contains("Conversation") => ClientError::new(
            S::NOT_FOUND,
            "invalid_request_error",
            Some("conversation_not_found"),
            format!("Dify no longer has this conversation.{quoted}"),
        ),
        (Some(404), _) => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_endpoint_not_found"),
            format!(
                "Dify answered 404 for {}: check DIFY_API_BASE (it usually ends in /v1).",
                if endpoint.is_empty() { "the request" } else { endpoint }
            ),
        )
        .no_retry(),
        (_, "invalid_param") if message.starts_with("Run failed") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_workflow_failed"),
            format!("The Dify chatflow behind model `{model}` failed.{quoted}"),
        ),
        (_, "workflow_failed") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_workflow_failed"),
            format!("The Dify workflow behind model `{model}` failed.{quoted}"),
        ),
        (_, "workflow_stopped") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_workflow_stopped"),
            format!(
                "The Dify workflow run behind model `{model}` was stopped before it finished.{quoted}"
            ),
        ),
        // The message is ours: why the outputs give no answer.
        (_, "workflow_no_output") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_workflow_no_output"),
            format!("The Dify workflow behind model `{model}` finished with no answer: {message}"),
        ),
        (_, "human_input_required") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_human_input_required"),
            format!(
                "The Dify app behind model `{model}` paused for human input (a Human Input node), which an OpenAI client cannot give; the run was stopped. Use the app in Dify, or remove the node."
            ),
        ),
        (_, "invalid_param" | "conversation_completed") => ClientError::new(
            S::BAD_REQUEST,
            "invalid_request_error",
            Some(code),
            format!("Dify rejected the request.{quoted}"),
        ),
        (Some(413), _) => ClientError::new(
            S::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some(if code.is_empty() { "request_too_large" } else { code }),
            format!("Dify rejected the request as too large.{quoted}"),
        ),
        (_, "") => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_bad_gateway"),
            format!(
                "Dify answered HTTP {} with a body that is not a Dify API error: check DIFY_API_BASE and any gateway in front of Dify.",
                status.map_or_else(|| "error".to_string(), |s| s.to_string())
            ),
        ),
        (Some(400..=499), _) => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_rejected_request"),
            format!("Dify rejected the request ({code}).{quoted}"),
        ),
        _ => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_server_error"),
            format!("Dify failed to answer ({code}).{quoted}"),
        ),
    }
}

/// Dify's `ValueError` texts for an app with a speech feature off: `Some(true)` for
/// speech-to-text, `Some(false)` for text-to-speech.
fn is_speech_off(message: &str) -> Option<bool> {
    match message.trim_end_matches('.') {
        "Speech to text is not enabled" => Some(true),
        "TTS is not enabled" => Some(false),
        _ => None,
    }
}

/// `completion_request_error`: the model provider failed, and what it said decides whether
/// the client should change its request, wait, or stop retrying.
fn provider_failure(model: &str, message: &str, quoted: &str) -> ClientError {
    use StatusCode as S;
    match provider::classify(message) {
        // Clients act on words, not the code: LangChain's ContextOverflowError needs
        // "prompt is too long" (a 400) or "exceeds the context window" (an error event),
        // LiteLLM's ContextWindowExceededError "this model's maximum context length is"
        // (newer versions also "prompt is too long"), Claude Code-style clients "prompt is
        // too long". Dify's text may have none of them.
        ProviderFailure::ContextLength => ClientError::new(
            S::BAD_REQUEST,
            "invalid_request_error",
            Some("context_length_exceeded"),
            format!(
                "Your prompt is too long: this model's maximum context length is exceeded (the conversation exceeds the context window of the model behind `{model}`). Shorten the messages or start a new conversation.{quoted}"
            ),
        )
        .no_retry(),
        ProviderFailure::BadRequest => ClientError::new(
            S::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_request"),
            format!("The model provider of the Dify app behind `{model}` rejected the request.{quoted}"),
        )
        .no_retry(),
        ProviderFailure::Quota => ClientError::new(
            S::TOO_MANY_REQUESTS,
            "insufficient_quota",
            Some("insufficient_quota"),
            format!(
                "The model provider account of the Dify app behind `{model}` has run out of quota or credit.{quoted}"
            ),
        )
        .no_retry(),
        ProviderFailure::RateLimit => {
            let mut c = ClientError::new(
                S::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                Some("rate_limit_exceeded"),
                format!(
                    "The model provider of the Dify app behind `{model}` is rate limiting requests; retry later.{quoted}"
                ),
            );
            c.retry_after = provider::retry_after_seconds(message).map(|s| s.to_string());
            c
        }
        ProviderFailure::Auth => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_provider_auth_error"),
            format!(
                "The model provider rejected the credentials of the Dify app behind `{model}`: they must be fixed in Dify's model provider settings; your own API key is fine.{quoted}"
            ),
        )
        .no_retry(),
        ProviderFailure::Unavailable => ClientError::new(
            S::SERVICE_UNAVAILABLE,
            "server_error",
            Some("dify_provider_unavailable"),
            format!(
                "The model provider of the Dify app behind `{model}` is overloaded or unreachable; retry later.{quoted}"
            ),
        ),
        ProviderFailure::Unknown => ClientError::new(
            S::BAD_GATEWAY,
            "server_error",
            Some("dify_model_error"),
            format!("The model behind the Dify app `{model}` failed.{quoted}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn http(status: u16, code: &str, message: &str) -> DifyError {
        DifyError::Http {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: Some("3".into()),
            endpoint: "/v1/chat-messages".into(),
        }
    }

    /// A failure the decoder reports for a workflow run (no HTTP status).
    fn event(code: &str) -> DifyError {
        DifyError::Event {
            code: code.into(),
            status: None,
            message: "x".into(),
        }
    }

    /// docs/errors.md's table, checked row by row.
    #[test]
    fn dify_error_table() {
        let rows: Vec<(DifyError, u16, &str)> = vec![
            (
                http(401, "unauthorized", "Access token is invalid"),
                502,
                "dify_app_key_rejected",
            ),
            (
                http(403, "forbidden", "The app's API service has been disabled."),
                502,
                "dify_app_unavailable",
            ),
            (
                http(400, "not_chat_app", "x"),
                502,
                "dify_app_mode_unsupported",
            ),
            (
                http(400, "app_unavailable", "x"),
                502,
                "dify_app_mode_unsupported",
            ),
            (
                http(400, "invalid_param", "query is required"),
                400,
                "invalid_param",
            ),
            (
                http(400, "invalid_param", "Run failed: boom"),
                502,
                "dify_workflow_failed",
            ),
            (
                http(400, "provider_quota_exceeded", "x"),
                429,
                "insufficient_quota",
            ),
            (
                http(429, "rate_limit_error", "quota"),
                429,
                "insufficient_quota",
            ),
            (
                http(429, "too_many_requests", "busy"),
                429,
                "rate_limit_exceeded",
            ),
            (
                http(400, "provider_not_initialize", "x"),
                502,
                "dify_model_unavailable",
            ),
            (
                http(400, "completion_request_error", "x"),
                502,
                "dify_model_error",
            ),
            (
                http(404, "not_found", "Conversation Not Exists."),
                404,
                "conversation_not_found",
            ),
            (
                http(404, "not_found", "The requested URL was not found"),
                502,
                "dify_endpoint_not_found",
            ),
            (http(400, "bad_request", "x"), 502, "dify_rejected_request"),
            (http(413, "file_too_large", ""), 413, "file_too_large"),
            (
                http(415, "unsupported_file_type", "File type not allowed."),
                415,
                "unsupported_file_type",
            ),
            (
                http(400, "file_extension_blocked", "x"),
                400,
                "file_extension_blocked",
            ),
            (
                http(400, "no_file_uploaded", "Please upload your file."),
                502,
                "dify_upload_rejected",
            ),
            (
                http(400, "too_many_files", "Only one file is allowed."),
                502,
                "dify_upload_rejected",
            ),
            (
                http(500, "internal_server_error", "x"),
                502,
                "dify_server_error",
            ),
            (
                http(502, "", "HTTP 502 without a Dify error body"),
                502,
                "dify_bad_gateway",
            ),
            (
                DifyError::Unreachable("refused".into()),
                502,
                "dify_unreachable",
            ),
            (
                DifyError::Timeout(Duration::from_secs(30)),
                504,
                "dify_timeout",
            ),
            (DifyError::Stream("cut".into()), 502, "dify_stream_error"),
            (
                DifyError::Redirect {
                    status: 301,
                    location: "/v1/info".into(),
                },
                502,
                "dify_redirect",
            ),
            (event("workflow_failed"), 502, "dify_workflow_failed"),
            (event("workflow_stopped"), 502, "dify_workflow_stopped"),
            (event("workflow_no_output"), 502, "dify_workflow_no_output"),
            (
                event("human_input_required"),
                502,
                "dify_human_input_required",
            ),
            (
                http(400, "not_workflow_app", "x"),
                502,
                "dify_app_mode_unsupported",
            ),
            (
                http(400, "invalid_param", "TTS is not enabled"),
                400,
                "text_to_speech_disabled",
            ),
            (
                http(400, "invalid_param", "Speech to text is not enabled"),
                400,
                "speech_to_text_disabled",
            ),
            (
                http(400, "invalid_param", "Text is required"),
                400,
                "invalid_param",
            ),
            (
                http(415, "unsupported_audio_type", "Audio type not allowed."),
                415,
                "unsupported_file_type",
            ),
            (
                http(
                    413,
                    "audio_too_large",
                    "Audio size exceeded. Audio size larger than 30 mb",
                ),
                413,
                "file_too_large",
            ),
            (
                http(
                    400,
                    "provider_not_support_speech_to_text",
                    "Provider not support speech to text.",
                ),
                502,
                "dify_model_unavailable",
            ),
            (
                http(400, "no_audio_uploaded", "Please upload your audio."),
                502,
                "dify_upload_rejected",
            ),
            (
                http(400, "bad_request_key_error", "x"),
                502,
                "dify_upload_rejected",
            ),
        ];
        for (error, status, code) in rows {
            let c = from_dify("m", &error, false);
            assert_eq!(c.status.as_u16(), status, "{error:?}");
            assert_eq!(c.body.error.code.as_deref(), Some(code), "{error:?}");
        }
    }

    /// A wrong DIFY_API_BASE shows on whichever endpoint is called first: the message
    /// names the one that answered.
    #[test]
    fn a_404_names_the_endpoint() {
        let mut error = http(404, "", "HTTP 404 without a Dify error body");
        if let DifyError::Http { endpoint, .. } = &mut error {
            *endpoint = "/text-to-audio".into();
        }
        let c = from_dify("m", &error, false);
        assert_eq!(
            c.body.error.message,
            "Dify answered 404 for /text-to-audio: check DIFY_API_BASE (it usually ends in /v1)."
        );
    }

    #[test]
    fn key_rejection_is_never_a_client_401() {
        let c = from_dify(
            "claude",
            &http(401, "unauthorized", "Access token is invalid"),
            false,
        );
        assert_eq!(c.status, StatusCode::BAD_GATEWAY);
        assert!(c.body.error.message.contains("model `claude`"));
        assert_eq!(c.should_retry, Some(false));
    }

    #[test]
    fn dify_messages_read_as_sentences() {
        let c = from_dify(
            "m",
            &http(401, "unauthorized", "Access token is invalid"),
            false,
        );
        assert!(
            c.body
                .error
                .message
                .contains("Dify says: Access token is invalid. The proxy's"),
            "{}",
            c.body.error.message
        );
        let c = from_dify(
            "m",
            &http(403, "forbidden", "The app's API service has been disabled."),
            false,
        );
        assert!(
            c.body
                .error
                .message
                .ends_with("Dify says: The app's API service has been disabled.")
        );
    }

    #[test]
    fn retry_hints() {
        let busy = from_dify("m", &http(429, "too_many_requests", "busy"), false);
        assert_eq!(busy.retry_after.as_deref(), Some("3"));
        assert_eq!(busy.should_retry, None);
        let quota = from_dify("m", &http(429, "rate_limit_error", "quota"), false);
        assert_eq!((quota.retry_after, quota.should_retry), (None, Some(false)));
        let midstream = from_dify("m", &DifyError::Stream("cut".into()), true);
        assert_eq!(midstream.should_retry, Some(false));
    }
}

#[cfg(test)]
mod provider_tests {
    use super::*;

    fn provider(message: &str) -> DifyError {
        DifyError::Http {
            status: 400,
            code: "completion_request_error".into(),
            message: message.into(),
            retry_after: None,
            endpoint: "/v1/chat-messages".into(),
        }
    }

    fn in_stream(message: &str) -> DifyError {
        DifyError::Event {
            code: "completion_request_error".into(),
            status: Some(400),
            message: message.into(),
        }
    }

    /// Message, status, type, code, `should_retry`, `retry_after`.
    type Row = (
        &'static str,
        u16,
        &'static str,
        &'static str,
        Option<bool>,
        Option<&'static str>,
    );

    /// docs/errors.md's provider table: status, type, code, retry hints.
    #[test]
    fn provider_failure_table() {
        let rows: &[Row] = &[
            (
                "[openai] Bad Request Error, Error code: 400 - {'error': {'message': \"This model's maximum context length is 8192 tokens.\", 'code': 'context_length_exceeded'}}",
                400,
                "invalid_request_error",
                "context_length_exceeded",
                Some(false),
                None,
            ),
            (
                "[openai] Bad Request Error, Error code: 400 - {'error': {'message': \"Invalid value for 'temperature'.\"}}",
                400,
                "invalid_request_error",
                "invalid_request",
                Some(false),
                None,
            ),
            (
                "[openai] Rate Limit Error, Error code: 429 - {'error': {'message': 'Rate limit reached for gpt-4o. Please try again in 1.2s.', 'code': 'rate_limit_exceeded'}}",
                429,
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                None,
                Some("2"),
            ),
            (
                "[anthropic] Rate Limit Error, Error code: 429 - {'error': {'type': 'rate_limit_error'}}",
                429,
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                None,
                None,
            ),
            (
                "[openai] Rate Limit Error, Error code: 429 - You exceeded your current quota.",
                429,
                "insufficient_quota",
                "insufficient_quota",
                Some(false),
                None,
            ),
            (
                "[openai] Error: Incorrect API key provided",
                502,
                "server_error",
                "dify_provider_auth_error",
                Some(false),
                None,
            ),
            (
                "[anthropic] Server Unavailable Error, Error code: 529 - {'error': {'type': 'overloaded_error', 'message': 'Overloaded'}}",
                503,
                "server_error",
                "dify_provider_unavailable",
                None,
                None,
            ),
            (
                "[openai] Connection Error, Request timed out.",
                503,
                "server_error",
                "dify_provider_unavailable",
                None,
                None,
            ),
            (
                "[ollama] Error: something odd",
                502,
                "server_error",
                "dify_model_error",
                None,
                None,
            ),
        ];
        for (message, status, kind, code, retry, after) in rows {
            let c = from_dify("m", &provider(message), false);
            assert_eq!(c.status.as_u16(), *status, "{message}");
            assert_eq!(c.body.error.kind, *kind, "{message}");
            assert_eq!(c.body.error.code.as_deref(), Some(*code), "{message}");
            assert_eq!(c.should_retry, *retry, "{message}");
            assert_eq!(c.retry_after.as_deref(), *after, "{message}");
            assert!(c.body.error.message.contains("Dify says: "), "{message}");
        }
    }

    /// Mid-stream the same classification names the error event; a retry would replay the
    /// run, so it is never suggested.
    #[test]
    fn in_stream_provider_errors_keep_their_kind() {
        let c = from_dify(
            "m",
            &in_stream(
                "[anthropic] Bad Request Error, Error code: 400 - prompt is too long: 215332 tokens > 200000 maximum",
            ),
            true,
        );
        assert_eq!(c.body.error.kind, "invalid_request_error");
        assert_eq!(
            c.body.error.code.as_deref(),
            Some("context_length_exceeded")
        );
        assert_eq!(c.should_retry, Some(false));
        let c = from_dify(
            "m",
            &in_stream("[openai] Rate Limit Error, Error code: 429 - Rate limit reached"),
            true,
        );
        assert_eq!(c.body.error.code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(c.should_retry, Some(false));
    }

    /// The words clients match on, whatever the provider said (here Gemini's, which has
    /// none of them), before Dify's own text.
    #[test]
    fn context_overflow_is_worded_for_clients() {
        let c = from_dify(
            "m",
            &provider(
                "[google] Error: 400 The input token count exceeds the maximum number of tokens allowed (1048576).",
            ),
            false,
        );
        let m = &c.body.error.message;
        assert_eq!(
            c.body.error.code.as_deref(),
            Some("context_length_exceeded")
        );
        for words in [
            "prompt is too long",
            "this model's maximum context length is",
            "exceeds the context window",
            "model behind `m`",
        ] {
            assert!(m.contains(words), "{words}: {m}");
        }
        assert!(m.ends_with("Dify says: [google] Error: 400 The input token count exceeds the maximum number of tokens allowed (1048576)."), "{m}");
    }

    /// Dify's own provider codes, next to `completion_request_error`.
    #[test]
    fn dify_provider_codes() {
        for (code, status, client_code) in [
            ("provider_quota_exceeded", 429, "insufficient_quota"),
            ("provider_not_initialize", 502, "dify_model_unavailable"),
            ("model_currently_not_support", 502, "dify_model_unavailable"),
        ] {
            let c = from_dify("m", &http_error(code), false);
            assert_eq!(c.status.as_u16(), status, "{code}");
            assert_eq!(c.body.error.code.as_deref(), Some(client_code), "{code}");
            assert_eq!(c.should_retry, Some(false), "{code}");
        }
    }

    fn http_error(code: &str) -> DifyError {
        DifyError::Http {
            status: 400,
            code: code.into(),
            message: "x".into(),
            retry_after: None,
            endpoint: "/v1/chat-messages".into(),
        }
    }
}
