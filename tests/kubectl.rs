//! The API server driven by the real kubectl (v1.33), end to end. One server for the
//! file, started by the first test; each scenario in its own namespace.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{eventually, Server, Shared, SharedGuard};

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: demo
stringData:
  password: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: registry.example/web:1.0
        ports:
        - containerPort: 8080
        env:
        - name: MODE
          value: prod
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: hello
  namespace: demo
  labels:
    app: hello
spec:
  containers:
  - name: hello
    image: registry.example/hello:1.0
"#;

/// One API server for the file (no node: pods stay Pending); each scenario in its own
/// namespace.
fn server() -> SharedGuard<Server> {
    static SERVER: Shared<Server> = Shared::new();
    SERVER.get(Server::start)
}

/// [`APP`] in namespace `ns`.
fn app(ns: &str) -> String {
    APP.replace("demo", ns)
}

/// Namespace `ns` holding only [`APP`]'s pod hello (for scenarios about one pod).
fn hello_pod(ns: &str) -> String {
    let app = app(ns);
    let pod = app.rfind("---\n").unwrap();
    format!(
        "{}{}",
        &app[..app.find("---\n").unwrap() + 4],
        &app[pod + 4..]
    )
}

/// [`app`] as changed by a second version: a new image and a new label.
fn changed_app(ns: &str) -> String {
    app(ns)
        .replace("registry.example/web:1.0", "registry.example/web:2.0")
        .replace(
            "  labels:\n    app: web\nspec:\n  replicas",
            "  labels:\n    app: web\n    tier: frontend\nspec:\n  replicas",
        )
}

#[test]
fn apply_creates_every_object_of_a_multi_document_manifest() {
    let s = &*server();
    // Default (strict) validation.
    let out = s.apply_stdin(&[], &app("apply"));
    for obj in [
        "namespace/apply",
        "configmap/settings",
        "secret/creds",
        "deployment.apps/web",
        "service/web",
        "pod/hello",
    ] {
        assert!(out.contains(&format!("{obj} created")), "{out}");
    }
}

#[test]
fn reapplying_a_changed_manifest_merges_strategically() {
    let s = &*server();
    s.apply_stdin(&[], &app("reapply"));
    let out = s.apply_stdin(&[], &changed_app("reapply"));
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("pod/hello unchanged"), "{out}");
    let d = s.json(&["get", "deployment", "web", "-n", "reapply"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:2.0"
    );
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "prod"
    );
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(
        d["spec"]["strategy"]["type"], "RollingUpdate",
        "defaults are applied"
    );
}

#[test]
fn server_side_apply_records_its_manager_and_refuses_conflicts() {
    let s = &*server();
    let changed = changed_app("ssa");
    s.apply_stdin(&[], &changed);
    let out = s.apply_stdin(&["--server-side", "--force-conflicts"], &changed);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let d = s.json(&[
        "get",
        "deployment",
        "web",
        "-n",
        "ssa",
        "--show-managed-fields",
    ]);
    let managers: Vec<(String, String)> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap().to_string(),
                m["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("kubectl".into(), "Apply".into())),
        "{managers:?}"
    );
    let conflicting = changed.replace("replicas: 2", "replicas: 5");
    let o = s.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "-f",
            "-",
        ],
        &conflicting,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("conflict with \"kubectl\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Regression: server-side apply keyed Service ports by `port` alone, so a re-apply merged
/// 53/TCP and 53/UDP into one port. Apply keys them by `port` and `protocol`, as kube does.
/// Regression: a configuration that does not merge (a Service port without its `port`, a
/// key field with no default) was answered as applied, and the Service kept as it was.
#[test]
fn server_side_apply_refuses_a_list_item_without_its_key() {
    let s = &*server();
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: ssa-keys\nspec:\n  ports:\n  - name: http\n    port: 80\n";
    s.apply_stdin(
        &[],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ssa-keys\n",
    );
    s.apply_stdin(&["--server-side"], svc);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        svc.replace("    port: 80\n", "    targetPort: 8080\n"),
    )
    .unwrap();
    let err = s.fails(&["apply", "--server-side", "-f", bad.to_str().unwrap()]);
    assert!(
        err.contains(
            r#"element 0: associative list with keys has an element that omits key field "port""#
        ),
        "{err}"
    );
    let now = s.json(&["get", "svc", "web", "-n", "ssa-keys"]);
    assert_eq!(now["spec"]["ports"][0]["targetPort"], 80, "{now}");
}

