//! A server and three agents (separate processes, data directories and ports) on one
//! machine, driven with the real kubectl: workload controllers, the scheduler and node
//! lifecycle across nodes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{eventually, Agent, Server, DOZER, HELLO};
use serde_json::Value;

const V1: &str = "registry.example/dozer:1";
const V2: &str = "registry.example/dozer:2";
const ONCE: &str = "registry.example/hello:1";

/// Fields drop in order: the agents (reset) before the server (whose directory holds theirs).
struct Cluster {
    agents: Vec<Agent>,
    server: Server,
}

impl Cluster {
    /// The server and agents n1, n2, n3, each node holding the test images.
    fn start() -> Cluster {
        let server = Server::start();
        let agents: Vec<Agent> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| {
                let a = Agent::start(&server, n);
                a.import_wat(DOZER, V1);
                a.import_wat(DOZER, V2);
                a.import_wat(HELLO, ONCE);
                a
            })
            .collect();
        eventually(60, "three Ready nodes", || {
            let nodes = server.json(&["get", "nodes"]);
            let ready = nodes["items"]
                .as_array()?
                .iter()
                .filter(|n| condition(n, "Ready") == "True")
                .count();
            (ready == 3).then_some(())
        });
        Cluster { server, agents }
    }

    fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.name == name).unwrap()
    }

    /// The pods of a label selector: name -> (node, phase, deleting).
    fn pods(&self, selector: &str) -> BTreeMap<String, (String, String, bool)> {
        let pods = self.server.json(&["get", "pods", "-l", selector]);
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    (
                        p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                        p["status"]["phase"].as_str().unwrap_or("").to_string(),
                        !p["metadata"]["deletionTimestamp"].is_null(),
                    ),
                )
            })
            .collect()
    }

    /// Waits until `n` pods of the selector run (none being deleted); returns their nodes.
    fn running(&self, selector: &str, n: usize, secs: u64) -> Vec<String> {
        eventually(secs, &format!("{n} running pods of {selector}"), || {
            let pods = self.pods(selector);
            let live: Vec<_> = pods.values().filter(|(_, _, deleting)| !deleting).collect();
            (live.len() == n && live.iter().all(|(_, phase, _)| phase == "Running"))
                .then(|| live.iter().map(|(node, _, _)| node.clone()).collect())
        })
    }

    fn debug(&self) -> String {
        let mut out = self.server.log();
        for a in &self.agents {
            out += &format!("\n--- {} ---\n{}", a.name, a.log());
        }
        out
    }
}

fn condition(obj: &Value, type_: &str) -> String {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn deployment(name: &str, replicas: u32, image: &str, strategy: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n{strategy}  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      runtimeClassName: wasmtime\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        imagePullPolicy: IfNotPresent\n"
    )
}

const ROLLING: &str = "  strategy:\n    type: RollingUpdate\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 1\n";

#[test]
fn a_deployment_spreads_over_the_nodes_and_scales() {
    let c = Cluster::start();
    c.server.apply_stdin(&[], &deployment("web", 3, V1, ""));
    let nodes: BTreeSet<String> = c.running("app=web", 3, 60).into_iter().collect();
    assert_eq!(nodes.len(), 3, "one pod per node: {nodes:?}");
    let out = c
        .server
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    c.server.ok(&["scale", "deployment/web", "--replicas=5"]);
    c.running("app=web", 5, 60);
    c.server.ok(&["scale", "deployment/web", "--replicas=2"]);
    c.running("app=web", 2, 60);
    let d = c.server.json(&["get", "deployment", "web"]);
    assert_eq!(d["status"]["availableReplicas"], 2, "{d}");
    let rs = c.server.json(&["get", "replicasets", "-l", "app=web"]);
    let rs = &rs["items"][0];
    assert_eq!(rs["status"]["readyReplicas"], 2);
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap();
    assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
    // `kubectl get` prints the columns from the status.
    let table = c.server.ok(&["get", "deployment", "web"]);
    assert!(table.contains("2/2") && table.contains("web"), "{table}");
}

