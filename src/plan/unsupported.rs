//! Request parameters a Dify app cannot honour, for both OpenAI APIs. Pure.
//!
//! The rule: refuse only what the client forces and will rely on — a tool call it
//! requires, structured output it will parse, log probabilities, several choices, audio.
//! A Dify app runs its own prompt, model settings and tools, so such a request would get a
//! plain text answer and fail later in a confusing way. Everything else is ignored: a
//! `tools` list the client does not force (Open WebUI sends its built-in tools on every
//! turn and never expects a call), sampling settings, token limits, `stop`, `seed`.

use serde_json::Value;

use crate::error::ApiError;
use crate::openai::ChatCompletionRequest;
use crate::openai::responses::ResponsesRequest;

/// Why a Dify app cannot do what the client forces, appended to every refusal.
const WHY: &str = "a Dify app runs its own prompt, model settings and tools";

/// Chat completions: refuses forced tool calls, structured output, log probabilities and
/// audio output, naming the parameter.
pub fn check_chat(request: &ChatCompletionRequest) -> Result<(), ApiError> {
    if let Some(choice) = &request.tool_choice
        && forces_a_tool(choice)
    {
        return Err(forced_tool("tool_choice", choice));
    }
    // The deprecated form: `function_call: {"name": ...}` forces that function.
    if let Some(call) = &request.function_call
        && call.is_object()
    {
        return Err(forced_tool("function_call", call));
    }
    if let Some(kind) = structured(request.response_format.as_ref()) {
        return Err(structured_output("response_format", kind));
    }
    if request.logprobs.as_ref().and_then(Value::as_bool) == Some(true) {
        return Err(logprobs("logprobs"));
    }
    if asks_top_logprobs(request.top_logprobs.as_ref()) {
        return Err(logprobs("top_logprobs"));
    }
    let audio_modality = request
        .modalities
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v.as_str() == Some("audio")));
    if audio_modality {
        return Err(audio("modalities"));
    }
    if request.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(audio("audio"));
    }
    Ok(())
}

/// The Responses API: the same rule for its spelling of the same parameters.
pub fn check_responses(request: &ResponsesRequest) -> Result<(), ApiError> {
    if let Some(choice) = &request.tool_choice
        && forces_a_tool(choice)
    {
        return Err(forced_tool("tool_choice", choice));
    }
    let format = request
        .text
        .as_ref()
        .and_then(|t| t.get("format"))
        .filter(|f| !f.is_null());
    if let Some(kind) = structured(format) {
        return Err(structured_output("text.format", kind));
    }
    if asks_top_logprobs(request.top_logprobs.as_ref()) {
        return Err(logprobs("top_logprobs"));
    }
    let include_logprobs = request
        .include
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|i| {
            i.iter()
                .any(|v| v.as_str().is_some_and(|s| s.ends_with("logprobs")))
        });
    if include_logprobs {
        return Err(logprobs("include"));
    }
    Ok(())
}

/// `"required"`, or an object naming a tool (`{"type":"function",...}`, a hosted or custom
/// tool), forces a call; `"auto"`, `"none"` and `allowed_tools` in `auto` mode do not.
fn forces_a_tool(choice: &Value) -> bool {
    match choice {
        Value::String(s) => s == "required",
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("allowed_tools") => {
                let mode = o
                    .get("mode")
                    .or_else(|| o.get("allowed_tools").and_then(|a| a.get("mode")));
                mode.and_then(Value::as_str) == Some("required")
            }
            _ => true,
        },
        _ => false,
    }
}

/// The structured-output type asked for, if any: `json_schema` or `json_object`.
fn structured(format: Option<&Value>) -> Option<&str> {
    let kind = match format? {
        Value::Object(o) => o.get("type")?.as_str()?,
        // An SDK's `response_format: "json_object"` shorthand.
        Value::String(s) => s.as_str(),
        _ => return None,
    };
    matches!(kind, "json_schema" | "json_object").then_some(kind)
}

fn asks_top_logprobs(value: Option<&Value>) -> bool {
    value.and_then(Value::as_f64).is_some_and(|n| n > 0.0)
}

fn refusal(param: &str, message: String) -> ApiError {
    ApiError::bad_request(message, Some(param.to_string()))
}

fn forced_tool(param: &str, choice: &Value) -> ApiError {
    let named = choice
        .get("name")
        .or_else(|| choice.get("function").and_then(|f| f.get("name")))
        .and_then(Value::as_str)
        .map(|n| format!(" (`{n}`)"))
        .unwrap_or_default();
    refusal(
        param,
        format!(
            "`{param}` forces a call of your tool{named}, but this model cannot call the client's tools: {WHY}, so it only ever answers with text. Send `tool_choice: \"auto\"` (or no `tool_choice`), or give the tool to the Dify app."
        ),
    )
}

