//! Entry point: load and validate the configuration (environment and SSM parameters),
//! then serve under the Lambda runtime or locally. Nothing else.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use aws_config::SdkConfig;
use opendify::Config;
use opendify::config::{ConfigErrors, ssm};

fn main() -> ExitCode {
    // Before anything else: the TCP_NODELAY start-up probe runs this binary again.
    if let Some(code) = opendify::serve::tcp_nodelay_probe_child() {
        return code;
    }
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    opendify::telemetry::init(lambda);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opendify cannot start: could not create the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (config, aws) = match load_config().await {
            Ok(loaded) => loaded,
            Err(problems) => {
                // Plain text on stderr: readable in a terminal and in CloudWatch alike.
                // Exiting non-zero makes Lambda report an init error, so a broken
                // config never serves.
                eprintln!("opendify cannot start: {problems}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!("{}", config.summary());
        if lambda {
            // Read by lambda_runtime itself; logged so the mode shows in the init log.
            let concurrency = std::env::var("AWS_LAMBDA_MAX_CONCURRENCY")
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&n| n > 1);
            match concurrency {
                Some(n) => tracing::info!(
                    "serving through the Lambda runtime API with response streaming, up to {n} invocations at once"
                ),
                None => tracing::info!(
                    "serving through the Lambda runtime API with response streaming, one invocation at a time"
                ),
            }
        }
        match opendify::serve(config, lambda, aws).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("opendify stopped: {message}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The environment, with `*_PARAMETER` values read from SSM Parameter Store; every
/// problem of either source in one list. Also the AWS configuration, if SSM needed it,
/// so the conversation store reuses it instead of loading it again.
async fn load_config() -> Result<(Config, Option<SdkConfig>), ConfigErrors> {
    let env = |name: &str| std::env::var(name).ok();
    let aws = if ssm::any_requested(&env) {
        Some(opendify::serve::load_aws_config().await)
    } else {
        None
    };
    let client = aws.as_ref().map(aws_sdk_ssm::Client::new);
    let resolved = ssm::resolve(&env, client.as_ref()).await;
    for (var, name) in &resolved.sources {
        tracing::info!("{var} read from SSM parameter {name:?}");
    }
    let merged = |name: &str| resolved.values.get(name).cloned().or_else(|| env(name));
    let outcome = Config::from_lookup(merged);
    let mut problems = resolved.problems.clone();
    match outcome {
        Ok(config) if problems.is_empty() => return Ok((config, aws)),
        Ok(_) => {}
        Err(ConfigErrors(more)) => problems.extend(resolved.attribute(more)),
    }
    Err(ConfigErrors(problems))
}
