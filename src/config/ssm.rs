//! Secrets from SSM Parameter Store, read once at cold start: `MODEL_CONFIG_PARAMETER` and
//! `PROXY_API_KEYS_PARAMETER` name SecureString parameters whose values stand in for
//! `MODEL_CONFIG` and `PROXY_API_KEYS`. Their content is validated exactly like the
//! environment values; every failure is a startup problem listed with the rest, never a
//! per-request surprise.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};

use super::Problem;

/// (variable naming a parameter, variable whose value it provides)
pub const PARAMETER_VARS: [(&str, &str); 2] = [
    ("MODEL_CONFIG_PARAMETER", "MODEL_CONFIG"),
    ("PROXY_API_KEYS_PARAMETER", "PROXY_API_KEYS"),
];

/// A cold start must not hang on SSM: a few seconds, then the problem is reported.
const SSM_TIMEOUT: Duration = Duration::from_secs(5);

/// Values read from parameters (by the variable they provide), and the problems met.
#[derive(Debug, Default)]
pub struct Resolved {
    pub values: HashMap<&'static str, String>,
    /// Variable → parameter name, to say where a value came from in later messages.
    pub sources: HashMap<&'static str, String>,
    /// Variables whose parameter could not be read (their "is not set" problem is noise).
    pub failed: Vec<&'static str>,
    pub problems: Vec<Problem>,
}

impl Resolved {
    /// Says where a value came from in the problems about it (`MODEL_CONFIG (from SSM
    /// parameter "/x") is not valid JSON`), and drops the "is not set" of a variable whose
    /// parameter could not be read: that failure is already listed, with its cause.
    pub fn attribute(&self, problems: Vec<Problem>) -> Vec<Problem> {
        problems
            .into_iter()
            .filter(|p| !(p.unset && self.failed.contains(&p.variable)))
            .map(|mut p| {
                if let Some(name) = self.sources.get(p.variable) {
                    p.parameter = Some(name.clone());
                }
                p
            })
            .collect()
    }
}

/// Which parameters to read: (parameter var, target var, parameter name), plus conflicts.
pub fn requested(
    lookup: &impl Fn(&str) -> Option<String>,
) -> (Vec<(&'static str, &'static str, String)>, Vec<Problem>) {
    let mut wanted = Vec::new();
    let mut problems = Vec::new();
    for (param_var, target) in PARAMETER_VARS {
        let Some(name) = lookup(param_var)
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        if lookup(target).is_some_and(|v| !v.trim().is_empty()) {
            problems.push(Problem::new(
                target,
                format!("and {param_var} are both set: keep one of them"),
            ));
            continue;
        }
        wanted.push((param_var, target, name));
    }
    (wanted, problems)
}

/// Reads the requested parameters with decryption.
pub async fn resolve(
    lookup: &impl Fn(&str) -> Option<String>,
    client: Option<&aws_sdk_ssm::Client>,
) -> Resolved {
    let (wanted, problems) = requested(lookup);
    let mut resolved = Resolved {
        problems,
        ..Resolved::default()
    };
    let Some(client) = client else {
        return resolved;
    };
    // Read at once, not one after the other: at cold start each read is a round trip
    // (two of them were the largest part of init, tests/benches/RESULTS.md).
    let reads = wanted.iter().map(|(_, _, name)| async move {
        let call = client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send();
        match tokio::time::timeout(SSM_TIMEOUT, call).await {
            Err(_) => Err(format!(
                "names {name:?}, but reading it from SSM Parameter Store timed out"
            )),
            Ok(Ok(out)) => match out.parameter.and_then(|p| p.value) {
                Some(value) => Ok(value),
                None => Err(format!("names {name:?}, which has no value")),
            },
            Ok(Err(e)) => Err(describe(name, &e)),
        }
    });
    let outcomes = futures_util::future::join_all(reads).await;
    for ((param_var, target, name), outcome) in wanted.into_iter().zip(outcomes) {
        match outcome {
            Ok(value) => {
                resolved.values.insert(target, value);
                resolved.sources.insert(target, name);
            }
            Err(detail) => {
                resolved.failed.push(target);
                resolved.problems.push(Problem::new(param_var, detail));
            }
        }
    }
    resolved
}

/// Whether any parameter is requested (so the SSM client is worth building).
pub fn any_requested(lookup: &impl Fn(&str) -> Option<String>) -> bool {
    PARAMETER_VARS
        .iter()
        .any(|(v, _)| lookup(v).is_some_and(|n| !n.trim().is_empty()))
}

