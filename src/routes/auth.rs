//! Proxy key check, in constant time, on every route. The matched key's model allow-list
//! and tenant travel with the request as [`ModelAccess`] and [`Tenant`] extensions.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::{Auth, ModelAccess, Tenant};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Auth::Keys(keys) = &state.config().auth else {
        request.extensions_mut().insert(ModelAccess::all());
        request.extensions_mut().insert(Tenant::open());
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let matched =
        presented.and_then(|token| matching_key(token, keys.iter().map(|k| k.key.expose())));
    match matched {
        Some(i) => {
            // An Arc clone: the allow-list itself is shared, never copied per request.
            request.extensions_mut().insert(keys[i].models.clone());
            request.extensions_mut().insert(keys[i].tenant.clone());
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
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

/// Index of the key equal to `token`. Every key is compared, without stopping early or
/// branching on a comparison, so timing does not reveal which key or how much of one
/// matched (only lengths differ in time, and keys are not secret in length).
fn matching_key<'a>(token: &str, keys: impl Iterator<Item = &'a str>) -> Option<usize> {
    let mut found: u32 = 0;
    for (i, key) in keys.enumerate() {
        let is_match = token.as_bytes().ct_eq(key.as_bytes());
        found = u32::conditional_select(&found, &(i as u32 + 1), is_match);
    }
    (found as usize).checked_sub(1)
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
        assert_eq!(matching_key("sk-two", keys.into_iter()), Some(1));
        assert_eq!(matching_key("sk-one", keys.into_iter()), Some(0));
        assert_eq!(matching_key("sk-tw", keys.into_iter()), None);
        assert_eq!(matching_key("", keys.into_iter()), None);
    }
}
