//! `POST /v1/chat/completions`: check the request, find its conversation, start the Dify
//! answer, then stream it as chunks or answer with one completion.

use std::time::Instant;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::answer::AnswerRun;
use super::blocking::complete_answer;
use super::extract::OpenAiJson;
use super::files::attach_files;
use super::inputs;
use super::models::visible_models;
use super::stream::stream_answer;
use crate::answer::DifyDecoder;
use crate::apps::AppMode;
use crate::config::{ModelAccess, ModelConfig, Tenant};
use crate::conversation::{ConversationLink, Thread, thread_for};
use crate::dify::{DifyError, EventStream, RunningTask};
use crate::error::ApiError;
use crate::openai::ChatCompletionRequest;
use crate::openai::chat::{ChunkEncoder, ChunkMeta, completion};
use crate::plan::{Turn, to_turn, unsupported};
use crate::state::AppState;

/// Open WebUI's forwarded user header (sent with ENABLE_FORWARD_USER_INFO_HEADERS=true).
pub(super) const USER_HEADER: &str = "x-openwebui-user-id";

pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<ModelAccess>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let config = state.config();
    let model = allowed_model(&state, &access, &request.model)?;
    unsupported::check_chat(&request)?;
    if request.messages.len() > config.max_messages {
        return Err(ApiError::bad_request(
            format!(
                "`messages` has {} entries; this server accepts at most {}.",
                request.messages.len(),
                config.max_messages
            ),
            Some("messages".into()),
        ));
    }
    let user_header = headers.get(USER_HEADER).and_then(|v| v.to_str().ok());
    let mut turn = to_turn(&request, user_header)?;
    turn.user = tenant.dify_user(std::mem::take(&mut turn.user));
    let in_metadata = request.metadata.as_ref().and_then(|m| m.get("inputs"));
    turn.inputs = inputs::merged(model, &request.model, request.inputs.as_ref(), in_metadata)?;
    let mode = app_mode(&state, &request.model, model).await?;
    attach_files(&state, model, mode, &request.model, &mut turn).await?;

    let chat_id = chat_id(&headers, &state, metadata_str(&request, "chat_id"));
    let identity = turn.identity();
    let thread = if mode.has_conversations() {
        thread_for(
            tenant.as_str(),
            &request.model,
            &turn.user,
            &identity,
            chat_id,
            &turn.history,
            &turn.message,
            config.history_matching,
        )
    } else {
        // One-shot apps: every request carries its whole history, nothing is stored.
        Thread::Untracked
    };
    let mut link = ConversationLink::new(
        state.store(),
        thread,
        tenant.as_str(),
        &request.model,
        &turn.user,
        &identity,
        &turn.history,
    );
    let continued = link.lookup().await;
    if continued.is_none() {
        inputs::check_required(&state, model, mode, &request.model, &turn.inputs).await?;
    }

    let app_key = model.app_key.expose();
    let upstream = start_answer(
        &state,
        model,
        mode,
        &request.model,
        &turn,
        &mut link,
        continued,
        Gone::StartOver,
    )
    .await?;

    let stream = request.stream.unwrap_or(false);
    let meta = ChunkMeta {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: crate::unix_now(),
        model: request.model.clone(),
        include_usage: stream
            && request
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
    };
    let keep_text = link.wants_answer_text();
    let run = AnswerRun {
        decoder: DifyDecoder::new(&request.model, state.dify().base().clone())
            .for_app(mode, model.output_variable.as_deref())
            .with_options(state.config().answer),
        task: RunningTask::new(state.dify().clone(), app_key.to_string(), turn.user.clone())
            .of_mode(mode),
        link,
        turn,
        model: request.model,
        started,
        recorded: false,
    };
    Ok(if stream {
        let encoder = ChunkEncoder::new(meta).keep_visible_text(keep_text);
        stream_answer(upstream, encoder, run)
    } else {
        complete_answer(upstream, run, |answer, content| {
            let reasoning = answer.take_reasoning();
            completion(&meta, answer, content, reasoning)
        })
        .await
    })
}

