//! kube-scheduler's framework, cut to what Skiff needs: a pod's facts computed once
//! ([`PodInfo`]), nodes with what is placed on them ([`NodeEntry`]), a pre-filter pass
//! over the placed pods for inter-pod affinity and topology spread ([`Prepared`]), then
//! the filter plugins and the score plugins as tables ([`FILTERS`], [`SCORES`]) with
//! kube-scheduler's names, messages and weights.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, Pod, PodAffinityTerm, PreferredSchedulingTerm,
    Taint, Toleration, TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::quantity;
use crate::selectors::label_selector_matches;

/// Requests of a pod (or allocatable of a node) in milli-units (i64: 8 PiB of memory, and
/// no 128-bit arithmetic in the per-node loops).
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub ephemeral: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.ephemeral -= o.ephemeral;
        self.pods -= o.pods;
    }
}

/// Labels that name a CPU architecture: a Wasm-only pod runs on any.
const ARCH_LABELS: &[&str] = &["kubernetes.io/arch", "beta.kubernetes.io/arch"];

/// What scheduling reads of a pod, computed once per attempt (and kept for placed pods).
#[derive(Default, Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub node_name: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub required_node_affinity: Option<NodeSelector>,
    pub preferred_node_affinity: Vec<PreferredSchedulingTerm>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Vec<PodAffinityTerm>,
    pub anti_affinity: Vec<PodAffinityTerm>,
    pub preferred_affinity: Vec<WeightedPodAffinityTerm>,
    pub preferred_anti_affinity: Vec<WeightedPodAffinityTerm>,
    pub spread: Vec<TopologySpreadConstraint>,
    pub host_ports: Vec<(String, i32)>,
    pub images: Vec<String>,
    /// Every container runs on the Wasm runtime (RuntimeClass `wasmtime`): CPU
    /// architecture does not matter.
    pub wasm_only: bool,
}

fn qty(
    m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    k: &str,
) -> i64 {
    m.and_then(|m| m.get(k))
        .and_then(|q| quantity::parse(&q.0).ok())
        .map_or(0, |m| i64::try_from(m.0).unwrap_or(i64::MAX))
}

impl PodInfo {
    pub fn new(pod: &Pod) -> PodInfo {
        let none = Default::default();
        let spec: &k8s_openapi::api::core::v1::PodSpec = pod.spec.as_ref().unwrap_or(&none);
        let mut r = Resources {
            pods: 1000,
            ..Default::default()
        };
        let req = |c: &k8s_openapi::api::core::v1::Container, k: &str| {
            qty(c.resources.as_ref().and_then(|r| r.requests.as_ref()), k)
        };
        for c in &spec.containers {
            r.cpu += req(c, "cpu");
            r.memory += req(c, "memory");
            r.ephemeral += req(c, "ephemeral-storage");
        }
        // Init containers run one at a time: the pod needs the largest of them.
        for c in spec.init_containers.iter().flatten() {
            r.cpu = r.cpu.max(req(c, "cpu"));
            r.memory = r.memory.max(req(c, "memory"));
            r.ephemeral = r.ephemeral.max(req(c, "ephemeral-storage"));
        }
        let overhead = spec.overhead.as_ref();
        r.cpu += qty(overhead, "cpu");
        r.memory += qty(overhead, "memory");
        let affinity = spec.affinity.clone().unwrap_or_default();
        let node_aff = affinity.node_affinity.unwrap_or_default();
        let pod_aff = affinity.pod_affinity.unwrap_or_default();
        let anti = affinity.pod_anti_affinity.unwrap_or_default();
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), port))
            })
            .collect();
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests: r,
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_affinity: node_aff.required_during_scheduling_ignored_during_execution,
            preferred_node_affinity: node_aff
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            affinity: pod_aff
                .required_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            anti_affinity: anti
                .required_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            preferred_affinity: pod_aff
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            preferred_anti_affinity: anti
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            spread: spec.topology_spread_constraints.clone().unwrap_or_default(),
            host_ports,
            images: spec
                .containers
                .iter()
                .filter_map(|c| c.image.as_deref().map(skiff_api::image::normalize))
                .collect(),
            wasm_only: spec.runtime_class_name.as_deref() == Some("wasmtime"),
        }
    }

    /// Requests for scoring: a container that requests nothing counts as kube's defaults
    /// (100m cpu, 200Mi memory), so empty pods still spread.
    fn score_requests(&self) -> Resources {
        let mut r = self.requests;
        if r.cpu == 0 {
            r.cpu = 100;
        }
        if r.memory == 0 {
            r.memory = 200 * 1024 * 1024 * 1000;
        }
        r
    }
}

/// A node as scheduling reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    /// Image name -> size in bytes (`status.images`).
    pub images: HashMap<String, i64>,
}

