//! `MODEL_CONFIG`: a JSON object of model name to entry, where an entry is the Dify app key
//! (`"app-..."`) or an object (`{"key": "app-..."}`) that can say more about the app.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, MapDeserializer};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{Problem, Secret};
use crate::apps::AppMode;
use crate::error::json_error_text;

const VAR: &str = "MODEL_CONFIG";

/// One model the proxy offers: the Dify app behind it.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub app_key: Secret,
    /// The app's kind, when `MODEL_CONFIG` states it (then Dify is not asked).
    pub mode: Option<AppMode>,
    /// Completion and workflow apps: the input variable that takes the user's text.
    pub query_variable: Option<String>,
    /// Workflow apps: the output variable that is the answer when no text streamed.
    pub output_variable: Option<String>,
}

impl ModelConfig {
    /// The input variable a completion or workflow app takes the user's text in. The one
    /// place its default is decided.
    pub fn query_variable(&self) -> &str {
        self.query_variable.as_deref().unwrap_or("query")
    }
}

/// The object form of an entry. A new setting is one more field here; give it
/// `#[serde(default)]` so the string form and existing configurations stay valid.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryObject {
    /// The Dify app key, `app-...`.
    key: String,
    /// Dify's app mode (`chat`, `completion`, `workflow`, ...): no `/info` lookup then.
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    query_variable: Option<String>,
    #[serde(default)]
    output_variable: Option<String>,
}

