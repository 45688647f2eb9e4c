#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need, builds once, runs every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace
