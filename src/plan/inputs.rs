//! A Dify app's `inputs` (its variables) for one request: the model's configured defaults,
//! overridden by what the request may set, and checked against the app's form. Pure.

use serde_json::{Map, Value};

use crate::dify::parameters::FormField;
use crate::error::ApiError;

/// The inputs to send: `defaults` (the model's `inputs`), then the request's own —
/// `metadata.inputs` (an object, or the object as a JSON string, since OpenAI's metadata
/// values are strings), then a top-level `inputs` object (OpenAI SDKs: `extra_body`). A
/// request may set only the variables in `allowed` (the model's `request_inputs`).
pub fn merge(
    model: &str,
    defaults: &Map<String, Value>,
    allowed: &[String],
    top_level: Option<&Value>,
    in_metadata: Option<&Value>,
) -> Result<Map<String, Value>, ApiError> {
    let mut inputs = defaults.clone();
    let from_metadata = match in_metadata {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Some(o),
            _ => {
                return Err(ApiError::bad_request(
                    "`metadata.inputs` must be a JSON object of the app's input variables, or that object encoded as a JSON string.",
                    Some("metadata.inputs".into()),
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::bad_request(
                "`metadata.inputs` must be a JSON object of the app's input variables, or that object encoded as a JSON string.",
                Some("metadata.inputs".into()),
            ));
        }
    };
    let from_body = match top_level {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`inputs` must be a JSON object of the app's input variables, e.g. {\"topic\": \"tides\"}.",
                Some("inputs".into()),
            ));
        }
    };
    let sources = [
        ("metadata.inputs", from_metadata.as_ref()),
        ("inputs", from_body),
    ];
    for (param, source) in sources {
        let Some(source) = source else { continue };
        for (name, value) in source {
            if !allowed.iter().any(|a| a == name) {
                return Err(not_allowed(model, param, name, allowed));
            }
            inputs.insert(name.clone(), value.clone());
        }
    }
    Ok(inputs)
}

