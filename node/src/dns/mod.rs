//! Cluster DNS, served by every agent for its own pods (hickory-server), as CoreDNS's
//! kubernetes plugin answers: `<svc>.<ns>.svc.<domain>` A records (the cluster IP; a
//! headless Service's ready endpoints), SRV records for named ports, A records for a
//! headless Service's endpoints by hostname, CNAMEs for ExternalName Services; names
//! outside the domain go to the node's own resolvers. The zone follows the watched
//! Services and EndpointSlices one Service at a time.
//!
//! With root the server listens on the cluster DNS address (a `kube-dns` Service's IP,
//! 10.96.0.10 by default, put on the node's loopback interface) port 53,
//! where pods' `resolv.conf` points; without, on a loopback port, for Wasm guests'
//! lookups ([`lookup`]) only.

pub mod lookup;
pub mod resolv;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::service_watch::{Changes, ServiceWatch};

/// The cluster's DNS domain (the kubelet's --cluster-domain).
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub use skiff_api::CLUSTER_DNS_IP;
/// Time to live of the answers (CoreDNS's kubernetes plugin's default).
const TTL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster DNS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cluster DNS address {addr}: {reason}")]
    Address { addr: Ipv4Addr, reason: String },
    #[error("DNS name {name}: {reason}")]
    Name { name: String, reason: String },
}

fn name(s: &str) -> Result<Name, DnsError> {
    Name::from_str(s).map_err(|e| DnsError::Name {
        name: s.to_string(),
        reason: e.to_string(),
    })
}

/// The running cluster DNS: where it answers.
#[derive(Clone, Debug)]
pub struct ClusterDns {
    /// Where queries go (the cluster DNS address port 53, or a loopback port).
    pub addr: SocketAddr,
    /// Whether pods' resolv.conf may name it (it listens on the cluster DNS address).
    pub for_pods: bool,
    pub domain: String,
}

/// A Service's records under `domain` (empty for those with none).
pub fn records(svc: &Service, slices: &[&EndpointSlice], domain: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let (Some(spec), Some(svc_name), Some(ns)) = (
        svc.spec.as_ref(),
        svc.metadata.name.as_deref(),
        svc.metadata.namespace.as_deref(),
    ) else {
        return out;
    };
    let Ok(base) = name(&format!("{svc_name}.{ns}.svc.{domain}.")) else {
        return out;
    };
    let a = |n: &Name, ip: Ipv4Addr| Record::from_rdata(n.clone(), TTL, RData::A(A(ip)));
    let srv_name = |p: &k8s_openapi::api::core::v1::ServicePort| {
        let port_name = p.name.as_deref().filter(|n| !n.is_empty())?;
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_lowercase();
        name(&format!("_{port_name}._{proto}.{base}")).ok()
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(target) = spec
            .external_name
            .as_deref()
            .and_then(|t| name(&format!("{}.", t.trim_end_matches('.'))).ok())
        {
            out.push(Record::from_rdata(base, TTL, RData::CNAME(CNAME(target))));
        }
        return out;
    }
    match spec.cluster_ip.as_deref() {
        Some("None") => {
            // Headless: the ready endpoints, each also by its own name.
            let mut seen = std::collections::BTreeSet::new();
            for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    let Some(ip) = ep
                        .addresses
                        .first()
                        .and_then(|a| a.parse::<Ipv4Addr>().ok())
                    else {
                        continue;
                    };
                    if !ready || !seen.insert(ip) {
                        continue;
                    }
                    let host = ep
                        .hostname
                        .clone()
                        .unwrap_or_else(|| ip.to_string().replace('.', "-"));
                    let Ok(own) = name(&format!("{host}.{base}")) else {
                        continue;
                    };
                    out.push(a(&base, ip));
                    out.push(a(&own, ip));
                    for p in slice.ports.iter().flatten() {
                        let (Some(port_name), Some(port)) =
                            (p.name.as_deref().filter(|n| !n.is_empty()), p.port)
                        else {
                            continue;
                        };
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                        if let Ok(srv) = name(&format!("_{port_name}._{proto}.{base}")) {
                            let weight = 100;
                            out.push(Record::from_rdata(
                                srv,
                                TTL,
                                RData::SRV(SRV::new(0, weight, port as u16, own.clone())),
                            ));
                        }
                    }
                }
            }
        }
        Some(ip) => {
            let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                return out;
            };
            out.push(a(&base, ip));
            for p in spec.ports.iter().flatten() {
                if let Some(srv) = srv_name(p) {
                    out.push(Record::from_rdata(
                        srv,
                        TTL,
                        RData::SRV(SRV::new(0, 100, p.port as u16, base.clone())),
                    ));
                }
            }
        }
        None => {}
    }
    out
}

