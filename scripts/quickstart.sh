#!/usr/bin/env bash
# Sets up a fresh Debian machine, starts an all-in-one Skiff cluster (`skiff dev`: API server
# on the embedded store plus a node agent; data in .skiff/), runs the example Wasm workload
# and shows it with kubectl. Stop the cluster with `kill $(cat .skiff/skiff.pid)`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --bin skiff
data="$root/.skiff"
mkdir -p "$data"
if [ -f "$data/skiff.pid" ] && kill -0 "$(cat "$data/skiff.pid")" 2>/dev/null; then
  echo "skiff is already running (pid $(cat "$data/skiff.pid"))"
else
  rm -f "$data/kubeconfig"
  target/debug/skiff dev --data-dir "$data" --listen 127.0.0.1:6443 >"$data/skiff.log" 2>&1 &
  echo $! >"$data/skiff.pid"
  for _ in $(seq 100); do [ -f "$data/kubeconfig" ] && break; sleep 0.1; done
fi
export KUBECONFIG="$data/kubeconfig"
kubectl=".tools/bin/kubectl"
# Air-gapped style: load the example modules into the node's image store.
for ex in hello config-reader shared-volume hello-component http-hello; do
  target/debug/skiff images import "wasm-examples/out/$ex.wasm" --name "skiff.local/examples/$ex:1.0" --data-dir "$data/agent" >/dev/null
done
$kubectl wait --for=condition=Ready node --all --timeout=60s >/dev/null
$kubectl apply -f wasm-examples/hello/pod.yaml -f wasm-examples/config-reader/pod.yaml -f wasm-examples/http-hello/pod.yaml
$kubectl wait --for=jsonpath='{.status.phase}'=Succeeded pod/hello-wasm pod/config-reader --timeout=60s >/dev/null
$kubectl wait --for=condition=Ready pod/http-hello --timeout=60s >/dev/null
$kubectl get nodes,pods -o wide
echo
$kubectl logs hello-wasm
$kubectl logs config-reader
# The wasi:http component, served at its pod's IP (an instance per request).
ip=$($kubectl get pod http-hello -o jsonpath='{.status.podIP}')
curl -s "http://$ip:8080/from/quickstart"
echo
echo "Skiff is running. Use it with:  export KUBECONFIG=$data/kubeconfig; $root/.tools/bin/kubectl get pods"
