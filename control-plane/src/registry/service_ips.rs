//! Service IP and node-port allocation, as Kubernetes' service registry does on create:
//! a free cluster IP from the service CIDR (10.96.0.0/12) and free node ports from
//! 30000-32767, unless the object asks for specific (and free) ones.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{json, Value};

use super::validation::{ErrorType, Errors, FieldError};
use super::Hooks;

const CIDR_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const CIDR_SIZE: u32 = 1 << 20;
/// The first address is the `kubernetes` service's by convention.
const RESERVED: u32 = 1;
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Addresses below this offset are handed out only on request while others are free
/// (Kubernetes' static subrange: min(max(16, size/16), 256)), so well-known ones such as
/// the cluster DNS's 10.96.0.10 stay free for whoever asks for them.
const STATIC_BAND: u32 = 256;
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

fn used(existing: &[Value]) -> (HashSet<String>, HashSet<i64>) {
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for s in existing {
        for ip in s
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            ips.insert(ip.to_string());
        }
        for p in s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                ports.insert(n);
            }
        }
    }
    (ips, ports)
}

fn invalid(field: &str, value: String, detail: String) -> FieldError {
    FieldError {
        field: field.into(),
        kind: ErrorType::Invalid(value),
        detail,
    }
}

/// Fills `spec.clusterIP(s)`, IP families and node ports of a new Service.
pub fn allocate(existing: &[Value], svc: &mut Value) -> Result<(), Vec<FieldError>> {
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let (used_ips, used_ports) = used(existing);
    let mut errs = Vec::new();
    let requested = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ip = match requested.as_str() {
        "None" => "None".to_string(),
        "" => {
            let mut rng = rand::rng();
            let free = (0..64)
                .map(|_| rng.random_range(STATIC_BAND..CIDR_SIZE - 1))
                .map(|o| Ipv4Addr::from(CIDR_BASE + o).to_string())
                .find(|ip| !used_ips.contains(ip));
            match free.or_else(|| {
                (RESERVED + 1..CIDR_SIZE - 1)
                    .map(|o| Ipv4Addr::from(CIDR_BASE + o).to_string())
                    .find(|ip| !used_ips.contains(ip))
            }) {
                Some(ip) => ip,
                None => {
                    return Err(vec![invalid(
                        "spec.clusterIPs",
                        "[]".into(),
                        "failed to allocate IP: range is full".into(),
                    )])
                }
            }
        }
        req => {
            let in_range = req
                .parse::<Ipv4Addr>()
                .map(|a| u32::from(a).wrapping_sub(CIDR_BASE) < CIDR_SIZE)
                .unwrap_or(false);
            if !in_range {
                errs.push(invalid("spec.clusterIPs", format!("[\"{req}\"]"), format!("failed to allocate IP {req}: the provided IP ({req}) is not in the valid range. The range of valid IPs is 10.96.0.0/12")));
            } else if used_ips.contains(req) {
                errs.push(invalid(
                    "spec.clusterIPs",
                    format!("[\"{req}\"]"),
                    format!("failed to allocate IP {req}: provided IP is already allocated"),
                ));
            }
            req.to_string()
        }
    };
    let spec = &mut svc["spec"];
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if ip != "None" || spec.get("ipFamilies").is_none() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec.get("ipFamilyPolicy").is_none() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        let mut taken = used_ports;
        let mut rng = rand::rng();
        for (i, p) in spec["ports"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .enumerate()
        {
            match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
                Some(n) if taken.contains(&n) => errs.push(invalid(&format!("spec.ports[{i}].nodePort"), n.to_string(), "provided port is already allocated".to_string())),
                Some(n) if !NODE_PORTS.contains(&n) => errs.push(invalid(&format!("spec.ports[{i}].nodePort"), n.to_string(), "provided port is not in the valid range. The range of valid ports is 30000-32767".into())),
                Some(n) => {
                    taken.insert(n);
                }
                None => {
                    let free = (0..64).map(|_| rng.random_range(NODE_PORTS)).find(|n| !taken.contains(n)).or_else(|| NODE_PORTS.clone().find(|n| !taken.contains(n)));
                    match free {
                        Some(n) => {
                            taken.insert(n);
                            p["nodePort"] = json!(n);
                        }
                        None => errs.push(invalid(&format!("spec.ports[{i}].nodePort"), "0".into(), "range is full".into())),
                    }
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn type_of(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn needs_cluster_ip(svc: &Value) -> bool {
    type_of(svc) != "ExternalName"
}

fn needs_node_ports(svc: &Value) -> bool {
    matches!(type_of(svc), "NodePort" | "LoadBalancer")
}

fn node_ports(svc: &Value) -> Vec<Value> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| p.get("nodePort").cloned().unwrap_or(Value::Null))
        .collect()
}

/// An update keeps what was allocated where the new type still needs it, even if the
/// request left it out (kube's patchAllocatedValues), and drops what the new type does
/// not need where the request left it as it was (kube's dropTypeDependentFields): a
/// NodePort Service patched to ClusterIP loses its node ports, an ExternalName one its
/// cluster IP.
pub fn carry_over(old: &Value, new: &mut Value) {
    if !new.get("spec").is_some_and(Value::is_object) {
        // Refused by validation later; nothing to carry.
        return;
    }
    let keeps_ip = needs_cluster_ip(new);
    let spec = new["spec"].as_object_mut().expect("an object");
    for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        if keeps_ip && spec.get(f).is_none_or(|v| v.is_null() || v == "") {
            if let Some(v) = old.pointer(&format!("/spec/{f}")) {
                spec.insert(f.to_string(), v.clone());
            }
        }
    }
    if needs_cluster_ip(old) && !keeps_ip {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec.get(f) == old.pointer(&format!("/spec/{f}")) {
                spec.remove(f);
            }
        }
    }
    let old_ports: Vec<Value> = old
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if needs_node_ports(new) {
        for p in new
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if p.get("nodePort").is_none_or(|n| n.is_null() || n == 0) {
                if let Some(n) = old_ports
                    .iter()
                    .find(|o| {
                        o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")
                    })
                    .and_then(|o| o.get("nodePort"))
                {
                    p["nodePort"] = n.clone();
                }
            }
        }
    } else if needs_node_ports(old) && node_ports(new) == node_ports(old) {
        for p in new
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    let spec = new["spec"].as_object_mut().expect("an object");
    let unchanged = |spec: &serde_json::Map<String, Value>, f: &str| {
        spec.get(f) == old.pointer(&format!("/spec/{f}"))
    };
    if type_of(old) == "LoadBalancer"
        && spec.get("type").and_then(Value::as_str) != Some("LoadBalancer")
    {
        for f in [
            "healthCheckNodePort",
            "allocateLoadBalancerNodePorts",
            "loadBalancerClass",
        ] {
            if unchanged(spec, f) {
                spec.remove(f);
            }
        }
    }
    let external = |t: &str| matches!(t, "NodePort" | "LoadBalancer");
    let new_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if external(type_of(old)) && !external(&new_type) && unchanged(spec, "externalTrafficPolicy") {
        spec.remove("externalTrafficPolicy");
    }
}

/// Services' write hooks: addresses from the shared pool, kept across updates.
pub(super) struct ServiceHooks;

impl Hooks for ServiceHooks {
    fn prepare_update(&self, old: &Value, new: &mut Value) {
        carry_over(old, new);
    }

    fn allocates(&self) -> bool {
        true
    }

    /// On update, what the new type needs and the old one lacked (a ClusterIP Service
    /// made a NodePort one gets its node ports); the Service's own stay its own.
    fn allocate(&self, others: &[Value], svc: &mut Value) -> Result<(), Errors> {
        allocate(others, svc).map_err(Errors)
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_free_ips_and_node_ports() {
        let existing =
            vec![json!({"spec": {"clusterIPs": ["10.96.0.10"], "ports": [{"nodePort": 30080}]}})];
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30081}]}});
        allocate(&existing, &mut svc).unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(u32::from(ip) - CIDR_BASE < CIDR_SIZE && ip.to_string() != "10.96.0.10");
        assert!(NODE_PORTS.contains(&svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap()));
        let mut clash = json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 1}]}});
        let errs = allocate(&existing, &mut clash).unwrap_err();
        assert!(errs[0]
            .to_string()
            .contains("provided IP is already allocated"));
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        allocate(&existing, &mut headless).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn an_update_keeps_what_the_type_needs_and_drops_the_rest() {
        let old = json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.96.1.1", "clusterIPs": ["10.96.1.1"],
            "externalTrafficPolicy": "Cluster", "allocateLoadBalancerNodePorts": true,
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        // A PUT that leaves the allocation out keeps it.
        let mut put =
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}});
        carry_over(&old, &mut put);
        assert_eq!(put["spec"]["clusterIP"], "10.96.1.1");
        assert_eq!(put["spec"]["ports"][0]["nodePort"], 30080);
        // A patch to ClusterIP: the node port and external fields go, the IP stays.
        let mut patched = old.clone();
        patched["spec"]["type"] = json!("ClusterIP");
        carry_over(&old, &mut patched);
        assert_eq!(patched["spec"]["ports"][0].get("nodePort"), None);
        assert_eq!(patched["spec"].get("externalTrafficPolicy"), None);
        assert_eq!(patched["spec"].get("allocateLoadBalancerNodePorts"), None);
        assert_eq!(patched["spec"]["clusterIP"], "10.96.1.1");
        // To ExternalName: no cluster IP.
        let mut ext = old.clone();
        ext["spec"]["type"] = json!("ExternalName");
        ext["spec"]["externalName"] = json!("example.com");
        carry_over(&old, &mut ext);
        assert_eq!(ext["spec"].get("clusterIP"), None);
        assert_eq!(ext["spec"].get("clusterIPs"), None);
    }
}