fn soa(domain: &str, serial: u32) -> Result<Record, DnsError> {
    let origin = name(&format!("{domain}."))?;
    let soa = SOA::new(
        name(&format!("ns.dns.{domain}."))?,
        name(&format!("hostmaster.{domain}."))?,
        serial,
        7200,
        1800,
        86400,
        TTL,
    );
    Ok(Record::from_rdata(origin, TTL, RData::SOA(soa)))
}

/// Puts the cluster DNS address on this node's loopback interface (as NodeLocal DNSCache
/// puts it on an interface of its own; kernels without dummy links have lo): pods route
/// to it through their gateway and the node takes it as its own.
fn ensure_address(ip: Ipv4Addr) -> Result<(), DnsError> {
    match crate::routes::ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]) {
        Err(crate::routes::RouteError::Ip { reason, .. })
            if !reason.contains("File exists") && !reason.contains("already assigned") =>
        {
            Err(DnsError::Address { addr: ip, reason })
        }
        _ => Ok(()),
    }
}

/// Takes the cluster DNS address off this node (the agent's reset); missing is fine.
pub fn remove_address(ip: Ipv4Addr) {
    let _ = crate::routes::ip(&["addr", "del", &format!("{ip}/32"), "dev", "lo"]);
}

/// A socket on `addr` that other agents on this host may share (SO_REUSEPORT): agents
/// sharing a host answer for the same cluster.
fn bind(addr: SocketAddr, kind: socket2::Type) -> Result<socket2::Socket, DnsError> {
    let failed = |source| DnsError::Bind { addr, source };
    let proto = if kind == socket2::Type::DGRAM {
        socket2::Protocol::UDP
    } else {
        socket2::Protocol::TCP
    };
    let s = socket2::Socket::new(socket2::Domain::IPV4, kind, Some(proto)).map_err(failed)?;
    s.set_reuse_address(true).map_err(failed)?;
    s.set_reuse_port(true).map_err(failed)?;
    s.set_nonblocking(true).map_err(failed)?;
    s.bind(&addr.into()).map_err(failed)?;
    if kind == socket2::Type::STREAM {
        s.listen(1024).map_err(failed)?;
    }
    Ok(s)
}

/// The node's own resolvers (from its resolv.conf), for names outside the cluster;
/// never the cluster DNS itself.
fn upstream(not: IpAddr) -> Option<Arc<dyn ZoneHandler>> {
    let (config, options) = hickory_server::resolver::system_conf::read_system_conf().ok()?;
    let servers: Vec<_> = config
        .name_servers()
        .iter()
        .filter(|s| s.ip != not)
        .cloned()
        .collect();
    if servers.is_empty() {
        return None;
    }
    let forward = hickory_server::store::forwarder::ForwardConfig {
        name_servers: servers,
        options: Some(options),
    };
    let handler = hickory_server::store::forwarder::ForwardZoneHandler::builder_tokio(forward)
        .build()
        .ok()?;
    Some(Arc::new(handler))
}

/// Starts the cluster DNS: on `ip`:53 where this node can put the address on itself,
/// else on a loopback port. Serves until the returned task is aborted.
pub async fn start(
    watch: ServiceWatch,
    changes: Arc<Changes>,
    ip: Ipv4Addr,
    privileged: bool,
) -> Result<(ClusterDns, tokio::task::JoinHandle<()>), DnsError> {
    let domain = CLUSTER_DOMAIN.to_string();
    let on_pods_address = privileged
        && match ensure_address(ip) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cluster DNS only for Wasm guests");
                false
            }
        };
    let addr = if on_pods_address {
        SocketAddr::from((ip, 53))
    } else {
        // A free loopback port, the same for UDP and TCP.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|source| DnsError::Bind {
            addr: "127.0.0.1:0".parse().expect("an address"),
            source,
        })?;
        probe.local_addr().map_err(|source| DnsError::Bind {
            addr: "127.0.0.1:0".parse().expect("an address"),
            source,
        })?
    };
    let udp = bind(addr, socket2::Type::DGRAM)?;
    let tcp = bind(addr, socket2::Type::STREAM)?;
    let origin = name(&format!("{domain}."))?;
    let zone = Arc::new(InMemoryZoneHandler::<
        hickory_server::net::runtime::TokioRuntimeProvider,
    >::empty(
        origin.clone(), ZoneType::Primary, AxfrPolicy::Deny
    ));
    zone.upsert(soa(&domain, 1)?, 1).await;
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::new(&origin),
        vec![zone.clone() as Arc<dyn ZoneHandler>],
    );
    if let Some(up) = upstream(IpAddr::V4(ip)) {
        catalog.upsert(LowerName::new(&Name::root()), vec![up]);
    }
    let mut server = hickory_server::Server::new(catalog);
    let bound = |e: std::io::Error| DnsError::Bind { addr, source: e };
    server.register_socket(
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(udp)).map_err(bound)?,
    );
    server.register_listener(
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(tcp)).map_err(bound)?,
        Duration::from_secs(10),
        64 * 1024,
    );
    tracing::info!(%addr, for_pods = on_pods_address, "cluster DNS serving");
    let d = domain.clone();
    let task = tokio::spawn(async move {
        let sync = follow(zone, watch, changes, d);
        tokio::select! {
            _ = sync => {}
            r = server.block_until_done() => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cluster DNS stopped");
                }
            }
        }
    });
    Ok((
        ClusterDns {
            addr,
            for_pods: on_pods_address,
            domain,
        },
        task,
    ))
}

