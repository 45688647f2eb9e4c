//! What one Service asks of the node's nftables table, as kube-proxy's nftables mode
//! writes it: elements of the dispatch maps (cluster IP, external and load-balancer IPs,
//! node ports) and the Service's own chains (per port: the policy chains that pick an
//! endpoint at random, an external chain, one chain per endpoint that DNATs) and the
//! ClientIP affinity sets. A pure function of the Service, its EndpointSlices and the
//! node, so a change to one Service rewrites only that Service's part.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sha2::Digest;

use skiff_api::SERVICE_PROXY_NAME_LABEL as PROXY_NAME_LABEL;
/// A ClientIP affinity's default timeout (Kubernetes: 3 hours).
const DEFAULT_AFFINITY_SECONDS: i32 = 10800;
pub const MARK_MASQ_CHAIN: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";

/// The table's verdict maps a Service adds elements to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Map {
    /// `ip . proto . port : verdict`: cluster, external and load-balancer IPs.
    ServiceIps,
    /// `proto . port : verdict`: node ports on the node's addresses.
    ServiceNodePorts,
    /// `ip . proto . port : verdict`: reject (no endpoints) or drop (none local).
    NoEndpointServices,
    NoEndpointNodePorts,
}

impl Map {
    pub fn name(self) -> &'static str {
        match self {
            Map::ServiceIps => "service-ips",
            Map::ServiceNodePorts => "service-nodeports",
            Map::NoEndpointServices => "no-endpoint-services",
            Map::NoEndpointNodePorts => "no-endpoint-nodeports",
        }
    }
}

/// One Service's part of the table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fragment {
    /// (map, key) -> verdict.
    pub elements: BTreeMap<(Map, String), String>,
    /// Chain name -> its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Affinity set name -> timeout in seconds.
    pub sets: BTreeMap<String, i32>,
}

/// What the rules need to know of the node.
pub struct Node<'a> {
    pub name: &'a str,
    /// The cluster's pod range: traffic from outside it to a cluster IP is masqueraded.
    pub cluster_cidr: &'a str,
}

#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    ip: String,
    port: i32,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl Endpoint {
    fn key(&self) -> String {
        format!("{}/{}", self.ip, self.port)
    }
    fn fallback(&self) -> bool {
        self.serving && self.terminating
    }
}

/// kube-proxy's chain names: a hash of the name (distinct at a glance, unique even if
/// cut) then the name itself.
fn hashed(name: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = sha2::Sha256::digest(name.as_bytes());
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    let hash: String = (0..8)
        .map(|i| ALPHABET[((bits >> (59 - 5 * i)) & 31) as usize] as char)
        .collect();
    let full = format!("{hash}-{name}");
    // nftables names hold 256 bytes; prefixes take up to 16.
    if full.len() > 240 {
        format!("{}...", &full[..237])
    } else {
        full
    }
}

fn protocol(p: &ServicePort) -> String {
    p.protocol.as_deref().unwrap_or("TCP").to_lowercase()
}

/// The endpoints of `port` in the slices (IPv4 ones; the first address of each).
fn endpoints(port: &ServicePort, slices: &[&EndpointSlice], node: &str) -> Vec<Endpoint> {
    let name = port.name.as_deref().unwrap_or_default();
    let proto = port.protocol.as_deref().unwrap_or("TCP");
    let mut out: BTreeMap<String, Endpoint> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(number) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or_default() == name
                && p.protocol.as_deref().unwrap_or("TCP") == proto)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(ip) = ep.addresses.first() else {
                continue;
            };
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let e = Endpoint {
                ip: ip.clone(),
                port: number,
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                local: ep.node_name.as_deref() == Some(node),
            };
            out.entry(e.key()).or_insert(e);
        }
    }
    out.into_values().collect()
}

