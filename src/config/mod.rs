//! Configuration read once at cold start and validated as a whole: every problem is
//! collected so one failed start shows the user everything to fix.

/// MODEL_CONFIG: the models offered and the Dify app behind each.
pub mod models;
/// Secrets read from SSM Parameter Store at cold start.
pub mod ssm;
/// CONVERSATION_STORE and CONVERSATION_DB_PATH: which conversation store, and its file.
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use url::Url;

pub use models::ModelConfig;

use crate::answer::{AnswerOptions, Citations, ReasoningMode};

/// Default wait for Dify to connect and send its response head.
pub const DEFAULT_DIFY_TIMEOUT_SECS: u64 = 30;
/// Lambda function URLs accept at most 6 MB of request payload; match that locally.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// Open WebUI's chat id header (renamable there with FORWARD_SESSION_INFO_HEADER_CHAT_ID).
pub const DEFAULT_CHAT_ID_HEADER: &str = "x-openwebui-chat-id";
pub const DEFAULT_CONVERSATION_TTL_DAYS: u64 = 30;
pub const DEFAULT_MAX_MESSAGES: usize = 1000;
/// Dify pings at least every 10 s while a run is alive: two minutes of silence is a stall.
pub const DEFAULT_STREAM_IDLE_SECS: u64 = 120;
/// Below Lambda's 15-minute cap, so the client gets a clean error instead of a cut stream.
pub const DEFAULT_MAX_STREAM_SECS: u64 = 870;
/// A maximal answer must fit the function's memory (256 MB in the template) with room to
/// spare: a blocking answer is held twice (its text, then its JSON), a streamed one at most
/// once (only when history matching needs its text).
pub const DEFAULT_MAX_UPSTREAM_BYTES: u64 = 32 * 1024 * 1024;
/// DynamoDB answers in milliseconds; these bound a store that is down or overloaded.
pub const DEFAULT_STORE_LOOKUP_TIMEOUT_MS: u64 = 2500;
pub const DEFAULT_STORE_WRITE_TIMEOUT_MS: u64 = 10_000;