/// Keeps the zone in step with the Services, one changed Service at a time.
async fn follow(
    zone: Arc<InMemoryZoneHandler>,
    watch: ServiceWatch,
    changes: Arc<Changes>,
    domain: String,
) {
    let mut written: HashMap<String, Vec<RrKey>> = HashMap::new();
    let mut serial = 1u32;
    loop {
        let changed = changes.next().await;
        let mut keys = changed.keys;
        if changed.all {
            keys.extend(written.keys().cloned());
            keys.extend(watch.service_keys());
        }
        let slices = watch.slices_of(&keys);
        serial = serial.wrapping_add(1);
        for k in keys {
            let recs = match watch.service(&k) {
                Some(svc) => {
                    let of: Vec<&EndpointSlice> =
                        slices.get(&k).into_iter().flatten().map(|s| &**s).collect();
                    records(&svc, &of, &domain)
                }
                None => Vec::new(),
            };
            let new_keys: Vec<RrKey> = recs
                .iter()
                .map(|r| RrKey::new(LowerName::new(&r.name), r.record_type()))
                .collect();
            {
                let mut map = zone.records_mut().await;
                for old in written.remove(&k).unwrap_or_default() {
                    map.remove(&old);
                }
            }
            for r in recs {
                zone.upsert(r, serial).await;
            }
            if !new_keys.is_empty() {
                written.insert(k, new_keys);
            }
        }
        if let Ok(s) = soa(&domain, serial) {
            zone.upsert(s, serial).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn texts(recs: &[Record]) -> Vec<String> {
        let mut v: Vec<String> = recs
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_cluster_ip_service_has_an_address_and_srv_records_for_named_ports() {
        let s = svc(
            serde_json::json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [{"name": "http", "port": 80}, {"port": 81}]}}),
        );
        assert_eq!(
            texts(&records(&s, &[], "cluster.local")),
            [
                "_http._tcp.web.shop.svc.cluster.local. SRV 0 100 80 web.shop.svc.cluster.local.",
                "web.shop.svc.cluster.local. A 10.96.3.4",
            ]
        );
    }

    #[test]
    fn a_headless_service_names_its_ready_endpoints() {
        let s = svc(
            serde_json::json!({"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
        );
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-1", "namespace": "shop"}, "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.6"], "conditions": {"ready": true}},
            {"addresses": ["10.244.2.7"], "conditions": {"ready": false}},
        ]}))
        .unwrap();
        assert_eq!(
            texts(&records(&s, &[&slice], "cluster.local")),
            [
                "10-244-2-6.db.shop.svc.cluster.local. A 10.244.2.6",
                "_pg._tcp.db.shop.svc.cluster.local. SRV 0 100 5432 10-244-2-6.db.shop.svc.cluster.local.",
                "_pg._tcp.db.shop.svc.cluster.local. SRV 0 100 5432 db-0.db.shop.svc.cluster.local.",
                "db-0.db.shop.svc.cluster.local. A 10.244.1.5",
                "db.shop.svc.cluster.local. A 10.244.1.5",
                "db.shop.svc.cluster.local. A 10.244.2.6",
            ]
        );
    }

    #[test]
    fn an_external_name_service_is_a_cname() {
        let s = svc(
            serde_json::json!({"metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}),
        );
        assert_eq!(
            texts(&records(&s, &[], "cluster.local")),
            ["ext.shop.svc.cluster.local. CNAME example.com."]
        );
    }
}
