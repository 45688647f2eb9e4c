#!/usr/bin/env bash
# Builds the Wasm examples (WASI preview 1 command modules, from C) into wasm-examples/out.
# Needs Debian's clang, lld, wasi-libc and libclang-rt-14-dev-wasm32 (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out
for ex in hello config-reader shared-volume; do
  src=$(ls "$ex"/*.c)
  clang --target=wasm32-wasi -O2 -Wl,--strip-all -o "out/$ex.wasm" $src
done
ls -l out/*.wasm