/// A secret string (Dify app key, proxy key). `Debug`/`Display` show only a masked tail,
/// so a stray `{:?}` can never put a key in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the one place that needs it (an outgoing header, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `app-…3f9a`: the prefix before the first `-` and the last four characters, and only
    /// when the secret is long enough that the tail reveals little.
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        let prefix: String = match self.0.find('-') {
            Some(i) if i <= 8 => self.0[..=i].to_string(),
            _ => String::new(),
        };
        if chars.len() >= 16 {
            let tail: String = chars[chars.len() - 4..].iter().collect();
            format!("{prefix}…{tail}")
        } else {
            format!("{prefix}…")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Which browser origins may call the API (Open WebUI direct connections, browser SDKs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `Access-Control-Allow-Origin: *`. Safe here: credentials are bearer keys, never cookies.
    AnyOrigin,
    Origins(Vec<String>),
    Disabled,
}

/// One proxy key and the models it may use.
#[derive(Debug, Clone)]
pub struct ProxyKey {
    pub key: Secret,
    /// `PROXY_API_KEYS` entry form `key:model1|model2` restricts it; plain `key` does not.
    pub models: ModelAccess,
    pub tenant: Tenant,
}

/// Which proxy key a request came with, as a digest of the key: every conversation store
/// key starts from it, so the callers of one key never continue another key's
/// conversations (same user, chat id or history notwithstanding).
#[derive(Debug, Clone)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// Requests without a key (`ALLOW_UNAUTHENTICATED=true`) share one tenant.
    pub fn open() -> Self {
        Self(Arc::from("open"))
    }

    pub fn of_key(key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("opendify-tenant\0{key}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self(Arc::from(format!("key:{hex}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Dify `user` for a request of this tenant: the end user the client named, else
    /// (none named, or the default's own name) a user of the tenant's own, so the callers
    /// of different proxy keys stay apart in Dify too. Derived from the key's digest:
    /// nothing of the key can be read from it.
    pub fn dify_user(&self, user: String) -> String {
        if user != crate::plan::DEFAULT_USER {
            return user;
        }
        match self.0.strip_prefix("key:") {
            Some(hex) => format!("{user}-{}", hex.get(..16).unwrap_or(hex)),
            None => user,
        }
    }
}

/// The models a caller may use. Shared, so a request carries its key's allow-list by a
/// reference count rather than a copy of the set.
#[derive(Debug, Clone, Default)]
pub struct ModelAccess(Option<Arc<BTreeSet<String>>>);

impl ModelAccess {
    /// Every configured model (also the `Default`).
    pub fn all() -> Self {
        Self(None)
    }

    /// Only these models.
    pub fn only(models: BTreeSet<String>) -> Self {
        Self(Some(Arc::new(models)))
    }

    pub fn allows(&self, model: &str) -> bool {
        self.0.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// How clients authenticate to the proxy.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `Authorization: Bearer <one of these>` is required on every route.
    Keys(Vec<ProxyKey>),
    /// Explicitly opted out with `ALLOW_UNAUTHENTICATED=true`.
    Disabled,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Dify service API base, always ending in `/` so relative joins keep its path.
    pub dify_api_base: Url,
    pub models: BTreeMap<String, ModelConfig>,
    pub auth: Auth,
    pub dify_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_messages: usize,
    /// A stream with no byte from Dify for this long is ended with an error (and stopped).
    pub stream_idle_timeout: Duration,
    /// Longest answer, start to end.
    pub max_stream_duration: Duration,
    /// Most bytes read from one Dify answer.
    pub max_upstream_bytes: u64,
    pub server_host: String,
    pub server_port: u16,
    /// DynamoDB table for chat → conversation mappings; None keeps them in process.
    pub conversation_table: Option<String>,
    /// `CONVERSATION_STORE` and `CONVERSATION_DB_PATH`; see [`store::StoreSettings::choose`].
    pub conversation_store: store::StoreSettings,
    pub conversation_ttl: Duration,
    /// Longest store lookup (on the way to the first token) and store write (while the
    /// answer streams), retries included.
    pub store_lookup_timeout: Duration,
    pub store_write_timeout: Duration,
    /// Header carrying the client's chat id (lower case).
    pub chat_id_header: HeaderName,
    /// Continue conversations of clients that send no chat id by matching the history.
    pub history_matching: bool,
    pub cors: Cors,
    /// `REASONING_MODE` and `CITATIONS`.
    pub answer: AnswerOptions,
}

/// One configuration problem. Kept as data rather than a sentence so that saying where a
/// value came from (an SSM parameter) or dropping a problem as noise works on the fields,
/// and rewording a message cannot break either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The variable at fault, printed first: `MODEL_CONFIG`.
    pub variable: &'static str,
    /// What is wrong, worded to follow the variable's name: `is not valid JSON: …`.
    pub detail: String,
    /// The variable has no value at all.
    pub unset: bool,
    /// The SSM parameter the variable's value was read from, if not the environment.
    pub parameter: Option<String>,
}

impl Problem {
    pub fn new(variable: &'static str, detail: impl Into<String>) -> Self {
        Self {
            variable,
            detail: detail.into(),
            unset: false,
            parameter: None,
        }
    }

    /// `VARIABLE is not set: <hint>`.
    pub fn not_set(variable: &'static str, hint: &str) -> Self {
        Self {
            unset: true,
            ..Self::new(variable, format!("is not set: {hint}"))
        }
    }
}

/// `VARIABLE detail`, or `VARIABLE (from SSM parameter "name") detail`.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.variable)?;
        if let Some(name) = &self.parameter {
            write!(f, " (from SSM parameter {name:?})")?;
        }
        write!(f, " {}", self.detail)
    }
}

