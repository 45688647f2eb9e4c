//! Pod networking end to end: a server and an agent (real processes) whose pods get network
//! namespaces through the real CNI plugins, driven with the real kubectl. One cluster for
//! the whole file; each scenario in its own namespace.

mod common;

use common::{eventually, Agent, Server, Shared, SharedGuard, DOZER};
use serde_json::Value;

const IMAGE: &str = "registry.example/dozer:1";

/// Fields drop in order: the agent (reset) before the server (whose directory holds its).
struct Cluster {
    agent: Agent,
    server: Server,
}

fn cluster() -> SharedGuard<Cluster> {
    static CLUSTER: Shared<Cluster> = Shared::new();
    CLUSTER.get(|| {
        let server = Server::start();
        let agent = Agent::start(&server, "net1");
        agent.import_wat(DOZER, IMAGE);
        eventually(60, "the node's pod range", || {
            let n = server.try_json(&["get", "node", "net1"])?;
            n["spec"]["podCIDR"].as_str().map(str::to_string)
        });
        Cluster { server, agent }
    })
}

fn pod(ns: &str, name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  runtimeClassName: wasmtime\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    env:\n    - name: MY_IP\n      valueFrom:\n        fieldRef:\n          fieldPath: status.podIP\n"
    )
}

fn namespace(c: &Cluster, ns: &str) {
    c.server.ok(&["create", "namespace", ns]);
}

/// The pod's status once it runs.
fn running(c: &Cluster, ns: &str, name: &str) -> Value {
    eventually(60, &format!("pod {name} running"), || {
        let p = c.server.json(&["get", "pod", name, "-n", ns]);
        (p["status"]["phase"] == "Running").then(|| p["status"].clone())
    })
}

fn ip_in(cidr: &str, ip: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let bits: u32 = bits.parse().unwrap();
    let n = u32::from(net.parse::<std::net::Ipv4Addr>().unwrap());
    let i = u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap());
    let mask = u32::MAX << (32 - bits);
    n & mask == i & mask
}

