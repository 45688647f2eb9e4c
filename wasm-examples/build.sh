#!/usr/bin/env bash
# Builds the Wasm examples into wasm-examples/out: WASI preview 1 command modules from C, a
# preview 2 command component made from one, a wasi:http handler component, and a network
# probe (wasi:sockets, outgoing wasi:http).
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
# The wasi:http handler: C bindings for its world (which includes wasi:http/proxy, from the
# WIT that the pinned wasmtime-wasi-http crate ships; cargo metadata says where cargo put
# it), built as a reactor and made a component with the proxy adapter.
wit="$(cargo metadata -q --format-version 1 --all-features | python3 -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in pkgs if p["name"] == "wasmtime-wasi-http"))
')/wit"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
cargo run -q -p skiff-wasm-tools --bin wit-c -- "$wit" http-hello/world.wit "$gen"
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wl,--strip-all -I "$gen" -o "$gen/handler.wasm" \
  http-hello/handler.c "$gen/http_hello.c" "$gen/http_hello_component_type.o"
cargo run -q -p skiff-wasm-tools --bin componentize -- --proxy "$gen/handler.wasm" out/http-hello.wasm
# The network probe: a command component whose C code calls wasi:sockets and wasi:http's
# outgoing handler through bindings for its world (main through the command adapter).
mkdir -p "$gen/net-probe"
cargo run -q -p skiff-wasm-tools --bin wit-c -- "$wit" net-probe/world.wit "$gen/net-probe"
clang --target=wasm32-wasi -O2 -Wl,--strip-all -I "$gen/net-probe" -o "$gen/net-probe.wasm" \
  net-probe/probe.c "$gen/net-probe/net_probe.c" "$gen/net-probe/net_probe_component_type.o"
cargo run -q -p skiff-wasm-tools --bin componentize -- "$gen/net-probe.wasm" out/net-probe.wasm
ls -l out/*.wasm
