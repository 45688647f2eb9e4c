//! A pod's sandbox as its worker makes it: volumes, network and address, PID namespace
//! and `/etc` files from the pod's spec and the node's networks and DNS.

use std::sync::Arc;

use super::pod::PodCtx;
use crate::sandbox::{NetworkConfig, Sandbox, SandboxConfig};

/// The pod's sandbox (volumes, network and address, PID namespace, `/etc` files), made
/// from its spec and the node's networks. An error is the event's reason and message.
pub(super) async fn prepare_sandbox(
    pc: &PodCtx,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<Sandbox, (&'static str, String)> {
    let host_network = spec.host_network == Some(true);
    let node_ip = pc.ctx.node_ip().to_string();
    let network = if host_network {
        NetworkConfig::Node {
            ip: node_ip,
            host: true,
        }
    } else {
        pod_network(pc, spec).await?
    };
    let hostname = match host_network {
        true => super::node_info::hostname(),
        false => spec
            .hostname
            .clone()
            .unwrap_or_else(|| pc.name.chars().take(63).collect()),
    };
    // The kubelet's resolv.conf for the pod's policy. Its Wasm guests resolve with the same
    // configuration, through the cluster DNS wherever it answers (on a loopback port too,
    // which a resolv.conf cannot name).
    let node_resolv = crate::dns::resolv::ResolvConf::parse(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );
    let cluster_ip = crate::dns::CLUSTER_DNS_IP.to_string();
    let dns = pc.ctx.dns.as_ref();
    let cluster = dns.map(|d| (cluster_ip.as_str(), d.domain.as_str()));
    let guests = crate::dns::resolv::for_pod(spec, &pc.ns, &node_resolv, cluster);
    let (cluster_ip, cluster_addr) = (crate::dns::CLUSTER_DNS_IP.into(), dns.map(|d| d.addr));
    // A pod with a network of its own queries from it; those on the node's share.
    let resolver = match &network {
        NetworkConfig::Node { .. } => pc.ctx.resolvers.get(&guests, cluster_ip, cluster_addr),
        NetworkConfig::Pod { .. } => {
            let own = crate::dns::lookup::Resolver::new(&guests, cluster_ip, cluster_addr);
            own.map(|r| Arc::new(r.for_own_network()))
        }
    };
    let resolv = if dns.is_some_and(|d| d.for_pods) {
        guests
    } else {
        crate::dns::resolv::for_pod(spec, &pc.ns, &node_resolv, None)
    };
    let dirs = pc.dirs();
    let config = SandboxConfig {
        dir: &dirs.sandbox,
        volumes: spec.volumes.as_deref().unwrap_or_default(),
        network,
        // Only processes share a PID namespace: a node without runc has none to share.
        share_pid: spec.share_process_namespace == Some(true) && pc.ctx.runtimes.oci.is_some(),
        hostname,
        aliases: spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
            .collect(),
        resolv_conf: resolv.render(),
        resolver,
    };
    Sandbox::create(config, pc)
        .await
        .map_err(|e| (e.reason(), e.to_string()))
}

/// The pod's own network (or the node's where the node cannot give it one).
async fn pod_network<'a>(
    pc: &'a PodCtx,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<NetworkConfig<'a>, (&'static str, String)> {
    let mut networks = pc.ctx.networks.clone();
    let ready = networks
        .wait_for(|n| !matches!(n, super::Networks::Waiting))
        .await
        .map(|n| n.clone());
    match ready {
        Ok(super::Networks::Cni(cni)) => Ok(NetworkConfig::Pod {
            cni,
            who: crate::sandbox::network::PodRef {
                namespace: &pc.ns,
                name: &pc.name,
                uid: &pc.uid,
            },
            ports: port_mappings(spec),
        }),
        Ok(super::Networks::Node { reason }) => {
            let msg = format!(
                "This node cannot give pods a network of their own ({reason}): the pod's containers use the node's network"
            );
            pc.ctx
                .events
                .pod(pc.pod_ref(), None, "Warning", "NodeNetwork", msg);
            Ok(NetworkConfig::Node {
                ip: pc.ctx.node_ip().to_string(),
                host: false,
            })
        }
        Ok(super::Networks::Unavailable { reason }) => Err((
            "FailedCreatePodSandBox",
            format!("network is not ready: container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: {reason}"),
        )),
        Ok(super::Networks::Waiting) | Err(_) => Err((
            "FailedCreatePodSandBox",
            "the node's pod network is not ready".into(),
        )),
    }
}

/// The `hostPort`s a pod's containers ask for, as the portmap plugin takes them.
fn port_mappings(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Vec<crate::sandbox::network::PortMapping> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| crate::sandbox::network::PortMapping {
            host_port: p.host_port.unwrap_or_default(),
            container_port: p.container_port,
            protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}