/// Watches the Deployment's status through a rollout with `kubectl get -w`.
struct AvailabilityWatch {
    child: std::process::Child,
    seen: std::sync::mpsc::Receiver<Value>,
}

impl AvailabilityWatch {
    fn start(s: &Server, name: &str) -> AvailabilityWatch {
        let mut child = s
            .kubectl_cmd(&["get", "deployment", name, "--watch", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for v in serde_json::Deserializer::from_reader(out).into_iter::<Value>() {
                let Ok(v) = v else { return };
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        AvailabilityWatch { child, seen }
    }

    /// Every state until the rollout to `image` completed: the lowest availability, and
    /// the states seen (generation/observed, replicas, updated, available).
    fn lowest_until_rolled_out(mut self, image: &str, secs: u64) -> (i64, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut lowest = i64::MAX;
        let mut states = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let d = self.seen.recv_timeout(left).expect("the rollout to finish");
            let s = &d["status"];
            lowest = lowest.min(s["availableReplicas"].as_i64().unwrap_or(0));
            states.push(format!(
                "gen {}/{} replicas {} updated {} available {}",
                d["metadata"]["generation"],
                s["observedGeneration"],
                s["replicas"],
                s["updatedReplicas"],
                s["availableReplicas"]
            ));
            let spec_image = &d["spec"]["template"]["spec"]["containers"][0]["image"];
            let want = d["spec"]["replicas"].clone();
            if spec_image == image
                && s["observedGeneration"] == d["metadata"]["generation"]
                && s["updatedReplicas"] == want
                && s["replicas"] == want
                && s["availableReplicas"] == want
            {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return (lowest, states);
            }
        }
    }
}

#[test]
fn rolling_updates_keep_availability_and_undo_restores_the_template() {
    let c = Cluster::start();
    c.server
        .apply_stdin(&[], &deployment("web", 4, V1, ROLLING));
    c.running("app=web", 4, 60);
    c.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    let watch = AvailabilityWatch::start(&c.server, "web");
    c.server
        .ok(&["set", "image", "deployment/web", &format!("main={V2}")]);
    let out = c
        .server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let (lowest, states) = watch.lowest_until_rolled_out(V2, 60);
    assert!(
        lowest >= 3,
        "available replicas fell to {lowest}, below 4 - maxUnavailable: {states:#?}"
    );
    let images: BTreeSet<String> = c.server.json(&["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(images, BTreeSet::from([V2.to_string()]));

    let history = c.server.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    let out = c.server.ok(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back"), "{out}");
    c.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let d = c.server.json(&["get", "deployment", "web"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], V1);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let history = c.server.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("\n2 ") && history.contains("\n3 ") && !history.contains("\n1 "),
        "{history}"
    );

    // Pause: template changes wait; resume rolls them out. Restart makes a new revision.
    c.server.ok(&["rollout", "pause", "deployment/web"]);
    c.server
        .ok(&["set", "image", "deployment/web", &format!("main={V2}")]);
    std::thread::sleep(Duration::from_secs(1));
    let d = c.server.json(&["get", "deployment", "web"]);
    assert_eq!(
        d["status"]["updatedReplicas"].as_i64().unwrap_or(0),
        0,
        "paused: {d}"
    );
    c.server.ok(&["rollout", "resume", "deployment/web"]);
    c.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    c.server.ok(&["rollout", "restart", "deployment/web"]);
    c.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let d = c.server.json(&["get", "deployment", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "5"
    );
    c.running("app=web", 4, 60);
}

#[test]
fn a_replication_controller_replaces_a_deleted_pod() {
    let c = Cluster::start();
    let rc = format!("apiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: rc\nspec:\n  replicas: 2\n  template:\n    metadata:\n      labels:\n        app: rc\n    spec:\n      runtimeClassName: wasmtime\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {V1}\n        imagePullPolicy: IfNotPresent\n");
    c.server.apply_stdin(&[], &rc);
    c.running("app=rc", 2, 60);
    let first: Vec<String> = c.pods("app=rc").into_keys().collect();
    c.server.ok(&["delete", "pod", &first[0], "--wait=false"]);
    c.running("app=rc", 2, 60);
    let now: BTreeSet<String> = c
        .pods("app=rc")
        .into_iter()
        .filter(|(_, (_, _, deleting))| !deleting)
        .map(|(n, _)| n)
        .collect();
    assert!(
        !now.contains(&first[0]) && now.contains(&first[1]),
        "{now:?}"
    );
    let rc = c.server.json(&["get", "rc", "rc"]);
    assert_eq!(rc["status"]["readyReplicas"], 2, "{rc}");
}

#[test]
fn pods_of_a_killed_agent_run_elsewhere_within_seconds() {
    let mut c = Cluster::start();
    c.server.apply_stdin(&[], &deployment("web", 6, V1, ""));
    let nodes = c.running("app=web", 6, 60);
    assert!(nodes.iter().any(|n| n == "n2"), "{nodes:?}");
    let killed = Instant::now();
    c.agent("n2").kill9();
    eventually(30, "the pods of n2 running on n1 and n3", || {
        let pods = c.pods("app=web");
        let live: Vec<_> = pods.values().filter(|(_, _, deleting)| !deleting).collect();
        (live.len() == 6
            && live
                .iter()
                .all(|(node, phase, _)| node != "n2" && phase == "Running"))
        .then_some(())
    });
    let took = killed.elapsed();
    println!("pods of the killed agent running elsewhere after {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}:\n{}",
        c.debug()
    );
    let node = c.server.json(&["get", "node", "n2"]);
    assert_eq!(condition(&node, "Ready"), "Unknown");
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()),
        "{taints:?}"
    );

    // Back again: the node is Ready and untainted, and the pods that moved away are gone
    // from it.
    c.agent("n2").restart();
    eventually(30, "n2 Ready without taints and its old pods gone", || {
        let node = c.server.json(&["get", "node", "n2"]);
        let pods = c.pods("app=web");
        (condition(&node, "Ready") == "True"
            && node["spec"]["taints"].is_null()
            && pods.values().all(|(n, _, _)| n != "n2")
            && pods.len() == 6)
            .then_some(())
    });
}

#[test]
fn deleting_a_namespace_leaves_nothing_behind() {
    let c = Cluster::start();
    c.server.ok(&["create", "namespace", "shop"]);
    c.server
        .apply_stdin(&["-n", "shop"], &deployment("web", 3, V1, ""));
    eventually(60, "3 running pods in shop", || {
        let pods = c.server.json(&["get", "pods", "-n", "shop"]);
        let items = pods["items"].as_array()?;
        (items.len() == 3 && items.iter().all(|p| p["status"]["phase"] == "Running")).then_some(())
    });
    c.server
        .ok(&["delete", "namespace", "shop", "--timeout=60s"]);
    let left = c.server.ok(&["get", "all", "-A", "--no-headers"]);
    assert!(!left.contains("shop"), "{left}");
    // The agents stopped the pods: none of them has a pod directory left.
    eventually(30, "the agents to stop shop's pods", || {
        c.agents
            .iter()
            .all(|a| !pod_dirs(&a.data).iter().any(|d| d.starts_with("shop_")))
            .then_some(())
    });
}

/// The pods an agent keeps logs of (`<namespace>_<name>_<uid>`).
fn pod_dirs(data: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data.join("logs"))
        .map(|rd| {
            rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn daemonset(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector:\n    matchLabels:\n      app: agent\n  template:\n    metadata:\n      labels:\n        app: agent\n    spec:\n      runtimeClassName: wasmtime\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        imagePullPolicy: IfNotPresent\n"
    )
}

#[test]
fn a_daemonset_runs_on_every_node_also_one_that_joins_later() {
    let mut c = Cluster::start();
    c.server.apply_stdin(&[], &daemonset(V1));
    let nodes: BTreeSet<String> = c.running("app=agent", 3, 60).into_iter().collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["n1".into(), "n2".into(), "n3".into()])
    );
    let late = Agent::start(&c.server, "n4");
    late.import_wat(DOZER, V1);
    late.import_wat(DOZER, V2);
    c.agents.push(late);
    let nodes: BTreeSet<String> = c.running("app=agent", 4, 60).into_iter().collect();
    assert!(nodes.contains("n4"), "{nodes:?}");
    let out = c
        .server
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let table = c.server.ok(&["get", "daemonset", "agent"]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l
            .split_whitespace()
            .take(6)
            .eq(["agent", "4", "4", "4", "4", "4"])),
        "{table}"
    );

    // A rolling update, then an undo through the ControllerRevisions.
    c.server
        .ok(&["set", "image", "daemonset/agent", &format!("main={V2}")]);
    c.server
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    let history = c.server.ok(&["rollout", "history", "daemonset/agent"]);
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    c.server.ok(&["rollout", "undo", "daemonset/agent"]);
    c.server
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    eventually(60, "every daemon pod back on v1", || {
        let pods = c.server.json(&["get", "pods", "-l", "app=agent"]);
        let images: Vec<&str> = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap_or(""))
            .collect();
        (images.len() == 4 && images.iter().all(|i| *i == V1)).then_some(())
    });
}