impl NodeEntry {
    pub fn new(node: &Node) -> NodeEntry {
        let status = node.status.clone().unwrap_or_default();
        let a = status.allocatable.as_ref();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let mut images = HashMap::new();
        for img in status.images.iter().flatten() {
            for n in img.names.iter().flatten() {
                images.insert(n.clone(), img.size_bytes.unwrap_or(0));
            }
        }
        let spec = node.spec.clone().unwrap_or_default();
        let mut taints = spec.taints.unwrap_or_default();
        if !ready {
            taints.push(Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
        NodeEntry {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable: Resources {
                cpu: qty(a, "cpu"),
                memory: qty(a, "memory"),
                ephemeral: qty(a, "ephemeral-storage"),
                pods: qty(a, "pods"),
            },
            taints,
            unschedulable: spec.unschedulable.unwrap_or(false),
            ready,
            images,
        }
    }
}

/// The nodes in a Vec: a decision walks hundreds of them per pod, by position, without
/// hashing names; an index by name serves the rest.
#[derive(Default, Clone)]
pub struct Nodes {
    list: Vec<NodeState>,
    by_name: HashMap<String, usize>,
}

impl Nodes {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn at(&self, i: usize) -> &NodeState {
        &self.list[i]
    }

    pub fn get(&self, name: &str) -> Option<&NodeState> {
        self.by_name.get(name).map(|i| &self.list[*i])
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        self.by_name.get(name).map(|i| &mut self.list[*i])
    }

    pub fn values(&self) -> std::slice::Iter<'_, NodeState> {
        self.list.iter()
    }

    /// Adds a node, or replaces the one of the same name.
    pub fn insert(&mut self, n: NodeState) {
        match self.by_name.get(&n.entry.name) {
            Some(i) => self.list[*i] = n,
            None => {
                self.by_name.insert(n.entry.name.clone(), self.list.len());
                self.list.push(n);
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<NodeState> {
        let i = self.by_name.remove(name)?;
        let gone = self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.by_name.insert(moved.entry.name.clone(), i);
        }
        Some(gone)
    }
}

impl std::ops::Index<&str> for Nodes {
    type Output = NodeState;
    fn index(&self, name: &str) -> &NodeState {
        self.get(name).expect("a known node")
    }
}

impl FromIterator<NodeState> for Nodes {
    fn from_iter<I: IntoIterator<Item = NodeState>>(iter: I) -> Nodes {
        let mut nodes = Nodes::default();
        for n in iter {
            nodes.insert(n);
        }
        nodes
    }
}

/// A node with what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub entry: NodeEntry,
    pub used: Resources,
    /// Requests as scored (non-zero defaults).
    pub used_for_score: Resources,
    pub ports: Vec<(String, i32)>,
}

impl NodeState {
    pub fn new(entry: NodeEntry) -> NodeState {
        NodeState {
            entry,
            used: Resources::default(),
            used_for_score: Resources::default(),
            ports: Vec::new(),
        }
    }

    pub fn place(&mut self, p: &PodInfo) {
        self.used.add(&p.requests);
        self.used_for_score.add(&p.score_requests());
        self.ports.extend(p.host_ports.iter().cloned());
    }

    pub fn unplace(&mut self, p: &PodInfo) {
        self.used.sub(&p.requests);
        self.used_for_score.sub(&p.score_requests());
        for hp in &p.host_ports {
            if let Some(i) = self.ports.iter().position(|x| x == hp) {
                self.ports.swap_remove(i);
            }
        }
    }
}

/// kube's `ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    if t.key
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k != taint.key)
    {
        return false;
    }
    match t.operator.as_deref() {
        Some("Exists") => true,
        None | Some("") | Some("Equal") => {
            t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let vals = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| vals.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !vals.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                vals.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A node selector term: every expression (labels) and field (`metadata.name`) holds;
/// an empty term matches nothing, as in kube. A Wasm-only pod skips architecture terms.
fn term_matches(
    exprs: Option<&Vec<NodeSelectorRequirement>>,
    fields: Option<&Vec<NodeSelectorRequirement>>,
    node: &NodeEntry,
    wasm_only: bool,
) -> bool {
    let (exprs, fields) = (exprs.map_or(&[][..], |e| e), fields.map_or(&[][..], |f| f));
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .filter(|r| !(wasm_only && ARCH_LABELS.contains(&r.key.as_str())))
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node.name.as_str())))
}

/// `nodeSelector` and required node affinity (the NodeAffinity filter).
pub fn node_affinity_matches(p: &PodInfo, node: &NodeEntry) -> bool {
    let selector_ok = p.node_selector.iter().all(|(k, v)| {
        (p.wasm_only && ARCH_LABELS.contains(&k.as_str())) || node.labels.get(k) == Some(v)
    });
    selector_ok
        && p.required_node_affinity.as_ref().is_none_or(|ns| {
            ns.node_selector_terms.iter().any(|t| {
                term_matches(
                    t.match_expressions.as_ref(),
                    t.match_fields.as_ref(),
                    node,
                    p.wasm_only,
                )
            })
        })
}

/// A DaemonSet's view of a node (kube's `NodeShouldRunDaemonPod`): whether its pod
/// should be created there (node affinity holds, NoSchedule and NoExecute taints are
/// tolerated), and whether one already there may stay (NoExecute tolerated).
pub fn daemon_fit(p: &PodInfo, n: &NodeEntry) -> (bool, bool) {
    if !node_affinity_matches(p, n) {
        return (false, false);
    }
    let tolerated = |effects: &[&str]| {
        n.taints
            .iter()
            .filter(|t| effects.contains(&t.effect.as_str()))
            .all(|t| p.tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    (
        tolerated(&["NoSchedule", "NoExecute"]),
        tolerated(&["NoExecute"]),
    )
}

/// A placed pod, as inter-pod affinity and topology spread count it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub node: String,
    pub info: std::sync::Arc<PodInfo>,
}

/// Whether `other` is selected by an affinity term of a pod in `ns` (namespaces: the
/// term's list, or the pod's own; a namespaceSelector is read as "all namespaces" when
/// empty and otherwise not supported beyond that).
fn term_selects(term: &PodAffinityTerm, ns: &str, other: &PodInfo) -> bool {
    let in_ns = match (&term.namespaces, &term.namespace_selector) {
        (Some(list), _) if !list.is_empty() => list.contains(&other.namespace),
        (_, Some(sel)) if sel.match_labels.is_none() && sel.match_expressions.is_none() => true,
        _ => other.namespace == ns,
    };
    in_ns
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| label_selector_matches(s, Some(&other.labels)))
}