#[test]
fn server_side_apply_keeps_ports_that_differ_only_in_protocol() {
    let s = &*server();
    let dns = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: ssa-ports
---
apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: ssa-ports
spec:
  selector:
    app: dns
  ports:
  - name: dns-tcp
    port: 53
    protocol: TCP
  - name: dns-udp
    port: 53
    protocol: UDP
"#;
    // The second apply merges into the stored Service.
    s.apply_stdin(&["--server-side"], dns);
    let out = s.apply_stdin(&["--server-side"], dns);
    assert!(out.contains("service/dns serverside-applied"), "{out}");
    let ports = |svc: &serde_json::Value| -> Vec<(String, String)> {
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    format!("{}/{}", p["port"], p["protocol"].as_str().unwrap()),
                    p["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let svc = s.json(&[
        "get",
        "svc",
        "dns",
        "-n",
        "ssa-ports",
        "--show-managed-fields",
    ]);
    assert_eq!(
        ports(&svc),
        [
            ("53/TCP".to_string(), "dns-tcp".to_string()),
            ("53/UDP".to_string(), "dns-udp".to_string())
        ]
    );
    let applied = svc["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["operation"] == "Apply")
        .expect("an Apply entry");
    let owned: Vec<&String> = applied["fieldsV1"]["f:spec"]["f:ports"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        owned,
        [
            r#"k:{"port":53,"protocol":"TCP"}"#,
            r#"k:{"port":53,"protocol":"UDP"}"#
        ],
        "{applied}"
    );
    // Dropping 53/UDP from the configuration removes that port only.
    let tcp_only = &dns[..dns.find("  - name: dns-udp").unwrap()];
    s.apply_stdin(&["--server-side"], tcp_only);
    let svc = s.json(&["get", "svc", "dns", "-n", "ssa-ports"]);
    assert_eq!(ports(&svc), [("53/TCP".to_string(), "dns-tcp".to_string())]);
}

/// Plain, wide, yaml, json, all namespaces, labels, selectors.
#[test]
fn get_prints_tables_yaml_and_json_and_selects_by_label() {
    let s = &*server();
    s.apply_stdin(&[], &changed_app("get"));
    let plain = s.ok(&["get", "pods", "-n", "get"]);
    assert!(
        plain
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]),
        "{plain}"
    );
    assert!(
        plain.contains("hello") && plain.contains("0/1") && plain.contains("Pending"),
        "{plain}"
    );
    let wide = s.ok(&["get", "pods", "-n", "get", "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().split_whitespace().eq([
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]),
        "{wide}"
    );
    let yaml = s.ok(&["get", "pod", "hello", "-n", "get", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Pod")
            && yaml.contains("restartPolicy: Always")
            && yaml.contains("phase: Pending"),
        "{yaml}"
    );
    let list = s.json(&["get", "configmaps", "-n", "get"]);
    assert_eq!(list["kind"], "List");
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["metadata"]["name"] == "settings"));
    let all = s.ok(&["get", "pods", "-A"]);
    assert!(
        all.starts_with("NAMESPACE") && all.contains("get ") && all.contains("hello"),
        "{all}"
    );
    let labels = s.ok(&["get", "pods", "-n", "get", "--show-labels"]);
    assert!(
        labels.contains("LABELS") && labels.contains("app=hello"),
        "{labels}"
    );
    assert!(s
        .ok(&["get", "pods", "-n", "get", "-l", "app=hello", "-o", "name"])
        .contains("pod/hello"));
    assert!(s
        .ok(&[
            "get",
            "pods",
            "-n",
            "get",
            "-l",
            "app notin (hello,web)",
            "-o",
            "name"
        ])
        .trim()
        .is_empty());
    let svc = s.ok(&["get", "svc", "web", "-n", "get", "-o", "wide"]);
    assert!(
        svc.contains("ClusterIP") && svc.contains("80/TCP") && svc.contains("app=web"),
        "{svc}"
    );
    let deploy = s.ok(&["get", "deploy", "-n", "get", "-o", "wide"]);
    assert!(
        deploy.lines().next().unwrap().split_whitespace().eq([
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]),
        "{deploy}"
    );
    assert!(
        deploy.contains("0/2") && deploy.contains("registry.example/web:2.0"),
        "{deploy}"
    );
}

