#!/bin/sh
# Builds the benchmarks' peer, the wasmtime CLI of the version Skiff embeds, once into a cache
# (never in CI), and prints its path: `skiff bench http --wasmtime "$(scripts/wasmtime-peer.sh)"`.
set -eu
version=48.0.8
cache=${SKIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skiff}/wasmtime-cli-$version
if [ ! -x "$cache/bin/wasmtime" ]; then
  cargo install wasmtime-cli@$version --locked --root "$cache" --target-dir "$cache/target" >&2
  rm -rf "$cache/target"
fi
echo "$cache/bin/wasmtime"
