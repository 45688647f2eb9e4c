//! Where the bench agent's heap goes: with `SKIFF_BENCH_AGENT_HEAPTRACK=<file>` the agent
//! runs under heaptrack's preload library, which records every allocation (with its
//! stack) to `<file>`; a `system-alloc` build is needed, as mimalloc's allocations never
//! reach the malloc heaptrack interposes. The agent is killed at the end of the bench, so
//! what it still held then, the trace's leaks, is the idle pods' state plus the agent's own.
//!
//! Turn the raw trace into a report and sum it per part of a pod:
//! ```sh
//! /usr/lib/heaptrack/libexec/heaptrack_interpret < raw | zstd > t.zst
//! heaptrack_print -f t.zst --print-leaks 1 --print-peaks 0 --print-allocators 0 \
//!   --print-temporary 0 --print-flamegraph stacks.txt --flamegraph-cost-type leaked
//! ```
//! then [`parts`] (`skiff bench heap-parts stacks.txt --pods N`) attributes each stack's
//! bytes to the innermost frame that names a part.

/// heaptrack's preload library, where its `heaptrack` script looks for it (`../lib/heaptrack`
/// beside the script on PATH).
fn preload() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|bin| bin.join("../lib/heaptrack/libheaptrack_preload.so"))
        .find(|lib| lib.exists())
}

/// Has the agent's allocations recorded when `SKIFF_BENCH_AGENT_HEAPTRACK` names a file.
pub(crate) fn trace_agent(agent: &mut std::process::Command) -> Result<(), super::BenchError> {
    let Some(out) = std::env::var_os("SKIFF_BENCH_AGENT_HEAPTRACK") else {
        return Ok(());
    };
    let lib = preload().ok_or_else(|| {
        super::BenchError::Failed("SKIFF_BENCH_AGENT_HEAPTRACK: heaptrack is not installed".into())
    })?;
    agent.env("LD_PRELOAD", lib).env("DUMP_HEAPTRACK_OUTPUT", out);
    Ok(())
}
