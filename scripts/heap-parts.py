#!/usr/bin/env python3
"""Sums a heaptrack flame-graph stack file (heaptrack_print -F, cost type `leaked`, usually
`--diff` of two runs of `skiff bench pods` with N and 2N idle pods) per part of a pod, and
prints the table in KiB per pod. See node/src/bench/heap.rs.

usage: heap-parts.py STACKS PODS [--sites]
"""
import sys
from collections import defaultdict

# (part, substrings of a frame): a stack's bytes go to the first part, in this order, one of
# whose substrings some frame of the stack holds. Specific parts come first, then the kind of
# allocation (a task, a channel), then where in the agent it was made.
PARTS = [
    ("DNS resolver (hickory)", ["hickory_resolver::", "hickory_proto::", "hickory_net::",
                                "dns::lookup::Resolver"]),
    ("log writers", ["skiff_node::logs::"]),
    ("probes", ["skiff_node::agent::probes"]),
    ("Service environment", ["skiff_node::agent::pod::service_env", "PodCtx::env"]),
    ("sandbox, network", ["skiff_node::sandbox::", "skiff_node::agent::pod::pod_network",
                          "skiff_node::agent::pod::prepare_sandbox"]),
    ("pod events", ["skiff_node::agent::events"]),
    ("status copies (reporter, writer)", ["Reporter::report", "write_status", "initial_status"]),
    ("WASI context", ["wasmtime_wasi::", "WasiCtxBuilder", "GuestConfig::builder"]),
    ("wasmtime Store, instance", ["wasmtime::", "wasmtime_internal", "wasmtime_environ::"]),
    ("tokio tasks (futures)", ["spawn<> (spawn.rs)", "spawn<> (handle.rs)", "tokio::task::spawn",
                               "tokio::runtime::task::core::Cell", "RawTask::new",
                               "tokio::runtime::task::new_task"]),
    ("channels", ["tokio::sync::mpsc", "tokio::sync::watch", "tokio::sync::oneshot",
                  "tokio::sync::broadcast", "channel<> (", "(block.rs)"]),
    ("pod worker state", ["skiff_node::agent::pod::"]),
    ("pod watch, pod objects (kube, serde)", ["kube_client::", "kube_runtime::",
                                              "serde_json::", "k8s_openapi::",
                                              "skiff_node::agent::run"]),
]

GENERIC = ("alloc::", "core::", "std::", "_R", "__rust", "alloc_impl", "alloc (", "allocate",
           "box_new", "new<> (boxed", "new<> (sync", "pin<> (", "<alloc", "_$LT$alloc",
           "_$LT$core", "grow", "reserve", "with_capacity", "from_iter", "to_vec", "clone",
           "extend", "push", "collect", "try_allocate")


def part_of(frames):
    for part, keys in PARTS:
        if any(k in f for f in frames for k in keys):
            return part
    return "other"


def site_of(frames):
    """The innermost few frames past the allocator's own, shortened."""
    out = []
    for f in reversed(frames):
        if f.startswith(GENERIC) or any(g in f for g in ("(alloc.rs)", "(raw_vec", "(boxed.rs)")):
            continue
        out.append(f.split("::h")[0][:70])
        if len(out) == 4:
            break
    return " <- ".join(out)


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
        by_site[(part, site_of(frames))] += cost
        total += cost
    print(f"| part | KiB per pod |\n| --- | ---: |")
    for part, b in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {b / 1024 / pods:.1f} |")
    print(f"| heap, total | {total / 1024 / pods:.1f} |")
    if sites:
        print()
        for (part, site), b in sorted(by_site.items(), key=lambda kv: -kv[1])[:60]:
            print(f"{b / 1024 / pods:8.2f} KiB  {part:<28} {site[:230]}")


if __name__ == "__main__":
    main()
