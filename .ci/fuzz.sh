#!/usr/bin/env bash
# Short fuzz pass for CI: every target in tests/fuzz/ runs for FUZZ_SECONDS (default 45)
# on the committed seed corpus; any crash, panic, timeout or OOM fails the script.
#
# Works on the stable toolchain: `--sanitizer none` keeps rustc to stable flags (coverage
# instrumentation and debug assertions only; AddressSanitizer needs `-Z` flags, i.e.
# nightly or RUSTC_BOOTSTRAP=1). The crate is `#![forbid(unsafe_code)]`, so what this pass
# looks for is panics, overflow, assertion failures and broken invariants, not memory errors.
#
# Run from anywhere: `.ci/fuzz.sh`. Needs crates.io only (cargo-fuzz, libfuzzer-sys).
# A crash leaves its input in tests/fuzz/artifacts/<target>/; replay it with
#   cargo fuzz run --fuzz-dir tests/fuzz --sanitizer none -a <target> <file>
# and keep it as a regression test under tests/fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
seconds="${FUZZ_SECONDS:-45}"
fuzz_dir=tests/fuzz
flags=(--fuzz-dir "$fuzz_dir" --sanitizer none --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# The fuzz crate is its own workspace with its own (git-ignored) lock file. Starting it
# from the main Cargo.lock fuzzes the exact dependency versions the service ships with.
cp Cargo.lock "$fuzz_dir/Cargo.lock"

started=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz build: $(($(date +%s) - started)) s"

# New inputs go to a scratch corpus, so the committed seeds stay as they are.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

final_stat() { # final_stat NAME LOG -> value of libFuzzer's final `stat::NAME:` line, or "?"
  local v
  v=$(grep -m1 "^stat::$1:" "$2" | awk '{print $2}') || true
  echo "${v:-?}"
}

passed=0
failed=0
for target in $(cargo fuzz list --fuzz-dir "$fuzz_dir"); do
  mkdir -p "$work/$target"
  log="$work/$target.log"
  seeds="$fuzz_dir/corpus/$target"
  status=ok
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: runaway memory is a bug.
  if ! cargo fuzz run "${flags[@]}" "$target" "$work/$target" "$seeds" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    status=FAILED
  fi
  last=$(grep -E '(DONE|pulse|NEW|REDUCE|INITED) +cov:' "$log" | tail -n 1) || true
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([^ ]+).*/\1/p' <<<"$last")
  printf 'fuzz %-10s %-6s %s executions (limit %s s, %s exec/s), cov %s, ft %s, corpus %s\n' \
    "$target" "$status" "$(final_stat number_of_executed_units "$log")" "$seconds" \
    "$(final_stat average_exec_per_sec "$log")" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  if [ "$status" = ok ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "---- $target: last 80 lines of the libFuzzer log ----"
    tail -n 80 "$log"
    ls -l "$fuzz_dir/artifacts/$target/" 2>/dev/null || true
  fi
done

echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