/// Counts per topology value, computed once per attempt from the placed pods (kube's
/// PreFilter state of InterPodAffinity and PodTopologySpread).
#[derive(Default)]
pub struct Prepared {
    /// Per required affinity term: topology value -> matching pods.
    affinity: Vec<HashMap<String, usize>>,
    /// Whether any placed pod matched any affinity term at all.
    affinity_any: bool,
    anti: Vec<HashMap<String, usize>>,
    /// (topology key, value) where a placed pod's anti-affinity rejects this pod.
    existing_anti: HashMap<(String, String), usize>,
    /// Per DoNotSchedule constraint: value -> matching pods, and the minimum.
    spread: Vec<(HashMap<String, usize>, usize)>,
    /// Per ScheduleAnyway constraint: value -> matching pods.
    soft_spread: Vec<HashMap<String, usize>>,
    /// Preferred inter-pod affinity: per node name, the summed weights (anti negative).
    preferred: HashMap<String, i64>,
}

impl Prepared {
    pub fn new<'a>(
        p: &PodInfo,
        nodes: &Nodes,
        placed: impl Iterator<Item = &'a Placed> + Clone,
    ) -> Prepared {
        let mut out = Prepared::default();
        let label = |node: &str, key: &str| {
            nodes
                .get(node)
                .and_then(|n| n.entry.labels.get(key))
                .cloned()
        };
        let count_terms = |terms: &[PodAffinityTerm], any: &mut bool| {
            terms
                .iter()
                .map(|t| {
                    let mut m: HashMap<String, usize> = HashMap::new();
                    for other in placed.clone() {
                        if term_selects(t, &p.namespace, &other.info) {
                            *any = true;
                            if let Some(v) = label(&other.node, &t.topology_key) {
                                *m.entry(v).or_default() += 1;
                            }
                        }
                    }
                    m
                })
                .collect::<Vec<_>>()
        };
        let mut any = false;
        out.affinity = count_terms(&p.affinity, &mut any);
        out.affinity_any = any;
        out.anti = count_terms(&p.anti_affinity, &mut false);
        for other in placed.clone() {
            for t in &other.info.anti_affinity {
                if term_selects(t, &other.info.namespace, p) {
                    if let Some(v) = label(&other.node, &t.topology_key) {
                        *out.existing_anti
                            .entry((t.topology_key.clone(), v))
                            .or_default() += 1;
                    }
                }
            }
        }
        let weigh =
            |terms: &[WeightedPodAffinityTerm], sign: i64, out: &mut HashMap<String, i64>| {
                for wt in terms {
                    let t = &wt.pod_affinity_term;
                    let mut per_value: HashMap<String, i64> = HashMap::new();
                    for other in placed.clone() {
                        if term_selects(t, &p.namespace, &other.info) {
                            if let Some(v) = label(&other.node, &t.topology_key) {
                                *per_value.entry(v).or_default() += sign * i64::from(wt.weight);
                            }
                        }
                    }
                    for n in nodes.values() {
                        if let Some(v) = n.entry.labels.get(&t.topology_key) {
                            *out.entry(n.entry.name.clone()).or_default() +=
                                per_value.get(v).copied().unwrap_or(0);
                        }
                    }
                }
            };
        let mut preferred = HashMap::new();
        weigh(&p.preferred_affinity, 1, &mut preferred);
        weigh(&p.preferred_anti_affinity, -1, &mut preferred);
        out.preferred = preferred;
        for c in &p.spread {
            let counts = spread_counts(p, c, nodes, placed.clone());
            if c.when_unsatisfiable == "DoNotSchedule" {
                let domains = counts.len();
                let min = if (domains as i32) < c.min_domains.unwrap_or(1) {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                };
                out.spread.push((counts, min));
            } else {
                out.soft_spread.push(counts);
            }
        }
        out
    }
}

/// The selector of a spread constraint, with `matchLabelKeys` taken from the pod.
fn spread_selector(p: &PodInfo, c: &TopologySpreadConstraint) -> Option<LabelSelector> {
    let mut sel = c.label_selector.clone()?;
    for k in c.match_label_keys.iter().flatten() {
        if let Some(v) = p.labels.get(k) {
            sel.match_labels
                .get_or_insert_with(Default::default)
                .insert(k.clone(), v.clone());
        }
    }
    Some(sel)
}

/// Matching pods per domain over the nodes the constraint counts (those with the key that
/// pass the pod's node affinity, as `nodeAffinityPolicy: Honor` does); every such domain
/// is present, with zero when empty.
fn spread_counts<'a>(
    p: &PodInfo,
    c: &TopologySpreadConstraint,
    nodes: &Nodes,
    placed: impl Iterator<Item = &'a Placed>,
) -> HashMap<String, usize> {
    let honor_affinity = c.node_affinity_policy.as_deref() != Some("Ignore");
    let eligible = |n: &NodeEntry| {
        n.labels.contains_key(&c.topology_key) && (!honor_affinity || node_affinity_matches(p, n))
    };
    let mut counts: HashMap<String, usize> = nodes
        .values()
        .filter(|n| eligible(&n.entry))
        .filter_map(|n| n.entry.labels.get(&c.topology_key).cloned())
        .map(|v| (v, 0))
        .collect();
    let Some(sel) = spread_selector(p, c) else {
        return counts;
    };
    for other in placed {
        if other.info.namespace != p.namespace
            || !label_selector_matches(&sel, Some(&other.info.labels))
        {
            continue;
        }
        let Some(n) = nodes.get(&other.node).filter(|n| eligible(&n.entry)) else {
            continue;
        };
        if let Some(v) = n.entry.labels.get(&c.topology_key) {
            *counts.entry(v.clone()).or_default() += 1;
        }
    }
    counts
}