#[test]
fn get_watch_sees_a_change_made_by_another_client() {
    let s = &*server();
    s.apply_stdin(&[], &hello_pod("watch"));
    let mut watch = s
        .kubectl_cmd(&["get", "pods", "-n", "watch", "-l", "app=hello", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("NAME"));
    assert!(lines.next().unwrap().unwrap().starts_with("hello"));
    s.ok(&["label", "pod", "hello", "-n", "watch", "watched=yes"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lines.next());
    });
    let seen = rx.recv_timeout(Duration::from_secs(10));
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = seen.expect("watch saw the change").unwrap().unwrap();
    assert!(seen.starts_with("hello"), "{seen}");
}

/// Labels pod hello of namespace `ns`, fails to change the label without --overwrite,
/// changes it with, and annotates the pod.
fn relabel_and_annotate(s: &Server, ns: &str) {
    s.ok(&["label", "pod", "hello", "-n", ns, "watched=yes"]);
    assert!(s
        .fails(&["label", "pod", "hello", "-n", ns, "watched=again"])
        .contains("already has a value"));
    s.ok(&[
        "label",
        "pod",
        "hello",
        "-n",
        ns,
        "watched=again",
        "--overwrite",
    ]);
    s.ok(&["annotate", "pod", "hello", "-n", ns, "owner=team-a"]);
}

#[test]
fn label_needs_overwrite_to_change_a_value_and_annotate_adds() {
    let s = &*server();
    s.apply_stdin(&[], &hello_pod("label"));
    relabel_and_annotate(s, "label");
    let p = s.json(&["get", "pod", "hello", "-n", "label"]);
    assert_eq!(p["metadata"]["labels"]["watched"], "again");
    assert_eq!(p["metadata"]["annotations"]["owner"], "team-a");
}

#[test]
fn describe_shows_the_object_and_its_events() {
    let s = &*server();
    s.apply_stdin(&[], &hello_pod("describe"));
    relabel_and_annotate(s, "describe");
    let p = s.json(&["get", "pod", "hello", "-n", "describe"]);
    let event = format!(
        r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"hello.1","namespace":"describe"}},"involvedObject":{{"kind":"Pod","name":"hello","namespace":"describe","uid":"{}"}},"reason":"Scheduled","message":"Successfully assigned describe/hello to node-1","type":"Normal","source":{{"component":"default-scheduler"}},"count":1}}"#,
        p["metadata"]["uid"].as_str().unwrap()
    );
    let o = s.kubectl_stdin(&["create", "-f", "-"], &event);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = s.ok(&["describe", "pod", "hello", "-n", "describe"]);
    for want in [
        "Name:",
        "hello",
        "Namespace:",
        "describe",
        "watched=again",
        "owner: team-a",
        "registry.example/hello:1.0",
        "Scheduled",
        "Successfully assigned describe/hello to node-1",
    ] {
        assert!(d.contains(want), "describe lacks {want}:\n{d}");
    }
}

