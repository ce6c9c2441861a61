//! The app's inputs at the HTTP edge: the required ones are checked against the app's
//! form (`/parameters`, cached) before a new conversation or a one-shot run starts, and a
//! completion or workflow app's text variable is found there. The rules themselves are
//! pure, in `plan::inputs`.

use serde_json::{Map, Value};

use crate::apps::AppMode;
use crate::config::ModelConfig;
use crate::error::ApiError;
use crate::plan::inputs;
use crate::state::AppState;

/// The request's inputs over the model's defaults, as far as the model lets a request
/// set them (see `plan::inputs::merge`).
pub(super) fn merged(
    model: &ModelConfig,
    name: &str,
    top_level: Option<&Value>,
    in_metadata: Option<&Value>,
) -> Result<Map<String, Value>, ApiError> {
    inputs::merge(
        name,
        &model.inputs,
        &model.request_inputs,
        top_level,
        in_metadata,
    )
}

/// Refuses a new conversation (or a completion/workflow run) that lacks a required input,
/// before Dify is called. A continued conversation needs none: Dify keeps the inputs it
/// started with. The variable the proxy fills with the user's text counts as given. When
/// Dify cannot say what the form is, the proxy does not check and Dify answers for itself.
pub(super) async fn check_required(
    state: &AppState,
    model: &ModelConfig,
    mode: AppMode,
    name: &str,
    merged: &Map<String, Value>,
) -> Result<(), ApiError> {
    let app_key = model.app_key.expose();
    let Some(parameters) = state.parameters().get(state.dify(), app_key, name).await else {
        return Ok(());
    };
    let form = &parameters.user_input_form;
    if mode.has_conversations() {
        return inputs::check_required(name, form, merged);
    }
    let text = inputs::query_variable(model.query_variable.as_deref(), Some(form));
    let mut with_text = merged.clone();
    with_text.insert(text, Value::Bool(true));
    inputs::check_required(name, form, &with_text)
}

/// The input variable a completion or workflow app gets the user's text in (the app's
/// form comes from the cache `check_required` filled).
pub(super) async fn query_variable(state: &AppState, model: &ModelConfig, name: &str) -> String {
    if let Some(configured) = model.query_variable.as_deref() {
        return configured.to_string();
    }
    let app_key = model.app_key.expose();
    let parameters = state.parameters().get(state.dify(), app_key, name).await;
    inputs::query_variable(None, parameters.as_ref().map(|p| &p.user_input_form[..]))
}
