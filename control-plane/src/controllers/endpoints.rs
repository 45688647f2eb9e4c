//! The endpoints of Services with a selector, as kube-controller-manager's endpoint and
//! endpointslice controllers keep them: an `Endpoints` object named as the Service
//! (ready and not-ready addresses, terminating pods left out) and EndpointSlices
//! (discovery.k8s.io/v1) labelled with the Service's name, owned by it, whose endpoints
//! carry `ready`, `serving` and `terminating`. Named target ports resolve per pod.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

use super::pods::{self, str_at};
use crate::objects::{DeleteOptions, ObjectError, Objects, Target, WriteOptions};
use crate::runtime::{self, cache, written_rev, Action, Cache, Informer, Queue};
use crate::selectors::label_selector_matches_json;

pub use skiff_api::SERVICE_NAME_LABEL;
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints a slice holds at most (kube's --max-endpoints-per-slice default).
const MAX_PER_SLICE: usize = 100;

struct Ctx {
    objects: Arc<Objects>,
    services: Arc<Informer>,
    pods: Arc<Informer>,
    endpoints: Arc<Informer>,
    slices: Arc<Informer>,
}

/// Starts the controller: a Service is reconciled when it, one of its pods (before or
/// after the change), its Endpoints or one of its slices changes.
pub fn spawn(cache: &Arc<Cache>) {
    let ctx = Arc::new(Ctx {
        objects: cache.objects().clone(),
        services: cache.of("", "v1", "services"),
        pods: cache.of("", "v1", "pods"),
        endpoints: cache.of("", "v1", "endpoints"),
        slices: cache.of("discovery.k8s.io", "v1", "endpointslices"),
    });
    ctx.slices.add_index("service", |s| {
        let name = s["metadata"]["labels"][SERVICE_NAME_LABEL].as_str()?;
        Some(format!("{}/{name}", str_at(s, "/metadata/namespace")))
    });
    let queue = Queue::new();
    let q = queue.clone();
    ctx.services
        .on_change(move |c| q.add(cache::key_of(c.object())));
    let (q, services) = (queue.clone(), ctx.services.clone());
    ctx.pods.on_change(move |c| {
        for pod in [c.old.as_deref(), c.new.as_deref()].into_iter().flatten() {
            let ns = str_at(pod, "/metadata/namespace");
            for svc in services.list(Some(ns)) {
                if selector(&svc).is_some_and(|s| label_selector_matches_json(&s, pod)) {
                    q.add(cache::key_of(&svc));
                }
            }
        }
    });
    let q = queue.clone();
    ctx.endpoints
        .on_change(move |c| q.add(cache::key_of(c.object())));
    let q = queue.clone();
    ctx.slices.on_change(move |c| {
        let s = c.object();
        let name = s["metadata"]["labels"][SERVICE_NAME_LABEL]
            .as_str()
            .unwrap_or_default();
        if !name.is_empty() {
            q.add(format!("{}/{name}", str_at(s, "/metadata/namespace")));
        }
    });
    runtime::spawn_controller("endpoint-controller", queue, move |key| {
        reconcile(ctx.clone(), key)
    });
}

/// A Service's selector; `None`: it has none (its endpoints are someone else's).
fn selector(svc: &Value) -> Option<LabelSelector> {
    if str_at(svc, "/spec/type") == "ExternalName" {
        return None;
    }
    let labels = serde_json::from_value(svc.pointer("/spec/selector")?.clone()).ok()?;
    Some(LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    })
}

fn headless(svc: &Value) -> bool {
    matches!(str_at(svc, "/spec/clusterIP"), "" | "None")
}

/// A Service port resolved on a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    name: String,
    port: i64,
    protocol: String,
    app_protocol: Option<String>,
}

impl Port {
    /// As Endpoints and EndpointSlices write it (an Endpoints port leaves an empty name out).
    fn to_json(&self, empty_name: bool) -> Value {
        let mut v = json!({"port": self.port, "protocol": self.protocol});
        if empty_name || !self.name.is_empty() {
            v["name"] = json!(self.name);
        }
        if let Some(a) = &self.app_protocol {
            v["appProtocol"] = json!(a);
        }
        v
    }
}

