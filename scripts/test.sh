#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need, builds once, runs every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# A fresh clone gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace
