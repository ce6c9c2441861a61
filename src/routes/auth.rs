//! Proxy key check, in constant time, on every route.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::config::Auth;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Auth::Keys(keys) = &state.config().auth else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(token) if key_matches(token, keys.iter().map(|k| k.expose())) => {
            next.run(request).await
        }
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// `Bearer <token>`, scheme case-insensitive.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares against every key without stopping early, so timing does not reveal which key
/// or how much of one matched.
fn key_matches<'a>(token: &str, keys: impl Iterator<Item = &'a str>) -> bool {
    let mut found = subtle::Choice::from(0);
    for key in keys {
        found |= token.as_bytes().ct_eq(key.as_bytes());
    }
    found.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("bearer   sk-1 "), Some("sk-1"));
        assert_eq!(bearer_token("Basic sk-1"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("sk-1"), None);
    }

    #[test]
    fn any_configured_key_matches() {
        let keys = ["sk-one", "sk-two"];
        assert!(key_matches("sk-two", keys.into_iter()));
        assert!(!key_matches("sk-tw", keys.into_iter()));
        assert!(!key_matches("", keys.into_iter()));
    }
}