/// Whether an external or load-balancer address may take traffic here: an IPv4 address
/// (the table is `ip`), not one the API server refuses for Services (unspecified,
/// loopback, link-local, multicast), whatever an older or foreign writer stored.
fn routable_v4(ip: &str) -> bool {
    ip.parse::<std::net::Ipv4Addr>().is_ok_and(|a| {
        !(a.is_unspecified()
            || a.is_loopback()
            || a.is_link_local()
            || a.is_multicast()
            || a.is_broadcast())
    })
}

/// The Service's part of the table (empty for Services the proxy leaves alone: headless,
/// ExternalName, another proxy's).
pub fn fragment(svc: &Service, slices: &[&EndpointSlice], node: &Node<'_>) -> Fragment {
    let mut f = Fragment::default();
    let Some(spec) = &svc.spec else {
        return f;
    };
    let labels = svc.metadata.labels.as_ref();
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
    if labels.is_some_and(|l| l.contains_key(PROXY_NAME_LABEL))
        || spec.type_.as_deref() == Some("ExternalName")
        || cluster_ip.is_empty()
        || cluster_ip == "None"
        || cluster_ip.contains(':')
    {
        return f;
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let lb_ips: Vec<&str> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref())
        .filter(|ip| routable_v4(ip))
        .collect();
    let external_ips: Vec<&str> = spec
        .external_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|ip| routable_v4(ip))
        .collect();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    for port in spec.ports.iter().flatten() {
        let proto = protocol(port);
        let node_port = port.node_port.unwrap_or(0);
        let port_name = format!(
            "{ns}/{name}/{proto}/{}",
            port.name.as_deref().unwrap_or_default()
        );
        let base = hashed(&port_name);
        let cluster_chain = format!("service-{base}");
        let local_chain = format!("local-{base}");
        let external_chain = format!("external-{base}");
        let externally_accessible =
            node_port != 0 || !lb_ips.is_empty() || !external_ips.is_empty();
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local =
            externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
        let uses_cluster = !internal_local || externally_accessible;
        let uses_local = internal_local || external_local;

        // kube-proxy's CategorizeEndpoints: ready endpoints, else serving terminating
        // ones, separately for the Cluster and the Local policy.
        let all = endpoints(port, slices, node.name);
        let mut cluster = Vec::new();
        let mut has_any = false;
        if uses_cluster {
            cluster = all.iter().filter(|e| e.ready).cloned().collect();
            if cluster.is_empty() {
                cluster = all.iter().filter(|e| e.fallback()).cloned().collect();
            }
            has_any = !cluster.is_empty();
        }
        let mut local = Vec::new();
        if uses_local {
            has_any |= all.iter().any(|e| e.ready || e.fallback());
            local = all.iter().filter(|e| e.local && e.ready).cloned().collect();
            if local.is_empty() {
                local = all
                    .iter()
                    .filter(|e| e.local && e.fallback())
                    .cloned()
                    .collect();
            }
        }
        let mut reachable: BTreeMap<String, Endpoint> = BTreeMap::new();
        for e in cluster.iter().chain(&local) {
            reachable.entry(e.key()).or_insert_with(|| e.clone());
        }
        let ep_chain =
            |e: &Endpoint| format!("endpoint-{}", hashed(&format!("{port_name}__{}", e.key())));
        let ep_set =
            |e: &Endpoint| format!("affinity-{}", hashed(&format!("{port_name}__{}", e.key())));

        let uses_cluster_chain = uses_cluster && !cluster.is_empty();
        let uses_local_chain = uses_local && !local.is_empty();
        let (internal_chain, has_internal) = if internal_local {
            (&local_chain, has_any && !local.is_empty())
        } else {
            (&cluster_chain, has_any)
        };
        let (external_policy_chain, has_external) = if external_local {
            (&local_chain, has_any && !local.is_empty())
        } else {
            (&cluster_chain, has_any)
        };
        let uses_external_chain = has_any && externally_accessible;
        let (internal_verdict, external_verdict) = if !has_any {
            let reject = format!("goto {REJECT_CHAIN}");
            (reject.clone(), reject)
        } else {
            ("drop".to_string(), "drop".to_string())
        };
        let key = |ip: &str| format!("{ip} . {proto} . {}", port.port);

        // The cluster IP.
        if has_internal {
            f.elements.insert(
                (Map::ServiceIps, key(cluster_ip)),
                format!("goto {internal_chain}"),
            );
        } else {
            f.elements
                .insert((Map::NoEndpointServices, key(cluster_ip)), internal_verdict);
        }
        // External and load-balancer IPs, and the node port.
        for ip in external_ips.iter().chain(&lb_ips) {
            if has_any {
                f.elements
                    .insert((Map::ServiceIps, key(ip)), format!("goto {external_chain}"));
            }
            if !has_external {
                f.elements
                    .insert((Map::NoEndpointServices, key(ip)), external_verdict.clone());
            }
        }
        if node_port != 0 {
            let k = format!("{proto} . {node_port}");
            if has_any {
                f.elements.insert(
                    (Map::ServiceNodePorts, k.clone()),
                    format!("goto {external_chain}"),
                );
            }
            if !has_external {
                f.elements
                    .insert((Map::NoEndpointNodePorts, k), external_verdict.clone());
            }
        }

        // Traffic to the cluster IP from outside the pods is masqueraded: its replies
        // must come back through this node.
        let masq_off_cluster = format!(
            "ip daddr {cluster_ip} {proto} dport {} ip saddr != {} jump {MARK_MASQ_CHAIN}",
            port.port, node.cluster_cidr
        );
        let policy_rules = |chain: &str, eps: &[Endpoint]| -> Vec<String> {
            let mut rules = Vec::new();
            if chain == internal_chain.as_str() && has_internal {
                rules.push(masq_off_cluster.clone());
            }
            if affinity.is_some() {
                for e in eps {
                    rules.push(format!("ip saddr @{} goto {}", ep_set(e), ep_chain(e)));
                }
            }
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i} : goto {}", ep_chain(e)))
                .collect();
            rules.push(format!(
                "numgen random mod {} vmap {{ {} }}",
                eps.len(),
                arms.join(", ")
            ));
            rules
        };
        if uses_cluster_chain {
            f.chains.insert(
                cluster_chain.clone(),
                policy_rules(&cluster_chain, &cluster),
            );
        }
        if uses_local_chain {
            f.chains
                .insert(local_chain.clone(), policy_rules(&local_chain, &local));
        }
        if uses_external_chain {
            let mut rules = Vec::new();
            if !external_local {
                // Endpoints may be on other nodes: replies must come back through here.
                rules.push(format!("jump {MARK_MASQ_CHAIN}"));
            } else {
                // Pods and the node itself are not subject to the Local policy (as if
                // they went out to a load balancer and came back).
                if uses_cluster_chain {
                    rules.push(format!(
                        "ip saddr {} goto {cluster_chain}",
                        node.cluster_cidr
                    ));
                }
                rules.push(format!("fib saddr type local jump {MARK_MASQ_CHAIN}"));
                if uses_cluster_chain {
                    rules.push(format!("fib saddr type local goto {cluster_chain}"));
                }
            }
            if has_external {
                rules.push(format!("goto {external_policy_chain}"));
            }
            f.chains.insert(external_chain.clone(), rules);
        }
        for e in reachable.values() {
            let mut rules = vec![format!("ip saddr {} jump {MARK_MASQ_CHAIN}", e.ip)];
            if let Some(timeout) = affinity {
                f.sets.insert(ep_set(e), timeout);
                rules.push(format!("update @{} {{ ip saddr }}", ep_set(e)));
            }
            rules.push(format!("meta l4proto {proto} dnat to {}:{}", e.ip, e.port));
            f.chains.insert(ep_chain(e), rules);
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: serde_json::Value) -> Service {
        serde_json::from_value(yaml).unwrap()
    }

    fn slice(endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        }))
        .unwrap()
    }

    const NODE: Node<'static> = Node {
        name: "n1",
        cluster_cidr: "10.244.0.0/16",
    };

    fn web(spec: serde_json::Value) -> Service {
        let mut s = serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        });
        for (k, v) in spec.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        svc(s)
    }

    fn ep(ip: &str, node: &str, ready: bool, terminating: bool) -> serde_json::Value {
        serde_json::json!({"addresses": [ip], "nodeName": node,
            "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}})
    }

    fn http_port() -> serde_json::Value {
        serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    }

    fn dnats(f: &Fragment) -> Vec<String> {
        f.chains
            .values()
            .flatten()
            .filter_map(|r| r.split("dnat to ").nth(1).map(str::to_string))
            .collect()
    }

    #[test]
    fn a_cluster_ip_balances_over_ready_endpoints() {
        let s = slice(
            serde_json::json!([
                ep("10.244.1.2", "n1", true, false),
                ep("10.244.2.2", "n2", true, false),
                ep("10.244.2.3", "n2", false, false)
            ]),
            http_port(),
        );
        let f = fragment(&web(serde_json::json!({})), &[&s], &NODE);
        let verdict = &f.elements[&(Map::ServiceIps, "10.96.5.5 . tcp . 80".to_string())];
        let chain = verdict.strip_prefix("goto ").unwrap();
        assert!(
            chain.starts_with("service-") && chain.ends_with("-ns/web/tcp/http"),
            "{chain}"
        );
        let rules = &f.chains[chain];
        assert_eq!(
            rules[0],
            "ip daddr 10.96.5.5 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
        );
        assert!(
            rules[1].starts_with("numgen random mod 2 vmap"),
            "{rules:?}"
        );
        // The not-ready endpoint gets no chain.
        assert_eq!(dnats(&f), ["10.244.1.2:8080", "10.244.2.2:8080"]);
        assert!(f.elements.keys().all(|(m, _)| *m == Map::ServiceIps));
    }

    #[test]
    fn external_addresses_the_api_would_refuse_take_no_traffic() {
        let bad = [
            "999.1.1.1",
            "0.0.0.0",
            "127.0.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "::1",
        ];
        let mut ips: Vec<&str> = bad.to_vec();
        ips.push("192.0.2.7");
        let f = fragment(&web(serde_json::json!({"externalIPs": ips})), &[], &NODE);
        let keys: Vec<&String> = f.elements.keys().map(|(_, k)| k).collect();
        assert!(keys.iter().any(|k| k.starts_with("192.0.2.7 ")), "{keys:?}");
        for ip in bad {
            assert!(
                !keys.iter().any(|k| k.starts_with(&format!("{ip} "))),
                "{keys:?}"
            );
        }
    }

    #[test]
    fn without_endpoints_traffic_is_rejected_and_terminating_ones_are_the_fallback() {
        let none = fragment(&web(serde_json::json!({})), &[], &NODE);
        assert_eq!(
            none.elements[&(Map::NoEndpointServices, "10.96.5.5 . tcp . 80".to_string())],
            "goto reject-chain"
        );
        assert!(none.chains.is_empty());
        let s = slice(
            serde_json::json!([
                ep("10.244.1.2", "n1", false, true),
                ep("10.244.1.3", "n1", false, false)
            ]),
            http_port(),
        );
        let f = fragment(&web(serde_json::json!({})), &[&s], &NODE);
        assert_eq!(dnats(&f), ["10.244.1.2:8080"]);
        // A ready endpoint wins over terminating ones.
        let s = slice(
            serde_json::json!([
                ep("10.244.1.2", "n1", false, true),
                ep("10.244.1.4", "n1", true, false)
            ]),
            http_port(),
        );
        let f = fragment(&web(serde_json::json!({})), &[&s], &NODE);
        assert_eq!(dnats(&f), ["10.244.1.4:8080"]);
    }

    #[test]
    fn node_ports_and_load_balancer_ips_go_through_the_external_chain() {
        let mut s = web(serde_json::json!({"type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}));
        s.status = serde_json::from_value(
            serde_json::json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]}}),
        )
        .unwrap();
        let sl = slice(
            serde_json::json!([ep("10.244.2.2", "n2", true, false)]),
            http_port(),
        );
        let f = fragment(&s, &[&sl], &NODE);
        let np = &f.elements[&(Map::ServiceNodePorts, "tcp . 30080".to_string())];
        let lb = &f.elements[&(Map::ServiceIps, "192.0.2.10 . tcp . 80".to_string())];
        assert_eq!(np, lb);
        let ext = np.strip_prefix("goto ").unwrap();
        assert!(ext.starts_with("external-"));
        assert_eq!(f.chains[ext][0], "jump mark-for-masquerade");
        assert!(f.chains[ext][1].starts_with("goto service-"));
    }

    #[test]
    fn local_policies_use_this_nodes_endpoints_only() {
        let sl = slice(
            serde_json::json!([
                ep("10.244.1.2", "n1", true, false),
                ep("10.244.2.2", "n2", true, false)
            ]),
            http_port(),
        );
        let s = web(
            serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
        );
        let f = fragment(&s, &[&sl], &NODE);
        let ext = f.elements[&(Map::ServiceNodePorts, "tcp . 30080".to_string())]
            .strip_prefix("goto ")
            .unwrap()
            .to_string();
        let rules = &f.chains[&ext];
        // Pods and the node short-circuit to all endpoints; the rest keep their source
        // address and reach this node's endpoints only.
        assert!(
            rules[0].starts_with("ip saddr 10.244.0.0/16 goto service-"),
            "{rules:?}"
        );
        assert!(
            rules.last().unwrap().starts_with("goto local-"),
            "{rules:?}"
        );
        let local = rules.last().unwrap().strip_prefix("goto ").unwrap();
        assert!(f.chains[local]
            .last()
            .unwrap()
            .starts_with("numgen random mod 1 "));
        // internalTrafficPolicy: Local with no endpoint here drops cluster IP traffic.
        let s = web(serde_json::json!({"internalTrafficPolicy": "Local"}));
        let remote = slice(
            serde_json::json!([ep("10.244.2.2", "n2", true, false)]),
            http_port(),
        );
        let f = fragment(&s, &[&remote], &NODE);
        assert_eq!(
            f.elements[&(Map::NoEndpointServices, "10.96.5.5 . tcp . 80".to_string())],
            "drop"
        );
    }

    #[test]
    fn client_ip_affinity_remembers_each_endpoints_clients() {
        let sl = slice(
            serde_json::json!([ep("10.244.1.2", "n1", true, false)]),
            http_port(),
        );
        let s = web(serde_json::json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
        let f = fragment(&s, &[&sl], &NODE);
        let (set, timeout) = f.sets.iter().next().unwrap();
        assert_eq!(*timeout, 60);
        let rules: Vec<&String> = f.chains.values().flatten().collect();
        assert!(rules
            .iter()
            .any(|r| r.starts_with(&format!("ip saddr @{set} goto endpoint-"))));
        assert!(rules
            .iter()
            .any(|r| *r == &format!("update @{set} {{ ip saddr }}")));
    }

    #[test]
    fn services_the_proxy_leaves_alone() {
        let sl = slice(
            serde_json::json!([ep("10.244.1.2", "n1", true, false)]),
            http_port(),
        );
        for s in [
            web(serde_json::json!({"clusterIP": "None"})),
            web(serde_json::json!({"type": "ExternalName", "externalName": "example.com"})),
        ] {
            assert_eq!(fragment(&s, &[&sl], &NODE), Fragment::default());
        }
        let mut other = web(serde_json::json!({}));
        other.metadata.labels = Some([(PROXY_NAME_LABEL.to_string(), "x".to_string())].into());
        assert_eq!(fragment(&other, &[&sl], &NODE), Fragment::default());
    }

    #[test]
    fn chain_names_are_hashed_and_bounded() {
        let a = hashed("ns/web/tcp/http");
        assert_eq!(a.len(), 8 + 1 + "ns/web/tcp/http".len());
        assert_ne!(a[..8], hashed("ns/web/tcp/https")[..8]);
        assert!(hashed(&"x".repeat(400)).len() <= 240);
    }
}