#[test]
fn an_indexed_job_completes_every_index() {
    let c = Cluster::start();
    let job = format!("apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: batch\nspec:\n  completions: 5\n  parallelism: 3\n  completionMode: Indexed\n  template:\n    spec:\n      runtimeClassName: wasmtime\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {ONCE}\n        imagePullPolicy: IfNotPresent\n");
    c.server.apply_stdin(&[], &job);
    c.server.ok(&[
        "wait",
        "--for=condition=complete",
        "job/batch",
        "--timeout=60s",
    ]);
    let j = c.server.json(&["get", "job", "batch"]);
    assert_eq!(j["status"]["succeeded"], 5, "{j}");
    assert_eq!(j["status"]["completedIndexes"], "0-4");
    let pods = c
        .server
        .json(&["get", "pods", "-l", "batch.kubernetes.io/job-name=batch"]);
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(
        items
            .iter()
            .all(|p| p["status"]["phase"] == "Succeeded" && p["metadata"]["finalizers"].is_null()),
        "{items:#?}"
    );
    let logs = c.server.ok(&["logs", "job/batch"]);
    assert!(logs.contains("hello from wasm"), "{logs}");
    let table = c.server.ok(&["get", "job", "batch"]);
    assert!(
        table.contains("Complete") && table.contains("5/5"),
        "{table}"
    );
}

