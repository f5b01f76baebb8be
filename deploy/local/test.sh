#!/usr/bin/env bash
# The project's test command: installs what the tests need, then builds and runs the whole suite
# once. Extra arguments go to the test runner (a filter, --no-capture, ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

deploy/local/install-deps.sh

# One runner invocation builds and runs everything; a separate `cargo build` first would only
# repeat work with other flags.
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --no-fail-fast)
else
  runner=(cargo test --workspace --no-fail-fast)
fi
echo "test: ${runner[*]} $*"
exec "${runner[@]}" "$@"
