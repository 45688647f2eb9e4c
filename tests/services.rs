//! Services end to end across nodes: a server and a registry on a test LAN's gateway, two
//! agents each in a network namespace of its own acting as a host on that LAN (so traffic
//! between nodes crosses real interfaces and the agents' host-gw routes), busybox httpd
//! pods (a CGI answering with the pod's name and the client's address) behind Services,
//! clients in busybox and in Wasm (wasi:http), and the test process as a host outside the
//! cluster for NodePort and LoadBalancer. One cluster for the file; each scenario in its
//! own namespace.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::lan::{Host, Lan};
use common::oci::Registry;
use common::{eventually, Agent, Server, Shared, SharedGuard};
use serde_json::Value;

/// Fields drop in order: agents (reset in their hosts) before the server, the LAN last.
struct Cluster {
    _agents: Vec<Agent>,
    server: Server,
    registry: Registry,
    hosts: Vec<Host>,
    lan: Lan,
}

const WHO: &str =
    "#!/bin/sh\necho Content-Type: text/plain\necho\necho \"$(hostname) $REMOTE_ADDR\"\n";

impl Cluster {
    fn image(&self, name: &str) -> String {
        format!(
            "{}:{}/test/{name}:1",
            self.lan.gateway(),
            self.registry.port
        )
    }
}

fn cluster() -> SharedGuard<Cluster> {
    static CLUSTER: Shared<Cluster> = Shared::new();
    CLUSTER.get(|| {
        let mut lan = Lan::new();
        let gw = lan.gateway();
        let registry = Registry::start_on(&gw, None);
        let image = |n: &str| format!("{gw}:{}/test/{n}:1", registry.port);
        common::oci::push_busybox_with(
            &image("busybox"),
            "gzip",
            None,
            &[("/www/cgi-bin/who", WHO)],
        );
        common::oci::push_wasm(
            &common::root().join("wasm-examples/out/net-probe.wasm"),
            &image("net-probe"),
        );
        common::oci::push_wasm(
            &common::root().join("wasm-examples/out/http-hello.wasm"),
            &image("http-hello"),
        );
        let server = Server::start_on(tempfile::tempdir().unwrap(), &gw);
        let hosts = vec![lan.host(1), lan.host(2)];
        let insecure = format!("{gw}:{}", registry.port);
        let agents: Vec<Agent> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Agent::start_in(
                    &server,
                    &format!("n{}", i + 1),
                    Some(&h.netns),
                    &[
                        "--insecure-registry",
                        &insecure,
                        "--cluster-cidr",
                        &common::cluster_cidr(server.net),
                    ],
                )
            })
            .collect();
        for (a, h) in agents.iter().zip(&hosts) {
            eventually(90, "nodes with pod ranges and the runc runtime", || {
                let n = server.try_json(&["get", "node", &a.name])?;
                (n["spec"]["podCIDR"].is_string()
                    && n["metadata"]["labels"]["runtime.skiff.dev/oci"] == "true"
                    && n["status"]["addresses"][0]["address"] == h.ip.as_str())
                .then_some(())
            });
        }
        Cluster {
            _agents: agents,
            server,
            registry,
            hosts,
            lan,
        }
    })
}

fn namespace(c: &Cluster, ns: &str) {
    c.server.ok(&["create", "namespace", ns]);
}

fn running(c: &Cluster, ns: &str, name: &str) -> Value {
    eventually(120, &format!("pod {name} running and ready"), || {
        let p = c.server.json(&["get", "pod", name, "-n", ns]);
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (p["status"]["phase"] == "Running" && ready).then(|| p["status"].clone())
    })
}

/// An httpd pod `name` on node `node` labelled app=`app`, answering /cgi-bin/who.
fn server_pod(c: &Cluster, ns: &str, name: &str, node: &str, app: &str) -> String {
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: httpd\n    image: {}\n    command: [sh, -c, 'chmod +x /www/cgi-bin/who && exec httpd -f -p 8080 -h /www']\n    ports:\n    - name: http\n      containerPort: 8080\n    readinessProbe:\n      tcpSocket:\n        port: 8080\n      periodSeconds: 1\n",
        c.image("busybox")
    );
    c.server.apply_stdin(&[], &manifest);
    running(c, ns, name)["podIP"].as_str().unwrap().to_string()
}