/// Plain words for an SSM failure, worded to follow the `*_PARAMETER` variable's name;
/// never the parameter's value.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    name: &str,
    e: &SdkError<E>,
) -> String {
    match e {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown error");
            match code {
                "ParameterNotFound" => format!(
                    "names {name:?}, which does not exist in SSM Parameter Store (check the name and the region)"
                ),
                "AccessDeniedException" | "AccessDenied" => format!(
                    "names {name:?}, but access to it was denied: the function's role needs ssm:GetParameter on it (and kms:Decrypt on its key)"
                ),
                "InvalidKeyId" | "KMSAccessDeniedException" => format!(
                    "names {name:?}, which could not be decrypted: the function's role needs kms:Decrypt on the parameter's key"
                ),
                other => format!(
                    "names {name:?}, but reading it failed: {other}: {}",
                    service.err().message().unwrap_or("")
                ),
            }
        }
        other => format!(
            "names {name:?}, but SSM Parameter Store could not be reached: {}",
            aws_sdk_ssm::error::DisplayErrorContext(other)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigErrors};

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn texts(problems: &[Problem]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn parameters_requested_and_conflicts() {
        let l = lookup(&[
            ("MODEL_CONFIG_PARAMETER", "/od/models"),
            ("PROXY_API_KEYS_PARAMETER", " "),
            ("PROXY_API_KEYS", "k"),
        ]);
        let (wanted, problems) = requested(&l);
        assert_eq!(
            wanted,
            vec![(
                "MODEL_CONFIG_PARAMETER",
                "MODEL_CONFIG",
                "/od/models".to_string()
            )]
        );
        assert!(problems.is_empty());
        assert!(any_requested(&l));

        let l = lookup(&[
            ("MODEL_CONFIG_PARAMETER", "/od/models"),
            ("MODEL_CONFIG", "{}"),
        ]);
        let (wanted, problems) = requested(&l);
        assert!(wanted.is_empty());
        assert_eq!(
            texts(&problems),
            vec!["MODEL_CONFIG and MODEL_CONFIG_PARAMETER are both set: keep one of them"]
        );
        assert!(!any_requested(&lookup(&[])));
    }

    fn resolved() -> Resolved {
        Resolved {
            sources: HashMap::from([("MODEL_CONFIG", "/od/models".to_string())]),
            failed: vec!["PROXY_API_KEYS"],
            ..Resolved::default()
        }
    }

    #[test]
    fn problems_name_their_source_and_drop_noise() {
        let out = resolved().attribute(vec![
            Problem::new("MODEL_CONFIG", "is not valid JSON: x"),
            Problem::new("MODEL_CONFIG", "model \"a\": bad"),
            Problem::not_set("PROXY_API_KEYS", "give ..."),
            Problem::not_set("DIFY_API_BASE", "give ..."),
        ]);
        assert_eq!(
            texts(&out),
            vec![
                "MODEL_CONFIG (from SSM parameter \"/od/models\") is not valid JSON: x",
                "MODEL_CONFIG (from SSM parameter \"/od/models\") model \"a\": bad",
                "DIFY_API_BASE is not set: give ...",
            ]
        );
    }

    /// The old string-prefix version got each of these wrong: it attributed only details
    /// starting with ' ' or ':', and dropped by the words "is not set" rather than by fact.
    #[test]
    fn attribution_follows_the_fields_not_the_wording() {
        let worded_freely = Problem::new("MODEL_CONFIG", "'s entry \"a\" is odd");
        let not_set_but_reworded = Problem {
            unset: true,
            ..Problem::new("PROXY_API_KEYS", "has no value")
        };
        let set_but_sounds_unset = Problem::new("PROXY_API_KEYS", "is not set to any key");
        let similar_name = Problem::new("MODEL_CONFIG_PARAMETER", "names \"/x\", which …");
        let out = resolved().attribute(vec![
            worded_freely,
            not_set_but_reworded,
            set_but_sounds_unset.clone(),
            similar_name.clone(),
        ]);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0].parameter.as_deref(), Some("/od/models"));
        assert_eq!(
            out[0].to_string(),
            "MODEL_CONFIG (from SSM parameter \"/od/models\") 's entry \"a\" is odd"
        );
        assert_eq!(out[1], set_but_sounds_unset);
        assert_eq!(out[2], similar_name);
    }

    /// The real configuration's problems, through the same steps as `load_config`.
    #[test]
    fn config_problems_are_attributed_end_to_end() {
        let merged = lookup(&[
            ("DIFY_API_BASE", "https://api.dify.ai/v1"),
            ("MODEL_CONFIG", r#"{"m": "sk-notanappkey12345678", "n": 1}"#),
        ]);
        let Err(ConfigErrors(problems)) = Config::from_lookup(merged) else {
            panic!("the configuration should be invalid")
        };
        let out = texts(&resolved().attribute(problems));
        assert_eq!(
            out.len(),
            2,
            "PROXY_API_KEYS is not set should be dropped: {out:?}"
        );
        for text in &out {
            assert!(
                text.starts_with("MODEL_CONFIG (from SSM parameter \"/od/models\") model "),
                "{text}"
            );
        }
    }
}