/// One pod as an endpoint of a Service.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: String,
    hostname: String,
    pod: (String, String),
    /// The Service's ports resolved on this pod, sorted.
    ports: Vec<Port>,
}

/// Whether a pod belongs in a Service's endpoints (kube's ShouldPodBeInEndpoints): it
/// has an address and has not finished. (Terminating pods stay in slices, marked; the
/// Endpoints object leaves them out unless not-ready addresses are published.)
fn in_endpoints(pod: &Value) -> bool {
    !str_at(pod, "/status/podIP").is_empty() && !pods::is_terminal(pod)
}

/// The pod port a Service port targets (a number, or a named port of a container or a
/// sidecar of the pod).
fn find_port(pod: &Value, port: &Value) -> Option<i64> {
    let protocol = port["protocol"].as_str().unwrap_or("TCP");
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) if name.parse::<i64>().is_ok() => name.parse().ok(),
        Value::String(name) => {
            let containers = pod["spec"]["containers"].as_array().into_iter().flatten();
            let sidecars = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["restartPolicy"] == "Always");
            containers
                .chain(sidecars)
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|p| {
                    p["name"] == name.as_str()
                        && p["protocol"].as_str().unwrap_or("TCP") == protocol
                })
                .and_then(|p| p["containerPort"].as_i64())
        }
        // Defaulted to the port itself.
        _ => port["port"].as_i64(),
    }
}

fn endpoint(svc: &Value, pod: &Value) -> Endpoint {
    let publish = svc["spec"]["publishNotReadyAddresses"] == true;
    let serving = pods::is_ready(pod);
    let terminating = pods::is_terminating(pod);
    let hostname = str_at(pod, "/spec/hostname");
    let set_hostname = !hostname.is_empty()
        && str_at(pod, "/spec/subdomain") == str_at(svc, "/metadata/name")
        && str_at(pod, "/metadata/namespace") == str_at(svc, "/metadata/namespace");
    let ports = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p["name"].as_str().unwrap_or_default().to_string(),
                port: find_port(pod, p)?,
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                app_protocol: p["appProtocol"].as_str().map(str::to_string),
            })
        })
        .collect::<BTreeSet<Port>>()
        .into_iter()
        .collect();
    Endpoint {
        ip: str_at(pod, "/status/podIP").to_string(),
        ready: publish || (serving && !terminating),
        serving,
        terminating,
        node: str_at(pod, "/spec/nodeName").to_string(),
        hostname: if set_hostname {
            hostname.to_string()
        } else {
            String::new()
        },
        pod: (
            str_at(pod, "/metadata/name").to_string(),
            str_at(pod, "/metadata/uid").to_string(),
        ),
        ports,
    }
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (ns, name) = cache::split_key(&key);
    let ns = ns.unwrap_or_default();
    let Some(svc) = ctx.services.get(Some(ns), name) else {
        // Its slices go with it (owner references); its Endpoints are deleted here.
        if ctx.endpoints.get(Some(ns), name).is_some() {
            delete(&ctx, &ctx.endpoints, ns, name).await?;
        }
        return Ok(Action::Done);
    };
    let Some(sel) = selector(&svc) else {
        return Ok(Action::Done);
    };
    let mut eps: Vec<Endpoint> = ctx
        .pods
        .list(Some(ns))
        .iter()
        .filter(|p| label_selector_matches_json(&sel, p))
        .filter(|p| in_endpoints(p))
        .filter(|p| {
            str_at(p, "/status/podIP")
                .parse::<std::net::Ipv4Addr>()
                .is_ok()
        })
        .map(|p| endpoint(&svc, p))
        .collect();
    eps.sort_by(|a, b| a.ip.cmp(&b.ip).then(a.pod.0.cmp(&b.pod.0)));
    // Each cache holds this controller's own writes before the next reconcile reads it.
    let rev = sync_endpoints(&ctx, &svc, &eps).await?;
    ctx.endpoints.wait_for(rev).await;
    let rev = sync_slices(&ctx, &svc, &eps).await?;
    ctx.slices.wait_for(rev).await;
    Ok(Action::Done)
}