/// Every configuration problem found, in the order the variables are documented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "configuration is invalid ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Builds the configuration from any variable source (the environment in production,
    /// a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        // Blank values count as unset: `FOO=` in an env file is a common slip.
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let dify_api_base = match get("DIFY_API_BASE") {
            None => {
                problems.push(Problem::not_set(
                    "DIFY_API_BASE",
                    "give the Dify service API URL, e.g. https://api.dify.ai/v1",
                ));
                None
            }
            Some(raw) => parse_base_url(raw.trim())
                .map_err(|detail| problems.push(Problem::new("DIFY_API_BASE", detail)))
                .ok(),
        };

        let models = match get("MODEL_CONFIG") {
            None => {
                problems.push(Problem::not_set(
                    "MODEL_CONFIG",
                    r#"give a JSON object of model name to Dify app key, e.g. {"my-model":"app-..."}"#,
                ));
                BTreeMap::new()
            }
            Some(raw) => models::parse(&raw, &mut problems),
        };

        let allow_unauthenticated = match get("ALLOW_UNAUTHENTICATED") {
            None => false,
            Some(raw) => parse_bool(&raw).unwrap_or_else(|| {
                problems.push(Problem::new(
                    "ALLOW_UNAUTHENTICATED",
                    format!("is {:?}: use true or false", raw.trim()),
                ));
                false
            }),
        };
        let auth = match get("PROXY_API_KEYS") {
            Some(raw) => {
                let keys = parse_proxy_keys(&raw, &models, &mut problems);
                Auth::Keys(keys)
            }
            None if allow_unauthenticated => Auth::Disabled,
            None => {
                problems.push(Problem::not_set(
                    "PROXY_API_KEYS",
                    "give the comma-separated keys clients must send as `Authorization: Bearer <key>`, or set ALLOW_UNAUTHENTICATED=true to serve without keys",
                ));
                Auth::Disabled
            }
        };

        let mut number =
            |name: &'static str, default: u64, range: std::ops::RangeInclusive<u64>, unit: &str| {
                whole_number(get(name), name, default, range, unit, &mut problems)
            };
        let dify_timeout = Duration::from_secs(number(
            "DIFY_TIMEOUT_SECONDS",
            DEFAULT_DIFY_TIMEOUT_SECS,
            1..=900,
            "seconds",
        ));
        let max_request_bytes = number(
            "MAX_REQUEST_BYTES",
            DEFAULT_MAX_REQUEST_BYTES as u64,
            1024..=64 * 1024 * 1024,
            "bytes",
        ) as usize;
        let max_messages = number(
            "MAX_MESSAGES",
            DEFAULT_MAX_MESSAGES as u64,
            1..=100_000,
            "messages",
        ) as usize;
        let stream_idle_timeout = Duration::from_secs(number(
            "STREAM_IDLE_TIMEOUT_SECONDS",
            DEFAULT_STREAM_IDLE_SECS,
            1..=900,
            "seconds",
        ));
        let max_stream_duration = Duration::from_secs(number(
            "MAX_STREAM_SECONDS",
            DEFAULT_MAX_STREAM_SECS,
            1..=3600,
            "seconds",
        ));
        let max_upstream_bytes = number(
            "MAX_UPSTREAM_BYTES",
            DEFAULT_MAX_UPSTREAM_BYTES,
            1024..=1024 * 1024 * 1024,
            "bytes",
        );
        let conversation_ttl = Duration::from_secs(
            number(
                "CONVERSATION_TTL_DAYS",
                DEFAULT_CONVERSATION_TTL_DAYS,
                1..=3650,
                "days",
            ) * 86_400,
        );
        let store_lookup_timeout = Duration::from_millis(number(
            "STORE_LOOKUP_TIMEOUT_MS",
            DEFAULT_STORE_LOOKUP_TIMEOUT_MS,
            100..=60_000,
            "milliseconds",
        ));
        let store_write_timeout = Duration::from_millis(number(
            "STORE_WRITE_TIMEOUT_MS",
            DEFAULT_STORE_WRITE_TIMEOUT_MS,
            100..=120_000,
            "milliseconds",
        ));

        let server_host =
            get("SERVER_HOST").map_or_else(|| "127.0.0.1".to_string(), |h| h.trim().to_string());
        let server_port = match get("SERVER_PORT") {
            None => 5000,
            Some(raw) => raw.trim().parse::<u16>().unwrap_or_else(|_| {
                problems.push(Problem::new(
                    "SERVER_PORT",
                    format!("is {:?}: use a port number from 0 to 65535", raw.trim()),
                ));
                5000
            }),
        };

        let conversation_table = get("CONVERSATION_TABLE").map(|t| t.trim().to_string());
        if let Some(table) = &conversation_table
            && !valid_table_name(table)
        {
            problems.push(Problem::new(
                "CONVERSATION_TABLE",
                format!(
                    "is {table:?}: a DynamoDB table name has 3-255 characters from a-z, A-Z, 0-9, '_', '-', '.'"
                ),
            ));
        }
        let conversation_store = store::parse(get, conversation_table.as_deref(), &mut problems);
        let chat_id_header = match get("CHAT_ID_HEADER") {
            None => HeaderName::from_static(DEFAULT_CHAT_ID_HEADER),
            Some(raw) => HeaderName::from_bytes(raw.trim().to_ascii_lowercase().as_bytes())
                .unwrap_or_else(|_| {
                    problems.push(Problem::new(
                        "CHAT_ID_HEADER",
                        format!("is {:?}, which is not a valid HTTP header name", raw.trim()),
                    ));
                    HeaderName::from_static(DEFAULT_CHAT_ID_HEADER)
                }),
        };
        let history_matching = match get("CONVERSATION_HISTORY_MATCHING") {
            None => true,
            Some(raw) => parse_bool(&raw).unwrap_or_else(|| {
                problems.push(Problem::new(
                    "CONVERSATION_HISTORY_MATCHING",
                    format!("is {:?}: use true or false", raw.trim()),
                ));
                true
            }),
        };

        let cors = match get("CORS_ALLOW_ORIGINS").map(|v| v.trim().to_string()) {
            None => Cors::AnyOrigin,
            Some(v) if v == "*" => Cors::AnyOrigin,
            Some(v) if v.eq_ignore_ascii_case("none") => Cors::Disabled,
            Some(v) => {
                let origins: Vec<String> = v
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect();
                for origin in &origins {
                    let ok = Url::parse(origin).is_ok_and(|u| {
                        matches!(u.scheme(), "http" | "https")
                            && u.host_str().is_some()
                            && u.path() == "/"
                    }) && HeaderValue::from_str(origin).is_ok();
                    if !ok {
                        problems.push(Problem::new(
                            "CORS_ALLOW_ORIGINS",
                            format!(
                                "entry {origin:?} is not an origin like https://chat.example.com (or use * or none)"
                            ),
                        ));
                    }
                }
                Cors::Origins(origins)
            }
        };

        let reasoning = match get("REASONING_MODE").map(|v| v.trim().to_string()) {
            None => ReasoningMode::Separate,
            Some(v) if v.eq_ignore_ascii_case("separate") => ReasoningMode::Separate,
            Some(v) if v.eq_ignore_ascii_case("inline") => ReasoningMode::Inline,
            Some(v) => {
                problems.push(Problem::new(
                    "REASONING_MODE",
                    format!("is {v:?}: use separate (thinking apart from the answer) or inline (left in the text)"),
                ));
                ReasoningMode::Separate
            }
        };
        let citations = match get("CITATIONS").map(|v| v.trim().to_string()) {
            None => Citations::Off,
            Some(v) if v.eq_ignore_ascii_case("off") => Citations::Off,
            Some(v) if v.eq_ignore_ascii_case("sources") => Citations::Sources,
            Some(v) => {
                problems.push(Problem::new(
                    "CITATIONS",
                    format!("is {v:?}: use off or sources (a list of the cited documents after the answer)"),
                ));
                Citations::Off
            }
        };

        match dify_api_base {
            Some(dify_api_base) if problems.is_empty() => Ok(Config {
                dify_api_base,
                models,
                auth,
                dify_timeout,
                max_request_bytes,
                max_messages,
                stream_idle_timeout,
                max_stream_duration,
                max_upstream_bytes,
                server_host,
                server_port,
                conversation_table,
                conversation_store,
                conversation_ttl,
                store_lookup_timeout,
                store_write_timeout,
                chat_id_header,
                history_matching,
                cors,
                answer: AnswerOptions {
                    reasoning,
                    citations,
                },
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }

    /// The one-line startup summary: names only, never keys.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        let auth = match &self.auth {
            Auth::Keys(keys) => format!("{} proxy key(s) required", keys.len()),
            Auth::Disabled => "UNAUTHENTICATED (ALLOW_UNAUTHENTICATED=true)".to_string(),
        };
        format!(
            "models loaded: {}; Dify base: {}; auth: {}",
            names.join(", "),
            self.dify_api_base,
            auth
        )
    }
}

