//! Secrets from SSM Parameter Store, read once at cold start: `MODEL_CONFIG_PARAMETER` and
//! `PROXY_API_KEYS_PARAMETER` name SecureString parameters whose values stand in for
//! `MODEL_CONFIG` and `PROXY_API_KEYS`. Their content is validated exactly like the
//! environment values; every failure is a startup problem listed with the rest, never a
//! per-request surprise.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};

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
    pub values: HashMap<String, String>,
    /// Variable → parameter name, to say where a value came from in later messages.
    pub sources: HashMap<String, String>,
    /// Variables whose parameter could not be read (their "is not set" problem is noise).
    pub failed: Vec<String>,
    pub problems: Vec<String>,
}

/// Which parameters to read: (parameter var, target var, parameter name), plus conflicts.
pub fn requested(
    lookup: &impl Fn(&str) -> Option<String>,
) -> (Vec<(&'static str, &'static str, String)>, Vec<String>) {
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
            problems.push(format!(
                "both {target} and {param_var} are set: keep one of them"
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
    for (param_var, target, name) in wanted {
        let call = client
            .get_parameter()
            .name(&name)
            .with_decryption(true)
            .send();
        let outcome = match tokio::time::timeout(SSM_TIMEOUT, call).await {
            Err(_) => Err(format!(
                "{param_var}: reading {name:?} from SSM Parameter Store timed out"
            )),
            Ok(Ok(out)) => match out.parameter.and_then(|p| p.value) {
                Some(value) => Ok(value),
                None => Err(format!("{param_var}: parameter {name:?} has no value")),
            },
            Ok(Err(e)) => Err(describe(param_var, &name, &e)),
        };
        match outcome {
            Ok(value) => {
                resolved.values.insert(target.to_string(), value);
                resolved.sources.insert(target.to_string(), name);
            }
            Err(problem) => {
                resolved.failed.push(target.to_string());
                resolved.problems.push(problem);
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

/// Plain words for an SSM failure; never the parameter's value.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    param_var: &str,
    name: &str,
    e: &SdkError<E>,
) -> String {
    match e {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown error");
            match code {
                "ParameterNotFound" => format!(
                    "{param_var} names {name:?}, which does not exist in SSM Parameter Store (check the name and the region)"
                ),
                "AccessDeniedException" | "AccessDenied" => format!(
                    "{param_var}: access to {name:?} was denied: the function's role needs ssm:GetParameter on it (and kms:Decrypt on its key)"
                ),
                "InvalidKeyId" | "KMSAccessDeniedException" => format!(
                    "{param_var}: {name:?} could not be decrypted: the function's role needs kms:Decrypt on the parameter's key"
                ),
                other => format!(
                    "{param_var}: reading {name:?} failed: {other}: {}",
                    service.err().message().unwrap_or("")
                ),
            }
        }
        other => format!(
            "{param_var}: could not reach SSM Parameter Store to read {name:?}: {}",
            aws_sdk_ssm::error::DisplayErrorContext(other)
        ),
    }
}

/// Says where a value came from in the problems about it: `MODEL_CONFIG is not valid JSON`
/// becomes `MODEL_CONFIG (from SSM parameter "/x") is not valid JSON`.
pub fn attribute_problems(problems: Vec<String>, resolved: &Resolved) -> Vec<String> {
    problems
        .into_iter()
        .filter(|p| {
            !resolved
                .failed
                .iter()
                .any(|var| p.starts_with(&format!("{var} is not set")))
        })
        .map(|p| {
            for (var, name) in &resolved.sources {
                if let Some(rest) = p.strip_prefix(var.as_str())
                    && (rest.starts_with(' ') || rest.starts_with(':'))
                {
                    return format!("{var} (from SSM parameter {name:?}){rest}");
                }
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
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
            problems,
            vec!["both MODEL_CONFIG and MODEL_CONFIG_PARAMETER are set: keep one of them"]
        );
        assert!(!any_requested(&lookup(&[])));
    }

    #[test]
    fn problems_name_their_source_and_drop_noise() {
        let resolved = Resolved {
            sources: HashMap::from([("MODEL_CONFIG".to_string(), "/od/models".to_string())]),
            failed: vec!["PROXY_API_KEYS".to_string()],
            ..Resolved::default()
        };
        let out = attribute_problems(
            vec![
                "MODEL_CONFIG is not valid JSON: x".to_string(),
                "MODEL_CONFIG model \"a\": bad".to_string(),
                "PROXY_API_KEYS is not set: give ...".to_string(),
                "DIFY_API_BASE is not set".to_string(),
            ],
            &resolved,
        );
        assert_eq!(
            out,
            vec![
                "MODEL_CONFIG (from SSM parameter \"/od/models\") is not valid JSON: x",
                "MODEL_CONFIG (from SSM parameter \"/od/models\") model \"a\": bad",
                "DIFY_API_BASE is not set",
            ]
        );
    }
}
