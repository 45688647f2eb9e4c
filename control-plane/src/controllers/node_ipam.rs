//! Node IPAM, as kube-controller-manager's range allocator (`--allocate-node-cidrs`): each
//! node gets a pod range (`spec.podCIDR`/`podCIDRs`) carved from the cluster range, which its
//! agent hands to the CNI plugins. The ranges in use are learnt from the nodes once, before
//! the first allocation; a deleted node's range is free again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_api::cidr::Cidr;

use super::pods::str_at;
use crate::events::{Event, Events, Recorder};
use crate::objects::{ObjectError, Objects, Target};
use crate::runtime::{self, cache, Action, Cache, Informer, Queue};

const COMPONENT: &str = "node-ipam-controller";
/// A node that found the cluster range full looks again after this.
const FULL_RETRY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct NodeIpamConfig {
    /// The range pods' addresses come from (kube's `--cluster-cidr`).
    pub cluster_cidr: Cidr,
    /// The prefix length of each node's range (kube's `--node-cidr-mask-size`).
    pub node_mask: u8,
}

impl Default for NodeIpamConfig {
    fn default() -> Self {
        NodeIpamConfig {
            cluster_cidr: "10.244.0.0/16".parse().expect("a valid CIDR"),
            node_mask: 24,
        }
    }
}

/// Which ranges are taken, by index in the cluster range.
#[derive(Default)]
struct Ranges {
    /// Learnt from the nodes (done once, before the first allocation).
    loaded: bool,
    owner: HashMap<u64, String>,
    of_node: HashMap<String, u64>,
    /// Where the next search starts (round robin, as kube's cidrset: a released range is
    /// not handed out again at once).
    next: u64,
    /// Nodes that found no free range: looked at again when one is released.
    waiting: std::collections::HashSet<String>,
}

impl Ranges {
    fn take(&mut self, index: u64, node: &str) {
        self.owner.insert(index, node.to_string());
        self.of_node.insert(node.to_string(), index);
    }

    /// Frees `node`'s range; the nodes that were waiting for one.
    fn release(&mut self, node: &str) -> Vec<String> {
        self.waiting.remove(node);
        match self.of_node.remove(node) {
            Some(i) if self.owner.get(&i).map(String::as_str) == Some(node) => {
                self.owner.remove(&i);
                self.waiting.drain().collect()
            }
            _ => Vec::new(),
        }
    }

    /// A free range for `node` (one it already holds, else the next free one).
    fn allocate(&mut self, node: &str, count: u64) -> Option<u64> {
        if let Some(&i) = self.of_node.get(node) {
            return Some(i);
        }
        let free = (0..count)
            .map(|k| (self.next + k) % count)
            .find(|i| !self.owner.contains_key(i))?;
        self.next = (free + 1) % count;
        self.take(free, node);
        Some(free)
    }
}

struct Ctx {
    config: NodeIpamConfig,
    objects: Arc<Objects>,
    nodes: Arc<Informer>,
    ranges: Mutex<Ranges>,
    queue: Arc<Queue>,
    events: Recorder,
}

impl Ctx {
    /// The index of a node's range within the cluster range, if it has one from it.
    fn index_of(&self, node: &Value) -> Option<u64> {
        let cidr: Cidr = str_at(node, "/spec/podCIDR").parse().ok()?;
        self.config
            .cluster_cidr
            .index_of(self.config.node_mask, &cidr)
    }
}

