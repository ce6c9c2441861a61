//! Client scripts (tests/clients/) run against a proxy: one process per script, every
//! case in one run, a JSON report on stdout. Shared by tests/sdk_clients.rs and
//! tests/sdk_responses.rs.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A finished script run: its JSON report, its stderr and how long it took.
pub struct ScriptRun {
    /// The script's name in failures.
    pub name: String,
    pub json: Value,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `program script` from the repository root with only `vars` (plus PATH and HOME)
/// in its environment, so nothing from the outside (proxies, OPENAI_* settings) reaches
/// the client. The child is killed (by its PID, through `kill_on_drop`) if it overruns
/// `deadline`. Exit status 3 means a client package is missing: `install_hint` says what
/// to run. `name` names the script in failures.
pub async fn run_script(
    name: &str,
    program: &Path,
    script: &Path,
    vars: &[(&str, String)],
    deadline: Duration,
    install_hint: &str,
) -> ScriptRun {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {name} client script: {e}; {install_hint}"));
    let output = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {name} client script ran longer than {deadline:?}"))
        .expect("waiting for the client script");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.code() == Some(3) {
        panic!("{install_hint}\n{stderr}");
    }
    assert!(
        output.status.success(),
        "the {name} client script failed ({}):\nstderr:\n{stderr}\nstdout:\n{stdout}",
        output.status
    );
    let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the {name} client script printed no JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"
        )
    });
    ScriptRun {
        name: name.to_string(),
        json,
        stderr,
        took,
    }
}

impl ScriptRun {
    /// One case's result; panics with the whole report if the case is missing.
    pub fn case(&self, case: &str) -> &Value {
        let v = &self.json["cases"][case];
        assert!(
            v.is_object(),
            "{}: no result for case {case}:\n{:#}",
            self.name,
            self.json
        );
        v
    }

    /// A case that must have succeeded (no exception, nothing unexpected).
    pub fn ok(&self, case: &str) -> &Value {
        let v = self.case(case);
        assert!(
            v.get("raised").is_none_or(Value::is_null) && v.get("unexpected").is_none(),
            "{} {case}: {v:#}",
            self.name
        );
        v
    }

    /// The error a case raised.
    pub fn raised(&self, case: &str) -> &Value {
        let v = self.case(case);
        assert!(
            v.get("unexpected").is_none() && v["raised"].is_object(),
            "{} {case}: expected an exception, got {v:#}",
            self.name
        );
        &v["raised"]
    }
}
