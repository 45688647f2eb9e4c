//! LoadBalancer Services on bare nodes, as k3s's ServiceLB: the nodes themselves are the
//! load balancer. A LoadBalancer Service (of no other `loadBalancerClass`) gets the Ready
//! nodes' addresses (ExternalIP, else InternalIP) as `status.loadBalancer.ingress`, and
//! every node's proxy takes traffic to those addresses on the Service's ports. Two such
//! Services cannot share a port on the same addresses: the later one stays pending.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use super::pods::str_at;
use crate::events::{Event, Events, Recorder};
use crate::objects::{ObjectError, Objects, Target};
use crate::runtime::{self, cache, Action, Cache, Informer, Queue};

struct Ctx {
    objects: Arc<Objects>,
    services: Arc<Informer>,
    nodes: Arc<Informer>,
    events: Recorder,
}

pub fn spawn(cache: &Arc<Cache>, events: &Arc<Events>) {
    let ctx = Arc::new(Ctx {
        objects: cache.objects().clone(),
        services: cache.of("", "v1", "services"),
        nodes: cache.of("", "v1", "nodes"),
        events: events.recorder("service-lb-controller"),
    });
    let queue = Queue::new();
    let q = queue.clone();
    ctx.services.on_change(move |c| {
        let (old, new) = (c.old.as_deref(), c.new.as_deref());
        if let Some(s) = new.filter(|s| is_ours(s) || has_ingress(s)) {
            q.add(cache::key_of(s));
        }
        // A Service letting go of its ports may unblock one waiting for them.
        if old
            .is_some_and(|o| is_ours(o) && !new.is_some_and(|n| is_ours(n) && ports(n) == ports(o)))
        {
            q.add(ALL.into());
        }
    });
    let q = queue.clone();
    ctx.nodes.on_change(move |_| q.add(ALL.into()));
    runtime::spawn_controller("service-lb-controller", queue.clone(), move |key| {
        reconcile(ctx.clone(), queue.clone(), key)
    });
}

/// The queue key that stands for every LoadBalancer Service (handlers must not list the
/// informer they are called from).
const ALL: &str = "*";

/// A LoadBalancer Service this controller serves (no other class asked for).
fn is_ours(svc: &Value) -> bool {
    str_at(svc, "/spec/type") == "LoadBalancer" && str_at(svc, "/spec/loadBalancerClass").is_empty()
}

fn has_ingress(svc: &Value) -> bool {
    svc.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|i| !i.is_empty())
}

fn ports(svc: &Value) -> BTreeSet<(i64, String)> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["port"].as_i64()?,
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
            ))
        })
        .collect()
}

/// The addresses the nodes offer: each Ready node's ExternalIP, else its InternalIP.
fn node_addresses(nodes: &[Arc<Value>]) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|n| {
            let addrs = n["status"]["addresses"].as_array()?;
            let of = |t: &str| {
                addrs
                    .iter()
                    .find(|a| a["type"] == t)
                    .and_then(|a| a["address"].as_str())
            };
            of("ExternalIP")
                .or_else(|| of("InternalIP"))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Who came first: the older Service (then the name) keeps a contested port.
fn precedes(a: &Value, b: &Value) -> bool {
    let at = |s: &Value| {
        (
            str_at(s, "/metadata/creationTimestamp").to_string(),
            cache::key_of(s),
        )
    };
    at(a) < at(b)
}

async fn reconcile(ctx: Arc<Ctx>, queue: Arc<Queue>, key: String) -> Result<Action, ObjectError> {
    if key == ALL {
        for s in ctx.services.list(None) {
            if is_ours(&s) || has_ingress(&s) {
                queue.add(cache::key_of(&s));
            }
        }
        return Ok(Action::Done);
    }
    let (ns, name) = cache::split_key(&key);
    let Some(svc) = ctx.services.get(ns, name) else {
        return Ok(Action::Done);
    };
    let mut conflict = None;
    let want: Vec<Value> = if is_ours(&svc) {
        let mine = ports(&svc);
        conflict = ctx
            .services
            .list(None)
            .into_iter()
            .filter(|o| is_ours(o) && cache::key_of(o) != key && precedes(o, &svc))
            .find_map(|o| {
                let shared = ports(&o).intersection(&mine).next().cloned()?;
                Some((cache::key_of(&o), shared))
            });
        if conflict.is_some() {
            Vec::new()
        } else {
            node_addresses(&ctx.nodes.list(None))
                .into_iter()
                .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
                .collect()
        }
    } else if str_at(&svc, "/spec/type") != "LoadBalancer" {
        // No longer a LoadBalancer: its ingress goes.
        Vec::new()
    } else {
        // Another class's: not ours to touch.
        return Ok(Action::Done);
    };
    let have = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if have == want {
        return Ok(Action::Done);
    }
    if let Some((other, (port, proto))) = &conflict {
        let msg = format!("port {port}/{proto} is in use by Service {other}");
        ctx.events
            .publish(&svc, "Service", Event::warning("PortConflict", &msg));
    }
    super::update_same(
        &ctx.objects,
        &ctx.services,
        &svc,
        Target::Status,
        |_, next| {
            next["status"]["loadBalancer"] = if want.is_empty() {
                json!({})
            } else {
                json!({"ingress": want})
            };
        },
    )
    .await?;
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{self, create, rt};
    use super::*;
    use crate::objects::{PatchType, WriteOptions};

    async fn node(o: &Objects, name: &str, ip: &str, ready: bool) {
        let n = json!({"metadata": {"name": name}, "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        let nodes = rt(o, "", "nodes");
        o.create(nodes, None, n.clone(), &WriteOptions::default())
            .await
            .unwrap();
        o.patch(
            nodes,
            None,
            name,
            PatchType::Merge,
            json!({"status": n["status"]}),
            Target::Status,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    }

    async fn ingress(o: &Objects, name: &str, want: Value) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (s, _) = o
                .get_value(rt(o, "", "services"), Some("default"), name)
                .await
                .unwrap();
            let got = s
                .pointer("/status/loadBalancer/ingress")
                .cloned()
                .unwrap_or(json!([]));
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {got} != {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn ready_nodes_are_the_ingress_and_a_taken_port_waits() {
        let (o, _dir) = testing::objects().await;
        let cache = Cache::new(o.clone());
        spawn(&cache, &Events::start(o.clone()));
        node(&o, "a", "192.0.2.2", true).await;
        node(&o, "b", "192.0.2.1", true).await;
        node(&o, "down", "192.0.2.9", false).await;
        create(
            &o,
            "",
            "services",
            json!({"metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        )
        .await;
        let both =
            json!([{"ip": "192.0.2.1", "ipMode": "VIP"}, {"ip": "192.0.2.2", "ipMode": "VIP"}]);
        ingress(&o, "web", both.clone()).await;
        // Port 80 is web's: the second stays pending until web lets go of it.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        create(
            &o,
            "",
            "services",
            json!({"metadata": {"name": "other"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "o"}, "ports": [{"port": 80}]}}),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        ingress(&o, "other", json!([])).await;
        o.patch(
            rt(&o, "", "services"),
            Some("default"),
            "web",
            PatchType::Merge,
            json!({"spec": {"type": "ClusterIP"}}),
            Target::Main,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
        ingress(&o, "web", json!([])).await;
        ingress(&o, "other", both).await;
    }
}