#[test]
fn a_pod_gets_an_address_from_its_nodes_range() {
    let c = &*cluster();
    namespace(c, "addr");
    c.server.apply_stdin(&[], &pod("addr", "web", ""));
    let status = running(c, "addr", "web");
    let node = c.server.json(&["get", "node", "net1"]);
    let cidr = node["spec"]["podCIDR"].as_str().unwrap();
    assert_eq!(node["spec"]["podCIDRs"], serde_json::json!([cidr]));
    let ip = status["podIP"].as_str().expect("a pod IP");
    assert!(ip_in(cidr, ip), "{ip} not in {cidr}");
    assert_eq!(status["podIPs"], serde_json::json!([{"ip": ip}]));
    assert_ne!(status["podIP"], status["hostIP"]);
    // kubectl shows it.
    let wide = c
        .server
        .ok(&["get", "pod", "web", "-n", "addr", "-o", "wide"]);
    assert!(wide.contains(ip), "{wide}");
    // The pod's namespace holds it on eth0.
    let uid = c.server.json(&["get", "pod", "web", "-n", "addr"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let netns = c
        .agent
        .trace(&uid)
        .netns
        .expect("the pod's network namespace");
    let addr = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-4", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("{ip}/")),
        "{addr:?}"
    );
    // The node reaches the pod's address (its namespace answers ICMP-less TCP with a reset:
    // nothing listens, but the address is there and routed).
    let refused = std::net::TcpStream::connect_timeout(
        &format!("{ip}:9").parse().unwrap(),
        std::time::Duration::from_secs(3),
    );
    assert_eq!(
        refused.map_err(|e| e.kind()).unwrap_err(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[test]
fn a_host_network_pod_has_the_nodes_address() {
    let c = &*cluster();
    namespace(c, "hostnet");
    c.server
        .apply_stdin(&[], &pod("hostnet", "h", "  hostNetwork: true\n"));
    let status = running(c, "hostnet", "h");
    // Both present (two missing values would be equal too), and the node's.
    let host_ip = status["hostIP"].as_str().expect("the pod's hostIP");
    assert_eq!(status["podIP"].as_str(), Some(host_ip), "{status}");
    let node = c.server.json(&["get", "node", "net1"]);
    let internal = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .map(|a| a["address"].clone());
    assert_eq!(internal, Some(host_ip.into()), "{node}");
}

/// The leak check of the issue: pods created and deleted over and over leave no network
/// namespace, veth, address allocation or pod directory behind.
#[test]
fn created_and_deleted_pods_leave_nothing_behind() {
    let c = &*cluster();
    namespace(c, "churn");
    let rounds = 20;
    let mut pods = Vec::new();
    for _ in 0..rounds {
        let manifests: String = (0..3)
            .map(|i| pod("churn", &format!("p{i}"), ""))
            .collect::<Vec<_>>()
            .join("---\n");
        c.server.apply_stdin(&[], &manifests);
        for i in 0..3 {
            running(c, "churn", &format!("p{i}"));
            let p = c
                .server
                .json(&["get", "pod", &format!("p{i}"), "-n", "churn"]);
            let trace = c.agent.trace(p["metadata"]["uid"].as_str().unwrap());
            assert!(trace.netns.is_some(), "{trace:?}");
            pods.push(trace);
        }
        c.server.ok(&[
            "delete",
            "pods",
            "--all",
            "-n",
            "churn",
            "--wait=true",
            "--timeout=60s",
        ]);
        // Deleted means gone: the pod's network went before its object did.
        let left = c.agent.leftovers(&pods);
        assert!(left.is_empty(), "{left:?}");
    }
    // Every veth on the bridge belongs to a namespace the agent holds (its pods' or one
    // made ahead).
    c.agent.only_held_veths();
}

/// A Service's endpoints follow its pods: an Endpoints object and an EndpointSlice list the
/// running pods' addresses with the target port, as kubectl shows them; a deleted pod
/// leaves both.
#[test]
fn a_services_endpoints_follow_its_pods() {
    let c = &*cluster();
    namespace(c, "svc");
    let labelled = |name: &str| {
        pod("svc", name, "").replace(
            "  namespace: svc\n",
            "  namespace: svc\n  labels:\n    app: web\n",
        )
    };
    c.server
        .apply_stdin(&[], &format!("{}---\n{}", labelled("a"), labelled("b")));
    let ips: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| running(c, "svc", n)["podIP"].as_str().unwrap().to_string())
        .collect();
    c.server.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "svc",
        "--tcp=80:8080",
    ]);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let slice_ips = |c: &Cluster| {
        let list = c.server.json(&[
            "get",
            "endpointslices",
            "-n",
            "svc",
            "-l",
            "kubernetes.io/service-name=web",
        ]);
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ips: Vec<String> = items
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .map(|e| e["addresses"][0].as_str().unwrap_or_default().to_string())
            .collect();
        (items, sorted(ips))
    };
    let items = eventually(30, "both pods in the slice", || {
        let (items, found) = slice_ips(c);
        (found == sorted(ips.clone())).then_some(items)
    });
    assert_eq!(
        items[0]["ports"],
        serde_json::json!([{"name": "80-8080", "port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(items[0]["metadata"]["ownerReferences"][0]["name"], "web");
    let table = c.server.ok(&["get", "endpointslices", "-n", "svc"]);
    assert!(table.contains("IPv4") && table.contains("8080"), "{table}");
    let endpoints = c.server.ok(&["get", "endpoints", "web", "-n", "svc"]);
    for ip in &ips {
        assert!(endpoints.contains(&format!("{ip}:8080")), "{endpoints}");
    }
    c.server
        .ok(&["delete", "pod", "a", "-n", "svc", "--wait=true"]);
    eventually(30, "only b left", || {
        let (_, found) = slice_ips(c);
        let ep = c.server.json(&["get", "endpoints", "web", "-n", "svc"]);
        let addresses = ep["subsets"][0]["addresses"]
            .as_array()
            .map_or(0, |a| a.len());
        (found == vec![ips[1].clone()] && addresses == 1).then_some(())
    });
}

/// A root agent without CNI plugins used to put every pod, runc containers included, on
/// the node's network without a word. Now the node says it cannot network pods (Ready
/// False with the kubelet's network-not-ready message) and a pod bound to it waits.
#[test]
fn a_root_agent_without_cni_plugins_is_not_ready_and_its_pods_wait() {
    let server = Server::start();
    let _agent = Agent::start_in(
        &server,
        "nocni",
        None,
        &["--cni-bin-dir", "/nonexistent/cni"],
    );
    let ready = eventually(60, "the node's Ready condition", || {
        let n = server.try_json(&["get", "node", "nocni"])?;
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
    });
    assert_eq!(ready["status"], "False", "{ready}");
    let msg = ready["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("NetworkReady=false")
            && msg.contains("the CNI plugin bridge is not in /nonexistent/cni"),
        "{ready}"
    );
    let manifest = pod("default", "waits", "  nodeName: nocni\n");
    server.apply_stdin(&[], &manifest);
    let event = eventually(30, "the pod's sandbox failure", || {
        let evs = server.json(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=waits",
        ]);
        evs["items"]
            .as_array()?
            .iter()
            .find(|e| e["reason"] == "FailedCreatePodSandBox")
            .cloned()
    });
    assert!(
        event["message"]
            .as_str()
            .unwrap_or_default()
            .contains("network is not ready"),
        "{event}"
    );
    let p = server.json(&["get", "pod", "waits"]);
    assert_ne!(p["status"]["phase"], "Running", "{p}");
}

/// Two agents on one host (one network namespace) given the same bridge: the second used
/// to be Ready while every pod of it failed FailedCreatePodSandBox, as the bridge held the
/// first's range. Now it says its network is not ready, naming the bridge, so pods go to
/// nodes that can network them; the first goes on.
#[test]
fn a_second_agent_on_a_bridge_another_holds_is_not_ready() {
    let server = Server::start();
    let first = Agent::start_in(&server, "first", None, &[]);
    // Its warm pod networks make the bridge.
    eventually(60, "the first agent's bridge", || {
        let o = std::process::Command::new("ip")
            .args(["-4", "addr", "show", "dev", &first.bridge])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout)
            .contains("inet ")
            .then_some(())
    });
    let _second = Agent::start_with_bridge(&server, "second", None, &[], first.bridge.clone());
    let ready = |node: &str| {
        let n = server.try_json(&["get", "node", node])?;
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
    };
    let second = eventually(60, "the second node not Ready", || {
        ready("second").filter(|c| c["status"] == "False")
    });
    let msg = second["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("NetworkReady=false")
            && msg.contains(&format!("bridge {} holds", first.bridge))
            && msg.contains("another agent on this host uses it"),
        "{second}"
    );
    let first_ready = ready("first").unwrap();
    assert_eq!(first_ready["status"], "True", "{first_ready}");
    let n = server.json(&["get", "node", "second"]);
    let unavailable = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .cloned()
        .unwrap_or_default();
    assert_eq!(unavailable["status"], "True", "{n}");
}
