//! Where the bench agent's heap goes: with `SKIFF_BENCH_AGENT_HEAPTRACK=<file>` the agent
//! runs under heaptrack's preload library, which records every allocation (with its
//! stack) to `<file>`; a `system-alloc` build is needed, as mimalloc's allocations never
//! reach the malloc heaptrack interposes. The agent is killed at the end of the bench, so
//! what it still held then, the trace's leaks, is the idle pods' state plus the agent's own.
//!
//! Per pod: run the bench twice, with N and 2N idle pods, and sum what the second run held
//! more than the first per part (`scripts/heap-parts.py`):
//! ```sh
//! cargo build --release --features system-alloc
//! for n in 300 600; do
//!   SKIFF_BENCH_AGENT_HEAPTRACK=$PWD/n$n.raw target/release/skiff bench pods \
//!     --pods 0 --oci-pods 0 --idle $n
//!   /usr/lib/heaptrack/libexec/heaptrack_interpret < n$n.raw | zstd > n$n.zst
//! done
//! heaptrack_print -f n600.zst -d n300.zst -p 0 -a 0 -T 0 -F diff.stacks \
//!   --flamegraph-cost-type leaked
//! scripts/heap-parts.py diff.stacks 300 --sites
//! ```

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
    agent
        .env("LD_PRELOAD", lib)
        .env("DUMP_HEAPTRACK_OUTPUT", out);
    Ok(())
}
