//! The `kubernetes` Service in `default`, and its Endpoints and EndpointSlice naming this
//! API server, as kube-apiserver's kubernetesservice controller and endpoint reconciler
//! keep them: made at start and checked again every [`PERIOD`], so a deleted or edited
//! one comes back. Likewise `kube-system/kube-dns` (kubeadm's DNS addon Service): the
//! cluster DNS address pods are told of; every node's agent answers on it itself, so the
//! Service names no endpoints and node proxies leave it alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::objects::{ObjectError, Objects, Target, WriteOptions, KUBERNETES_SERVICE_IP};

/// Kubernetes' EndpointInterval.
const PERIOD: Duration = Duration::from_secs(10);
const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
use skiff_api::{CLUSTER_DNS_IP, SERVICE_PROXY_NAME_LABEL as PROXY_NAME_LABEL};
/// The apiserver's Endpoints are not mirrored into slices: it writes its own.
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

pub async fn run(objects: Arc<Objects>, endpoint: Option<SocketAddr>) {
    if endpoint.is_none() {
        tracing::warn!("no address to advertise (no --advertise-address, and this host has no default route): the kubernetes Service gets no endpoints");
    }
    loop {
        if let Err(e) = reconcile(&objects, endpoint).await {
            tracing::warn!(error = %e, "keeping the kubernetes Service");
        }
        tokio::time::sleep(PERIOD).await;
    }
}

fn ports(endpoint: Option<SocketAddr>) -> Value {
    let target = endpoint.map_or(6443, |e| e.port());
    json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target}])
}

