//! What a model provider said, read from Dify's `completion_request_error` message. Dify
//! wraps every provider failure in that one code, with the provider's text in the message
//! (`[openai] Rate Limit Error, Error code: 429 - {...}`), so the client can only be told
//! whether to fix its request, wait or give up by reading that text. Pure.

/// The kind of provider failure, in the order it is checked: the provider's own words
/// (context length, quota) before Dify's category prefix, which is coarser (a quota error
/// arrives as a "Rate Limit Error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderFailure {
    /// The conversation does not fit the model: the client must shorten it.
    ContextLength,
    /// The provider account has no credit or quota left: waiting will not help.
    Quota,
    /// The provider rejected the Dify app's credentials: an operator must fix them.
    Auth,
    /// The provider throttles: a later retry can succeed.
    RateLimit,
    /// The provider is overloaded, down or unreachable from Dify: a retry can succeed.
    Unavailable,
    /// The provider refused the request as malformed: resending it will not help.
    BadRequest,
    /// Wording we do not recognise.
    Unknown,
}

const CONTEXT_LENGTH: &[&str] = &[
    "maximum context length",
    "context_length_exceeded",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "reduce the length of the messages",
    "exceeds the maximum number of tokens",
    "string_above_max_length",
];
const QUOTA: &[&str] = &[
    "insufficient_quota",
    "exceeded your current quota",
    "credit balance is too low",
    "billing_hard_limit_reached",
    "billing hard limit",
    "quota exceeded",
    "out of credits",
];
const AUTH: &[&str] = &[
    "incorrect model credentials",
    "incorrect api key",
    "invalid api key",
    "invalid_api_key",
    "invalid x-api-key",
    "authentication_error",
    "authenticationerror",
    "invalid subscription key",
    "api key not valid",
    "unauthorized",
];
const RATE_LIMIT: &[&str] = &[
    "rate limit",
    "rate_limit",
    "ratelimit",
    "too many requests",
    "resource_exhausted",
];
const UNAVAILABLE: &[&str] = &[
    "server unavailable",
    "service unavailable",
    "overloaded",
    "connection error",
    "connection refused",
    "connection reset",
    "timed out",
    "timeout",
    "bad gateway",
    "internal server error",
    "internalservererror",
];
const BAD_REQUEST: &[&str] = &["bad request", "invalid_request_error", "badrequesterror"];

/// Classifies a provider failure by its text. Case-insensitive; status codes count only as
/// whole numbers (`429`, not the `429` inside `14290 tokens`).
pub fn classify(message: &str) -> ProviderFailure {
    let m = message.to_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if any(CONTEXT_LENGTH) {
        ProviderFailure::ContextLength
    } else if any(QUOTA) {
        ProviderFailure::Quota
    } else if any(AUTH) || has_status(&m, &["401", "403"]) {
        ProviderFailure::Auth
    } else if any(RATE_LIMIT) || has_status(&m, &["429"]) {
        ProviderFailure::RateLimit
    } else if any(UNAVAILABLE) || has_status(&m, &["500", "502", "503", "504", "529"]) {
        ProviderFailure::Unavailable
    } else if any(BAD_REQUEST) || has_status(&m, &["400", "404", "422"]) {
        ProviderFailure::BadRequest
    } else {
        ProviderFailure::Unknown
    }
}

/// Whether one of `codes` occurs as a number of its own in `text`.
fn has_status(text: &str, codes: &[&str]) -> bool {
    let bytes = text.as_bytes();
    codes.iter().any(|code| {
        text.match_indices(code).any(|(i, _)| {
            let before = i.checked_sub(1).and_then(|j| bytes.get(j));
            let after = bytes.get(i + code.len());
            !before.is_some_and(u8::is_ascii_digit)
                && !after.is_some_and(u8::is_ascii_digit)
                // "4.29" or "1,429" are not status codes either.
                && !before.is_some_and(|b| *b == b'.' || *b == b',')
        })
    })
}