/// `kubectl create` sends protobuf bodies.
#[test]
fn create_makes_namespaces_configmaps_secrets_and_deployments() {
    let s = &*server();
    assert!(s
        .ok(&["create", "namespace", "team"])
        .contains("namespace/team created"));
    s.ok(&[
        "create",
        "configmap",
        "c1",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "team",
        "--from-literal=password=pw",
    ]);
    s.ok(&[
        "create",
        "deployment",
        "api",
        "-n",
        "team",
        "--image=registry.example/api:1",
        "--port=8080",
    ]);
    assert_eq!(
        s.ok(&["get", "cm", "c1", "-n", "team", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "secret",
            "s1",
            "-n",
            "team",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "cHc="
    );
    let api = s.json(&["get", "deploy", "api", "-n", "team"]);
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    assert_eq!(api["spec"]["selector"]["matchLabels"]["app"], "api");
}

#[test]
fn scale_sets_a_deployments_replicas() {
    let s = &*server();
    s.ok(&["create", "namespace", "scale"]);
    s.ok(&[
        "create",
        "deployment",
        "api",
        "-n",
        "scale",
        "--image=registry.example/api:1",
    ]);
    assert!(s
        .ok(&["scale", "deployment", "api", "-n", "scale", "--replicas=3"])
        .contains("scaled"));
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "api",
            "-n",
            "scale",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
}

#[test]
fn every_namespace_gets_its_default_service_account() {
    let s = &*server();
    s.ok(&["create", "namespace", "accounts"]);
    eventually(10, "default service account", || {
        s.kubectl(&["get", "sa", "default", "-n", "accounts"])
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn api_resources_lists_the_served_kinds() {
    let s = &*server();
    let res = s.ok(&["api-resources"]);
    for want in [
        "deployments",
        "deploy",
        "apps/v1",
        "pods",
        "po",
        "cronjobs",
        "batch/v1",
        "leases",
        "runtimeclasses",
        "replicationcontrollers",
    ] {
        assert!(res.contains(want), "api-resources lacks {want}:\n{res}");
    }
}

#[test]
fn explain_reads_the_served_schemas() {
    let s = &*server();
    let explain = s.ok(&["explain", "pod.spec.runtimeClassName"]);
    assert!(
        explain.contains("FIELD: runtimeClassName <string>")
            && explain.contains("RuntimeClassName refers to a RuntimeClass object"),
        "{explain}"
    );
    let explain = s.ok(&["explain", "deployments.spec.strategy"]);
    assert!(
        explain.contains("GROUP:      apps")
            && explain.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{explain}"
    );
}

#[test]
fn invalid_and_duplicate_objects_get_kubectls_usual_messages() {
    let s = &*server();
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  namespace: invalid\nspec:\n  containers:\n  - name: c\n";
    s.apply_stdin(&[], &app("invalid"));
    let o = s.kubectl_stdin(&["apply", "-f", "-"], bad);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("The Pod \"bad\" is invalid: spec.containers[0].image: Required value"),
        "{err}"
    );
    let o = s.kubectl_stdin(&["create", "-f", "-"], &app("invalid"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("namespaces \"invalid\" already exists")
            && err.contains("deployments.apps \"web\" already exists"),
        "{err}"
    );
    let o = s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: invalid\nbogus: 1\n",
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown field \"bogus\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(s
        .fails(&["get", "pod", "nope", "-n", "invalid"])
        .contains("pods \"nope\" not found"));
}

/// A ConfigMap holds at most 1 MiB, a request body at most 3 MiB.
#[test]
fn objects_and_bodies_over_their_size_limits_are_refused() {
    let s = &*server();
    s.ok(&["create", "namespace", "limits"]);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, "x".repeat(1536 * 1024)).unwrap();
    let from_file = format!("--from-file=big={}", big.display());
    let err = s.fails(&["create", "configmap", "big", "-n", "limits", &from_file]);
    assert!(
        err.contains(
            "ConfigMap \"big\" is invalid: []: Too long: may not be more than 1048576 bytes"
        ),
        "{err}"
    );
    std::fs::write(&big, "x".repeat(4 << 20)).unwrap();
    let err = s.fails(&["create", "configmap", "big", "-n", "limits", &from_file]);
    assert!(
        err.contains("Request entity too large: limit is 3145728"),
        "{err}"
    );
}

#[test]
fn delete_f_returns_at_once_and_removes_everything() {
    let s = &*server();
    let changed = changed_app("delete");
    s.apply_stdin(&[], &changed);
    let t = Instant::now();
    let o = s.kubectl_stdin(&["delete", "-f", "-"], &changed);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "delete took {:?}",
        t.elapsed()
    );
    eventually(10, "namespace delete to go away", || {
        (!s.kubectl(&["get", "ns", "delete"]).status.success()).then_some(())
    });
    assert!(s
        .fails(&["get", "deploy", "web", "-n", "delete"])
        .contains("not found"));
}

#[test]
fn kubectl_1_32_works_too() {
    let s = &*server();
    let bin = common::kubectl_132_bin();
    let run = |args: &[&str]| {
        let o = s.kubectl_cmd_with(&bin, args).output().unwrap();
        assert!(
            o.status.success(),
            "kubectl 1.32 {args:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(run(&["version"]).contains("Server Version: v1.33.0+skiff"));
    let mut apply = s
        .kubectl_cmd_with(&bin, &["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut apply.stdin.take().unwrap(),
        app("client-132").as_bytes(),
    )
    .unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web created"));
    let wide = run(&["get", "pods", "-n", "client-132", "-o", "wide"]);
    assert!(wide.starts_with("NAME") && wide.contains("hello"), "{wide}");
    assert!(run(&["create", "namespace", "old-client"]).contains("created"));
    run(&[
        "create",
        "deployment",
        "api",
        "-n",
        "old-client",
        "--image=registry.example/api:1",
    ]);
    assert!(run(&[
        "scale",
        "deployment",
        "api",
        "-n",
        "old-client",
        "--replicas=2"
    ])
    .contains("scaled"));
    assert!(run(&["delete", "namespace", "old-client"]).contains("deleted"));
}

/// Regression: `subPath: ../../etc` and configMap items with `..` were accepted, and the
/// node then mounted or wrote outside the pod's volume.
#[test]
fn paths_leaving_a_volume_are_rejected_with_their_field() {
    let s = &*server();
    let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: escape
spec:
  volumes:
  - name: cfg
    configMap:
      name: settings
      items:
      - key: a
        path: ../../../etc/cron.d/x
  containers:
  - name: main
    image: registry.example/app:1.0
    volumeMounts:
    - name: cfg
      mountPath: /etc/app
      subPath: ../../etc
"#;
    let o = s.kubectl_stdin(&["apply", "-f", "-"], pod);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "The Pod \"escape\" is invalid",
        "spec.volumes[0].configMap.items[0].path: Invalid value: \"../../../etc/cron.d/x\": must not contain '..'",
        "spec.containers[0].volumeMounts.subPath: Invalid value: \"../../etc\": must not contain '..'",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let o = s.kubectl_stdin(
        &["apply", "-f", "-"],
        &pod.replace("../../../etc/cron.d/x", "app.conf")
            .replace("../../etc", "/"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("spec.containers[0].volumeMounts.subPath: Invalid value: \"/\": must be a relative path"),
        "{err}"
    );
    assert!(s.fails(&["get", "pod", "escape"]).contains("NotFound"));
}

/// `kubectl create token` (TokenRequest): the token authenticates while its ServiceAccount
/// (and bound object) exist; discovery lists only subresources that are served.
#[test]
fn service_account_tokens_authenticate_while_their_account_exists() {
    use base64::Engine;
    let s = &*server();
    s.ok(&["create", "serviceaccount", "builder"]);
    let token = s
        .ok(&["create", "token", "builder", "--duration", "15m"])
        .trim()
        .to_string();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:default:builder");
    assert_eq!(claims["kubernetes.io"]["namespace"], "default");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    let as_builder = |args: &[&str]| {
        let mut a = vec!["--token", token.as_str()];
        a.extend_from_slice(args);
        s.kubectl(&a)
    };
    assert!(as_builder(&["get", "configmaps"]).status.success());
    let forged = format!("{}x", &token[..token.len() - 1]);
    let o = s.kubectl(&["--token", &forged, "get", "configmaps"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unauthorized"),
        "a forged token was accepted"
    );

    let err = s.fails(&["create", "token", "builder", "--duration", "1m"]);
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    assert!(s
        .fails(&["create", "token", "nobody"])
        .contains("serviceaccounts \"nobody\" not found"));

    // A token bound to a Secret ends with it.
    s.ok(&["create", "secret", "generic", "bound", "--from-literal=k=v"]);
    let bound = s
        .ok(&[
            "create",
            "token",
            "builder",
            "--bound-object-kind",
            "Secret",
            "--bound-object-name",
            "bound",
        ])
        .trim()
        .to_string();
    assert!(s
        .kubectl(&["--token", &bound, "get", "pods"])
        .status
        .success());
    s.ok(&["delete", "secret", "bound"]);
    let o = s.kubectl(&["--token", &bound, "get", "pods"]);
    assert!(!o.status.success(), "a token outlived its bound Secret");

    // Deleting the ServiceAccount revokes its tokens.
    s.ok(&["delete", "serviceaccount", "builder"]);
    let o = as_builder(&["get", "configmaps"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Discovery names only what is served.
    let core: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/api/v1"])).unwrap();
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"serviceaccounts/token"), "{names:?}");
    assert!(names.contains(&"pods/exec"), "{names:?}");
    assert!(names.contains(&"pods/portforward"), "{names:?}");
    assert!(names.contains(&"pods/attach"), "{names:?}");
    for unserved in [
        "pods/ephemeralcontainers",
        "pods/resize",
        "nodes/proxy",
        "services/proxy",
    ] {
        assert!(!names.contains(&unserved), "discovery lists {unserved}");
    }
}

/// Regression (kube-rs's cordon test): an unset field reads as its zero value in a field
/// selector, so `spec.unschedulable=false` finds a node that was never cordoned.
#[test]
fn field_selectors_read_unset_fields_as_zero_values() {
    let s = &*server();
    s.apply_stdin(&[], "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n");
    let names = |sel: &str| s.ok(&["get", "nodes", "--field-selector", sel, "-o", "name"]);
    assert_eq!(names("spec.unschedulable=false"), "node/n1\n");
    assert_eq!(names("spec.unschedulable=true"), "");
    s.ok(&["cordon", "n1"]);
    assert_eq!(names("spec.unschedulable=true"), "node/n1\n");
    assert_eq!(names("spec.unschedulable!=true"), "");
}

/// Regression: `--cascade=orphan` and `--cascade=foreground` left the owner stuck forever
/// with its finalizer. Orphaned dependents lose the owner reference; foreground deletion
/// removes the dependents first.
#[test]
fn cascading_deletes_finish() {
    let s = &*server();
    for (owner, dep) in [("keep-owner", "kept"), ("fg-owner", "doomed")] {
        s.ok(&["create", "configmap", owner]);
        let uid = s.json(&["get", "configmap", owner])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        s.apply_stdin(
            &[],
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {dep}\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: {owner}\n    uid: {uid}\n    blockOwnerDeletion: true\n"
            ),
        );
    }
    s.ok(&[
        "delete",
        "configmap",
        "keep-owner",
        "--cascade=orphan",
        "--timeout=20s",
    ]);
    assert!(s
        .fails(&["get", "configmap", "keep-owner"])
        .contains("NotFound"));
    let kept = s.json(&["get", "secret", "kept"]);
    assert!(kept["metadata"]["ownerReferences"].is_null(), "{kept}");

    s.ok(&[
        "delete",
        "configmap",
        "fg-owner",
        "--cascade=foreground",
        "--timeout=20s",
    ]);
    assert!(s
        .fails(&["get", "configmap", "fg-owner"])
        .contains("NotFound"));
    assert!(s.fails(&["get", "secret", "doomed"]).contains("NotFound"));

    // Background (the default): the owner goes at once, its dependent soon after.
    s.ok(&["create", "configmap", "bg-owner"]);
    let uid = s.json(&["get", "configmap", "bg-owner"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    s.apply_stdin(
        &[],
        &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: follower\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: bg-owner\n    uid: {uid}\n"),
    );
    s.ok(&["delete", "configmap", "bg-owner"]);
    common::eventually(10, "the dependent of a deleted owner to go", || {
        (!s.kubectl(&["get", "secret", "follower"]).status.success()).then_some(())
    });
    // What was orphaned earlier has no owner left to follow.
    assert!(s.kubectl(&["get", "secret", "kept"]).status.success());
}

#[test]
fn credentials_are_required_except_for_health_checks() {
    let s = &*server();
    let o = s.kubectl(&["--token", "not-the-token", "get", "pods"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("You must be logged in to the server") || err.contains("provide credentials"),
        "{err}"
    );
    let ca = s.data_dir().join("pki/ca.crt");
    let curl = |path: &str, auth: Option<&str>| {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--cacert"])
            .arg(&ca)
            .arg(format!("{}{path}", s.url()));
        if let Some(t) = auth {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        String::from_utf8(c.output().expect("curl").stdout).unwrap()
    };
    for health in ["/livez", "/readyz", "/healthz"] {
        assert_eq!(curl(health, None), "ok");
    }
    let denied: serde_json::Value = serde_json::from_str(&curl("/api/v1/pods", None)).unwrap();
    assert_eq!(
        (
            denied["kind"].as_str(),
            denied["code"].as_i64(),
            denied["reason"].as_str()
        ),
        (Some("Status"), Some(401), Some("Unauthorized"))
    );
    let ok: serde_json::Value =
        serde_json::from_str(&curl("/api/v1/namespaces", Some(&s.token()))).unwrap();
    assert_eq!(ok["kind"], "NamespaceList");
}
