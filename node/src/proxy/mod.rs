//! The node's Service proxy, as kube-proxy's nftables mode: a table of its own where
//! cluster IPs, node ports, external and load-balancer IPs are DNATed to endpoints picked
//! at random (ready ones, else serving terminating ones), with ClientIP affinity, the
//! Local traffic policies, rejects for Services without endpoints and masquerading
//! where replies must come back through this node.
//!
//! Incremental: watch events name the Services they touch; a sync recomputes only those
//! Services' parts ([`model::fragment`]) and sends nftables the difference
//! ([`nft::Transaction`]), so one endpoint turning ready costs the same with 1,000
//! Services as with one.

pub mod model;
pub mod nft;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::service_watch::{Changes, ServiceWatch};

/// How long a chain nothing uses any more stays (flushed) before it is deleted: kernels
/// before 6.2 may still see it referenced for a moment after its map element went.
const STALE_CHAIN_GRACE: Duration = Duration::from_secs(1);
/// The wait before syncing again after nft refused a batch.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    /// The cluster's pod range (traffic from elsewhere to a cluster IP is masqueraded).
    pub cluster_cidr: String,
    /// The nftables table (`ip` family) the proxy owns.
    pub table: String,
}

/// Told of a Service whose rules nftables refused (and why): they are left out, the
/// rest of the table applied.
pub type OnRefused = Box<dyn Fn(&Service, &str) + Send + Sync>;

/// The proxy: it syncs in [`Proxy::run`] as the Services change.
pub struct Proxy {
    cfg: ProxyConfig,
    watch: ServiceWatch,
    changes: Arc<Changes>,
    on_refused: OnRefused,
}

/// The table of the agent whose pods hang on `bridge` (agents sharing a host in tests
/// keep apart by their bridges).
pub fn table_name(bridge: &str) -> String {
    if bridge == "skiff0" {
        "skiff".into()
    } else {
        format!("skiff-{bridge}")
    }
}

/// Why this node cannot run the proxy, if it cannot.
pub fn unavailable() -> Option<String> {
    // Safety: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the agent does not run as root".into());
    }
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "nft --version failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("nft (Debian's nftables) cannot run: {e}")),
    }
}

/// Turns on what Service traffic between pods needs of the node: forwarding, and
/// netfilter on bridged traffic (a reply from a pod to a pod on the same bridge must be
/// un-DNATed on its way).
pub fn enable_forwarding() {
    for (path, what) in [
        ("/proc/sys/net/ipv4/ip_forward", "IP forwarding"),
        (
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
            "netfilter on bridged traffic (the br_netfilter module)",
        ),
    ] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        if let Err(e) = std::fs::write(path, "1") {
            tracing::warn!(error = %e, path, "cannot turn on {what}: Service traffic may fail");
        }
    }
}

