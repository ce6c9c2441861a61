//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::Json;
use axum::extract::{Extension, Path, State};

use crate::config::ModelAccess;
use crate::error::ApiError;
use crate::openai::{Model, ModelList};
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<ModelAccess>,
) -> Json<ModelList> {
    // BTreeMap keys: already sorted by name. A key with an allow-list sees only its models.
    let data = state
        .config()
        .models
        .keys()
        .filter(|id| access.allows(id))
        .map(|id| Model::new(id, state.started_at()))
        .collect();
    Json(ModelList {
        object: "list".to_string(),
        data,
    })
}

pub async fn get(
    State(state): State<AppState>,
    Extension(access): Extension<ModelAccess>,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    if state.config().models.contains_key(&id) && access.allows(&id) {
        Ok(Json(Model::new(&id, state.started_at())))
    } else {
        Err(ApiError::ModelNotFound {
            model: id,
            available: visible_models(&state, &access),
        })
    }
}

/// The model names this caller may see, for "available models" in error messages.
pub fn visible_models(state: &AppState, access: &ModelAccess) -> Vec<String> {
    state
        .config()
        .models
        .keys()
        .filter(|m| access.allows(m))
        .cloned()
        .collect()
}