/// One filter plugin: `Err(reason)` in kube-scheduler's words if the node does not fit.
pub struct Filter {
    pub name: &'static str,
    /// Whether the filter can reject any node for this pod (kube's PreFilter "skip"):
    /// most pods need only a few of them, and a decision runs them on hundreds of nodes.
    pub applies: fn(&PodInfo, &Prepared) -> bool,
    pub check: fn(&PodInfo, &NodeState, &Prepared) -> Result<(), String>,
}

/// The filters, in kube-scheduler's order; a node fails at the first.
pub const FILTERS: &[Filter] = &[
    Filter {
        name: "NodeUnschedulable",
        applies: |_, _| true,
        check: |p, n, _| {
            if !n.entry.unschedulable {
                return Ok(());
            }
            let tolerated = p.tolerations.iter().any(|t| {
                tolerates(
                    t,
                    &Taint {
                        key: "node.kubernetes.io/unschedulable".into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    },
                )
            });
            if !tolerated {
                Err("node(s) were unschedulable".into())
            } else {
                Ok(())
            }
        },
    },
    Filter {
        name: "NodeName",
        applies: |p, _| p.node_name.is_some(),
        check: |p, n, _| match &p.node_name {
            Some(want) if *want != n.entry.name => {
                Err("node(s) didn't match the requested node name".into())
            }
            _ => Ok(()),
        },
    },
    Filter {
        name: "TaintToleration",
        applies: |_, _| true,
        check: |p, n, _| match n.entry.taints.iter().find(|t| {
            matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
                && !p.tolerations.iter().any(|tol| tolerates(tol, t))
        }) {
            Some(t) => Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.clone().unwrap_or_default()
            )),
            None => Ok(()),
        },
    },
    Filter {
        name: "NodeAffinity",
        applies: |p, _| !p.node_selector.is_empty() || p.required_node_affinity.is_some(),
        check: |p, n, _| {
            if node_affinity_matches(p, &n.entry) {
                Ok(())
            } else {
                Err("node(s) didn't match Pod's node affinity/selector".into())
            }
        },
    },
    Filter {
        // Skiff's: a pod that may hold OCI containers (any RuntimeClass but `wasmtime`)
        // stays off nodes that say they cannot run them (an unprivileged agent's).
        name: "NodeRuntime",
        applies: |p, _| !p.wasm_only,
        check: |p, n, _| {
            let label = n.entry.labels.get(skiff_api::OCI_RUNTIME_LABEL);
            if !p.wasm_only && label.map(String::as_str) == Some("false") {
                Err("node(s) didn't offer the OCI runtime (runc)".into())
            } else {
                Ok(())
            }
        },
    },
    Filter {
        name: "NodePorts",
        applies: |p, _| !p.host_ports.is_empty(),
        check: |p, n, _| {
            if p.host_ports.iter().any(|hp| n.ports.contains(hp)) {
                Err("node(s) didn't have free ports for the requested pod ports".into())
            } else {
                Ok(())
            }
        },
    },
    Filter {
        name: "NodeResourcesFit",
        applies: |_, _| true,
        check: |p, n, _| {
            let (need, used, cap) = (&p.requests, &n.used, &n.entry.allocatable);
            if used.pods + need.pods > cap.pods {
                return Err("Too many pods".into());
            }
            let mut short = Vec::new();
            if need.cpu > 0 && used.cpu + need.cpu > cap.cpu {
                short.push("Insufficient cpu");
            }
            if need.memory > 0 && used.memory + need.memory > cap.memory {
                short.push("Insufficient memory");
            }
            if need.ephemeral > 0 && used.ephemeral + need.ephemeral > cap.ephemeral {
                short.push("Insufficient ephemeral-storage");
            }
            match short.first() {
                Some(s) => Err(s.to_string()),
                None => Ok(()),
            }
        },
    },
    Filter {
        name: "InterPodAffinity",
        applies: |p, pre| {
            !p.affinity.is_empty() || !p.anti_affinity.is_empty() || !pre.existing_anti.is_empty()
        },
        check: |p, n, pre| {
            let labels = &n.entry.labels;
            if pre
                .existing_anti
                .iter()
                .any(|((k, v), c)| *c > 0 && labels.get(k) == Some(v))
            {
                return Err("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
            // The first pod of a group that selects itself may go anywhere.
            let self_match = p.affinity.iter().all(|t| term_selects(t, &p.namespace, p));
            let affinity_ok = p.affinity.iter().zip(&pre.affinity).all(|(t, counts)| {
                labels
                    .get(&t.topology_key)
                    .is_some_and(|v| counts.get(v).is_some_and(|c| *c > 0))
            }) || (!pre.affinity_any && self_match);
            if !affinity_ok {
                return Err("node(s) didn't match pod affinity rules".into());
            }
            let anti_hit = p.anti_affinity.iter().zip(&pre.anti).any(|(t, counts)| {
                labels
                    .get(&t.topology_key)
                    .is_some_and(|v| counts.get(v).is_some_and(|c| *c > 0))
            });
            if anti_hit {
                return Err("node(s) didn't match pod anti-affinity rules".into());
            }
            Ok(())
        },
    },
    Filter {
        name: "PodTopologySpread",
        applies: |p, _| {
            p.spread
                .iter()
                .any(|c| c.when_unsatisfiable == "DoNotSchedule")
        },
        check: |p, n, pre| {
            let hard = p
                .spread
                .iter()
                .filter(|c| c.when_unsatisfiable == "DoNotSchedule");
            for (c, (counts, min)) in hard.zip(&pre.spread) {
                let Some(v) = n.entry.labels.get(&c.topology_key) else {
                    return Err("node(s) didn't match pod topology spread constraints (missing required label)".into());
                };
                let selfm = spread_selector(p, c)
                    .is_some_and(|s| label_selector_matches(&s, Some(&p.labels)))
                    as usize;
                let count = counts.get(v).copied().unwrap_or(0);
                if (count + selfm) as i64 - *min as i64 > i64::from(c.max_skew) {
                    return Err("node(s) didn't match pod topology spread constraints".into());
                }
            }
            Ok(())
        },
    },
];

/// How the resource score ranks nodes (kube's NodeResourcesFit scoring strategy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scoring {
    /// Prefer the emptiest node (spreads load; kube's default).
    #[default]
    LeastAllocated,
    /// Prefer the fullest node that fits (bin packing).
    MostAllocated,
}

