//! `componentize [--proxy] IN.wasm OUT.wasm`: wraps a WASI preview 1 module into a preview 2
//! component using wasmtime's preview 1 adapter: the command adapter (`wasi:cli/run`) for
//! programs with `main`, or with `--proxy` the proxy adapter for `wasi:http` handlers built
//! as reactors (whose world comes from the module's component-type section).

use anyhow::Context;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let proxy = args.first().is_some_and(|a| a == "--proxy");
    if proxy {
        args.remove(0);
    }
    let [input, output] = args.as_slice() else {
        anyhow::bail!("usage: componentize [--proxy] IN.wasm OUT.wasm")
    };
    let adapter = if proxy {
        WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER
    } else {
        WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    };
    let module = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)?
        .encode()?;
    std::fs::write(output, component).with_context(|| format!("writing {output}"))?;
    Ok(())
}