/// The URL without any `user:password@`.
fn without_credentials(url: &Url) -> Url {
    let mut clean = url.clone();
    // Only fails for URLs that cannot have credentials, which then have none.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean
}

/// The URL, or what is wrong with it (worded to follow `DIFY_API_BASE`).
/// Credentials in the URL (`user:password@`) are dropped: Dify authenticates with each
/// model's app key, and reqwest would send them as a second `Authorization` header that
/// Dify reads first. They never appear in a message either.
fn parse_base_url(raw: &str) -> Result<Url, String> {
    let mut url = Url::parse(raw).map_err(|e| {
        // An `@` may follow a password: then the value is not repeated.
        let shown = if raw.contains('@') {
            String::new()
        } else {
            format!("is {raw:?}, which ")
        };
        format!("{shown}is not a URL ({e}); expected e.g. https://api.dify.ai/v1")
    })?;
    let had_credentials = !url.username().is_empty() || url.password().is_some();
    url = without_credentials(&url);
    let shown = if had_credentials {
        format!("{:?} (credentials hidden)", url.as_str())
    } else {
        format!("{raw:?}")
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("is {shown}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("is {shown}: it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("is {shown}: remove the query string or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// `key` or `key:model1|model2`, comma-separated.
fn parse_proxy_keys(
    raw: &str,
    models: &BTreeMap<String, ModelConfig>,
    problems: &mut Vec<Problem>,
) -> Vec<ProxyKey> {
    const VAR: &str = "PROXY_API_KEYS";
    let mut keys = Vec::new();
    for (i, entry) in raw
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (key, allowed) = match entry.split_once(':') {
            Some((key, list)) => (key.trim(), Some(list)),
            None => (entry, None),
        };
        let key = Secret::new(key);
        if key.expose().is_empty() {
            problems.push(Problem::new(
                VAR,
                format!("entry {} has a model list but no key", i + 1),
            ));
            continue;
        }
        if key.expose().chars().any(char::is_whitespace) {
            problems.push(Problem::new(
                VAR,
                format!(
                    "entry {} ({}) contains whitespace, which no client can send in a Bearer token",
                    i + 1,
                    key.masked()
                ),
            ));
        }
        let models = match allowed {
            None => ModelAccess::all(),
            Some(list) => {
                let names: BTreeSet<String> = list
                    .split('|')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect();
                if names.is_empty() {
                    problems.push(Problem::new(
                        VAR,
                        format!(
                            "entry {} ({}) has an empty model list after ':'",
                            i + 1,
                            key.masked()
                        ),
                    ));
                }
                for name in names.iter().filter(|n| !models.contains_key(n.as_str())) {
                    // Only checked when MODEL_CONFIG itself parsed, to avoid a second report.
                    if !models.is_empty() {
                        problems.push(Problem::new(
                            VAR,
                            format!(
                                "entry {} ({}) allows model {name:?}, which MODEL_CONFIG does not define",
                                i + 1,
                                key.masked()
                            ),
                        ));
                    }
                }
                ModelAccess::only(names)
            }
        };
        let tenant = Tenant::of_key(key.expose());
        keys.push(ProxyKey {
            key,
            models,
            tenant,
        });
    }
    if keys.is_empty() {
        problems.push(Problem::new(
            VAR,
            "is set but holds no key (it is split at commas)",
        ));
    }
    keys
}

/// A whole number within `range`, or the default (and a problem) when it is not.
fn whole_number(
    raw: Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
    problems: &mut Vec<Problem>,
) -> u64 {
    let Some(raw) = raw else { return default };
    match raw.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => n,
        _ => {
            problems.push(Problem::new(
                name,
                format!(
                    "is {:?}: use a whole number of {unit} from {} to {}",
                    raw.trim(),
                    range.start(),
                    range.end()
                ),
            ));
            default
        }
    }
}

fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY: &str = "app-0123456789abcdef3f9a";

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    fn valid() -> Vec<(&'static str, &'static str)> {
        vec![
            ("DIFY_API_BASE", "https://api.dify.ai/v1"),
            (
                "MODEL_CONFIG",
                r#"{"claude":"app-0123456789abcdef3f9a","gpt":{"key":"app-zzzzzzzzzzzzzzzz1111"}}"#,
            ),
            ("PROXY_API_KEYS", "sk-one, sk-two"),
        ]
    }

    #[test]
    fn valid_config_parses_with_defaults() {
        let c = config(&valid()).unwrap();
        assert_eq!(c.dify_api_base.as_str(), "https://api.dify.ai/v1/");
        assert_eq!(c.models.keys().collect::<Vec<_>>(), ["claude", "gpt"]);
        assert_eq!(c.models["gpt"].app_key.expose(), "app-zzzzzzzzzzzzzzzz1111");
        assert!(
            matches!(&c.auth, Auth::Keys(k) if k.len() == 2 && k[1].key.expose() == "sk-two" && k[1].models.allows("gpt"))
        );
        assert_eq!(c.dify_timeout, Duration::from_secs(30));
        assert_eq!((c.server_host.as_str(), c.server_port), ("127.0.0.1", 5000));
    }

    #[test]
    fn trailing_slash_is_kept_once() {
        let mut vars = valid();
        vars[0].1 = "http://dify.local:8080/v1/";
        assert_eq!(
            config(&vars).unwrap().dify_api_base.as_str(),
            "http://dify.local:8080/v1/"
        );
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let errs = config(&[
            ("DIFY_API_BASE", "not a url"),
            (
                "MODEL_CONFIG",
                r#"{"a": 5, "b": "", "c": "sk-wrong", "d": {"key": "app-ok-but-extra1", "x": 1}}"#,
            ),
            ("DIFY_TIMEOUT_SECONDS", "soon"),
            ("SERVER_PORT", "70000"),
        ])
        .unwrap_err();
        let text = errs.to_string();
        for needle in [
            "DIFY_API_BASE is \"not a url\"",
            "model \"a\": the app key must be a string, but it is a number",
            "model \"b\" has an empty app key",
            "model \"c\": the key sk-… does not look like a Dify app key",
            "model \"d\" at `x`: unknown field `x`, expected one of `key`, `mode`, `query_variable`, `output_variable`, `inputs`, `request_inputs`",
            "PROXY_API_KEYS is not set",
            "DIFY_TIMEOUT_SECONDS is \"soon\"",
            "SERVER_PORT is \"70000\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(errs.0.len(), 8, "{text}");
    }

    #[test]
    fn invalid_json_reports_position() {
        let mut vars = valid();
        vars[1].1 = "{\"a\": \"app-x\",\n \"b\" }";
        let text = config(&vars).unwrap_err().to_string();
        assert!(
            text.contains("MODEL_CONFIG is not valid JSON: expected `:` at line 2, column 6"),
            "{text}"
        );
    }

    #[test]
    fn missing_everything_is_three_problems() {
        let errs = config(&[]).unwrap_err();
        assert_eq!(errs.0.len(), 3, "{errs}");
    }

    #[test]
    fn empty_model_object_is_rejected() {
        let mut vars = valid();
        vars[1].1 = "{}";
        assert!(
            config(&vars)
                .unwrap_err()
                .to_string()
                .contains("MODEL_CONFIG has no models")
        );
        vars[1].1 = "[]";
        assert!(
            config(&vars)
                .unwrap_err()
                .to_string()
                .contains("but it is an array")
        );
    }

    #[test]
    fn explicit_opt_out_allows_no_keys() {
        let mut vars = valid();
        vars.remove(2);
        assert!(config(&vars).is_err());
        vars.push(("ALLOW_UNAUTHENTICATED", "true"));
        assert!(matches!(config(&vars).unwrap().auth, Auth::Disabled));
        let last = vars.len() - 1;
        vars[last].1 = "maybe";
        assert!(
            config(&vars)
                .unwrap_err()
                .to_string()
                .contains("ALLOW_UNAUTHENTICATED is \"maybe\"")
        );
    }

    #[test]
    fn secrets_never_print_in_full() {
        let errs = config(&[
            ("DIFY_API_BASE", "https://x/v1"),
            ("MODEL_CONFIG", r#"{"m":"sk-secretsecretsecret9999"}"#),
            ("PROXY_API_KEYS", "bad key with spaces"),
        ])
        .unwrap_err()
        .to_string();
        assert!(!errs.contains("secretsecret"), "{errs}");
        assert!(errs.contains("sk-…9999"), "{errs}");
        assert!(!errs.contains("bad key with spaces"), "{errs}");

        let c = config(&valid()).unwrap();
        let debug = format!("{c:?} {}", c.summary());
        assert!(!debug.contains(KEY) && !debug.contains("sk-one"), "{debug}");
        assert!(debug.contains("app-…3f9a"), "{debug}");
    }

    #[test]
    fn reasoning_and_citation_settings() {
        let c = config(&valid()).unwrap();
        assert_eq!(c.answer, AnswerOptions::default());
        assert_eq!(c.answer.reasoning, ReasoningMode::Separate);
        assert_eq!(c.answer.citations, Citations::Off);
        let mut vars = valid();
        vars.extend([("REASONING_MODE", " Inline "), ("CITATIONS", "sources")]);
        let c = config(&vars).unwrap();
        assert_eq!(c.answer.reasoning, ReasoningMode::Inline);
        assert_eq!(c.answer.citations, Citations::Sources);
        let mut vars = valid();
        vars.extend([("REASONING_MODE", "hidden"), ("CITATIONS", "footnotes")]);
        let errs = config(&vars).unwrap_err().to_string();
        assert!(errs.contains("2 problems"), "{errs}");
        assert!(
            errs.contains("REASONING_MODE is \"hidden\": use separate"),
            "{errs}"
        );
        assert!(
            errs.contains("CITATIONS is \"footnotes\": use off or sources"),
            "{errs}"
        );
    }

    #[test]
    fn conversation_settings() {
        let c = config(&valid()).unwrap();
        assert_eq!(c.conversation_table, None);
        assert_eq!(c.conversation_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.chat_id_header.as_str(), "x-openwebui-chat-id");
        assert!(c.history_matching);
        assert_eq!(c.store_lookup_timeout, Duration::from_millis(2500));
        assert_eq!(c.store_write_timeout, Duration::from_secs(10));

        let mut vars = valid();
        vars.extend([
            ("CONVERSATION_TABLE", "opendify-conversations"),
            ("CONVERSATION_TTL_DAYS", "7"),
            ("CHAT_ID_HEADER", "X-Chat-Id"),
            ("CONVERSATION_HISTORY_MATCHING", "false"),
            ("STORE_LOOKUP_TIMEOUT_MS", "750"),
            ("STORE_WRITE_TIMEOUT_MS", "30000"),
        ]);
        let c = config(&vars).unwrap();
        assert_eq!(
            c.conversation_table.as_deref(),
            Some("opendify-conversations")
        );
        assert_eq!(c.conversation_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(c.chat_id_header.as_str(), "x-chat-id");
        assert!(!c.history_matching);
        assert_eq!(c.store_lookup_timeout, Duration::from_millis(750));
        assert_eq!(c.store_write_timeout, Duration::from_secs(30));

        let mut vars = valid();
        vars.extend([
            ("CONVERSATION_TABLE", "no spaces allowed"),
            ("CONVERSATION_TTL_DAYS", "0"),
            ("CHAT_ID_HEADER", "bad header"),
            ("CONVERSATION_HISTORY_MATCHING", "sometimes"),
            ("STORE_LOOKUP_TIMEOUT_MS", "50"),
            ("STORE_WRITE_TIMEOUT_MS", "2.5s"),
        ]);
        assert_eq!(config(&vars).unwrap_err().0.len(), 6);
    }

    #[test]
    fn per_key_model_allow_lists() {
        let mut vars = valid();
        vars[2].1 = "sk-all, sk-claude:claude, sk-both: claude | gpt ";
        let c = config(&vars).unwrap();
        let Auth::Keys(keys) = &c.auth else { panic!() };
        assert!(keys[0].models.allows("claude") && keys[0].models.allows("gpt"));
        assert!(keys[1].models.allows("claude") && !keys[1].models.allows("gpt"));
        assert_eq!(keys[1].key.expose(), "sk-claude");
        assert!(keys[2].models.allows("claude") && keys[2].models.allows("gpt"));

        vars[2].1 = "sk-x:nope, :claude, sk-y:";
        let text = config(&vars).unwrap_err().to_string();
        assert!(
            text.contains("allows model \"nope\", which MODEL_CONFIG does not define"),
            "{text}"
        );
        assert!(
            text.contains("entry 2 has a model list but no key"),
            "{text}"
        );
        assert!(text.contains("has an empty model list"), "{text}");
        assert!(!text.contains("sk-x:") && !text.contains("sk-y"), "{text}");
    }

    #[test]
    fn cors_origins() {
        let with = |v: &str| {
            let mut vars = valid();
            vars.push(("CORS_ALLOW_ORIGINS", v));
            config(&vars)
        };
        assert_eq!(config(&valid()).unwrap().cors, Cors::AnyOrigin);
        assert_eq!(with("none").unwrap().cors, Cors::Disabled);
        assert_eq!(
            with("https://chat.example.com/, http://localhost:3000")
                .unwrap()
                .cors,
            Cors::Origins(vec![
                "https://chat.example.com".into(),
                "http://localhost:3000".into()
            ])
        );
        let text = with("chat.example.com,https://x.com/path")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("\"chat.example.com\" is not an origin")
                && text.contains("https://x.com/path"),
            "{text}"
        );
    }

    #[test]
    fn credentials_in_the_dify_base_are_never_shown() {
        let mut vars = valid();
        vars[0].1 = "https://gateway-user:s3cret-pass@dify.example/v1?x=1";
        let text = config(&vars).unwrap_err().to_string();
        assert!(
            !text.contains("s3cret") && text.contains("credentials hidden"),
            "{text}"
        );
        vars[0].1 = "https://gateway-user:s3cret-pass@dify.example/v1";
        let c = config(&vars).unwrap();
        assert_eq!(c.dify_api_base.as_str(), "https://dify.example/v1/");
        let shown = c.summary();
        assert!(
            !shown.contains("s3cret") && !shown.contains("gateway-user"),
            "{shown}"
        );
        assert!(
            shown.contains("Dify base: https://dify.example/v1/"),
            "{shown}"
        );
    }

    #[test]
    fn summary_names_models_base_and_auth() {
        let s = config(&valid()).unwrap().summary();
        assert_eq!(
            s,
            "models loaded: claude, gpt; Dify base: https://api.dify.ai/v1/; auth: 2 proxy key(s) required"
        );
    }
}
