//! Routes to the other nodes' pods (host-gw, as flannel's backend of that name): for every
//! other node with a pod range, `<podCIDR> via <its InternalIP>`, kept in step with the
//! Node objects. Nodes must share a link (an L2 segment); a node the kernel cannot route
//! to directly is reported and skipped. The routes carry a protocol number of their own,
//! so those of nodes gone are found again, even by a later agent.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, Client};

/// The `proto` of Skiff's routes (iproute2 shows it as a number; 0-255, unassigned).
pub const ROUTE_PROTO: &str = "83";

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("ip {args}: {reason}")]
    Ip { args: String, reason: String },
}

/// Runs iproute2's `ip`; its output, or why it failed.
pub(crate) fn ip(args: &[&str]) -> Result<String, RouteError> {
    let failed = |reason: String| RouteError::Ip {
        args: args.join(" "),
        reason,
    };
    let o = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(failed(
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ))
    }
}

/// The routes other nodes call for: pod range -> the node's address. Nodes at this
/// node's own address (agents sharing a host) or at a loopback one need none: their pods'
/// bridge is on this host.
pub fn wanted(
    nodes: &[std::sync::Arc<Node>],
    this: &str,
    own_ip: &str,
) -> BTreeMap<String, String> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(this))
        .filter_map(|n| {
            let cidr = n.spec.as_ref()?.pod_cidr.clone()?;
            let addr = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP" && !a.address.contains(':'))?
                .address
                .clone();
            let loopback = addr
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
            (addr != own_ip && !loopback).then_some((cidr, addr))
        })
        .collect()
}

/// The routes Skiff has in the main table: destination -> gateway.
fn current() -> Result<BTreeMap<String, String>, RouteError> {
    let out = ip(&["-4", "route", "show", "proto", ROUTE_PROTO])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let dst = words.next()?.to_string();
            let via = words.skip_while(|w| *w != "via").nth(1)?.to_string();
            Some((dst, via))
        })
        .collect())
}

/// Makes the routes those wanted: adds and replaces what differs, removes the rest.
pub fn sync(wanted: &BTreeMap<String, String>) -> Result<(), RouteError> {
    let have = current()?;
    for (dst, via) in wanted {
        if have.get(dst) == Some(via) {
            continue;
        }
        match ip(&["route", "replace", dst, "via", via, "proto", ROUTE_PROTO]) {
            Ok(_) => tracing::info!(pod_cidr = %dst, via = %via, "route to a node's pods"),
            // Say so and go on with the other nodes.
            Err(e) => {
                tracing::warn!(error = %e, pod_cidr = %dst, via = %via, "cannot route to a node's pods (do the nodes share a link?)")
            }
        }
    }
    for dst in have.keys().filter(|d| !wanted.contains_key(*d)) {
        ip(&["route", "del", dst, "proto", ROUTE_PROTO])?;
        tracing::info!(pod_cidr = %dst, "route to a gone node's pods removed");
    }
    Ok(())
}

/// Removes every route Skiff added (the agent's reset).
pub fn remove_all() -> Result<(), RouteError> {
    sync(&BTreeMap::new())
}

/// Keeps the routes in step with the Nodes until aborted.
pub async fn run(client: Client, this: String, own_ip: String) {
    let (store, writer) = kube::runtime::reflector::store();
    let mut events = kube::runtime::reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()),
    )
    .boxed();
    let mut last: Option<BTreeMap<String, String>> = None;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "node watch (routes)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        let want = wanted(&store.state(), &this, &own_ip);
        if last.as_ref() == Some(&want) {
            continue;
        }
        match sync(&want) {
            Ok(()) => last = Some(want),
            Err(e) => tracing::warn!(error = %e, "syncing the routes to other nodes' pods"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_nodes_with_a_range_and_an_address_are_routed_to() {
        let node = |name: &str, cidr: Option<&str>, ip: &str| {
            std::sync::Arc::new(
                serde_json::from_value::<Node>(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"podCIDR": cidr},
                    "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
                }))
                .unwrap(),
            )
        };
        let nodes = [
            node("a", Some("10.244.0.0/24"), "192.0.2.1"),
            node("b", Some("10.244.1.0/24"), "192.0.2.2"),
            node("c", None, "192.0.2.3"),
            node("d", Some("10.244.3.0/24"), "192.0.2.1"),
            node("e", Some("10.244.4.0/24"), "127.0.0.1"),
        ];
        // d shares a's host, e is at loopback: no route.
        let want = wanted(&nodes, "a", "192.0.2.1");
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            [("10.244.1.0/24".to_string(), "192.0.2.2".to_string())]
        );
    }
}