pub fn spawn(cache: &Arc<Cache>, config: NodeIpamConfig, events: &Arc<Events>) {
    let ctx = Arc::new(Ctx {
        config,
        objects: cache.objects().clone(),
        nodes: cache.of("", "v1", "nodes"),
        ranges: Mutex::default(),
        queue: Queue::new(),
        events: events.recorder(COMPONENT),
    });
    let queue = ctx.queue.clone();
    let q = queue.clone();
    ctx.nodes
        .on_change(move |ch| q.add(cache::key_of(ch.object())));
    runtime::spawn_controller(COMPONENT, queue, move |key| reconcile(ctx.clone(), key));
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (_, name) = cache::split_key(&key);
    let Some(node) = ctx.nodes.get(None, name) else {
        for waiting in ctx.ranges.lock().expect("ranges").release(name) {
            ctx.queue.add(waiting);
        }
        return Ok(Action::Done);
    };
    if !str_at(&node, "/spec/podCIDR").is_empty() {
        if let Some(i) = ctx.index_of(&node) {
            ctx.ranges.lock().expect("ranges").take(i, name);
        }
        return Ok(Action::Done);
    }
    let (cluster, mask) = (ctx.config.cluster_cidr, ctx.config.node_mask);
    let allocated = {
        let mut ranges = ctx.ranges.lock().expect("ranges");
        if !ranges.loaded {
            ranges.loaded = true;
            for n in ctx.nodes.list(None) {
                if let Some(i) = ctx.index_of(&n) {
                    ranges.take(i, str_at(&n, "/metadata/name"));
                }
            }
        }
        ranges.allocate(name, cluster.subnets(mask))
    };
    let Some(index) = allocated else {
        ctx.ranges
            .lock()
            .expect("ranges")
            .waiting
            .insert(name.to_string());
        let msg = format!("Node {name} status is now: CIDRNotAvailable");
        ctx.events
            .publish(&node, "Node", Event::normal("CIDRNotAvailable", &msg));
        return Ok(Action::RequeueAfter(FULL_RETRY));
    };
    let cidr = cluster
        .subnet(mask, index)
        .expect("an index below the count")
        .to_string();
    let written = super::update_same(
        &ctx.objects,
        &ctx.nodes,
        &node,
        Target::Main,
        |cur, next| {
            // Someone (an agent, an admin) set one meanwhile: keep it.
            if str_at(cur, "/spec/podCIDR").is_empty() {
                next["spec"]["podCIDR"] = json!(cidr);
                next["spec"]["podCIDRs"] = json!([cidr]);
            }
        },
    )
    .await;
    match written {
        Ok(n) => {
            let got = ctx.index_of(&n);
            if got != Some(index) {
                // The node took another range meanwhile: ours is free again.
                let mut ranges = ctx.ranges.lock().expect("ranges");
                for waiting in ranges.release(name) {
                    ctx.queue.add(waiting);
                }
                if let Some(i) = got {
                    ranges.take(i, name);
                }
            }
            tracing::info!(node = %name, pod_cidr = %str_at(&n, "/spec/podCIDR"), "pod range allocated");
            Ok(Action::Done)
        }
        Err(e) => {
            for waiting in ctx.ranges.lock().expect("ranges").release(name) {
                ctx.queue.add(waiting);
            }
            match e {
                ObjectError::NotFound { .. } => Ok(Action::Done),
                e => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing;

    #[test]
    fn ranges_go_round_robin_and_come_back() {
        let mut r = Ranges::default();
        assert_eq!(r.allocate("a", 3), Some(0));
        assert_eq!(r.allocate("a", 3), Some(0));
        assert_eq!(r.allocate("b", 3), Some(1));
        r.release("a");
        // Not handed out again at once.
        assert_eq!(r.allocate("c", 3), Some(2));
        assert_eq!(r.allocate("d", 3), Some(0));
        assert_eq!(r.allocate("e", 3), None);
        r.waiting.insert("e".into());
        assert_eq!(r.release("b"), ["e"]);
        assert_eq!(r.allocate("e", 3), Some(1));
    }

    async fn node(objects: &Objects, body: Value) {
        let rt = testing::rt(objects, "", "nodes");
        let opts = crate::objects::WriteOptions::default();
        objects.create(rt, None, body, &opts).await.unwrap();
    }

    #[tokio::test]
    async fn nodes_get_distinct_ranges_and_keep_them() {
        let (objects, _dir) = testing::objects().await;
        let cache = Cache::new(objects.clone());
        let config = NodeIpamConfig {
            cluster_cidr: "10.8.0.0/22".parse().unwrap(),
            node_mask: 24,
        };
        spawn(&cache, config, &Events::start(objects.clone()));
        let nodes = cache.of("", "v1", "nodes");
        let named = |n: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}});
        // One node already has a range (set by hand): the others must avoid it.
        let mut fixed = named("fixed");
        fixed["spec"] = json!({"podCIDR": "10.8.0.0/24"});
        node(&objects, fixed).await;
        for n in ["a", "b", "c"] {
            node(&objects, named(n)).await;
        }
        let ranges = || {
            let mut all: Vec<String> = ["fixed", "a", "b", "c"]
                .iter()
                .filter_map(|n| nodes.get(None, n))
                .map(|n| str_at(&n, "/spec/podCIDR").to_string())
                .collect();
            all.sort();
            all
        };
        testing::eventually("every node's range", || {
            let r = ranges();
            async move { (r.len() == 4 && r.iter().all(|r| !r.is_empty())).then_some(()) }
        })
        .await;
        assert_eq!(
            ranges(),
            ["10.8.0.0/24", "10.8.1.0/24", "10.8.2.0/24", "10.8.3.0/24"]
        );
        let a = nodes.get(None, "a").unwrap();
        assert_eq!(a["spec"]["podCIDRs"], json!([str_at(&a, "/spec/podCIDR")]));
        // The cluster range is full: a fifth node waits.
        node(&objects, named("d")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(str_at(&nodes.get(None, "d").unwrap(), "/spec/podCIDR"), "");
        // A deleted node's range goes to the waiting one.
        let b_range = str_at(&nodes.get(None, "b").unwrap(), "/spec/podCIDR").to_string();
        let rt = testing::rt(&objects, "", "nodes");
        objects
            .delete(rt, None, "b", &Default::default())
            .await
            .unwrap();
        let d = testing::eventually("node d's range", || {
            let d = nodes.get(None, "d");
            async move { d.filter(|d| !str_at(d, "/spec/podCIDR").is_empty()) }
        })
        .await;
        assert_eq!(str_at(&d, "/spec/podCIDR"), b_range);
    }
}
