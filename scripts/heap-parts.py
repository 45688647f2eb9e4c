#!/usr/bin/env python3
"""Sums a heaptrack flame-graph stack file (heaptrack_print -F, cost type `leaked`, usually
`--diff` of two runs of `skiff bench pods` with N and 2N idle pods) per part of a pod, and
prints the table in KiB per pod. See node/src/bench/heap.rs.

usage: heap-parts.py STACKS PODS [--sites]
"""
import sys
from collections import defaultdict

# (part, substrings of a frame): the first part any frame of a stack matches, searched from
# the innermost frame outwards, takes the stack's bytes. Order within a frame matters little;
# the innermost match wins so a wasmtime Store made by the runtime counts as wasmtime.
PARTS = [
    ("DNS resolver (hickory)", ["hickory_resolver::", "hickory_proto::", "hickory_net::"]),
    ("WASI context", ["wasmtime_wasi::ctx", "WasiCtxBuilder", "wasmtime_wasi::p1::WasiP1Ctx",
                      "wasmtime_wasi::p1::", "wasmtime_wasi::"]),
    ("wasmtime Store/instance", ["wasmtime::runtime::store", "wasmtime::runtime::instance",
                                 "wasmtime::runtime::vm::", "wasmtime::runtime::func",
                                 "wasmtime::", "wasmtime_fiber::", "wasmtime_internal"]),
    ("log writers", ["skiff_node::logs::"]),
    ("probes", ["skiff_node::agent::probes"]),
    ("Service environment", ["skiff_node::agent::pod::service_env", "PodCtx::env"]),
    ("sandbox / network", ["skiff_node::sandbox::", "skiff_node::agent::pod::pod_network",
                           "skiff_node::agent::pod::sandbox"]),
    ("pod events", ["skiff_node::agent::events"]),
    ("status writes", ["skiff_node::agent::pod::write_status", "status", "Status"]),
    ("watch: pod objects (kube, serde)", ["kube_client::", "kube_runtime::", "serde_json::",
                                          "k8s_openapi::"]),
    ("tokio tasks", ["tokio::runtime::task", "tokio::task::spawn", "tokio::runtime::blocking"]),
    ("channels", ["tokio::sync::mpsc", "tokio::sync::watch", "tokio::sync::oneshot",
                  "tokio::sync::broadcast"]),
]


def part_of(frames):
    for f in reversed(frames):
        for part, keys in PARTS:
            if any(k in f for k in keys):
                return part
    return "other"


def innermost_own(frames):
    for f in reversed(frames):
        if f.startswith("skiff"):
            return f
    return frames[-1] if frames else "?"


def main():
    path, pods = sys.argv[1], int(sys.argv[2])
    sites = "--sites" in sys.argv
    total = 0
    per = defaultdict(int)
    by_site = defaultdict(int)
    for line in open(path, errors="replace"):
        stack, _, cost = line.rstrip("\n").rpartition(" ")
        try:
            cost = int(cost)
        except ValueError:
            continue
        frames = stack.split(";")
        part = part_of(frames)
        per[part] += cost
        by_site[(part, innermost_own(frames))] += cost
        total += cost
    print(f"| part | KiB per pod |\n| --- | ---: |")
    for part, b in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {b / 1024 / pods:.1f} |")
    print(f"| heap, total | {total / 1024 / pods:.1f} |")
    if sites:
        print()
        for (part, site), b in sorted(by_site.items(), key=lambda kv: -kv[1])[:60]:
            print(f"{b / 1024 / pods:8.2f} KiB  {part:<28} {site[:160]}")


if __name__ == "__main__":
    main()
