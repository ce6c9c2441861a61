//! Logging. Levels follow Lambda's advanced logging controls (`AWS_LAMBDA_LOG_LEVEL`,
//! `AWS_LAMBDA_LOG_FORMAT=JSON`) first, then `RUST_LOG`, default `info`.
//!
//! Below `info`, the runtime and HTTP crates log payloads: `lambda_runtime` traces each
//! raw event (the client's `Authorization` header and body), the AWS SDK traces requests
//! and responses (SSM parameter values), reqwest traces the bytes it reads, axum the
//! rejected input. So those crates are capped at `info` by a filter of their own that no
//! level or `RUST_LOG` directive lifts: nothing secret is logged at any level.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Target prefixes (crate names) capped at `info`; a prefix covers every crate it starts
/// (`aws_smithy` all of `aws_smithy_*`, `lambda_runtime` also `lambda_runtime_api_client`).
const CAPPED: &[&str] = &[
    "lambda_runtime",
    "lambda_http",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "tower",
    "axum",
    "aws_smithy",
    "aws_sdk",
    "aws_config",
    "aws_runtime",
    "aws_credential_types",
];

/// The `EnvFilter` directives for a configured level (a plain level, or `RUST_LOG`-style
/// directives as given). The caps of [`caps`] apply on top, whatever this says.
pub fn filter_directives(level: Option<&str>) -> String {
    let level = level
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .unwrap_or("info");
    if level.contains('=') {
        return level.to_string();
    }
    let mut directives = level.to_ascii_lowercase();
    for krate in CAPPED {
        directives.push_str(&format!(",{krate}=info"));
    }
    directives
}

/// The second, fixed filter: everything passes except the capped crates' output below
/// `info`. A separate layer, so an event must pass both it and the configured filter.
pub fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED.iter().map(|krate| (*krate, LevelFilter::INFO)))
}

/// Installs the global subscriber. `lambda` drops timestamps (CloudWatch adds its own).
pub fn init(lambda: bool) {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    let filter = EnvFilter::try_new(filter_directives(level.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colour only for a person at a terminal; CloudWatch and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let subscriber = tracing_subscriber::registry().with(filter).with(caps());
    match (json, lambda) {
        (true, _) => subscriber.with(layer.json()).init(),
        (false, true) => subscriber.with(layer.without_time()).init(),
        (false, false) => subscriber.with(layer).init(),
    }
}

/// An error with its causes, on one line: top-level messages hide the cause (reqwest's
/// "error sending request"), the chain names it. Layers that repeat their source in their
/// own message are not repeated.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_levels_keep_http_crates_quiet() {
        let d = filter_directives(Some("DEBUG"));
        assert!(
            d.starts_with("debug,") && d.contains("hyper=info") && d.contains("reqwest=info"),
            "{d}"
        );
        assert_eq!(
            filter_directives(Some("opendify=trace,hyper=debug")),
            "opendify=trace,hyper=debug"
        );
        assert!(filter_directives(None).starts_with("info,"));
    }

    /// What the configured filter plus the caps let through, as written by the fmt layer.
    fn logged(directives: &str, emit: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()));
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(filter_directives(Some(directives))))
            .with(caps())
            .with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
    }

    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn no_level_or_directive_lifts_the_payload_crates_above_info() {
        for directives in [
            "trace",
            "TRACE",
            "lambda_runtime=trace,aws_smithy_runtime=trace,reqwest=trace",
            "trace,lambda_runtime::layers::api_response=trace",
        ] {
            let log = logged(directives, || {
                tracing::trace!(target: "lambda_runtime::layers::api_response", body = "Bearer sk-raw-event", "raw JSON event received from Lambda");
                tracing::debug!(target: "lambda_runtime_api_client", "debug-runtime-client");
                tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", response = "ssm-value", "received response from service");
                tracing::trace!(target: "reqwest::connect", "read: dify-answer-bytes");
                tracing::trace!(target: "hyper::proto::h1::role", "hyper-trace");
                tracing::info!(target: "lambda_runtime", "runtime-info-kept");
                tracing::trace!(target: "opendify::routes", "own-trace-kept");
            });
            for hidden in [
                "sk-raw-event",
                "debug-runtime-client",
                "ssm-value",
                "dify-answer-bytes",
                "hyper-trace",
            ] {
                assert!(
                    !log.contains(hidden),
                    "{directives}: {hidden} logged:\n{log}"
                );
            }
            assert!(log.contains("runtime-info-kept"), "{directives}: {log}");
            if directives.to_ascii_lowercase().starts_with("trace") {
                assert!(log.contains("own-trace-kept"), "{directives}: {log}");
            }
        }
    }
}