#[test]
fn a_cronjob_fires_on_schedule() {
    let c = Cluster::start();
    let cron = format!("apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: tick\nspec:\n  schedule: \"* * * * *\"\n  timeZone: Etc/UTC\n  successfulJobsHistoryLimit: 5\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          runtimeClassName: wasmtime\n          restartPolicy: Never\n          containers:\n          - name: main\n            image: {ONCE}\n            imagePullPolicy: IfNotPresent\n");
    c.server.apply_stdin(&[], &cron);
    // The next minute boundary comes within 60 s.
    let job = eventually(90, "a completed job of the CronJob", || {
        let jobs = c.server.json(&["get", "jobs"]);
        jobs["items"].as_array()?.iter().find_map(|j| {
            let done = j["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Complete" && c["status"] == "True");
            done.then(|| j.clone())
        })
    });
    let name = job["metadata"]["name"].as_str().unwrap();
    let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    assert!(
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20"))
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let cj = eventually(30, "the CronJob's status", || {
        let cj = c.server.json(&["get", "cronjob", "tick"]);
        cj["status"]["lastSuccessfulTime"].is_string().then_some(cj)
    });
    let last: jiff::Timestamp = cj["status"]["lastScheduleTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // (Another minute may have begun meanwhile.)
    assert!(last.as_second() / 60 >= minutes, "{cj}");
    let table = c.server.ok(&["get", "cronjob", "tick"]);
    assert!(
        table.contains("* * * * *") && table.contains("Etc/UTC"),
        "{table}"
    );
    // kubectl's client-side "run now" works against the same template.
    c.server
        .ok(&["create", "job", "--from=cronjob/tick", "now"]);
    c.server.ok(&[
        "wait",
        "--for=condition=complete",
        "job/now",
        "--timeout=60s",
    ]);
}
