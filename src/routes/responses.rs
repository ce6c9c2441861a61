//! `POST /v1/responses`: check the request, find the conversation it continues (its
//! `previous_response_id`, else as chat completions do), start the Dify answer, then
//! stream it as Responses events or answer with one response object.

use std::time::Instant;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::answer::AnswerRun;
use super::blocking::complete_answer;
use super::chat::{Gone, USER_HEADER, allowed_model, app_mode, chat_id, start_answer};
use super::extract::OpenAiJson;
use super::files::attach_files;
use super::inputs;
use super::stream::stream_answer;
use crate::answer::DifyDecoder;
use crate::config::{ModelAccess, Tenant};
use crate::conversation::keys::response_key;
use crate::conversation::link::Previous;
use crate::conversation::{ConversationLink, Thread, thread_for};
use crate::dify::RunningTask;
use crate::error::ApiError;
use crate::openai::responses::{ResponseEncoder, ResponseMeta, ResponsesRequest, response_object};
use crate::plan::responses::{check_supported, to_turn};
use crate::plan::unsupported;
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<ModelAccess>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let config = state.config();
    let model = allowed_model(&state, &access, &request.model)?;
    check_supported(&request)?;
    unsupported::check_responses(&request)?;
    if let Some(Value::Array(items)) = &request.input
        && items.len() > config.max_messages
    {
        return Err(ApiError::bad_request(
            format!(
                "`input` has {} items; this server accepts at most {}.",
                items.len(),
                config.max_messages
            ),
            Some("input".into()),
        ));
    }
    let previous = request
        .previous_response_id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty());
    let user_header = headers.get(USER_HEADER).and_then(|v| v.to_str().ok());
    let mut turn = to_turn(&request, user_header, previous.is_some())?;
    turn.user = tenant.dify_user(std::mem::take(&mut turn.user));
    let in_metadata = request.metadata.as_ref().and_then(|m| m.get("inputs"));
    turn.inputs = inputs::merged(model, &request.model, request.inputs.as_ref(), in_metadata)?;
    let mode = app_mode(&state, &request.model, model).await?;
    if previous.is_some() && !mode.has_conversations() {
        return Err(ApiError::bad_request(
            format!(
                "Model `{}` is a Dify {} app, which keeps no conversations: `previous_response_id` cannot continue one. Send the earlier turns in `input` instead.",
                request.model,
                mode.label()
            ),
            Some("previous_response_id".into()),
        ));
    }
    attach_files(&state, model, mode, &request.model, &mut turn).await?;
    let scoped = |id: &str| response_key(tenant.as_str(), &request.model, &turn.user, id);

    let identity = turn.identity();
    let (thread, gone) = match previous {
        Some(id) => (
            Thread::Response { key: scoped(id) },
            Gone::Refuse(ApiError::PreviousResponseNotFound { id: id.to_string() }),
        ),
        // One-shot apps: every request carries its whole history, nothing is stored.
        None if !mode.has_conversations() => (Thread::Untracked, Gone::StartOver),
        None => {
            let from_body = request.metadata.as_ref().and_then(|m| m.get("chat_id"));
            let chat_id = chat_id(&headers, &state, from_body.and_then(|v| v.as_str()));
            let thread = thread_for(
                tenant.as_str(),
                &request.model,
                &turn.user,
                &identity,
                chat_id,
                &turn.history,
                &turn.message,
                config.history_matching,
            );
            (thread, Gone::StartOver)
        }
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
    let continued = match previous {
        Some(id) => match link.lookup_previous().await {
            Ok(Previous::Found(conversation)) => {
                link.note_continuation();
                Some(conversation)
            }
            Ok(Previous::Busy) => {
                return Err(ApiError::PreviousResponseBusy { id: id.to_string() });
            }
            Ok(Previous::Missing) => {
                return Err(ApiError::PreviousResponseNotFound { id: id.to_string() });
            }
            Err(e) => {
                tracing::warn!(model = %request.model, error = %e, "could not look up previous_response_id");
                return Err(ApiError::StoreUnavailable);
            }
        },
        None => link.lookup().await,
    };
    if continued.is_none() {
        inputs::check_required(&state, model, mode, &request.model, &turn.inputs).await?;
    }

    // Random, never derived from Dify's ids: holding one is the only way to continue it.
    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let store = request.store != Some(false);
    if store && mode.has_conversations() {
        link.record_response(scoped(&id));
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
        gone,
    )
    .await?;

    let meta = ResponseMeta {
        id,
        item_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        reasoning_id: format!("rs_{}", uuid::Uuid::new_v4().simple()),
        created_at: crate::unix_now(),
        model: request.model.clone(),
        instructions: request.instructions.clone(),
        previous_response_id: previous.map(str::to_string),
        store,
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_output_tokens,
        parallel_tool_calls: request.parallel_tool_calls,
        metadata: request.metadata.clone().unwrap_or_default(),
    };
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
    Ok(if request.stream.unwrap_or(false) {
        stream_answer(upstream, ResponseEncoder::new(meta), run)
    } else {
        complete_answer(upstream, run, |answer, content| {
            let reasoning = answer.take_reasoning();
            response_object(&meta, answer, content, reasoning)
        })
        .await
    })
}

/// Retrieving, deleting, cancelling or listing the input of a stored response.
pub async fn not_supported() -> ApiError {
    ApiError::NotSupported {
        what: "Retrieving, deleting or cancelling a stored response".to_string(),
        why: "OpenDify stores no answer text (Dify holds the conversation). Continue a response with `previous_response_id` on POST /v1/responses.".to_string(),
    }
}