fn structured_output(param: &str, kind: &str) -> ApiError {
    refusal(
        param,
        format!(
            "`{param}` asks for structured output (`{kind}`), which this model cannot guarantee: {WHY}, so its answer is free text. Ask for plain text, or make the Dify app answer in the format you need."
        ),
    )
}

fn logprobs(param: &str) -> ApiError {
    refusal(
        param,
        format!(
            "`{param}` asks for log probabilities, which this model cannot return: {WHY}, and Dify does not pass them on. Send the request without it."
        ),
    )
}

fn audio(param: &str) -> ApiError {
    refusal(
        param,
        format!(
            "`{param}` asks for audio output, which this model cannot return: {WHY}, and it answers with text. Ask for text only."
        ),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(extra: Value) -> Result<(), ApiError> {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        check_chat(&serde_json::from_value(body).unwrap())
    }

    fn responses(extra: Value) -> Result<(), ApiError> {
        let mut body = json!({"model": "m", "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        check_responses(&serde_json::from_value(body).unwrap())
    }

    fn refused_param(result: Result<(), ApiError>) -> String {
        match result {
            Err(ApiError::BadRequest {
                param: Some(param),
                message,
            }) => {
                assert!(message.contains("Dify app"), "{message}");
                param
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}})
    }

    #[test]
    fn chat_parameters_a_client_relies_on_are_refused_by_name() {
        let cases = [
            (
                json!({"tools": [weather_tool()], "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
                "tool_choice",
            ),
            (
                json!({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}}),
                "tool_choice",
            ),
            (
                json!({"functions": [{"name": "f"}], "function_call": {"name": "f"}}),
                "function_call",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "Person", "schema": {}}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (
                json!({"audio": {"voice": "alloy", "format": "wav"}}),
                "audio",
            ),
        ];
        for (extra, param) in cases {
            assert_eq!(refused_param(chat(extra.clone())), param, "{extra}");
        }
    }

    #[test]
    fn a_forced_tool_is_named_in_the_message() {
        let Err(ApiError::BadRequest { message, .. }) =
            chat(json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
        else {
            panic!()
        };
        assert!(message.contains("`get_weather`"), "{message}");
    }

    #[test]
    fn chat_parameters_dify_owns_are_ignored() {
        // Open WebUI's shape: its built-in tools on every turn, no tool_choice.
        let open_webui = json!({
            "tools": [weather_tool(), {"type": "function", "function": {"name": "search_web", "parameters": {}}}],
            "stream": true, "temperature": 0.8, "top_p": 0.9, "max_tokens": 512,
            "max_completion_tokens": 512, "stop": ["\n\n"], "seed": 7, "presence_penalty": 0.1,
            "frequency_penalty": 0.2, "parallel_tool_calls": true, "reasoning_effort": "low",
            "store": false, "service_tier": "auto", "logprobs": false, "top_logprobs": 0,
            "modalities": ["text"], "audio": null, "response_format": {"type": "text"},
        });
        chat(open_webui).unwrap();
        chat(json!({"tools": [weather_tool()], "tool_choice": "auto"})).unwrap();
        chat(json!({"tools": [weather_tool()], "tool_choice": "none"})).unwrap();
        chat(json!({"function_call": "auto"})).unwrap();
        chat(json!({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}))
            .unwrap();
    }

    #[test]
    fn responses_parameters_follow_the_same_rule() {
        let tool = json!({"type": "function", "name": "get_weather", "parameters": {}});
        let cases = [
            (
                json!({"tools": [tool], "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                json!({"tools": [tool], "tool_choice": {"type": "function", "name": "get_weather"}}),
                "tool_choice",
            ),
            (
                json!({"text": {"format": {"type": "json_schema", "name": "P", "schema": {}}}}),
                "text.format",
            ),
            (
                json!({"text": {"format": {"type": "json_object"}}}),
                "text.format",
            ),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (
                json!({"include": ["message.output_text.logprobs"]}),
                "include",
            ),
        ];
        for (extra, param) in cases {
            assert_eq!(refused_param(responses(extra.clone())), param, "{extra}");
        }
        // A function tool the client does not force: ignored, as for chat completions.
        responses(json!({"tools": [tool], "tool_choice": "auto", "parallel_tool_calls": true}))
            .unwrap();
        responses(json!({"tools": [tool]})).unwrap();
        responses(
            json!({"text": {"format": {"type": "text"}, "verbosity": "low"}, "include": [],
                         "reasoning": {"effort": "low"}, "top_logprobs": 0, "store": false}),
        )
        .unwrap();
    }
}
