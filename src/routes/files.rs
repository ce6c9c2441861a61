//! The upload step between planning a turn and starting its answer: the turn's inline
//! files go to Dify (`POST /files/upload`), all at once, as the turn's end user, who alone
//! may attach them; the turn then refers to them by upload id.

use futures_util::future::try_join_all;

use crate::error::ApiError;
use crate::plan::Turn;
use crate::plan::files::{Source, check_total};
use crate::state::AppState;

/// Uploads the turn's inline files. The first refusal fails the request (and stops the
/// uploads still running; finished ones stay in Dify, unused).
pub(super) async fn upload_files(
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