/// A busybox pod on `node` to run clients in (kubectl exec); its IP.
fn client_pod(c: &Cluster, ns: &str, name: &str, node: &str) -> String {
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: sh\n    image: {}\n    command: [sleep, '3600']\n",
        c.image("busybox")
    );
    c.server.apply_stdin(&[], &manifest);
    running(c, ns, name)["podIP"].as_str().unwrap().to_string()
}

fn service(c: &Cluster, ns: &str, name: &str, app: &str, extra_spec: &str) -> Value {
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  selector:\n    app: {app}\n  ports:\n  - name: web\n    port: 80\n    targetPort: http\n{extra_spec}"
    );
    c.server.apply_stdin(&[], &manifest);
    c.server.json(&["get", "service", name, "-n", ns])
}

/// Runs net-probe (wasm-examples/net-probe) with `steps` in a Wasm pod on `node`; its log.
fn wasm_probe(c: &Cluster, ns: &str, node: &str, steps: &[&str]) -> String {
    let args: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
    let probe = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wasm-probe\n  namespace: {ns}\nspec:\n  nodeName: {node}\n  restartPolicy: Never\n  runtimeClassName: wasmtime\n  containers:\n  - name: probe\n    image: {}\n    args: [{}]\n",
        c.image("net-probe"),
        args.join(", ")
    );
    c.server.apply_stdin(&[], &probe);
    eventually(90, "the Wasm probe's end", || {
        let p = c.server.json(&["get", "pod", "wasm-probe", "-n", ns]);
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            .then(|| c.server.ok(&["logs", "wasm-probe", "-n", ns]))
    })
}

/// Runs `wget` in the client pod; what it printed (stdout and stderr). (Busybox 1.35's
/// `wget -T` crashes: the time limit is `timeout`'s.)
fn wget(c: &Cluster, ns: &str, client: &str, url: &str) -> String {
    exec(c, ns, client, &["timeout", "5", "wget", "-q", "-O-", url])
}

/// The pod and client address a /cgi-bin/who answer names (httpd writes IPv4 clients
/// as IPv4-mapped IPv6 addresses).
fn who(answer: &str) -> (String, String) {
    let mut words = answer.split_whitespace();
    let pod = words.next().unwrap_or_default().to_string();
    let from = words.next().unwrap_or_default();
    let from = from.trim_start_matches("[::ffff:").trim_end_matches(']');
    (pod, from.to_string())
}

/// GET over plain TCP from this process (a host outside the cluster); the body, or the
/// error.
fn get(addr: &str, path: &str) -> Result<String, String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    // A CGI's headers may end lines with a bare newline.
    let body = out
        .split_once("\r\n\r\n")
        .or_else(|| out.split_once("\n\n"))
        .map(|(_, b)| b.to_string());
    body.ok_or_else(|| format!("no HTTP answer: {out:?}"))
}

/// The /cgi-bin/who answer at `addr` from this process, once something answers there.
fn who_at(addr: &str) -> String {
    eventually(30, &format!("an answer at {addr}"), || {
        get(addr, "/cgi-bin/who").ok()
    })
}

/// Waits until the endpoints of a Service name `n` ready addresses.
fn endpoints_ready(c: &Cluster, ns: &str, name: &str, n: usize) {
    eventually(60, &format!("{n} endpoints of {name}"), || {
        let ep = c.server.try_json(&["get", "endpoints", name, "-n", ns])?;
        let ready = ep["subsets"][0]["addresses"].as_array().map_or(0, Vec::len);
        (ready == n).then_some(())
    });
}