/// The configured model `name`, if this caller may use it.
pub(super) fn allowed_model<'a>(
    state: &'a AppState,
    access: &ModelAccess,
    name: &str,
) -> Result<&'a ModelConfig, ApiError> {
    let Some(model) = state.config().models.get(name) else {
        return Err(ApiError::ModelNotFound {
            model: name.to_string(),
            available: visible_models(state, access),
        });
    };
    if !access.allows(name) {
        return Err(ApiError::ModelNotAllowed {
            model: name.to_string(),
        });
    }
    Ok(model)
}

/// The kind of app behind `name`: configured, known since cold start, or asked of Dify
/// now. Fails as Dify's answer would (a key rejected at cold start at once).
pub(super) async fn app_mode(
    state: &AppState,
    name: &str,
    model: &ModelConfig,
) -> Result<AppMode, ApiError> {
    state
        .apps()
        .mode_for(state.dify(), name, model)
        .await
        .map_err(|error| {
            tracing::warn!(model = name, error = %error.summary(), "could not learn the Dify app's kind");
            ApiError::Dify {
                model: name.to_string(),
                error,
            }
        })
}

/// The client's chat id: the configured header (Open WebUI's by default), else the one
/// the body names (`metadata.chat_id`).
pub(super) fn chat_id<'a>(
    headers: &'a HeaderMap,
    state: &AppState,
    from_body: Option<&'a str>,
) -> Option<&'a str> {
    headers
        .get(&state.config().chat_id_header)
        .and_then(|v| v.to_str().ok())
        .or(from_body)
}

fn metadata_str<'a>(request: &'a ChatCompletionRequest, field: &str) -> Option<&'a str> {
    request.metadata.as_ref()?.get(field)?.as_str()
}

/// What to do when Dify no longer has the conversation a request continues.
pub(super) enum Gone {
    /// Start a new one with the folded history (chat ids, history digests).
    StartOver,
    /// Refuse: the client named this conversation (`previous_response_id`) and Dify
    /// holds its context, which a new conversation would not have.
    Refuse(ApiError),
}

/// Sends the turn to Dify (continuing `continued`, if any) and returns its event stream
/// once Dify has accepted it: before that, every failure is an HTTP error.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_answer(
    state: &AppState,
    app: &ModelConfig,
    mode: AppMode,
    model: &str,
    turn: &Turn,
    link: &mut ConversationLink,
    continued: Option<String>,
    gone: Gone,
) -> Result<EventStream, ApiError> {
    let app_key = app.app_key.expose();
    if !mode.has_conversations() {
        let text = super::inputs::query_variable(state, app, model).await;
        let request = turn.run_request(&text);
        let result = state.dify().run_stream(app_key, mode, &request).await;
        return result.map_err(|error| refused(model, error));
    }
    let mut dify_request = turn.chat_message(continued, link.resend_system());
    if link.is_detached() {
        dify_request.auto_generate_name = Some(false);
    }
    let mut result = state.dify().chat_stream(app_key, &dify_request).await;
    if dify_request.conversation_id.is_some() && matches!(&result, Err(e) if conversation_gone(e)) {
        link.forget().await;
        match gone {
            Gone::Refuse(error) => {
                tracing::info!(
                    model,
                    "Dify no longer has the conversation of the previous response"
                );
                return Err(error);
            }
            Gone::StartOver => {
                // Deleted or expired in Dify: start over once, with the folded history,
                // before anything has reached the client.
                tracing::info!(
                    model,
                    "Dify no longer has the stored conversation; starting a new one"
                );
                dify_request = turn.chat_message(None, false);
                result = state.dify().chat_stream(app_key, &dify_request).await;
            }
        }
    }
    if result.is_err() {
        // Dify never started this turn: the conversation holds what it held.
        link.release().await;
    }
    result.map_err(|error| refused(model, error))
}

fn refused(model: &str, error: DifyError) -> ApiError {
    tracing::warn!(model, error = %error.summary(), "Dify refused the request");
    ApiError::Dify {
        model: model.to_string(),
        error,
    }
}

/// Dify's answers for a conversation that cannot be continued.
pub(super) fn conversation_gone(error: &DifyError) -> bool {
    matches!(error, DifyError::Http { status: 404, code, .. } if code == "not_found")
        || matches!(error, DifyError::Http { code, .. } if code == "conversation_completed")
}