/// One entry, in either form.
struct Entry(EntryObject);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// By hand rather than `#[serde(untagged)]`, whose only message is "data did not match any
/// variant": this one reports the object's own errors (unknown field, listing the known
/// ones) and names the wrong JSON type.
struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"the Dify app key as a string, or an object like {"key": "app-..."}"#)
    }

    /// `"app-..."` is short for `{"key": "app-..."}`, so both forms get the same defaults.
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Entry, E> {
        EntryObject::deserialize(MapDeserializer::new(std::iter::once(("key", key)))).map(Entry)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
        EntryObject::deserialize(MapAccessDeserializer::new(map)).map(Entry)
    }

    // Any other type is named by its kind only: serde's own message would quote the
    // value, and a misplaced value may be a secret.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Entry, E> {
        Err(not_a_key("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Entry, E> {
        Err(not_a_key("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Entry, E> {
        Err(not_a_key("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Entry, E> {
        Err(not_a_key("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Entry, E> {
        Err(not_a_key("null"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Entry, E> {
        Err(not_a_key("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Entry, A::Error> {
        Err(not_a_key("an array"))
    }
}

fn not_a_key<E: de::Error>(kind: &str) -> E {
    E::custom(format_args!(
        "the app key must be a string, but it is {kind}"
    ))
}

/// Every model in `raw`, and a problem for each one that is wrong. The top level is split
/// into entries first and each entry parsed on its own, so one bad model does not hide
/// the problems of the others.
pub(crate) fn parse(raw: &str, problems: &mut Vec<Problem>) -> BTreeMap<String, ModelConfig> {
    let mut models = BTreeMap::new();
    let entries = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(entries)) => entries,
        Ok(other) => {
            problems.push(Problem::new(
                VAR,
                format!(
                    "must be a JSON object of model name to Dify app key, but it is {}",
                    json_kind(&other)
                ),
            ));
            return models;
        }
        Err(e) => {
            problems.push(Problem::new(
                VAR,
                format!(
                    "is not valid JSON: {} at line {}, column {}",
                    json_error_text(&e),
                    e.line(),
                    e.column()
                ),
            ));
            return models;
        }
    };
    if entries.is_empty() {
        problems.push(Problem::new(
            VAR,
            "has no models: add at least one \"name\": \"app-...\" entry",
        ));
    }
    for (name, entry) in entries {
        if name.trim().is_empty() {
            problems.push(Problem::new(VAR, "has a model with an empty name"));
            continue;
        }
        match model(&name, entry) {
            Ok(model) => {
                models.insert(name, model);
            }
            Err(detail) => problems.push(Problem::new(VAR, detail)),
        }
    }
    models
}

/// One entry, checked; the error is worded to follow `MODEL_CONFIG`.
fn model(name: &str, entry: serde_json::Value) -> Result<ModelConfig, String> {
    let Entry(entry) = serde_path_to_error::deserialize(entry).map_err(|e| {
        // Deserialized from a `Value`, the error carries no text position; the path says
        // which field inside the entry is wrong.
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("model {name:?}: {inner}")
        } else {
            format!("model {name:?} at `{path}`: {inner}")
        }
    })?;
    let key = entry.key.trim();
    if key.is_empty() {
        return Err(format!("model {name:?} has an empty app key"));
    }
    let app_key = Secret::new(key);
    if !looks_like_app_key(app_key.expose()) {
        return Err(format!(
            "model {name:?}: the key {} does not look like a Dify app key (app-...); copy it from the app's API Access page",
            app_key.masked()
        ));
    }
    let mode = match entry.mode.as_deref().map(str::trim) {
        None => None,
        Some(mode) => Some(AppMode::from_dify(mode).ok_or_else(|| {
            format!(
                "model {name:?} at `mode`: {mode:?} is not a Dify app mode; use one of {}, or leave it out so the proxy asks Dify",
                AppMode::NAMES.join(", ")
            )
        })?),
    };
    let variable = |field: &str, value: Option<String>| match value {
        Some(v) if v.trim().is_empty() => Err(format!(
            "model {name:?} at `{field}`: the variable name is empty; leave it out for the default"
        )),
        v => Ok(v.map(|v| v.trim().to_string())),
    };
    Ok(ModelConfig {
        app_key,
        mode,
        query_variable: variable("query_variable", entry.query_variable)?,
        output_variable: variable("output_variable", entry.output_variable)?,
    })
}

fn looks_like_app_key(key: &str) -> bool {
    key.len() > "app-".len() && key.starts_with("app-") && key.chars().all(|c| c.is_ascii_graphic())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each problem's text after `MODEL_CONFIG `.
    fn problems(raw: &str) -> Vec<String> {
        let mut problems = Vec::new();
        parse(raw, &mut problems);
        problems
            .into_iter()
            .inspect(|p| assert_eq!(p.variable, VAR))
            .map(|p| p.detail)
            .collect()
    }

    #[test]
    fn both_entry_forms_parse() {
        let mut found = Vec::new();
        let models = parse(
            r#"{"a": " app-aaaaaaaaaaaaaaaa1111 ", "b": {"key": "app-bbbbbbbbbbbbbbbb2222"}}"#,
            &mut found,
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(models["a"].app_key.expose(), "app-aaaaaaaaaaaaaaaa1111");
        assert_eq!(models["b"].app_key.expose(), "app-bbbbbbbbbbbbbbbb2222");
    }

    #[test]
    fn every_bad_entry_is_reported_without_its_value() {
        let found = problems(
            r#"{
                "num": 5, "bool": true, "null": null, "list": ["app-secretsecret1111"],
                "extra": {"key": "app-okokokokokok0000", "kye": "app-secretsecret2222"},
                "nokey": {},
                "badkey": {"key": 7},
                "": "app-okokokokokok0000",
                "good": "app-okokokokokok0000"
            }"#,
        );
        assert_eq!(
            found,
            [
                "has a model with an empty name",
                "model \"badkey\" at `key`: invalid type: integer `7`, expected a string",
                "model \"bool\": the app key must be a string, but it is a boolean",
                "model \"extra\" at `kye`: unknown field `kye`, expected one of `key`, `mode`, `query_variable`, `output_variable`",
                "model \"list\": the app key must be a string, but it is an array",
                "model \"nokey\": missing field `key`",
                "model \"null\": the app key must be a string, but it is null",
                "model \"num\": the app key must be a string, but it is a number",
            ]
        );
        assert!(!found.concat().contains("secret"), "{found:?}");
    }

    #[test]
    fn app_settings_parse_and_are_checked() {
        let mut found = Vec::new();
        let models = parse(
            r#"{"w": {"key": "app-wwwwwwwwwwwwwwww0001", "mode": "workflow", "query_variable": "article", "output_variable": "summary"},
                "c": {"key": "app-cccccccccccccccc0002", "mode": "advanced-chat"},
                "plain": "app-pppppppppppppppp0003"}"#,
            &mut found,
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(models["w"].mode, Some(AppMode::Workflow));
        assert_eq!(models["w"].query_variable(), "article");
        assert_eq!(models["w"].output_variable.as_deref(), Some("summary"));
        assert_eq!(models["c"].mode, Some(AppMode::Chat));
        assert_eq!(models["plain"].mode, None);
        assert_eq!(models["plain"].query_variable(), "query");
        assert_eq!(
            problems(
                r#"{"x": {"key": "app-xxxxxxxxxxxxxxxx0001", "mode": "chatbot"}, "y": {"key": "app-yyyyyyyyyyyyyyyy0002", "query_variable": " "}}"#
            ),
            [
                "model \"x\" at `mode`: \"chatbot\" is not a Dify app mode; use one of chat, agent-chat, advanced-chat, agent, completion, workflow, or leave it out so the proxy asks Dify",
                "model \"y\" at `query_variable`: the variable name is empty; leave it out for the default",
            ]
        );
    }

    #[test]
    fn top_level_must_be_a_json_object() {
        assert_eq!(
            problems("[1]"),
            ["must be a JSON object of model name to Dify app key, but it is an array"]
        );
        assert_eq!(
            problems("{\"a\": \"app-x\",\n \"b\" }"),
            ["is not valid JSON: expected `:` at line 2, column 6"]
        );
    }
}
