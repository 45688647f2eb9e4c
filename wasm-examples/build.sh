#!/usr/bin/env bash
# Builds the Wasm examples (WASI preview 1 command modules from C, and a preview 2 command
# component made from one) into wasm-examples/out.
# Needs Debian's clang, lld, wasi-libc and libclang-rt-14-dev-wasm32 (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out
for ex in hello config-reader shared-volume; do
  src=$(ls "$ex"/*.c)
  clang --target=wasm32-wasi -O2 -Wl,--strip-all -o "out/$ex.wasm" $src
done
# The hello example again, as a preview 2 command component.
cargo run -q -p skiff-wasm-tools --bin componentize -- out/hello.wasm out/hello-component.wasm
ls -l out/*.wasm
