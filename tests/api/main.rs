//! Integration tests over real HTTP: the opendify router on a loopback port in front of a
//! fake Dify that speaks Dify's wire format. One test binary, a module per feature.

#[path = "../support/mod.rs"]
mod support;

mod helpers;

mod apps;
mod audio;
mod auth_and_routes;
mod chat_blocking;
mod chat_errors;
mod chat_stream;
mod conversations;
mod files;
mod hardening;
mod inputs;
mod isolation;
mod linear;
mod models;
mod provider_errors;
mod reasoning;
mod request_safety;
mod responses;
mod runtime_limits;
mod stream_ends;
mod unsupported;
