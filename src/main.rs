//! `skiff`: one binary, one subcommand per role. This file only parses and calls: the
//! flags and what they become live in `flags` (server, agent), `dev` (the all-in-one
//! cluster) and `commands` (the one-shot subcommands).

mod commands;
mod dev;
mod flags;

use clap::{Parser, Subcommand};

// Many small allocations per request; mimalloc is faster than glibc's malloc here. The
// `system-alloc` feature keeps glibc's, whose calls heap profilers (heaptrack) intercept.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-compatible orchestrator for WebAssembly and OCI workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (and the control-plane controllers) on the embedded store.
    Server(flags::ServerFlags),
    /// Run a node agent: register the node and run the pods bound to it.
    Agent(flags::AgentFlags),
    /// An all-in-one cluster: the API server and an agent on this machine, the agent
    /// connecting over loopback as a remote one would. Needs no root for Wasm pods.
    Dev(dev::DevFlags),
    /// Tear down what a stopped agent's pods left on this node (their containers, network
    /// namespaces and addresses, files) and the pods' bridge, as `kubeadm reset` does. Run
    /// with the agent stopped.
    Reset(commands::ResetArgs),
    /// A runc container's shim (started by the agent, one per container).
    // Its help has always listed bare flags; the field docs are for readers of the code.
    #[command(
        hide = true,
        mut_arg("cgroup", |a| a.help(None::<&str>)),
        mut_arg("stdin", |a| a.help(None::<&str>)),
    )]
    Shim(skiff_node::runtime::oci::shim::ShimArgs),
    /// The holder of a pod's shared PID namespace (started by the agent).
    #[command(hide = true)]
    Pause {
        #[arg(long)]
        pod: String,
    },
    /// Publish a Wasm module or component to an OCI registry as a CNCF Wasm artifact.
    Push(commands::PushArgs),
    /// The node's image store.
    Images {
        #[command(subcommand)]
        what: commands::Images,
    },
    /// Benchmarks against a running server (or one the bench starts).
    /// Fuzz the API server's decoders and patch paths from the seed corpus for a set time
    /// per target, saving inputs that panic or are slow (control-plane/src/fuzz.rs).
    Fuzz(commands::FuzzArgs),
    Bench {
        #[command(subcommand)]
        what: commands::Bench,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The shim forks first thing: it must do so while the process has a single thread.
    if let Command::Shim(args) = cli.command {
        std::process::exit(skiff_node::runtime::oci::shim::run(args));
    }
    // The pause process forks into a new PID namespace: single-threaded too.
    if let Command::Pause { pod } = &cli.command {
        std::process::exit(skiff_node::sandbox::pause::run(pod));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A thread spawned while its parent made a pod's socket starts in the pod's network.
        .on_thread_start(skiff_node::sandbox::netns::thread_started)
        .build()?
        .block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    init_tracing();
    // One TLS crypto provider for the whole process (clients and servers alike).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        Command::Shim(_) | Command::Pause { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Server(flags) => {
            skiff_control_plane::cluster::run(flags.config(), shutdown_signal()).await?
        }
        Command::Agent(flags) => skiff_node::agent::run(flags.config()?, shutdown_signal()).await?,
        Command::Dev(flags) => dev::run(flags, shutdown_signal()).await?,
        Command::Reset(args) => commands::reset(args).await?,
        Command::Push(args) => commands::push(args).await?,
        Command::Images { what } => commands::images(what)?,
        Command::Fuzz(args) => commands::fuzz(args)?,
        Command::Bench { what } => commands::bench(what).await?,
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