/// One score plugin: a raw score per node, normalized to 0..=100 over the feasible nodes,
/// times the weight.
pub struct Score {
    pub name: &'static str,
    pub weight: i64,
    /// Whether the plugin can tell nodes apart for this pod at all (kube's PreScore
    /// "skip"): when not, every node would score the same and it is not run.
    pub applies: fn(&PodInfo) -> bool,
    pub raw: fn(&PodInfo, &NodeState, &Prepared, Scoring) -> i64,
    pub normalize: Normalize,
}

/// How raw scores become 0..=100.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Already 0..=100.
    None,
    /// Divided by the highest (a higher raw score is better).
    Max,
    /// Inverted against the highest (a lower raw score is better).
    ReverseMax,
    /// Scaled from the lowest to the highest (scores may be negative).
    MinMax,
}

fn fraction(used: i64, cap: i64) -> f64 {
    if cap <= 0 {
        1.0
    } else {
        (used as f64 / cap as f64).min(1.0)
    }
}

/// `part * 100 / whole` in integers, as kube scores (128-bit only when it would overflow).
fn per_hundred(part: i64, whole: i64) -> i64 {
    match part.checked_mul(100) {
        Some(p) => p / whole,
        None => (i128::from(part) * 100 / i128::from(whole)) as i64,
    }
}

/// kube's least/most allocated score of one resource (0..=100); a node without any of
/// it is left out of the mean.
fn allocated_score(requested: i64, capacity: i64, scoring: Scoring) -> Option<i64> {
    if capacity <= 0 {
        return None;
    }
    Some(match scoring {
        Scoring::LeastAllocated if requested > capacity => 0,
        Scoring::LeastAllocated => per_hundred(capacity - requested, capacity),
        Scoring::MostAllocated => per_hundred(requested.min(capacity), capacity),
    })
}

/// The score plugins with kube-scheduler's default weights.
pub const SCORES: &[Score] = &[
    Score {
        name: "NodeResourcesFit",
        weight: 1,
        applies: |_| true,
        raw: |p, n, _, scoring| {
            // kube's leastResourceScorer / mostResourceScorer: cpu and memory, weight 1.
            let need = p.score_requests();
            let (u, cap) = (&n.used_for_score, &n.entry.allocatable);
            let scores = [
                allocated_score(u.cpu + need.cpu, cap.cpu, scoring),
                allocated_score(u.memory + need.memory, cap.memory, scoring),
            ];
            let (sum, n) = scores
                .iter()
                .flatten()
                .fold((0, 0), |(s, n), x| (s + x, n + 1));
            if n == 0 {
                0
            } else {
                sum / n
            }
        },
        normalize: Normalize::None,
    },
    Score {
        name: "NodeResourcesBalancedAllocation",
        weight: 1,
        applies: |_| true,
        raw: |p, n, _, _| {
            let need = p.score_requests();
            let (u, cap) = (&n.used_for_score, &n.entry.allocatable);
            let a = fraction(u.cpu + need.cpu, cap.cpu);
            let b = fraction(u.memory + need.memory, cap.memory);
            // Standard deviation of two fractions is half their distance; truncated as kube.
            ((1.0 - (a - b).abs() / 2.0) * 100.0) as i64
        },
        normalize: Normalize::None,
    },
    Score {
        name: "TaintToleration",
        weight: 3,
        applies: |_| true,
        raw: |p, n, _, _| {
            n.entry
                .taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !p.tolerations.iter().any(|tol| tolerates(tol, t)))
                .count() as i64
        },
        normalize: Normalize::ReverseMax,
    },
    Score {
        name: "NodeAffinity",
        weight: 2,
        applies: |p| !p.preferred_node_affinity.is_empty(),
        raw: |p, n, _, _| {
            p.preferred_node_affinity
                .iter()
                .filter(|t| {
                    term_matches(
                        t.preference.match_expressions.as_ref(),
                        t.preference.match_fields.as_ref(),
                        &n.entry,
                        p.wasm_only,
                    )
                })
                .map(|t| i64::from(t.weight))
                .sum()
        },
        normalize: Normalize::Max,
    },
    Score {
        name: "InterPodAffinity",
        weight: 2,
        applies: |p| !p.preferred_affinity.is_empty() || !p.preferred_anti_affinity.is_empty(),
        raw: |_, n, pre, _| pre.preferred.get(&n.entry.name).copied().unwrap_or(0),
        normalize: Normalize::MinMax,
    },
    Score {
        name: "PodTopologySpread",
        weight: 2,
        applies: |p| {
            p.spread
                .iter()
                .any(|c| c.when_unsatisfiable != "DoNotSchedule")
        },
        raw: |p, n, pre, _| {
            let soft = p
                .spread
                .iter()
                .filter(|c| c.when_unsatisfiable != "DoNotSchedule");
            soft.zip(&pre.soft_spread)
                .map(|(c, counts)| {
                    n.entry
                        .labels
                        .get(&c.topology_key)
                        .and_then(|v| counts.get(v))
                        .copied()
                        .unwrap_or(0) as i64
                })
                .sum()
        },
        normalize: Normalize::ReverseMax,
    },
    Score {
        name: "ImageLocality",
        weight: 1,
        applies: |p| !p.images.is_empty(),
        raw: |p, n, _, _| {
            // kube: the sizes of the pod's images already on the node, between 23 MB and
            // 1000 MB per container.
            const MIN: i64 = 23 * 1024 * 1024;
            if n.entry.images.is_empty() {
                return 0;
            }
            let max = 1000 * 1024 * 1024 * p.images.len().max(1) as i64;
            let sum: i64 = p.images.iter().filter_map(|i| n.entry.images.get(i)).sum();
            if sum <= MIN {
                0
            } else {
                (sum.min(max) - MIN) * 100 / (max - MIN)
            }
        },
        normalize: Normalize::None,
    },
];