async fn delete(ctx: &Ctx, inf: &Informer, ns: &str, name: &str) -> Result<u64, ObjectError> {
    match ctx
        .objects
        .delete(inf.rt, Some(ns), name, &DeleteOptions::default())
        .await
    {
        Ok(w) => Ok(written_rev(&w)),
        Err(ObjectError::NotFound { .. }) => Ok(0),
        Err(e) => Err(e),
    }
}

/// The Service's labels, without the reserved ones, plus the headless marker if it has no
/// cluster IP.
fn labels(svc: &Value) -> serde_json::Map<String, Value> {
    let mut l = svc["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for reserved in [SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL] {
        l.remove(reserved);
    }
    if headless(svc) {
        l.insert(HEADLESS_LABEL.into(), json!(""));
    }
    l
}

/// Creates or rewrites `want` (a whole object) unless `current` already says the same in
/// the fields compared; returns the write's revision (0: none).
async fn put(
    ctx: &Ctx,
    inf: &Informer,
    ns: &str,
    current: Option<&Value>,
    want: Value,
    same: impl Fn(&Value, &Value) -> bool,
) -> Result<u64, ObjectError> {
    let w = WriteOptions::default();
    match current {
        Some(cur) if same(cur, &want) => Ok(0),
        Some(cur) => {
            let mut next = want;
            next["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            next["metadata"]["name"] = cur["metadata"]["name"].clone();
            let name = str_at(cur, "/metadata/name").to_string();
            match ctx
                .objects
                .update(inf.rt, Some(ns), &name, next, Target::Main, &w)
                .await
            {
                Ok(w) => Ok(written_rev(&w)),
                // Changed or gone meanwhile: the change requeues this Service.
                Err(ObjectError::Conflict { .. } | ObjectError::NotFound { .. }) => Ok(0),
                Err(e) => Err(e),
            }
        }
        None => Ok(written_rev(
            &ctx.objects.create(inf.rt, Some(ns), want, &w).await?,
        )),
    }
}

/// The legacy Endpoints object: ready and not-ready addresses grouped by the ports they
/// share, as kube's RepackSubsets leaves them.
async fn sync_endpoints(ctx: &Ctx, svc: &Value, eps: &[Endpoint]) -> Result<u64, ObjectError> {
    let (ns, name) = (
        str_at(svc, "/metadata/namespace"),
        str_at(svc, "/metadata/name"),
    );
    let headless_no_ports =
        headless(svc) && svc["spec"]["ports"].as_array().is_none_or(|p| p.is_empty());
    let publish = svc["spec"]["publishNotReadyAddresses"] == true;
    // Ports -> (ready, not ready) addresses.
    let mut subsets: BTreeMap<&[Port], (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let listed = eps
        .iter()
        .filter(|e| publish || !e.terminating)
        .filter(|e| !e.ports.is_empty() || headless_no_ports);
    for e in listed {
        let mut address = json!({
            "ip": e.ip,
            "targetRef": {"kind": "Pod", "namespace": ns, "name": e.pod.0, "uid": e.pod.1},
        });
        if !e.node.is_empty() {
            address["nodeName"] = json!(e.node);
        }
        if !e.hostname.is_empty() {
            address["hostname"] = json!(e.hostname);
        }
        let entry = subsets.entry(&e.ports).or_default();
        if publish || e.serving {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let mut s = json!({});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            if !ports.is_empty() {
                s["ports"] = ports.iter().map(|p| p.to_json(false)).collect();
            }
            s
        })
        .collect();
    let want = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns, "labels": labels(svc)},
        "subsets": subsets,
    });
    let current = ctx.endpoints.get(Some(ns), name);
    let same = |cur: &Value, want: &Value| {
        let subsets = |v: &Value| v["subsets"].as_array().cloned().unwrap_or_default();
        subsets(cur) == subsets(want) && cur["metadata"]["labels"] == want["metadata"]["labels"]
    };
    put(ctx, &ctx.endpoints, ns, current.as_deref(), want, same).await
}