impl Proxy {
    pub fn new(
        cfg: ProxyConfig,
        watch: ServiceWatch,
        changes: Arc<Changes>,
        on_refused: OnRefused,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            cfg,
            watch,
            changes,
            on_refused,
        })
    }

    /// Keeps the table in step with the watched Services and slices until aborted.
    pub async fn run(self: Arc<Self>) {
        let table = self.cfg.table.clone();
        let node = model::Node {
            name: &self.cfg.node_name,
            cluster_cidr: &self.cfg.cluster_cidr,
        };
        let mut applied: HashMap<String, model::Fragment> = HashMap::new();
        // Services whose rules nft refused, with those rules: left out until they change.
        let mut refused: HashMap<String, model::Fragment> = HashMap::new();
        let mut stale: HashMap<String, Instant> = HashMap::new();
        // The table is made anew on the first sync and after a refused batch.
        let mut fresh = true;
        let mut nft = nft::Nft::default();
        loop {
            let due = stale.values().min().map(|t| *t + STALE_CHAIN_GRACE);
            let changed = tokio::select! {
                c = self.changes.next() => c,
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.changes.take(),
            };
            let (mut keys, all) = (changed.keys, changed.all);
            let started = Instant::now();
            let mut tx = nft::Transaction::default();
            if fresh {
                tx.base = Some(nft::base(&table));
                applied.clear();
                stale.clear();
            }
            if fresh || all {
                keys.extend(applied.keys().cloned());
                keys.extend(self.watch.service_keys());
            }
            let slices = self.watch.slices_of(&keys);
            let empty = model::Fragment::default();
            let mut next = Vec::with_capacity(keys.len());
            for k in keys {
                let frag = match self.watch.service(&k) {
                    Some(svc) => {
                        let of: Vec<&EndpointSlice> =
                            slices.get(&k).into_iter().flatten().map(|s| &**s).collect();
                        model::fragment(&svc, &of, &node)
                    }
                    None => model::Fragment::default(),
                };
                if refused.get(&k) == Some(&frag) {
                    continue;
                }
                refused.remove(&k);
                tx.diff(&table, applied.get(&k).unwrap_or(&empty), &frag);
                next.push((k, frag));
            }
            let now = Instant::now();
            let re_added: HashSet<&String> =
                next.iter().flat_map(|(_, f)| f.chains.keys()).collect();
            stale.retain(|c, _| !re_added.contains(c));
            let due: Vec<String> = stale
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= STALE_CHAIN_GRACE)
                .map(|(c, _)| c.clone())
                .collect();
            for c in &due {
                tx.delete_chain(&table, c);
            }
            if tx.is_empty() {
                continue;
            }
            let computed = started.elapsed();
            let mut freed = Freed::new();
            match nft.apply(&tx.script(&table)).await {
                Ok(()) => {
                    for (k, f) in &next {
                        freed.extend(freed_claims(applied.get(k), f));
                    }
                    fresh = false;
                    for c in &due {
                        stale.remove(c);
                    }
                    for c in &tx.dropped_chains {
                        stale.insert(c.clone(), now);
                    }
                    let changed = next.len();
                    for (k, f) in next {
                        if f == model::Fragment::default() {
                            applied.remove(&k);
                        } else {
                            applied.insert(k, f);
                        }
                    }
                    tracing::debug!(services = changed, ?computed, elapsed = ?started.elapsed(), "proxy rules synced");
                }
                Err(e) => {
                    // One Service's rules must not keep every other Service's off the
                    // node: apply the batch Service by Service, leaving out the refused.
                    // (nft applies a batch whole or not at all: the table is as before.)
                    tracing::warn!(error = %e, fresh, "nft refused a batch of the Service proxy's; applying it Service by Service");
                    match self
                        .isolate(
                            &mut nft,
                            next,
                            &mut applied,
                            &mut refused,
                            fresh,
                            &mut freed,
                        )
                        .await
                    {
                        Some(dropped) => {
                            fresh = false;
                            stale.extend(dropped.into_iter().map(|c| (c, now)));
                        }
                        None => {
                            fresh = true;
                            self.changes.mark_all();
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            }
            // What a refused Service claimed may be free now (its rival gone or changed):
            // it is tried again.
            if !freed.is_empty() {
                let retry: Vec<String> = refused
                    .iter()
                    .filter(|(_, f)| f.elements.keys().any(|e| freed.contains(e)))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &retry {
                    refused.remove(k);
                }
                self.changes.mark_keys(retry);
            }
        }
    }
}

/// The map entries (an address and port) replacing a Service's applied rules `old` with
/// `new` gives up: another Service may have been refused for one.
fn freed_claims<'a>(
    old: Option<&'a model::Fragment>,
    new: &'a model::Fragment,
) -> impl Iterator<Item = (model::Map, String)> + 'a {
    old.into_iter()
        .flat_map(|old| old.elements.keys())
        .filter(|k| !new.elements.contains_key(*k))
        .cloned()
}

/// Map entries given up in a sync: only the refused Services that wanted one of them are
/// tried again (not every refused one on every change).
type Freed = HashSet<(model::Map, String)>;