/// A ClusterIP spreads requests over pods on both nodes, reached from a busybox pod and
/// from a Wasm guest (wasi:http); pods see the client pod's own address across nodes.
#[test]
fn a_cluster_ip_balances_over_pods_on_both_nodes() {
    let c = &*cluster();
    namespace(c, "cip");
    server_pod(c, "cip", "who-1", "n1", "who");
    server_pod(c, "cip", "who-2", "n2", "who");
    let client_ip = client_pod(c, "cip", "client", "n1");
    let svc = service(c, "cip", "who", "who", "");
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    endpoints_ready(c, "cip", "who", 2);
    let url = format!("http://{ip}/cgi-bin/who");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = wget(c, "cip", "client", &url);
        let (pod, from) = who(&out);
        assert!(pod.starts_with("who-"), "{out}");
        assert_eq!(
            from, client_ip,
            "the client's own address, not masqueraded: {out}"
        );
        seen.insert(pod.to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both pods answer: {seen:?}");
    // A Wasm guest's outgoing wasi:http request goes through the same cluster IP.
    let logs = wasm_probe(c, "cip", "n2", &[&format!("http={ip}:80/cgi-bin/who")]);
    assert!(logs.starts_with("http 200: who-"), "{logs}");
}

/// NodePort and LoadBalancer Services answer a host outside the cluster at every node's
/// address; the LoadBalancer's ingress is the nodes' addresses, as kubectl shows.
#[test]
fn node_ports_and_load_balancers_answer_from_outside() {
    let c = &*cluster();
    namespace(c, "ext");
    server_pod(c, "ext", "who-1", "n1", "who");
    let np = service(c, "ext", "np", "who", "  type: NodePort\n");
    let node_port = np["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("a node port");
    endpoints_ready(c, "ext", "np", 1);
    for h in &c.hosts {
        let body = who_at(&format!("{}:{node_port}", h.ip));
        assert!(body.starts_with("who-1 "), "{body}");
    }
    service(c, "ext", "lb", "who", "  type: LoadBalancer\n");
    let ingress = eventually(30, "the load balancer's ingress", || {
        let s = c.server.json(&["get", "service", "lb", "-n", "ext"]);
        let ips: Vec<String> = s["status"]["loadBalancer"]["ingress"]
            .as_array()?
            .iter()
            .filter_map(|i| i["ip"].as_str().map(str::to_string))
            .collect();
        (ips.len() == 2).then_some(ips)
    });
    let mut want: Vec<String> = c.hosts.iter().map(|h| h.ip.clone()).collect();
    want.sort();
    assert_eq!(ingress, want);
    let table = c.server.ok(&["get", "service", "lb", "-n", "ext"]);
    assert!(table.contains(&want.join(",")), "{table}");
    for ip in &ingress {
        let body = who_at(&format!("{ip}:80"));
        assert!(body.starts_with("who-1 "), "{body}");
    }
}

/// ClientIP affinity keeps a client on one pod; Local traffic policies keep traffic on the
/// node it arrived at, and externalTrafficPolicy: Local keeps the client's address.
#[test]
fn affinity_and_local_traffic_policies() {
    let c = &*cluster();
    namespace(c, "pol");
    server_pod(c, "pol", "who-1", "n1", "who");
    server_pod(c, "pol", "who-2", "n2", "who");
    client_pod(c, "pol", "client", "n1");
    let sticky = service(c, "pol", "sticky", "who", "  sessionAffinity: ClientIP\n");
    let local = service(c, "pol", "local", "who", "  internalTrafficPolicy: Local\n");
    let ext = service(
        c,
        "pol",
        "ext",
        "who",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
    );
    for s in ["sticky", "local", "ext"] {
        endpoints_ready(c, "pol", s, 2);
    }
    let pods = |svc: &Value, n: usize| -> std::collections::BTreeSet<String> {
        let url = format!(
            "http://{}/cgi-bin/who",
            svc["spec"]["clusterIP"].as_str().unwrap()
        );
        (0..n)
            .map(|_| {
                let out = wget(c, "pol", "client", &url);
                assert!(out.starts_with("who-"), "{out}");
                out.split_whitespace().next().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(pods(&sticky, 12).len(), 1, "one pod for one client");
    assert_eq!(
        pods(&local, 12).into_iter().collect::<Vec<_>>(),
        ["who-1"],
        "only the client's node's pod"
    );
    let node_port = ext["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    for (h, pod) in c.hosts.iter().zip(["who-1", "who-2"]) {
        for _ in 0..4 {
            let body = who_at(&format!("{}:{node_port}", h.ip));
            assert_eq!(
                who(&body),
                (pod.to_string(), c.lan.gateway()),
                "this node's pod, and the outside client's own address"
            );
        }
    }
}

/// A Service without ready endpoints refuses at once (no waiting for a timeout); the
/// `kubernetes` Service leads to the API server.
#[test]
fn no_endpoints_refuse_and_the_kubernetes_service_leads_to_the_api() {
    let c = &*cluster();
    namespace(c, "misc");
    client_pod(c, "misc", "client", "n2");
    let empty = service(c, "misc", "empty", "nothing", "");
    let started = std::time::Instant::now();
    let out = wget(
        c,
        "misc",
        "client",
        &format!("http://{}/", empty["spec"]["clusterIP"].as_str().unwrap()),
    );
    assert!(out.contains("Connection refused"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused, not timed out"
    );
    let ep = c
        .server
        .json(&["get", "endpoints", "kubernetes", "-n", "default"]);
    assert_eq!(
        ep["subsets"][0]["addresses"][0]["ip"],
        c.lan.gateway().as_str()
    );
    // From a node (its own processes use cluster IPs too): the API server answers at
    // the Service's address, with a certificate naming it.
    let ca = c.server.data_dir().join("pki/ca.crt");
    let o = common::in_netns(Some(&c.hosts[0].netns), "curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .args([
            "https://10.96.0.1/healthz",
            "https://kubernetes.default.svc/healthz",
        ])
        .args(["--resolve", "kubernetes.default.svc:443:10.96.0.1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "okok",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// One Service cannot stop the proxy nor take another's traffic: an external IP the API
/// refuses never gets in; one that is another Service's cluster IP (valid, but nft
/// refuses the duplicate) leaves that Service alone out of the table, with an Event on
/// it, while the owner and Services made later still answer; once the owner is gone, the
/// one left out gets the address.
#[test]
fn a_service_claiming_anothers_address_is_left_out_and_the_rest_still_works() {
    let c = &*cluster();
    namespace(c, "claim");
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: claim\nspec:\n  ports:\n  - port: 80\n  externalIPs: [\"999.1.1.1\"]\n";
    let o = c.server.kubectl_stdin(&["apply", "-f", "-"], bad);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "spec.externalIPs[0]: Invalid value: \"999.1.1.1\": must be a valid IP address"
        ),
        "{err}"
    );
    server_pod(c, "claim", "who-1", "n1", "who");
    client_pod(c, "claim", "client", "n2");
    let owner = service(c, "claim", "owner", "who", "");
    let owner_ip = owner["spec"]["clusterIP"].as_str().unwrap().to_string();
    endpoints_ready(c, "claim", "owner", 1);
    service(
        c,
        "claim",
        "thief",
        "who",
        &format!("  externalIPs: [\"{owner_ip}\"]\n"),
    );
    eventually(60, "an Event on the Service left out", || {
        let evs = c.server.json(&[
            "get",
            "events",
            "-n",
            "claim",
            "--field-selector",
            "involvedObject.name=thief",
        ]);
        let found = evs["items"].as_array()?.iter().any(|e| {
            e["reason"] == "FailedToApplyProxyRules" && e["involvedObject"]["kind"] == "Service"
        });
        found.then_some(())
    });
    let later = service(c, "claim", "later", "who", "");
    endpoints_ready(c, "claim", "later", 1);
    for ip in [
        owner_ip.as_str(),
        later["spec"]["clusterIP"].as_str().unwrap(),
    ] {
        let out = eventually(30, &format!("an answer at {ip}"), || {
            let out = wget(c, "claim", "client", &format!("http://{ip}/cgi-bin/who"));
            out.starts_with("who-1 ").then_some(out)
        });
        assert!(out.starts_with("who-1 "), "{out}");
    }
    // Once the owner is gone, the address is free: the one left out is applied.
    c.server.ok(&["delete", "service", "owner", "-n", "claim"]);
    let out = eventually(60, "the external IP answering for the one left out", || {
        let out = wget(
            c,
            "claim",
            "client",
            &format!("http://{owner_ip}/cgi-bin/who"),
        );
        out.starts_with("who-1 ").then_some(out)
    });
    assert!(out.starts_with("who-1 "), "{out}");
}

/// `kubectl expose` makes a Service that works.
#[test]
fn kubectl_expose_makes_a_working_service() {
    let c = &*cluster();
    namespace(c, "expose");
    server_pod(c, "expose", "who-1", "n2", "exposed");
    client_pod(c, "expose", "client", "n1");
    c.server.ok(&[
        "expose",
        "pod",
        "who-1",
        "-n",
        "expose",
        "--name",
        "web",
        "--port",
        "80",
        "--target-port",
        "8080",
    ]);
    endpoints_ready(c, "expose", "web", 1);
    let ip = c.server.json(&["get", "service", "web", "-n", "expose"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let out = wget(c, "expose", "client", &format!("http://{ip}/cgi-bin/who"));
    assert!(out.starts_with("who-1 "), "{out}");
}

/// Runs a command in a pod; what it printed (stdout and stderr).
fn exec(c: &Cluster, ns: &str, pod: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", "-n", ns, pod, "--"];
    args.extend_from_slice(cmd);
    let o = c.server.kubectl(&args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The cluster DNS: a pod's resolv.conf names it with its namespace's search path and
/// ndots:5; Services resolve (A, SRV, a headless Service to its pods' addresses, short
/// names through the search path) from busybox, and from a Wasm guest both its lookups
/// (wasi:sockets) and its HTTP requests by name (wasi:http).
#[test]
fn cluster_dns_answers_pods_and_wasm_guests() {
    let c = &*cluster();
    namespace(c, "dns");
    let ip1 = server_pod(c, "dns", "who-1", "n1", "who");
    let ip2 = server_pod(c, "dns", "who-2", "n2", "who");
    client_pod(c, "dns", "client", "n1");
    let svc = service(c, "dns", "who", "who", "");
    let cip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    service(c, "dns", "db", "who", "  clusterIP: None\n");
    endpoints_ready(c, "dns", "who", 2);
    endpoints_ready(c, "dns", "db", 2);
    let dns = c
        .server
        .json(&["get", "service", "kube-dns", "-n", "kube-system"]);
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10");
    let resolv = exec(c, "dns", "client", &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10\n"), "{resolv}");
    assert!(
        resolv.contains("search dns.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let a = eventually(30, "the Service's name", || {
        let out = exec(
            c,
            "dns",
            "client",
            &["nslookup", "who.dns.svc.cluster.local"],
        );
        out.contains(&cip).then_some(out)
    });
    assert!(!a.contains("NXDOMAIN"), "{a}");
    let headless = eventually(30, "the headless Service's pods", || {
        let out = exec(
            c,
            "dns",
            "client",
            &["nslookup", "db.dns.svc.cluster.local"],
        );
        (out.contains(&ip1) && out.contains(&ip2)).then_some(out)
    });
    assert!(!headless.contains(&cip), "{headless}");
    let srv = exec(
        c,
        "dns",
        "client",
        &[
            "nslookup",
            "-type=srv",
            "_web._tcp.who.dns.svc.cluster.local",
        ],
    );
    assert!(
        srv.contains("who.dns.svc.cluster.local") && srv.contains(" 80 "),
        "{srv}"
    );
    // An ExternalName Service is a CNAME.
    c.server.apply_stdin(
        &[],
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: alias\n  namespace: dns\nspec:\n  type: ExternalName\n  externalName: who.dns.svc.cluster.local\n",
    );
    let cname = eventually(30, "the ExternalName Service's name", || {
        let out = exec(
            c,
            "dns",
            "client",
            &["nslookup", "alias.dns.svc.cluster.local"],
        );
        out.contains("who.dns.svc.cluster.local").then_some(out)
    });
    assert!(cname.contains("canonical name"), "{cname}");
    // An unknown name in the domain does not exist.
    let none = exec(
        c,
        "dns",
        "client",
        &["nslookup", "nothing.dns.svc.cluster.local"],
    );
    assert!(none.contains("NXDOMAIN"), "{none}");
    // A short name through the search path.
    let out = wget(c, "dns", "client", "http://who/cgi-bin/who");
    assert!(out.starts_with("who-"), "{out}");
    // A Wasm guest: its lookups and its HTTP requests by name go to the same resolver.
    let logs = wasm_probe(
        c,
        "dns",
        "n2",
        &[
            "lookup=who",
            "lookup=db.dns.svc.cluster.local",
            "http=who:80/cgi-bin/who",
        ],
    );
    assert!(logs.contains(&format!("lookup who: {cip}")), "{logs}");
    let db: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("lookup db."))
        .collect();
    assert!(
        db.iter().any(|l| l.ends_with(&ip1)) && db.iter().any(|l| l.ends_with(&ip2)),
        "{logs}"
    );
    assert!(logs.contains("http 200: who-"), "{logs}");
    // A pod gone from the headless Service is gone from its name.
    c.server
        .ok(&["delete", "pod", "who-2", "-n", "dns", "--wait=true"]);
    eventually(30, "the gone pod leaving the name", || {
        let out = exec(
            c,
            "dns",
            "client",
            &["nslookup", "db.dns.svc.cluster.local"],
        );
        (out.contains(&ip1) && !out.contains(&ip2)).then_some(())
    });
}

/// Sends GET requests to `addr` from inside host `netns` (a node's own network), one
/// fresh connection each, until `stop`; (answered with 200, failed: what went wrong).
fn load_from(
    netns: &str,
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&path).unwrap();
        // Safety: setns on this thread only, with an open namespace file.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match get(&addr, "/load") {
                Ok(body) if body.starts_with("Hello from a Wasm HTTP handler") => ok += 1,
                Ok(body) => failed.push(format!("unexpected answer {body:?}")),
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    })
}

/// A Deployment of Wasm HTTP pods rolls to a new template while a client sends requests
/// through its Service: not one fails. Endpoints of pods going away leave the Service
/// before the pods stop (a preStop sleep keeps them serving meanwhile), new pods join it
/// once their readiness probe passes, and a stopping server finishes what it has begun.
#[test]
fn a_rolling_update_under_load_loses_no_request() {
    let c = &*cluster();
    namespace(c, "roll");
    let deployment = |version: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: roll\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: web\n  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      runtimeClassName: wasmtime\n      terminationGracePeriodSeconds: 10\n      containers:\n      - name: hello\n        image: {}\n        env:\n        - name: VERSION\n          value: \"{version}\"\n        ports:\n        - name: http\n          containerPort: 8080\n        readinessProbe:\n          httpGet:\n            path: /ready\n            port: http\n          periodSeconds: 1\n        lifecycle:\n          preStop:\n            sleep:\n              seconds: 2\n",
            c.image("http-hello")
        )
    };
    c.server.apply_stdin(&[], &deployment("1"));
    let svc = service(c, "roll", "web", "web", "");
    c.server.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "roll",
        "--timeout=120s",
    ]);
    endpoints_ready(c, "roll", "web", 3);
    let addr = format!("{}:80", svc["spec"]["clusterIP"].as_str().unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_from(&c.hosts[0].netns, addr, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<String> = c
        .server
        .json(&["get", "pods", "-n", "roll", "-l", "app=web"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    c.server.apply_stdin(&[], &deployment("2"));
    c.server.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "roll",
        "--timeout=180s",
    ]);
    // Until the old pods are gone, not just replaced.
    eventually(60, "the old pods gone", || {
        let pods = c
            .server
            .json(&["get", "pods", "-n", "roll", "-l", "app=web"]);
        let names: Vec<&str> = pods["items"]
            .as_array()?
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        (names.len() == 3 && names.iter().all(|n| !before.iter().any(|b| b == n))).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests were made");
}

/// Lifecycle hooks: a postStart hook runs before the container counts as running (here it
/// writes the file the container waits for); a failing one kills the container, with the
/// kubelet's event; a preStop hook (exec) runs before the container is told to stop.
#[test]
fn lifecycle_hooks_run_around_the_container() {
    let c = &*cluster();
    namespace(c, "hooks");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hooked\n  namespace: hooks\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 5\n  volumes:\n  - name: out\n    hostPath:\n      path: /tmp\n  containers:\n  - name: main\n    image: {img}\n    command: [sh, -c, 'while [ ! -f /started ]; do sleep 0.1; done; cat /started; exec sleep 3600']\n    lifecycle:\n      postStart:\n        exec:\n          command: [sh, -c, 'echo post-start ran > /started']\n      preStop:\n        exec:\n          command: [sh, -c, 'echo pre-stop ran > /out/skiff-pre-stop-$HOSTNAME']\n    volumeMounts:\n    - name: out\n      mountPath: /out\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: failing\n  namespace: hooks\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {img}\n    command: [sleep, '3600']\n    lifecycle:\n      postStart:\n        exec:\n          command: ['false']\n",
        img = c.image("busybox")
    );
    c.server.apply_stdin(&[], &manifest);
    running(c, "hooks", "hooked");
    let logs = eventually(30, "the container's output", || {
        let l = c.server.ok(&["logs", "hooked", "-n", "hooks"]);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(logs, "post-start ran\n");
    let events = eventually(60, "the failed hook's event", || {
        let e = c.server.ok(&[
            "get",
            "events",
            "-n",
            "hooks",
            "--field-selector",
            "involvedObject.name=failing",
        ]);
        e.contains("FailedPostStartHook").then_some(e)
    });
    assert!(events.contains("PostStartHook failed"), "{events}");
    // The preStop hook writes into a hostPath on the node before the container stops.
    let marker = std::path::Path::new("/tmp/skiff-pre-stop-hooked");
    let _ = std::fs::remove_file(marker);
    c.server
        .ok(&["delete", "pod", "hooked", "-n", "hooks", "--wait=true"]);
    let written = std::fs::read_to_string(marker).unwrap_or_default();
    let _ = std::fs::remove_file(marker);
    assert_eq!(written, "pre-stop ran\n");
}