/// The Service's EndpointSlices: endpoints grouped by the ports they resolve to, at most
/// [`MAX_PER_SLICE`] a slice; existing slices are rewritten in place, the surplus deleted,
/// and one empty slice kept for a Service without endpoints.
async fn sync_slices(ctx: &Ctx, svc: &Value, eps: &[Endpoint]) -> Result<u64, ObjectError> {
    let (ns, name, uid) = (
        str_at(svc, "/metadata/namespace"),
        str_at(svc, "/metadata/name"),
        str_at(svc, "/metadata/uid"),
    );
    let mut by_ports: BTreeMap<&[Port], Vec<&Endpoint>> = BTreeMap::new();
    for e in eps {
        by_ports.entry(&e.ports).or_default().push(e);
    }
    let mut wanted: Vec<(&[Port], &[&Endpoint])> = by_ports
        .iter()
        .flat_map(|(ports, group)| group.chunks(MAX_PER_SLICE).map(move |c| (*ports, c)))
        .collect();
    if wanted.is_empty() {
        wanted.push((&[], &[]));
    }
    let mut existing: Vec<Arc<Value>> = ctx
        .slices
        .by_index("service", &format!("{ns}/{name}"))
        .into_iter()
        .filter(|s| s["metadata"]["labels"][MANAGED_BY_LABEL] == CONTROLLER_NAME)
        .filter(|s| pods::controlled_by(s, uid))
        .collect();
    existing.sort_by(|a, b| str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name")));
    let mut labels = labels(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), json!(name));
    labels.insert(MANAGED_BY_LABEL.into(), json!(CONTROLLER_NAME));
    let prefix = format!("{name}-");
    let mut rev = 0;
    for (i, (ports, group)) in wanted.iter().enumerate() {
        let endpoints: Vec<Value> = group
            .iter()
            .map(|e| {
                let mut v = json!({
                    "addresses": [e.ip],
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": e.pod.0, "uid": e.pod.1},
                });
                if !e.node.is_empty() {
                    v["nodeName"] = json!(e.node);
                }
                if !e.hostname.is_empty() {
                    v["hostname"] = json!(e.hostname);
                }
                v
            })
            .collect();
        let ports: Vec<Value> = ports.iter().map(|p| p.to_json(true)).collect();
        let want = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "generateName": prefix, "namespace": ns, "labels": labels,
                "ownerReferences": [pods::owner_ref("v1", "Service", svc)],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        let same = |cur: &Value, want: &Value| {
            cur["endpoints"].as_array().cloned().unwrap_or_default()
                == want["endpoints"].as_array().cloned().unwrap_or_default()
                && cur["ports"].as_array().cloned().unwrap_or_default()
                    == want["ports"].as_array().cloned().unwrap_or_default()
                && cur["metadata"]["labels"] == want["metadata"]["labels"]
        };
        let current = existing.get(i).map(|s| s.as_ref());
        rev = rev.max(put(ctx, &ctx.slices, ns, current, want, same).await?);
    }
    for surplus in existing.iter().skip(wanted.len()) {
        rev = rev.max(delete(ctx, &ctx.slices, ns, str_at(surplus, "/metadata/name")).await?);
    }
    Ok(rev)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{self, create, rt};
    use super::*;
    use crate::objects::PatchType;
    use std::time::Duration;

    async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        // 30 s at most: CI runs many of these tests at once on two cores.
        for _ in 0..1500 {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{what}");
    }

    /// A pod of the `web` app with this address, readiness and node.
    async fn pod(o: &Objects, name: &str, ip: Option<&str>, ready: bool, app: &str) {
        create(o, "", "pods", json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
        }))
        .await;
        o.bind_pod("default", name, "n1").await.unwrap();
        let mut status = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        o.patch(
            rt(o, "", "pods"),
            Some("default"),
            name,
            PatchType::Merge,
            json!({"status": status}),
            Target::Status,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn endpoints_and_slices_follow_the_pods_of_a_service() {
        let (o, _dir) = testing::objects().await;
        let cache = Cache::new(o.clone());
        spawn(&cache);
        pod(&o, "ready", Some("10.0.0.1"), true, "web").await;
        pod(&o, "starting", Some("10.0.0.2"), false, "web").await;
        pod(&o, "going", Some("10.0.0.3"), true, "web").await;
        pod(&o, "no-ip", None, true, "web").await;
        pod(&o, "other", Some("10.0.0.9"), true, "db").await;
        // Being deleted: terminating (its node has not stopped it yet).
        o.delete(
            rt(&o, "", "pods"),
            Some("default"),
            "going",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
        create(&o, "", "services", json!({
            "metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
        }))
        .await;
        let endpoints = cache.of("", "v1", "endpoints");
        let ep = until("the Endpoints", || endpoints.get(Some("default"), "web")).await;
        assert_eq!(ep["metadata"]["labels"], json!({"tier": "front"}));
        let subsets = &ep["subsets"];
        assert_eq!(subsets.as_array().unwrap().len(), 1, "{subsets}");
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(subsets[0]["addresses"][0]["targetRef"]["name"], "ready");
        assert_eq!(subsets[0]["addresses"][0]["nodeName"], "n1");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(
            subsets[0]["notReadyAddresses"].as_array().unwrap().len(),
            1,
            "terminating pods are left out"
        );
        assert_eq!(
            subsets[0]["ports"],
            json!([{"name": "web", "port": 8080, "protocol": "TCP"}])
        );

        let slices = cache.of("discovery.k8s.io", "v1", "endpointslices");
        let slice = until("the slice", || {
            slices.list(Some("default")).first().cloned()
        })
        .await;
        assert!(str_at(&slice, "/metadata/name").starts_with("web-"));
        assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(
            slice["metadata"]["labels"][MANAGED_BY_LABEL],
            CONTROLLER_NAME
        );
        assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(
            slice["ports"],
            json!([{"name": "web", "port": 8080, "protocol": "TCP"}])
        );
        let conditions: Vec<(String, Value)> = slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["targetRef"]["name"].as_str().unwrap().to_string(),
                    e["conditions"].clone(),
                )
            })
            .collect();
        assert_eq!(
            conditions,
            [
                (
                    "ready".into(),
                    json!({"ready": true, "serving": true, "terminating": false})
                ),
                (
                    "starting".into(),
                    json!({"ready": false, "serving": false, "terminating": false})
                ),
                (
                    "going".into(),
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
            ]
        );

        // The starting pod turns ready: both follow.
        o.patch(
            rt(&o, "", "pods"),
            Some("default"),
            "starting",
            PatchType::Merge,
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            Target::Status,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
        until("the ready pod in the Endpoints", || {
            let ep = endpoints.get(Some("default"), "web")?;
            (ep["subsets"][0]["addresses"].as_array()?.len() == 2).then_some(())
        })
        .await;
        until("the ready pod in the slice", || {
            let s = slices.list(Some("default")).first().cloned()?;
            (s["endpoints"][1]["conditions"]["ready"] == true).then_some(())
        })
        .await;

        // The Service goes: its Endpoints do (its slices go by their owner reference).
        o.delete(
            rt(&o, "", "services"),
            Some("default"),
            "web",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
        until("the Endpoints gone", || {
            endpoints
                .get(Some("default"), "web")
                .is_none()
                .then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn services_without_selectors_and_empty_ones() {
        let (o, _dir) = testing::objects().await;
        let cache = Cache::new(o.clone());
        spawn(&cache);
        create(
            &o,
            "",
            "services",
            json!({"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .await;
        create(&o, "", "services", json!({"metadata": {"name": "empty"}, "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]}})).await;
        let slices = cache.of("discovery.k8s.io", "v1", "endpointslices");
        let empty = until("the empty Service's slice", || {
            slices.list(Some("default")).first().cloned()
        })
        .await;
        assert_eq!(empty["metadata"]["labels"][SERVICE_NAME_LABEL], "empty");
        assert_eq!(empty["endpoints"], json!([]));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            slices.list(Some("default")).len(),
            1,
            "none for the Service without a selector"
        );
        assert!(cache
            .of("", "v1", "endpoints")
            .get(Some("default"), "manual")
            .is_none());
    }
}
