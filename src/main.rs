//! `skiff`: one binary, one subcommand per role. This file only parses and calls.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

// Many small allocations per request; mimalloc is faster than glibc's malloc here.
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
    Server {
        /// Where the store, credentials and kubeconfig live.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to serve HTTPS on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Store revisions kept so watches can resume from older resourceVersions.
        #[arg(long, default_value_t = skiff_control_plane::apiserver::DEFAULT_HISTORY)]
        history: u64,
    },
    /// Benchmarks against a running server (or one the bench starts).
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// API server throughput and latency: create, update, get, list, watch fan-out.
    Api(skiff_control_plane::bench::ApiBenchArgs),
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Server {
            data_dir,
            listen,
            history,
        } => {
            let config = skiff_control_plane::apiserver::ServerConfig {
                data_dir,
                listen,
                history,
            };
            skiff_control_plane::apiserver::run(config, shutdown_signal()).await?;
        }
        Command::Bench {
            what: Bench::Api(args),
        } => skiff_control_plane::bench::run_api(args).await?,
    }
    Ok(())
}