/// How many feasible nodes to find before scoring (kube's percentageOfNodesToScore:
/// all of small clusters, 50% minus 1% per 125 nodes of large ones, at least 5% and 100).
pub fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let pct = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * pct / 100).max(100)
}

/// Scores feasible nodes: the weighted sum of every plugin's normalized score.
pub fn score(p: &PodInfo, feasible: &[&NodeState], pre: &Prepared, scoring: Scoring) -> Vec<i64> {
    let mut total = vec![0i64; feasible.len()];
    for s in SCORES.iter().filter(|s| (s.applies)(p)) {
        if s.normalize == Normalize::None {
            // Already 0..=100: no pass over the raw scores needed.
            for (t, n) in total.iter_mut().zip(feasible) {
                *t += (s.raw)(p, n, pre, scoring) * s.weight;
            }
            continue;
        }
        let raw: Vec<i64> = feasible
            .iter()
            .map(|n| (s.raw)(p, n, pre, scoring))
            .collect();
        tracing::trace!(plugin = s.name, ?raw, "scored");
        let (lo, hi) = (
            raw.iter().copied().min().unwrap_or(0),
            raw.iter().copied().max().unwrap_or(0),
        );
        for (t, r) in total.iter_mut().zip(&raw) {
            let n = match s.normalize {
                Normalize::None => *r,
                Normalize::Max if hi > 0 => r * 100 / hi,
                Normalize::Max => 0,
                Normalize::ReverseMax if hi > 0 => 100 - r * 100 / hi,
                Normalize::ReverseMax => 100,
                Normalize::MinMax if hi > lo => (r - lo) * 100 / (hi - lo),
                Normalize::MinMax => 0,
            };
            *t += n * s.weight;
        }
    }
    total
}

