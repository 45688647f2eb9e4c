//! Helm (v4, pinned) installs, upgrades, rolls back and uninstalls a chart against Skiff.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{root, Server};

fn replicas(s: &Server) -> String {
    s.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "apps",
        "-o",
        "jsonpath={.spec.replicas}",
    ])
}

fn helm(s: &Server, args: &[&str]) -> String {
    let bin = root().join(".tools/bin/helm");
    assert!(bin.exists(), "helm not found: run scripts/setup.sh");
    let home = s.dir.path().join("helm");
    let o = Command::new(bin)
        .env("KUBECONFIG", s.kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "helm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn helm_chart_lifecycle() {
    let s = Server::start();
    let chart: PathBuf = s.dir.path().join("web");
    helm(&s, &["create", chart.to_str().unwrap()]);
    helm(
        &s,
        &[
            "install",
            "web",
            chart.to_str().unwrap(),
            "--namespace",
            "apps",
            "--create-namespace",
        ],
    );
    let list = helm(&s, &["list", "-n", "apps"]);
    assert!(list.contains("web") && list.contains("deployed"), "{list}");
    assert_eq!(replicas(&s), "1");
    assert!(s
        .ok(&["get", "svc", "web", "-n", "apps"])
        .contains("ClusterIP"));

    helm(
        &s,
        &[
            "upgrade",
            "web",
            chart.to_str().unwrap(),
            "-n",
            "apps",
            "--set",
            "replicaCount=3",
        ],
    );
    assert_eq!(replicas(&s), "3");
    helm(&s, &["rollback", "web", "1", "-n", "apps"]);
    assert_eq!(replicas(&s), "1");
    assert!(helm(&s, &["history", "web", "-n", "apps"]).contains("Rollback to 1"));

    helm(&s, &["uninstall", "web", "-n", "apps"]);
    assert!(!helm(&s, &["list", "-n", "apps"]).contains("web"));
    assert!(s
        .fails(&["get", "deploy", "web", "-n", "apps"])
        .contains("not found"));
    assert!(
        s.ok(&["get", "secrets", "-n", "apps", "-o", "name"])
            .trim()
            .is_empty(),
        "release records are gone"
    );
}