impl Proxy {
    /// Applies each Service's change in a batch of its own (after the bare table, if
    /// `fresh`): those nft refuses go to `refused` (and are reported; a Service's old
    /// rules stay), the others to `applied` (the entries they gave up to `freed`). The
    /// chains the changes dropped, or `None` if even the bare table was refused.
    async fn isolate(
        &self,
        nft: &mut nft::Nft,
        next: Vec<(String, model::Fragment)>,
        applied: &mut HashMap<String, model::Fragment>,
        refused: &mut HashMap<String, model::Fragment>,
        fresh: bool,
        freed: &mut Freed,
    ) -> Option<Vec<String>> {
        let table = &self.cfg.table;
        if fresh {
            let mut base = nft::Transaction::default();
            base.base = Some(nft::base(table));
            if let Err(e) = nft.apply(&base.script(table)).await {
                tracing::warn!(error = %e, "nft refused the Service proxy's bare table");
                return None;
            }
            applied.clear();
        }
        // The older Service keeps what two claim (an external IP that is another's
        // cluster IP, say): a newcomer cannot take traffic over by being applied first.
        let mut next = next;
        next.sort_by_cached_key(|(k, _)| {
            let created = self
                .watch
                .service(k)
                .and_then(|s| s.metadata.creation_timestamp.clone());
            (created.map(|t| t.0), k.clone())
        });
        let empty = model::Fragment::default();
        let mut dropped = Vec::new();
        for (k, f) in next {
            let mut one = nft::Transaction::default();
            one.diff(table, applied.get(&k).unwrap_or(&empty), &f);
            if one.is_empty() {
                continue;
            }
            match nft.apply(&one.script(table)).await {
                Ok(()) => {
                    dropped.append(&mut one.dropped_chains);
                    freed.extend(freed_claims(applied.get(&k), &f));
                    if f == empty {
                        applied.remove(&k);
                    } else {
                        applied.insert(k, f);
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %k, error = %e, "nft refused a Service's rules; left out");
                    if let Some(svc) = self.watch.service(&k) {
                        (self.on_refused)(&svc, &e.to_string());
                    }
                    refused.insert(k, f);
                }
            }
        }
        Some(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"}, "spec": spec}))
        .unwrap()
    }

    fn slice(ips: &[&str]) -> EndpointSlice {
        let eps: Vec<_> = ips
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
        .unwrap()
    }

    fn list(table: &str) -> String {
        let o = std::process::Command::new("nft")
            .args(["list", "table", "ip", table])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// The batches are what nft accepts, and a change leaves the table as a fresh build
    /// of the new state would: run by the real nft in a network namespace of its own.
    #[test]
    fn nft_takes_the_batches_and_a_change_moves_only_what_it_must() {
        std::thread::spawn(|| {
            // Safety: unshare on this thread only; nft children inherit its namespace.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "root is needed"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let node = model::Node {
                    name: "n1",
                    cluster_cidr: "10.244.0.0/16",
                };
                let svc = service(
                    serde_json::json!({"clusterIP": "10.96.5.5", "type": "NodePort",
                    "sessionAffinity": "ClientIP",
                    "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
                );
                let two = slice(&["10.244.1.2", "10.244.1.3"]);
                let one = slice(&["10.244.1.3"]);
                let f1 = model::fragment(&svc, &[&two], &node);
                let f2 = model::fragment(&svc, &[&one], &node);
                let mut tx = nft::Transaction::default();
                tx.base = Some(nft::base("t"));
                tx.diff("t", &model::Fragment::default(), &f1);
                nft::apply(&tx.script("t")).await.unwrap();
                let first = list("t");
                assert!(first.contains("dnat to 10.244.1.2:8080"), "{first}");
                assert!(
                    first.contains("10.96.5.5 . tcp . 80 : goto service-"),
                    "{first}"
                );
                assert!(first.contains("tcp . 30080 : goto external-"), "{first}");
                let mut tx = nft::Transaction::default();
                tx.diff("t", &f1, &f2);
                assert_eq!(tx.dropped_chains.len(), 1, "{tx:?}");
                // Through libnftables this time (the agent's way).
                let mut lib = nft::Nft::default();
                lib.apply(&tx.script("t")).await.unwrap();
                assert!(lib
                    .apply("add chain ip t bad-batch\nno such command\n")
                    .await
                    .is_err());
                let after = list("t");
                assert!(!after.contains("dnat to 10.244.1.2:8080"), "{after}");
                assert!(after.contains("numgen random mod 1"), "{after}");
                // The dropped chain, flushed, goes in a later batch.
                let mut later = nft::Transaction::default();
                for c in &tx.dropped_chains {
                    later.delete_chain("t", c);
                }
                nft::apply(&later.script("t")).await.unwrap();
                // Now the table is what building the new state from nothing makes.
                let mut fresh = nft::Transaction::default();
                fresh.base = Some(nft::base("u"));
                fresh.diff("u", &model::Fragment::default(), &f2);
                nft::apply(&fresh.script("u")).await.unwrap();
                assert_eq!(list("t"), list("u").replace("table ip u", "table ip t"));
            });
        })
        .join()
        .unwrap();
    }
}