fn not_allowed(model: &str, param: &str, name: &str, allowed: &[String]) -> ApiError {
    let may = if allowed.is_empty() {
        "none may be set by a request".to_string()
    } else {
        format!(
            "a request may set {}",
            allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    ApiError::bad_request(
        format!(
            "`{param}` sets the input `{name}`, which model `{model}` does not let requests set ({may}). To allow it, the proxy's MODEL_CONFIG must list it in the model's \"request_inputs\"."
        ),
        Some(param.to_string()),
    )
}

/// Refuses a new conversation whose inputs lack a variable the app's form requires, as
/// Dify would (a missing, `null` or empty-string value), naming the first one and how to
/// pass it.
pub fn check_required(
    model: &str,
    form: &[FormField],
    inputs: &Map<String, Value>,
) -> Result<(), ApiError> {
    let missing = form.iter().find(|f| {
        f.required
            && match inputs.get(&f.variable) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(_) => false,
            }
    });
    let Some(field) = missing else {
        return Ok(());
    };
    let label = if field.label != field.variable && !field.label.is_empty() {
        format!(" ({})", field.label)
    } else {
        String::new()
    };
    Err(ApiError::bad_request(
        format!(
            "The Dify app behind model `{model}` requires the input `{var}`{label}. Pass it with the request as `\"inputs\": {{\"{var}\": ...}}` (OpenAI SDKs: `extra_body={{\"inputs\": {{\"{var}\": ...}}}}`; the model's \"request_inputs\" must allow it), or give it a default in the model's \"inputs\" in MODEL_CONFIG.",
            var = field.variable,
        ),
        Some("inputs".into()),
    ))
}

/// The input variable a completion or workflow app takes the user's text in: the model's
/// `query_variable`, else the app form's only text field (`text-input` or `paragraph`),
/// else `query`. The one place this is decided.
pub fn query_variable(configured: Option<&str>, form: Option<&[FormField]>) -> String {
    if let Some(name) = configured {
        return name.to_string();
    }
    let mut text_fields = form
        .unwrap_or_default()
        .iter()
        .filter(|f| matches!(f.kind.as_str(), "text-input" | "paragraph"));
    match (text_fields.next(), text_fields.next()) {
        (Some(only), None) => only.variable.clone(),
        _ => "query".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn allowed(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn refusal(r: Result<impl std::fmt::Debug, ApiError>) -> (String, Option<String>) {
        match r {
            Err(ApiError::BadRequest { message, param }) => (message, param),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_then_metadata_then_the_body() {
        let defaults = map(json!({"language": "en", "tone": "dry"}));
        let ok = allowed(&["language", "topic"]);
        assert_eq!(
            merge("m", &defaults, &ok, None, None).unwrap(),
            defaults,
            "no request inputs: the defaults"
        );
        let got = merge(
            "m",
            &defaults,
            &ok,
            Some(&json!({"topic": "tides"})),
            Some(&json!({"language": "de", "topic": "moon"})),
        )
        .unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"language": "de", "tone": "dry", "topic": "tides"})
        );
        // OpenAI's metadata values are strings: the object may come JSON-encoded.
        let got = merge(
            "m",
            &defaults,
            &ok,
            None,
            Some(&json!("{\"language\": \"fr\"}")),
        )
        .unwrap();
        assert_eq!(got["language"], "fr");
        assert_eq!(
            merge("m", &defaults, &ok, Some(&Value::Null), Some(&Value::Null)).unwrap(),
            defaults
        );
    }

    #[test]
    fn a_variable_outside_the_allow_list_is_refused_by_name() {
        let defaults = map(json!({"language": "en"}));
        let (message, param) = refusal(merge(
            "helpdesk",
            &defaults,
            &allowed(&["topic"]),
            Some(&json!({"language": "de"})),
            None,
        ));
        assert_eq!(param.as_deref(), Some("inputs"));
        assert!(
            message.contains("`language`")
                && message.contains("`helpdesk`")
                && message.contains("\"request_inputs\"")
                && message.contains("`topic`"),
            "{message}"
        );
        let (message, param) = refusal(merge(
            "m",
            &defaults,
            &[],
            None,
            Some(&json!({"language": "de"})),
        ));
        assert_eq!(param.as_deref(), Some("metadata.inputs"));
        assert!(message.contains("none may be set"), "{message}");
    }

    #[test]
    fn inputs_of_the_wrong_shape_are_refused() {
        let none = Map::new();
        for (top, meta, param) in [
            (Some(json!(["topic"])), None, "inputs"),
            (Some(json!("topic=tides")), None, "inputs"),
            (None, Some(json!(5)), "metadata.inputs"),
            (None, Some(json!("not json")), "metadata.inputs"),
            (None, Some(json!("[1]")), "metadata.inputs"),
        ] {
            let (_, got) = refusal(merge("m", &none, &[], top.as_ref(), meta.as_ref()));
            assert_eq!(got.as_deref(), Some(param), "{top:?} {meta:?}");
        }
    }

    fn field(variable: &str, label: &str, required: bool) -> FormField {
        FormField {
            kind: "text-input".into(),
            variable: variable.into(),
            label: label.into(),
            required,
            default: None,
            options: vec![],
        }
    }

    #[test]
    fn a_missing_required_variable_is_named_with_its_label() {
        let form = [
            field("notes", "Notes", false),
            field("topic", "Topic of the day", true),
        ];
        check_required("m", &form, &map(json!({"topic": "tides"}))).unwrap();
        check_required("m", &form, &map(json!({"topic": 0}))).unwrap();
        for inputs in [json!({}), json!({"topic": null}), json!({"topic": ""})] {
            let (message, param) = refusal(check_required("m", &form, &map(inputs.clone())));
            assert_eq!(param.as_deref(), Some("inputs"));
            assert!(
                message.contains("`topic` (Topic of the day)")
                    && message.contains("extra_body={\"inputs\": {\"topic\": ...}}"),
                "{inputs}: {message}"
            );
        }
        check_required("m", &[], &Map::new()).unwrap();
    }

    #[test]
    fn the_query_variable_is_configured_or_the_forms_only_text_field() {
        let field = |kind: &str, variable: &str| FormField {
            kind: kind.to_string(),
            variable: variable.to_string(),
            label: variable.to_string(),
            required: true,
            default: None,
            options: Vec::new(),
        };
        let one = [field("select", "lang"), field("paragraph", "article")];
        let two = [field("text-input", "a"), field("paragraph", "b")];
        assert_eq!(query_variable(Some("text"), Some(&one)), "text");
        assert_eq!(query_variable(None, Some(&one)), "article");
        assert_eq!(query_variable(None, Some(&two)), "query");
        assert_eq!(query_variable(None, Some(&[field("number", "n")])), "query");
        assert_eq!(query_variable(None, None), "query");
    }
}
