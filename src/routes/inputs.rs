//! The app's inputs at the HTTP edge: the required ones are checked against the app's
//! form (`/parameters`, cached) before a new conversation starts. The merge itself is
//! pure, in `plan::inputs`.

use serde_json::{Map, Value};

use crate::config::ModelConfig;
use crate::error::ApiError;
use crate::plan::inputs;
use crate::state::AppState;

/// Refuses a new conversation that lacks a required input, before Dify is called. A
/// continued conversation needs none: Dify keeps the inputs it started with. When Dify
/// cannot say what the form is, the proxy does not check and Dify answers for itself.
pub(super) async fn check_required(
    state: &AppState,
    model: &ModelConfig,
    name: &str,
    merged: &Map<String, Value>,
) -> Result<(), ApiError> {
    let app_key = model.app_key.expose();
    match state.parameters().get(state.dify(), app_key, name).await {
        Some(parameters) => inputs::check_required(name, &parameters.user_input_form, merged),
        None => Ok(()),
    }
}
