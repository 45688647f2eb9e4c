//! `skiff dev`: an all-in-one cluster. The control plane starts first; its agent then
//! connects over loopback with the kubeconfig the server wrote, as a remote agent would
//! (k3s's `server` does the same). The two stop together.

use std::future::Future;
use std::path::PathBuf;

use crate::flags::{AgentFlags, ApiFlags, ControlFlags, ImageGcFlags, NetworkFlags, OciFlags};

/// `skiff dev`'s flags: the server's and the agent's, less what the dev cluster decides.
/// The API server flags keep the (terser) help `dev` has always shown.
#[derive(clap::Args)]
#[command(
    mut_arg("data_dir", |a| a.help(None::<&str>)),
    mut_arg("listen", |a| a.help(None::<&str>)),
    mut_arg("history", |a| a.help(None::<&str>)),
    mut_arg("repair", |a| a.help("As `skiff server --repair`")),
)]
pub struct DevFlags {
    #[command(flatten)]
    api: ApiFlags,
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long, default_value_t = 1000)]
    max_pods: u32,
    #[command(flatten)]
    control: ControlFlags,
    #[command(flatten)]
    network: NetworkFlags,
    #[command(flatten)]
    oci: OciFlags,
    #[command(flatten)]
    image_gc: ImageGcFlags,
}

impl DevFlags {
    /// The flags the dev cluster's agent runs with, once the server wrote `kubeconfig`.
    fn agent(self, kubeconfig: PathBuf) -> AgentFlags {
        AgentFlags {
            kubeconfig,
            node_name: self.node_name,
            data_dir: self.api.data_dir.join("agent"),
            max_pods: self.max_pods,
            node_ip: None,
            // Any free port, so several dev clusters can share a machine.
            port: 0,
            pull: Default::default(),
            logs: Default::default(),
            image_gc: self.image_gc,
            lease_renew_interval: skiff_node::agent::LEASE_RENEW_INTERVAL,
            cluster_cidr: self.control.cluster_cidr,
            network: self.network,
            oci: self.oci,
        }
    }
}

/// Runs the dev cluster until `shutdown` resolves or its agent fails (the whole cluster
/// goes down with it); the server stops after the agent.
pub async fn run(flags: DevFlags, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server_config = flags.api.config(&flags.control);
    let server =
        skiff_control_plane::cluster::start(server_config, stopped(stop_rx.clone())).await?;
    let agent_config = flags.agent(server.kubeconfig.clone()).config()?;
    let mut agent = tokio::spawn(skiff_node::agent::run(agent_config, stopped(stop_rx)));
    let early = tokio::select! {
        _ = shutdown => None,
        r = &mut agent => Some(r),
    };
    let _ = stop_tx.send(true);
    let result = match early {
        Some(r) => r,
        None => agent.await,
    };
    server.wait().await;
    result??;
    Ok(())
}
