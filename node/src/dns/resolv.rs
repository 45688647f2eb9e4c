//! A pod's resolver configuration, as the kubelet writes its `/etc/resolv.conf` from
//! `dnsPolicy` and `dnsConfig`: ClusterFirst (the default) names the cluster DNS with the
//! namespace's search path and `ndots:5`; Default is the node's; None only `dnsConfig`.
//! Host-network pods under ClusterFirst get the node's (ClusterFirstWithHostNet asks for
//! the cluster's). Wasm guests' lookups follow the same configuration ([`super::lookup`]).

use k8s_openapi::api::core::v1::PodSpec;

/// The kubelet's limits (glibc reads at most 3 nameservers; 32 search domains).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Reads a resolv.conf's nameserver, search (and domain) and options lines.
    pub fn parse(text: &str) -> ResolvConf {
        let mut c = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => c.nameservers.extend(words.next().map(str::to_string)),
                Some("search") => c.searches = words.map(str::to_string).collect(),
                Some("domain") => {
                    c.searches = words.next().map(str::to_string).into_iter().collect()
                }
                Some("options") => c.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        c
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for n in &self.nameservers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }

    /// The `ndots` option (glibc's default: 1).
    pub fn ndots(&self) -> usize {
        self.options
            .iter()
            .rev()
            .find_map(|o| o.strip_prefix("ndots:")?.parse().ok())
            .unwrap_or(1)
    }

    fn merge_options(&mut self, more: impl IntoIterator<Item = String>) {
        for o in more {
            let key = o.split(':').next().unwrap_or_default().to_string();
            self.options
                .retain(|x| x.split(':').next().unwrap_or_default() != key);
            self.options.push(o);
        }
    }
}

fn push_unique(list: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for m in more {
        if !list.contains(&m) {
            list.push(m);
        }
    }
}

/// The configuration of a pod in namespace `ns` on a node whose own configuration is
/// `node`; `cluster` is the cluster DNS (address, domain) where pods may use it.
pub fn for_pod(
    spec: &PodSpec,
    ns: &str,
    node: &ResolvConf,
    cluster: Option<(&str, &str)>,
) -> ResolvConf {
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut c = match (policy, cluster_first, cluster) {
        ("None", _, _) => ResolvConf::default(),
        (_, true, Some((addr, domain))) => {
            let mut searches = vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ];
            push_unique(&mut searches, node.searches.iter().cloned());
            ResolvConf {
                nameservers: vec![addr.to_string()],
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        // Default, host-network ClusterFirst, or no cluster DNS on this node.
        _ => node.clone(),
    };
    if let Some(d) = &spec.dns_config {
        push_unique(&mut c.nameservers, d.nameservers.iter().flatten().cloned());
        push_unique(&mut c.searches, d.searches.iter().flatten().cloned());
        c.merge_options(d.options.iter().flatten().map(|o| match &o.value {
            Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or_default()),
            None => o.name.clone().unwrap_or_default(),
        }));
    }
    c.nameservers.truncate(MAX_NAMESERVERS);
    c.searches.truncate(MAX_SEARCHES);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    const NODE: &str = "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";

    #[test]
    fn cluster_first_names_the_cluster_dns_with_the_namespace_search_path() {
        let node = ResolvConf::parse(NODE);
        let c = for_pod(
            &spec(serde_json::json!({"containers": []})),
            "shop",
            &node,
            Some(("10.96.0.10", "cluster.local")),
        );
        assert_eq!(
            c.render(),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
        assert_eq!(c.ndots(), 5);
        // Host network: the node's, unless ClusterFirstWithHostNet.
        let host = spec(serde_json::json!({"containers": [], "hostNetwork": true}));
        assert_eq!(
            for_pod(&host, "shop", &node, Some(("10.96.0.10", "cluster.local"))),
            node
        );
        let with = spec(
            serde_json::json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert_eq!(
            for_pod(&with, "shop", &node, Some(("10.96.0.10", "cluster.local"))).nameservers,
            ["10.96.0.10"]
        );
        // No cluster DNS here: the node's.
        assert_eq!(
            for_pod(
                &spec(serde_json::json!({"containers": []})),
                "shop",
                &node,
                None
            ),
            node
        );
    }

    #[test]
    fn dns_config_adds_to_the_policy_and_none_is_only_it() {
        let node = ResolvConf::parse(NODE);
        let s = spec(
            serde_json::json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}),
        );
        assert_eq!(
            for_pod(&s, "x", &node, Some(("10.96.0.10", "cluster.local"))).render(),
            "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2 rotate\n"
        );
        let s = spec(
            serde_json::json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
        );
        let c = for_pod(&s, "x", &node, Some(("10.96.0.10", "cluster.local")));
        assert_eq!(c.options, ["ndots:1"]);
    }
}
