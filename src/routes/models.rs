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
        .map(|id| model(&state, id))
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
        Ok(Json(model(&state, &id)))
    } else {
        Err(ApiError::ModelNotFound {
            model: id,
            available: visible_models(&state, &access),
        })
    }
}

/// One model, with its Dify app's name and description when known.
fn model(state: &AppState, id: &str) -> Model {
    let listing = state.apps().listing(id);
    Model {
        name: listing.name,
        description: listing.description,
        ..Model::new(id, state.started_at())
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
