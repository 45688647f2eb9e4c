#!/usr/bin/env bash
# Installs everything the tests and examples need on a fresh Debian machine (idempotent):
# Debian packages (fuse3: the power-loss test's file system; runc, CNI plugins), the pinned kubectl and helm,
# and the Python Kubernetes client.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools"

need_pkgs=()
# runc, the CNI plugins (with iptables, which bridge and portmap drive), nftables and
# busybox-static: OCI containers and pod networks; iproute2: the agent's bridge cleanup.
for p in unzip python3-venv curl clang lld wasi-libc libclang-rt-14-dev-wasm32 docker-registry apache2-utils umoci skopeo fuse3 \
    runc containernetworking-plugins iptables nftables iproute2 busybox-static; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q "${need_pkgs[@]}" >/dev/null; }
fi

"$root/scripts/install-kubectl.sh"

# kubectl 1.32 (an older client the tests also drive) comes with google-cloud-cli's kubectl
# package on this machine image; install it if the image lacks it.
if [ ! -x /usr/lib/google-cloud-sdk/bin/kubectl.1.32 ]; then
  apt-get install -y -q kubectl >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q kubectl >/dev/null; } \
    || echo "warning: kubectl 1.32 (google-cloud-cli's kubectl package) is not installable here; its test will fail" >&2
fi

# The Wasm examples, built from source.
"$root/wasm-examples/build.sh" >/dev/null

# The official Python client and gRPC's own health server (for grpc probes), pinned, in
# their own virtualenv.
if [ ! -x "$tools/venv/bin/python" ] || ! "$tools/venv/bin/python" -c 'import kubernetes, grpc_health' 2>/dev/null; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q kubernetes==33.1.0 grpcio==1.85.3 grpcio-health-checking==1.85.1
fi