async fn reconcile(objects: &Objects, endpoint: Option<SocketAddr>) -> Result<(), ObjectError> {
    let registry = objects.registry();
    let services = registry
        .find("", "v1", "services")
        .expect("services are served");
    let ip = KUBERNETES_SERVICE_IP.to_string();
    let service = json!({
        "metadata": {"name": NAME, "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ports": ports(endpoint), "sessionAffinity": "None"},
    });
    // As kube: an existing Service is only mended where its ports or type drifted.
    let mend_ports = |cur: &Value, want: &Value| {
        (cur.pointer("/spec/ports") != want.pointer("/spec/ports")
            || cur.pointer("/spec/type") != want.pointer("/spec/type"))
        .then(|| {
            let mut next = cur.clone();
            next["spec"]["ports"] = want["spec"]["ports"].clone();
            next["spec"]["type"] = want["spec"]["type"].clone();
            next
        })
    };
    ensure(objects, services, NAMESPACE, NAME, service, mend_ports).await?;
    let dns_ip = CLUSTER_DNS_IP.to_string();
    let dns = json!({
        "metadata": {"name": "kube-dns", "labels": {
            "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
            "kubernetes.io/name": "SkiffDNS", PROXY_NAME_LABEL: "skiff-node-dns"}},
        "spec": {"type": "ClusterIP", "clusterIP": dns_ip, "clusterIPs": [dns_ip],
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    });
    ensure(
        objects,
        services,
        "kube-system",
        "kube-dns",
        dns,
        mend_ports,
    )
    .await?;
    let Some(endpoint) = endpoint else {
        return Ok(());
    };
    let (addr, port) = (endpoint.ip().to_string(), endpoint.port());
    let endpoints = registry
        .find("", "v1", "endpoints")
        .expect("endpoints are served");
    let want = json!({
        "metadata": {"name": NAME, "labels": {SKIP_MIRROR: "true"}},
        "subsets": [{"addresses": [{"ip": addr}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    ensure(objects, endpoints, NAMESPACE, NAME, want, |cur, want| {
        (cur.get("subsets") != want.get("subsets")
            || cur.pointer("/metadata/labels") != want.pointer("/metadata/labels"))
        .then(|| {
            let mut next = cur.clone();
            next["subsets"] = want["subsets"].clone();
            next["metadata"]["labels"] = want["metadata"]["labels"].clone();
            next
        })
    })
    .await?;
    let slices = registry
        .find("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices are served");
    let family = if endpoint.is_ipv4() { "IPv4" } else { "IPv6" };
    let want = json!({
        "metadata": {"name": NAME, "labels": {crate::controllers::endpoints::SERVICE_NAME_LABEL: NAME}},
        "addressType": family,
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    ensure(objects, slices, NAMESPACE, NAME, want, |cur, want| {
        let fields = ["/endpoints", "/ports", "/metadata/labels", "/addressType"];
        fields
            .iter()
            .any(|f| cur.pointer(f) != want.pointer(f))
            .then(|| {
                let mut next = cur.clone();
                for f in ["endpoints", "ports", "addressType"] {
                    next[f] = want[f].clone();
                }
                next["metadata"]["labels"] = want["metadata"]["labels"].clone();
                next
            })
    })
    .await
}

/// Creates `want` (`ns/name`), or where it exists, writes what `mend` makes of it
/// (`None`: it is as it should be).
async fn ensure(
    objects: &Objects,
    rt: &crate::registry::ResourceType,
    ns: &str,
    name: &str,
    want: Value,
    mend: impl Fn(&Value, &Value) -> Option<Value>,
) -> Result<(), ObjectError> {
    let opts = WriteOptions::default();
    match objects.get_value(rt, Some(ns), name).await {
        Err(ObjectError::NotFound { .. }) => {
            match objects.create(rt, Some(ns), want, &opts).await {
                Ok(_) => tracing::info!(namespace = ns, name, "created the {} {name}", rt.kind),
                Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            Ok(())
        }
        Err(e) => Err(e),
        Ok((cur, _)) if mend(&cur, &want).is_none() => Ok(()),
        Ok(_) => {
            let written = objects
                .update_with(rt, Some(ns), name, Target::Main, &opts, |cur| {
                    Ok(mend(cur, &want).unwrap_or_else(|| cur.clone()))
                })
                .await;
            match written {
                Ok(_) | Err(ObjectError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn made_then_mended_when_the_port_changes() {
        let (objects, _dir) = super::super::testing::objects().await;
        let at = |port| Some(SocketAddr::from(([192, 0, 2, 7], port)));
        reconcile(&objects, at(6443)).await.unwrap();
        let get = |g: &'static str, r: &'static str| {
            let rt = super::super::testing::rt(&objects, g, r);
            let o = objects.clone();
            async move {
                o.get_value(rt, Some("default"), "kubernetes")
                    .await
                    .unwrap()
                    .0
            }
        };
        let svc = get("", "services").await;
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
        assert_eq!(svc["metadata"]["labels"]["provider"], "kubernetes");
        let rt = super::super::testing::rt(&objects, "", "services");
        let (dns, _) = objects
            .get_value(rt, Some("kube-system"), "kube-dns")
            .await
            .unwrap();
        assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10");
        let ep = get("", "endpoints").await;
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "192.0.2.7");
        let slice = get("discovery.k8s.io", "endpointslices").await;
        assert_eq!(slice["endpoints"][0]["addresses"][0], "192.0.2.7");
        assert_eq!(slice["ports"][0]["port"], 6443);
        let rv = slice["metadata"]["resourceVersion"].clone();
        // Nothing to mend: nothing written.
        reconcile(&objects, at(6443)).await.unwrap();
        let same = get("discovery.k8s.io", "endpointslices").await;
        assert_eq!(same["metadata"]["resourceVersion"], rv);
        // The server came back on another port.
        reconcile(&objects, at(7443)).await.unwrap();
        assert_eq!(
            get("", "services").await["spec"]["ports"][0]["targetPort"],
            7443
        );
        assert_eq!(
            get("", "endpoints").await["subsets"][0]["ports"][0]["port"],
            7443
        );
        let slice = get("discovery.k8s.io", "endpointslices").await;
        assert_eq!(slice["ports"][0]["port"], 7443);
    }
}
