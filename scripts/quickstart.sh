#!/usr/bin/env bash
# Sets up a fresh Debian machine, starts Skiff on the embedded store (data in .skiff/),
# applies the example workload and shows it with kubectl. Stop the server with
# `kill $(cat .skiff/server.pid)`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --bin skiff
data="$root/.skiff"
mkdir -p "$data"
if [ -f "$data/server.pid" ] && kill -0 "$(cat "$data/server.pid")" 2>/dev/null; then
  echo "skiff is already running (pid $(cat "$data/server.pid"))"
else
  rm -f "$data/kubeconfig"
  target/debug/skiff server --data-dir "$data" --listen 127.0.0.1:6443 >"$data/server.log" 2>&1 &
  echo $! >"$data/server.pid"
  for _ in $(seq 100); do [ -f "$data/kubeconfig" ] && break; sleep 0.1; done
fi
export KUBECONFIG="$data/kubeconfig"
kubectl=".tools/bin/kubectl"
$kubectl apply -f examples/hello-deployment.yaml
$kubectl get all -n hello -o wide
echo
echo "Skiff is running. Use it with:  export KUBECONFIG=$data/kubeconfig; $root/.tools/bin/kubectl get ns"
