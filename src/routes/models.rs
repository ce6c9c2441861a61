//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::Json;
use axum::extract::{Path, State};

use crate::error::ApiError;
use crate::openai::{Model, ModelList};
use crate::state::AppState;

pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    // BTreeMap keys: already sorted by name.
    let data = state
        .config()
        .models
        .keys()
        .map(|id| Model::new(id, state.started_at()))
        .collect();
    Json(ModelList {
        object: "list".to_string(),
        data,
    })
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    if state.config().models.contains_key(&id) {
        Ok(Json(Model::new(&id, state.started_at())))
    } else {
        Err(ApiError::ModelNotFound {
            model: id,
            available: state.config().models.keys().cloned().collect(),
        })
    }
}
