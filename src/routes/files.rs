//! The upload step between planning a turn and starting its answer: the turn's inline
//! files go to Dify (`POST /files/upload`), all at once, as the turn's end user, who alone
//! may attach them; the turn then refers to them by upload id.

use futures_util::future::try_join_all;

use crate::apps::AppMode;
use crate::config::ModelConfig;
use crate::dify::DifyError;
use crate::dify::parameters::FormField;
use crate::error::ApiError;
use crate::plan::Turn;
use crate::plan::files::{Source, check_accepted, check_total, workflow_file_variable};
use crate::plan::remote_url;
use crate::state::AppState;

/// Uploads the turn's inline files. The first refusal fails the request (and stops the
/// uploads still running; finished ones stay in Dify, unused).
async fn upload_files(
    state: &AppState,
    app_key: &str,
    model: &str,
    turn: &mut Turn,
) -> Result<(), ApiError> {
    check_total(&turn.files, state.config().max_request_bytes)?;
    let user = turn.user.as_str();
    let uploads = turn.files.iter().enumerate().filter_map(|(i, file)| {
        let Source::Inline(inline) = &file.source else {
            return None;
        };
        Some(async move {
            let id = state
                .dify()
                .upload(app_key, user, &inline.filename, &inline.mime, &inline.bytes)
                .await
                .map_err(|error| {
                    // The file's position, never its name or content.
                    tracing::warn!(model, part = %file.part, error = %error.summary(), "Dify refused a file upload");
                    ApiError::Upload {
                        model: model.to_string(),
                        param: file.part.clone(),
                        error: Box::new(error),
                    }
                })?;
            Ok::<_, ApiError>((i, id))
        })
    });
    let uploaded = try_join_all(uploads).await?;
    let count = uploaded.len();
    for (i, id) in uploaded {
        // The bytes are no longer needed while the answer runs.
        turn.files[i].source = Source::Uploaded(id);
    }
    if count > 0 {
        tracing::debug!(model, files = count, "uploaded the message's files to Dify");
    }
    Ok(())
}

/// The turn's files, ready for Dify: checked against the app's settings, uploaded, and
/// for a workflow moved into its file input. Before the conversation is claimed, so a
/// refused file leaves the chat as it was.
pub(super) async fn attach_files(
    state: &AppState,
    model: &ModelConfig,
    mode: AppMode,
    name: &str,
    turn: &mut Turn,
) -> Result<(), ApiError> {
    // First: a refused URL must not even cost a `/parameters` call.
    let policy = state.config().remote_file_urls;
    remote_url::check(&turn.files, policy)?;
    remote_url::check_inputs(&turn.inputs, &model.inputs, policy)?;
    let file_variable = check_files(state, model, mode, name, turn).await?;
    upload_files(state, model.app_key.expose(), name, turn).await?;
    if let Some(field) = file_variable {
        turn.files_into_input(&field);
    }
    Ok(())
}

/// Refuses files the app would drop (its file upload off, or the type not allowed), from
/// its `/parameters` (cached); for a workflow, finds the file input variable that takes
/// them. Unknown when Dify cannot say: a chat or completion app then gets the files and
/// Dify decides; a workflow cannot, since the variable is unknown.
async fn check_files(
    state: &AppState,
    model: &ModelConfig,
    mode: AppMode,
    name: &str,
    turn: &Turn,
) -> Result<Option<FormField>, ApiError> {
    if turn.files.is_empty() {
        return Ok(None);
    }
    let parameters = state
        .parameters()
        .get(state.dify(), model.app_key.expose(), name)
        .await;
    match (mode, parameters) {
        (AppMode::Workflow, Some(p)) => {
            workflow_file_variable(name, &p.user_input_form, &turn.files).map(|f| Some(f.clone()))
        }
        (AppMode::Workflow, None) => Err(ApiError::Dify {
            model: name.to_string(),
            error: DifyError::Unreachable(
                "the workflow's input form (/parameters) could not be read, so the file input for the attached files is unknown".to_string(),
            ),
        }),
        (_, Some(p)) => check_accepted(name, &turn.files, &p.file_upload).map(|()| None),
        (_, None) => Ok(None),
    }
}