/// kube-scheduler's summary: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) ...`.
pub fn failure_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn pod(spec: Value) -> PodInfo {
        pod_with(json!({"app": "web"}), spec)
    }

    fn pod_with(labels: Value, spec: Value) -> PodInfo {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "img"}]);
        }
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "labels": labels}, "spec": spec})).unwrap();
        PodInfo::new(&p)
    }

    fn node(name: &str, labels: Value, extra: Value) -> NodeState {
        let mut n = json!({"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": "2", "memory": "2Gi", "pods": "10", "ephemeral-storage": "10Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        if let Some(spec) = extra.get("spec") {
            n["spec"] = spec.clone();
        }
        if let Some(images) = extra.get("images") {
            n["status"]["images"] = images.clone();
        }
        NodeState::new(NodeEntry::new(&serde_json::from_value(n).unwrap()))
    }

    fn filter(p: &PodInfo, n: &NodeState, pre: &Prepared) -> Result<(), String> {
        FILTERS.iter().try_for_each(|f| (f.check)(p, n, pre))
    }

    fn plain(name: &str) -> NodeState {
        node(name, json!({"kubernetes.io/hostname": name}), json!({}))
    }

    #[test]
    fn the_filter_table_is_kube_schedulers_with_skiffs_runtime_filter() {
        let names: Vec<&str> = FILTERS.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeAffinity",
                "NodeRuntime",
                "NodePorts",
                "NodeResourcesFit",
                "InterPodAffinity",
                "PodTopologySpread"
            ]
        );
        let scores: Vec<(&str, i64)> = SCORES.iter().map(|s| (s.name, s.weight)).collect();
        assert_eq!(
            scores,
            [
                ("NodeResourcesFit", 1),
                ("NodeResourcesBalancedAllocation", 1),
                ("TaintToleration", 3),
                ("NodeAffinity", 2),
                ("InterPodAffinity", 2),
                ("PodTopologySpread", 2),
                ("ImageLocality", 1)
            ]
        );
    }

    #[test]
    fn pods_that_may_hold_oci_containers_avoid_nodes_without_runc() {
        let pre = Prepared::default();
        let wasm_only = node(
            "w",
            json!({skiff_api::OCI_RUNTIME_LABEL: "false"}),
            json!({}),
        );
        let both = node(
            "b",
            json!({skiff_api::OCI_RUNTIME_LABEL: "true"}),
            json!({}),
        );
        let oci = pod(json!({}));
        assert_eq!(
            filter(&oci, &wasm_only, &pre).unwrap_err(),
            "node(s) didn't offer the OCI runtime (runc)"
        );
        assert!(filter(&oci, &both, &pre).is_ok());
        // A node that says nothing (a kubelet of another kind) is taken to run them.
        assert!(filter(&oci, &plain("k"), &pre).is_ok());
        let wasm = pod(json!({"runtimeClassName": "wasmtime"}));
        assert!(filter(&wasm, &wasm_only, &pre).is_ok());
    }

    #[test]
    fn node_name_unschedulable_and_taints() {
        let pre = Prepared::default();
        let p = pod(json!({"nodeName": "a"}));
        assert_eq!(
            filter(&p, &plain("b"), &pre).unwrap_err(),
            "node(s) didn't match the requested node name"
        );
        assert!(filter(&p, &plain("a"), &pre).is_ok());
        let cordoned = node("a", json!({}), json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            filter(&pod(json!({})), &cordoned, &pre).unwrap_err(),
            "node(s) were unschedulable"
        );
        let tainted = node(
            "t",
            json!({}),
            json!({"spec": {"taints": [{"key": "gpu", "value": "a100", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            filter(&pod(json!({})), &tainted, &pre).unwrap_err(),
            "node(s) had untolerated taint {gpu: a100}"
        );
        let tolerant = pod(json!({"tolerations": [{"key": "gpu", "operator": "Exists"}]}));
        assert!(filter(&tolerant, &tainted, &pre).is_ok());
        let soft = node(
            "s",
            json!({}),
            json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
        );
        assert!(
            filter(&pod(json!({})), &soft, &pre).is_ok(),
            "PreferNoSchedule only scores"
        );
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let pre = Prepared::default();
        let gpu = node(
            "g",
            json!({"gpu": "true", "kubernetes.io/arch": "arm64", "zone": "a", "rank": "7"}),
            json!({}),
        );
        let cpu = node(
            "c",
            json!({"kubernetes.io/arch": "amd64", "zone": "b", "rank": "2"}),
            json!({}),
        );
        let sel = pod(json!({"nodeSelector": {"gpu": "true"}}));
        assert!(filter(&sel, &gpu, &pre).is_ok());
        assert_eq!(
            filter(&sel, &cpu, &pre).unwrap_err(),
            "node(s) didn't match Pod's node affinity/selector"
        );
        let aff = |terms: Value| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}),
            )
        };
        let in_b = aff(
            json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]),
        );
        assert!(filter(&in_b, &gpu, &pre).is_err() && filter(&in_b, &cpu, &pre).is_ok());
        let gt = aff(
            json!([{"matchExpressions": [{"key": "rank", "operator": "Gt", "values": ["5"]}]}]),
        );
        assert!(filter(&gt, &gpu, &pre).is_ok() && filter(&gt, &cpu, &pre).is_err());
        // Terms are ORed; matchFields pick a node by name (as DaemonSets do).
        let by_name = aff(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}, {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]),
        );
        assert!(filter(&by_name, &gpu, &pre).is_ok() && filter(&by_name, &cpu, &pre).is_ok());
        let only_c = aff(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}]),
        );
        assert!(filter(&only_c, &gpu, &pre).is_err());
        assert!(
            filter(&aff(json!([{}])), &cpu, &pre).is_err(),
            "an empty term matches nothing"
        );
        // A Wasm-only pod goes to any architecture.
        let arch = json!({"nodeSelector": {"kubernetes.io/arch": "amd64"}});
        assert!(filter(&pod(arch.clone()), &gpu, &pre).is_err());
        let mut wasm = arch;
        wasm["runtimeClassName"] = json!("wasmtime");
        assert!(filter(&pod(wasm), &gpu, &pre).is_ok());
    }

    #[test]
    fn resources_ports_and_pod_count() {
        let pre = Prepared::default();
        let big = |r: Value| {
            pod(json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": r}}]}))
        };
        let mut n = plain("a");
        assert!(filter(&big(json!({"cpu": "2"})), &n, &pre).is_ok());
        assert_eq!(
            filter(&big(json!({"cpu": "2100m"})), &n, &pre).unwrap_err(),
            "Insufficient cpu"
        );
        assert_eq!(
            filter(&big(json!({"memory": "3Gi"})), &n, &pre).unwrap_err(),
            "Insufficient memory"
        );
        assert_eq!(
            filter(&big(json!({"ephemeral-storage": "11Gi"})), &n, &pre).unwrap_err(),
            "Insufficient ephemeral-storage"
        );
        n.place(&big(json!({"cpu": "1500m"})));
        assert_eq!(
            filter(&big(json!({"cpu": "600m"})), &n, &pre).unwrap_err(),
            "Insufficient cpu"
        );
        let mut full = plain("f");
        for _ in 0..10 {
            full.place(&pod(json!({})));
        }
        assert_eq!(
            filter(&pod(json!({})), &full, &pre).unwrap_err(),
            "Too many pods"
        );
        let port = || {
            pod(
                json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
            )
        };
        let mut p = plain("p");
        assert!(filter(&port(), &p, &pre).is_ok());
        p.place(&port());
        assert_eq!(
            filter(&port(), &p, &pre).unwrap_err(),
            "node(s) didn't have free ports for the requested pod ports"
        );
        p.unplace(&port());
        assert!(filter(&port(), &p, &pre).is_ok());
    }

    fn cluster(names: &[(&str, &str)]) -> Nodes {
        names
            .iter()
            .map(|(n, zone)| {
                node(
                    n,
                    json!({"kubernetes.io/hostname": n, "zone": zone}),
                    json!({}),
                )
            })
            .collect()
    }

    fn placed(node: &str, labels: Value, spec: Value) -> Placed {
        Placed {
            node: node.into(),
            info: Arc::new(pod_with(labels, spec)),
        }
    }

    #[test]
    fn inter_pod_affinity_and_anti_affinity() {
        let nodes = cluster(&[("a", "z1"), ("b", "z1"), ("c", "z2")]);
        let cache = [placed("a", json!({"app": "db"}), json!({}))];
        let term = |app: &str, key: &str| json!([{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]);
        // Affinity to db in the same zone: a and b (zone z1), not c.
        let near_db = pod(
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("db", "zone")}}}),
        );
        let pre = Prepared::new(&near_db, &nodes, cache.iter());
        assert!(filter(&near_db, &nodes["b"], &pre).is_ok());
        assert_eq!(
            filter(&near_db, &nodes["c"], &pre).unwrap_err(),
            "node(s) didn't match pod affinity rules"
        );
        // Anti-affinity to db per host: anywhere but a.
        let away = pod(
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("db", "kubernetes.io/hostname")}}}),
        );
        let pre = Prepared::new(&away, &nodes, cache.iter());
        assert_eq!(
            filter(&away, &nodes["a"], &pre).unwrap_err(),
            "node(s) didn't match pod anti-affinity rules"
        );
        assert!(filter(&away, &nodes["b"], &pre).is_ok());
        // An existing pod's anti-affinity keeps matching pods off its zone.
        let guard = [placed(
            "c",
            json!({"app": "guard"}),
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("web", "zone")}}}),
        )];
        let web = pod(json!({}));
        let pre = Prepared::new(&web, &nodes, guard.iter());
        assert_eq!(
            filter(&web, &nodes["c"], &pre).unwrap_err(),
            "node(s) didn't satisfy existing pods anti-affinity rules"
        );
        assert!(filter(&web, &nodes["a"], &pre).is_ok());
        // The first pod of a self-selecting group may go anywhere.
        let first = pod(
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("web", "zone")}}}),
        );
        let pre = Prepared::new(&first, &nodes, [].iter());
        assert!(filter(&first, &nodes["c"], &pre).is_ok());
    }

    #[test]
    fn topology_spread_constraints() {
        let nodes = cluster(&[("a", "z1"), ("b", "z1"), ("c", "z2")]);
        let spread = pod(
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        );
        let cache = [
            placed("a", json!({"app": "web"}), json!({})),
            placed("b", json!({"app": "web"}), json!({})),
            placed("c", json!({"app": "web"}), json!({})),
        ];
        // z1 has 2, z2 has 1: another in z1 makes the skew 2.
        let pre = Prepared::new(&spread, &nodes, cache.iter());
        assert_eq!(
            filter(&spread, &nodes["a"], &pre).unwrap_err(),
            "node(s) didn't match pod topology spread constraints"
        );
        assert!(filter(&spread, &nodes["c"], &pre).is_ok());
        let mut unlabeled = nodes.clone();
        unlabeled.insert(node("x", json!({}), json!({})));
        let pre = Prepared::new(&spread, &unlabeled, cache.iter());
        assert_eq!(
            filter(&spread, &unlabeled["x"], &pre).unwrap_err(),
            "node(s) didn't match pod topology spread constraints (missing required label)"
        );
        // ScheduleAnyway only scores: the emptier zone wins.
        let soft = pod(
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        );
        let pre = Prepared::new(&soft, &nodes, cache.iter());
        assert!(filter(&soft, &nodes["a"], &pre).is_ok());
        let feasible: Vec<&NodeState> = vec![&nodes["a"], &nodes["c"]];
        let s = score(&soft, &feasible, &pre, Scoring::LeastAllocated);
        assert!(s[1] > s[0], "{s:?}");
    }

    #[test]
    fn least_allocated_spreads_and_most_allocated_packs() {
        let mut busy = plain("busy");
        busy.place(&pod(json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]})));
        let idle = plain("idle");
        let p = pod(json!({}));
        let pre = Prepared::default();
        let s = score(&p, &[&busy, &idle], &pre, Scoring::LeastAllocated);
        assert!(s[1] > s[0], "least allocated prefers idle: {s:?}");
        let s = score(&p, &[&busy, &idle], &pre, Scoring::MostAllocated);
        assert!(s[0] > s[1], "most allocated prefers busy: {s:?}");
    }

    #[test]
    fn preferences_taints_and_image_locality_score() {
        let pre = Prepared::default();
        let a = node("a", json!({"disk": "ssd"}), json!({}));
        let b = node("b", json!({}), json!({}));
        let likes_ssd = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}),
        );
        let s = score(&likes_ssd, &[&a, &b], &pre, Scoring::LeastAllocated);
        assert!(s[0] > s[1], "{s:?}");
        let soft = node(
            "s",
            json!({}),
            json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
        );
        let s = score(&pod(json!({})), &[&soft, &b], &pre, Scoring::LeastAllocated);
        assert!(s[1] > s[0], "{s:?}");
        let cached = node(
            "c",
            json!({}),
            json!({"images": [{"names": ["img:latest"], "sizeBytes": 500 * 1024 * 1024}]}),
        );
        let s = score(
            &pod(json!({})),
            &[&b, &cached],
            &pre,
            Scoring::LeastAllocated,
        );
        assert!(s[1] > s[0], "{s:?}");
        // Preferred inter-pod anti-affinity: away from the node with the matching pod.
        let nodes = cluster(&[("a", "z1"), ("b", "z2")]);
        let cache = [placed("a", json!({"app": "web"}), json!({}))];
        let shy = pod(
            json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}),
        );
        let pre = Prepared::new(&shy, &nodes, cache.iter());
        let s = score(
            &shy,
            &[&nodes["a"], &nodes["b"]],
            &pre,
            Scoring::LeastAllocated,
        );
        assert!(s[1] > s[0], "{s:?}");
    }

    #[test]
    fn large_clusters_score_a_sample() {
        assert_eq!(feasible_to_find(3), 3);
        assert_eq!(feasible_to_find(1000), 420);
        assert_eq!(feasible_to_find(5000), 500);
        assert_eq!(feasible_to_find(200), 100, "at least 100");
    }
}