/// The wait a provider asks for, in whole seconds (rounded up), from the wordings OpenAI
/// ("Please try again in 20s", "in 1.5s", "in 120ms") and Azure ("Please retry after 6
/// seconds") use. Bounded to 60 s: the OpenAI SDKs ignore longer waits.
pub fn retry_after_seconds(message: &str) -> Option<u64> {
    let m = message.to_lowercase();
    for marker in ["try again in ", "retry after ", "retry in "] {
        let Some(i) = m.find(marker) else { continue };
        let rest = &m[i + marker.len()..];
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let Ok(value) = number.parse::<f64>() else {
            continue;
        };
        let unit = rest[number.len()..].trim_start();
        let seconds = if unit.starts_with("ms") {
            value / 1000.0
        } else if unit.starts_with('m') {
            // "6m0s", "5 minutes": the seconds after the minutes do not matter at this bound.
            value * 60.0
        } else {
            value
        };
        if !seconds.is_finite() || seconds < 0.0 {
            continue;
        }
        return Some((seconds.ceil() as u64).clamp(1, 60));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::ProviderFailure::*;
    use super::*;

    /// Provider failures as Dify passes them on in `completion_request_error`: Dify's own
    /// category prefix (`[provider] Rate Limit Error, …` for the built-in and plugin model
    /// runtimes, `[provider] Error: …` otherwise) followed by the provider SDK's text.
    #[test]
    fn realistic_provider_messages() {
        let rows: &[(&str, ProviderFailure)] = &[
            // OpenAI
            (
                "[openai] Bad Request Error, Error code: 400 - {'error': {'message': \"This model's maximum context length is 8192 tokens. However, your messages resulted in 9013 tokens. Please reduce the length of the messages.\", 'type': 'invalid_request_error', 'param': 'messages', 'code': 'context_length_exceeded'}}",
                ContextLength,
            ),
            (
                "[openai] Error: Error code: 400 - {'error': {'message': \"This model's maximum context length is 128000 tokens.\", 'type': 'invalid_request_error', 'param': 'messages', 'code': 'context_length_exceeded'}}",
                ContextLength,
            ),
            (
                "[openai] Rate Limit Error, Error code: 429 - {'error': {'message': 'Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 1.2s.', 'type': 'tokens', 'param': None, 'code': 'rate_limit_exceeded'}}",
                RateLimit,
            ),
            (
                "[openai] Rate Limit Error, Error code: 429 - You exceeded your current quota.",
                Quota,
            ),
            (
                "[openai] Rate Limit Error, Error code: 429 - {'error': {'message': 'You exceeded your current quota, please check your plan and billing details.', 'type': 'insufficient_quota', 'param': None, 'code': 'insufficient_quota'}}",
                Quota,
            ),
            ("[openai] Error: Incorrect API key provided", Auth),
            (
                "[openai] Incorrect model credentials provided, please check and try again.",
                Auth,
            ),
            (
                "[openai] Error: Error code: 401 - {'error': {'message': 'Incorrect API key provided: sk-abc***xyz.', 'type': 'invalid_request_error', 'code': 'invalid_api_key'}}",
                Auth,
            ),
            ("[openai] Connection Error, Connection error.", Unavailable),
            ("[openai] Connection Error, Request timed out.", Unavailable),
            (
                "[openai] Server Unavailable Error, Error code: 503 - {'error': {'message': 'The engine is currently overloaded, please try again later', 'type': 'server_error'}}",
                Unavailable,
            ),
            (
                "[openai] Bad Request Error, Error code: 400 - {'error': {'message': \"Invalid value for 'temperature'.\", 'type': 'invalid_request_error', 'param': 'temperature', 'code': 'invalid_value'}}",
                BadRequest,
            ),
            // Anthropic
            (
                "[anthropic] Bad Request Error, Error code: 400 - {'type': 'error', 'error': {'type': 'invalid_request_error', 'message': 'prompt is too long: 215332 tokens > 200000 maximum'}}",
                ContextLength,
            ),
            (
                "[anthropic] Bad Request Error, Error code: 400 - {'type': 'error', 'error': {'type': 'invalid_request_error', 'message': 'Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.'}}",
                Quota,
            ),
            (
                "[anthropic] Error: Error code: 401 - {'type': 'error', 'error': {'type': 'authentication_error', 'message': 'invalid x-api-key'}}",
                Auth,
            ),
            (
                "[anthropic] Rate Limit Error, Error code: 429 - {'type': 'error', 'error': {'type': 'rate_limit_error', 'message': 'Number of request tokens has exceeded your per-minute rate limit'}}",
                RateLimit,
            ),
            (
                "[anthropic] Server Unavailable Error, Error code: 529 - {'type': 'error', 'error': {'type': 'overloaded_error', 'message': 'Overloaded'}}",
                Unavailable,
            ),
            // Azure OpenAI
            (
                "[azure_openai] Rate Limit Error, Error code: 429 - {'error': {'code': '429', 'message': 'Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-06-01 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds.'}}",
                RateLimit,
            ),
            (
                "[azure_openai] Error: Error code: 401 - {'statusCode': 401, 'message': 'Access denied due to invalid subscription key or wrong API endpoint.'}",
                Auth,
            ),
            (
                "[azure_openai] Bad Request Error, Error code: 400 - {'error': {'message': \"This model's maximum context length is 16385 tokens.\", 'code': 'context_length_exceeded'}}",
                ContextLength,
            ),
            // Other wordings
            (
                "[google] Error: 429 Resource has been exhausted (e.g. check quota).",
                RateLimit,
            ),
            ("[ollama] Error: something odd happened", Unknown),
            ("", Unknown),
            // A number that merely contains a status code is not one.
            ("[x] Error: request 14290 failed", Unknown),
        ];
        for (message, expected) in rows {
            assert_eq!(classify(message), *expected, "{message}");
        }
    }

    #[test]
    fn retry_after_from_provider_wording() {
        assert_eq!(retry_after_seconds("Please try again in 1.2s."), Some(2));
        assert_eq!(retry_after_seconds("Please try again in 20s."), Some(20));
        assert_eq!(retry_after_seconds("Please try again in 120ms."), Some(1));
        assert_eq!(
            retry_after_seconds("Please retry after 6 seconds."),
            Some(6)
        );
        assert_eq!(retry_after_seconds("Please try again in 5m"), Some(60));
        assert_eq!(retry_after_seconds("Please try again later"), None);
        assert_eq!(retry_after_seconds("retry after ."), None);
    }
}
