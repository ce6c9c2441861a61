//! Logging. Levels follow Lambda's advanced logging controls (`AWS_LAMBDA_LOG_LEVEL`,
//! `AWS_LAMBDA_LOG_FORMAT=JSON`) first, then `RUST_LOG`, default `info`.
//!
//! The HTTP stack's own debug output can include raw headers (and so Authorization), so a
//! plain level such as `debug` keeps those crates at `info`; naming a crate explicitly in
//! `RUST_LOG` still turns it up.

use tracing_subscriber::EnvFilter;

const QUIET: &[&str] = &[
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "reqwest",
    "aws_smithy_runtime",
    "aws_config",
    "tower",
    "lambda_runtime_api_client",
];

pub fn filter_directives(level: Option<&str>) -> String {
    let level = level
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .unwrap_or("info");
    if level.contains('=') {
        return level.to_string();
    }
    let mut directives = level.to_ascii_lowercase();
    for krate in QUIET {
        directives.push_str(&format!(",{krate}=info"));
    }
    directives
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match (json, lambda) {
        (true, _) => builder.json().init(),
        (false, true) => builder.without_time().init(),
        (false, false) => builder.init(),
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
}
