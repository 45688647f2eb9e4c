//! `skiff dev` (server + agent in one process, the agent connecting over loopback) runs
//! Wasm pods: the node registers and heartbeats, pods run to completion, crash-loop with
//! back-off, are OOM-killed past their memory limit, and spinning ones are deleted promptly.
//! One dev cluster for the file (each scenario in its own namespace); scenarios that
//! delete namespaces, run without root or stop servers and agents start their own.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, Shared, SharedGuard};
use serde_json::Value;

/// Says "failing" and exits 1.
const FAIL: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "failing\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 8))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 40)))
    (call $exit (i32.const 1))))"#;
const GROW: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (drop (memory.grow (i32.const 256)))))"#;
/// Prints "tick" five times, 300 ms apart.
const TICKER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "tick\n")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 100) (i32.const 200))
    (i32.store (i32.const 104) (i32.const 5))
    (i64.store (i32.const 0) (i64.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 300000000))
    (loop $l
      (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120)))
      (drop (call $poll (i32.const 0) (i32.const 48) (i32.const 1) (i32.const 160)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 5))))))"#;
const SPIN: &str =
    r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
struct Dev {
    dir: tempfile::TempDir,
    child: Child,
    cache: tempfile::TempDir,
    /// The unprivileged user the cluster runs as, if not root.
    uid: Option<u32>,
    /// Its pods' bridge.
    bridge: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::reset_node(&self.dir.path().join("data/agent"), &self.bridge);
    }
}

impl Dev {
    fn start() -> Dev {
        Dev::start_as(None)
    }

    /// `skiff dev`, run by user `uid` (its data directory and a copy of the binary theirs).
    fn start_as(uid: Option<u32>) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let net = common::network_id();
        let bridge = format!("skd{}", net + 1000 * (std::process::id() % 100));
        let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
        let mut cmd = Command::new(Dev::binary(&dir, uid));
        common::die_with_parent(&mut cmd);
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        cmd.args([
            "dev",
            "--node-name",
            "edge-1",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cluster-cidr",
            &common::cluster_cidr(net),
            "--cni-bridge",
            &bridge,
            common::NO_IMAGE_GC,
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(log);
        // A copied binary can be briefly "busy": another test thread forked while the copy
        // was open for writing, and its child has not exec'd yet.
        let child = (0..50)
            .find_map(|_| match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
                r => Some(r.unwrap()),
            })
            .expect("the copied binary stayed busy");
        let dev = Dev {
            dir,
            child,
            cache: tempfile::tempdir().unwrap(),
            uid,
            bridge,
        };
        eventually(30, "the dev cluster to start", || {
            dev.kubeconfig().exists().then_some(())
        });
        dev
    }

    /// The skiff binary `uid` may run: for another user, a copy in `dir`, which becomes theirs.
    fn binary(dir: &tempfile::TempDir, uid: Option<u32>) -> PathBuf {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
        let Some(uid) = uid else { return built };
        let copy = dir.path().join("skiff");
        if copy.exists() {
            return copy;
        }
        std::fs::copy(&built, &copy).unwrap();
        for p in [dir.path().to_path_buf(), copy.clone()] {
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        }
        copy
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data/kubeconfig")
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut c = Command::new(common::kubectl_bin());
        c.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            std::io::Write::write_all(&mut input, s.as_bytes()).unwrap();
        }
        drop(input);
        let o = child.wait_with_output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args, None);
        assert!(ok, "kubectl {args:?}: {err}\n{}", self.log());
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default()
    }

    /// Imports a module (WAT text) into the node's image store as `reference`.
    fn import(&self, name: &str, wat: &str, reference: &str) {
        let file = self.dir.path().join(format!("{name}.wat"));
        std::fs::write(&file, wat).unwrap();
        self.import_file(&file, reference);
    }

    fn import_file(&self, file: &std::path::Path, reference: &str) {
        let mut cmd = Command::new(Dev::binary(&self.dir, self.uid));
        if let Some(uid) = self.uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let o = cmd
            .args(["images", "import"])
            .arg(file)
            .args(["--name", reference, "--data-dir"])
            .arg(self.dir.path().join("data/agent"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Namespace `ns`, created, for one scenario's kubectl commands.
    fn namespace(&self, ns: &str) -> Ns<'_> {
        self.ok(&["create", "namespace", ns]);
        Ns {
            dev: self,
            ns: ns.to_string(),
        }
    }
}

/// The modules the scenarios on the shared cluster run, as `registry.example/NAME:1.0`.
const MODULES: [(&str, &str); 6] = [
    ("hello", common::HELLO),
    ("fail", FAIL),
    ("grow", GROW),
    ("spin", SPIN),
    ("ticker", TICKER),
    ("dozer", common::DOZER),
];

/// The examples in wasm-examples/ (built by scripts/setup.sh), as
/// `skiff.local/examples/NAME:1.0`.
const EXAMPLES: [&str; 5] = [
    "hello",
    "config-reader",
    "shared-volume",
    "hello-component",
    "http-hello",
];

/// One `skiff dev` cluster for the scenarios that need no cluster of their own (each in its
/// own namespace): its node Ready, [`MODULES`] and [`EXAMPLES`] in its image store.
fn dev() -> SharedGuard<Dev> {
    static DEV: Shared<Dev> = Shared::new();
    DEV.get(|| {
        let d = Dev::start();
        for (name, wat) in MODULES {
            d.import(name, wat, &format!("registry.example/{name}:1.0"));
        }
        let out = common::root().join("wasm-examples/out");
        for ex in EXAMPLES {
            let wasm = out.join(format!("{ex}.wasm"));
            assert!(
                wasm.exists(),
                "{} missing: run scripts/setup.sh",
                wasm.display()
            );
            d.import_file(&wasm, &format!("skiff.local/examples/{ex}:1.0"));
        }
        node_ready(&d);
        d
    })
}

/// Node edge-1 once Ready.
fn node_ready(d: &Dev) -> Value {
    eventually(30, "node edge-1 Ready", || {
        let (ok, out, _) = d.kubectl(&["get", "node", "edge-1", "-o", "json"], None);
        let n: Value = serde_json::from_str(&out).ok()?;
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (ok && ready).then_some(n)
    })
}

/// A scenario's namespace on a dev cluster: its kubectl commands run there.
struct Ns<'a> {
    dev: &'a Dev,
    ns: String,
}

impl Ns<'_> {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut a = args.to_vec();
        a.extend(["-n", &self.ns]);
        self.dev.kubectl(&a, stdin)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args, None);
        assert!(ok, "kubectl {args:?}: {err}\n{}", self.dev.log());
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    #[track_caller]
    fn apply(&self, manifest: &str) {
        let (ok, _, err) = self.kubectl(&["apply", "-f", "-"], Some(manifest));
        assert!(ok, "{err}");
    }

    fn pod(&self, name: &str, image: &str, restart: &str, extra: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: wasmtime\n  restartPolicy: {restart}\n  containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: IfNotPresent\n{extra}"
        ));
    }

    fn container_status(&self, pod: &str) -> Value {
        self.json(&["get", "pod", pod])["status"]["containerStatuses"][0].clone()
    }

    /// The status of `pod`'s container once `state` (e.g. `terminated`) has `reason` (any
    /// if `None`), within 30 s.
    fn wait_state(&self, pod: &str, state: &str, reason: Option<&str>) -> Value {
        eventually(30, &format!("{pod} to be {state} ({reason:?})"), || {
            let s = self.container_status(pod);
            let st = &s["state"][state];
            (st.is_object() && reason.is_none_or(|r| st["reason"] == r)).then_some(s)
        })
    }

    /// The log directories the node keeps for pod `name` of this namespace.
    fn pod_logs(&self, name: &str) -> Vec<PathBuf> {
        pod_logs_in(&self.dev.dir.path().join("data/agent"), &self.ns, name)
    }
}

fn step(s: &str) {
    eprintln!("--- {s}");
}

#[test]
fn the_node_registers_is_ready_and_heartbeats() {
    let d = &*dev();
    let node = node_ready(d);
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "edge-1");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["runtime.skiff.dev/wasm"], "true");
    for r in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(
            node["status"]["allocatable"][r].is_string(),
            "allocatable {r} missing: {node}"
        );
    }
    assert_eq!(
        node["status"]["nodeInfo"]["kubeletVersion"],
        "v1.33.0-skiff"
    );
    eventually(10, "the node's events in describe", || {
        let describe = d.ok(&["describe", "node", "edge-1"]);
        (describe.contains("Starting kubelet.")
            && describe.contains("Node edge-1 status is now: NodeReady"))
        .then_some(())
    });
    let lease = d.json(&["get", "lease", "edge-1", "-n", "kube-node-lease"]);
    assert_eq!(lease["spec"]["holderIdentity"], "edge-1");
    let wide = d.ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        wide.contains("edge-1") && wide.contains("Ready") && wide.contains("skiff://"),
        "{wide}"
    );
}

/// The data directory holds every Secret (in the store, and in pods' volumes): another
/// local user reads none of it, however the files inside are moded.
#[test]
fn another_local_user_reads_no_secret_of_the_node() {
    let d = &*dev();
    let n = d.namespace("private");
    n.ok(&[
        "create",
        "secret",
        "generic",
        "hush",
        "--from-literal=word=whisper-8613",
    ]);
    n.pod(
        "keeper",
        "registry.example/hello:1.0",
        "Never",
        "    volumeMounts:\n    - name: s\n      mountPath: /s\n  volumes:\n  - name: s\n    secret:\n      secretName: hush\n",
    );
    n.wait_state("keeper", "terminated", None);
    let data = d.dir.path().join("data");
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("agent")), 0o700);
    // As root: where the Secret is (its volume's file, and the store's copy, base64).
    let o = Command::new("grep")
        .args(["-rlE", "whisper-8613|d2hpc3Blci04NjEz"])
        .arg(&data)
        .output()
        .unwrap();
    let files: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(files.iter().any(|f| f.contains("/agent/")), "{files:?}");
    assert!(files.iter().any(|f| !f.contains("/agent/")), "{files:?}");
    for f in &files {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat", f])
            .output()
            .unwrap();
        assert!(!o.status.success(), "nobody read {f}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "{o:?}"
        );
    }
}

#[test]
fn a_wasm_pod_runs_to_completion() {
    let d = &*dev();
    let n = d.namespace("complete");
    n.pod("hello", "registry.example/hello:1.0", "Never", "");
    let st = n.wait_state("hello", "terminated", None);
    assert_eq!(st["state"]["terminated"]["exitCode"], 0);
    assert_eq!(st["state"]["terminated"]["reason"], "Completed");
    assert!(st["imageID"].as_str().unwrap().contains("@sha256:"), "{st}");
    let pod = n.json(&["get", "pod", "hello"]);
    assert_eq!(pod["status"]["phase"], "Succeeded");
    assert_eq!(pod["spec"]["nodeName"], "edge-1");
    let node = n.json(&["get", "node", "edge-1"]);
    let internal = node["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .map(|a| a["address"].clone())
        .unwrap();
    assert_eq!(pod["status"]["hostIP"], internal);
    let get = n.ok(&["get", "pod", "hello"]);
    assert!(get.contains("Completed"), "{get}");
    let describe = n.ok(&["describe", "pod", "hello"]);
    for ev in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(describe.contains(ev), "describe lacks {ev}:\n{describe}");
    }
}

#[test]
fn kubectl_logs_reads_a_containers_output_through_the_agent() {
    let d = &*dev();
    let n = d.namespace("logs");
    n.pod("hello", "registry.example/hello:1.0", "Never", "");
    n.wait_state("hello", "terminated", None);
    assert_eq!(n.ok(&["logs", "hello"]), "hello from wasm\n");
    let ts = n.ok(&["logs", "hello", "--timestamps"]);
    assert!(
        ts.starts_with("20") && ts.trim_end().ends_with("Z hello from wasm"),
        "{ts}"
    );
    let (ok, _, err) = n.kubectl(&["logs", "hello", "-c", "nope"], None);
    assert!(
        !ok && err.contains("container nope is not valid for pod hello"),
        "{err}"
    );
}

/// The agent's own port serves only the API server (client certificates of the cluster
/// CA): a client without one is refused.
#[test]
fn the_agents_port_refuses_a_client_without_a_cluster_certificate() {
    let d = &*dev();
    let node = node_ready(d);
    let port = &node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"];
    assert!(port.as_u64().is_some_and(|p| p > 0), "{node}");
    let url = format!("https://127.0.0.1:{port}/containerLogs/default/hello/main");
    let anonymous = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .output()
        .unwrap();
    // curl's 35/56: the TLS handshake or the connection was refused, not the port missing.
    assert!(
        matches!(anonymous.status.code(), Some(35 | 56)),
        "an anonymous client got {:?} from the agent at {url}: HTTP {}",
        anonymous.status.code(),
        String::from_utf8_lossy(&anonymous.stdout)
    );
}

#[test]
fn kubectl_logs_follows_a_running_container_until_it_ends() {
    let d = &*dev();
    let n = d.namespace("follow");
    n.pod("ticker", "registry.example/ticker:1.0", "Never", "");
    eventually(30, "ticker to run", || {
        n.container_status("ticker")["state"]["running"]
            .is_object()
            .then_some(())
    });
    let t = Instant::now();
    let followed = n.ok(&["logs", "-f", "ticker"]);
    assert_eq!(followed, "tick\ntick\ntick\ntick\ntick\n");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(n.ok(&["logs", "ticker", "--tail=2"]), "tick\ntick\n");
    assert_eq!(n.ok(&["logs", "ticker", "--since=1h"]), followed);
    assert_eq!(
        n.ok(&["logs", "ticker", "--since-time=2099-01-01T00:00:00Z"]),
        ""
    );
    let (ok, _, err) = n.kubectl(&["logs", "ticker", "--previous"], None);
    assert!(
        !ok && err.contains("previous terminated container \"main\" in pod \"ticker\" not found"),
        "{err}"
    );
}

#[test]
fn a_failing_container_crash_loops_with_back_off() {
    let d = &*dev();
    let n = d.namespace("crashloop");
    n.pod("crash", "registry.example/fail:1.0", "Always", "");
    let st = n.wait_state("crash", "waiting", Some("CrashLoopBackOff"));
    assert!(st["restartCount"].as_i64().unwrap() >= 1);
    assert_eq!(st["lastState"]["terminated"]["exitCode"], 1);
    assert!(
        st["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=main pod=crash_crashloop("),
        "{st}"
    );
    let get = n.ok(&["get", "pod", "crash"]);
    assert!(get.contains("CrashLoopBackOff"), "{get}");
    assert!(n.ok(&["describe", "pod", "crash"]).contains("BackOff"));
    // The run before the current one, from stderr.
    assert_eq!(n.ok(&["logs", "crash", "--previous"]), "failing\n");
}

/// Every run of a crash-looping container wrote a log file and none went away: the node
/// now keeps the running run's and the previous one's, as the kubelet does.
#[test]
fn a_crash_loop_keeps_only_the_previous_runs_log() {
    let d = &*dev();
    let n = d.namespace("oldlogs");
    n.pod("crash", "registry.example/fail:1.0", "Always", "");
    eventually(60, "a third run", || {
        let st = n.container_status("crash");
        (st["restartCount"].as_i64()? >= 2).then_some(())
    });
    let dirs = n.pod_logs("crash");
    let mut runs: Vec<String> = std::fs::read_dir(dirs[0].join("main"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert!(!runs.contains(&"0.log".to_string()), "{runs:?}");
    assert!(runs.len() <= 2, "{runs:?}");
    assert_eq!(n.ok(&["logs", "crash", "--previous"]), "failing\n");
}

#[test]
fn a_container_whose_env_needs_a_missing_config_map_waits_saying_so() {
    let d = &*dev();
    let n = d.namespace("needs-config");
    n.pod(
        "needs-config",
        "registry.example/hello:1.0",
        "Never",
        "    env:\n    - name: X\n      valueFrom:\n        configMapKeyRef:\n          name: nope\n          key: k\n",
    );
    let st = n.wait_state(
        "needs-config",
        "waiting",
        Some("CreateContainerConfigError"),
    );
    assert_eq!(
        st["state"]["waiting"]["message"], "configmap \"nope\" not found",
        "{st}"
    );
}

#[test]
fn growing_past_the_memory_limit_is_oom_killed() {
    let d = &*dev();
    let n = d.namespace("oom");
    n.pod(
        "oom",
        "registry.example/grow:1.0",
        "Never",
        "    resources:\n      limits:\n        memory: 4Mi\n",
    );
    let st = n.wait_state("oom", "terminated", None);
    assert_eq!(st["state"]["terminated"]["reason"], "OOMKilled", "{st}");
    assert_eq!(n.json(&["get", "pod", "oom"])["status"]["phase"], "Failed");
}

#[test]
fn init_containers_run_first_in_order() {
    let d = &*dev();
    let n = d.namespace("init");
    n.apply("apiVersion: v1\nkind: Pod\nmetadata:\n  name: with-init\nspec:\n  runtimeClassName: wasmtime\n  restartPolicy: Never\n  initContainers:\n  - name: first\n    image: registry.example/hello:1.0\n    imagePullPolicy: IfNotPresent\n  - name: second\n    image: registry.example/hello:1.0\n    imagePullPolicy: IfNotPresent\n  containers:\n  - name: main\n    image: registry.example/hello:1.0\n    imagePullPolicy: IfNotPresent\n");
    let pod = eventually(30, "with-init to succeed", || {
        let p = n.json(&["get", "pod", "with-init"]);
        (p["status"]["phase"] == "Succeeded").then_some(p)
    });
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    let finished = |s: &Value| {
        s["state"]["terminated"]["finishedAt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let started = |s: &Value| {
        s["state"]["terminated"]["startedAt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        finished(&inits[0]) <= started(&inits[1])
            && finished(&inits[1]) <= started(&pod["status"]["containerStatuses"][0]),
        "{pod}"
    );
    assert_eq!(
        n.ok(&["logs", "with-init", "-c", "second"]),
        "hello from wasm\n"
    );
}

#[test]
fn active_deadline_seconds_stops_a_running_pod() {
    let d = &*dev();
    let n = d.namespace("deadline");
    n.pod(
        "deadline",
        "registry.example/spin:1.0",
        "Never",
        "    resources:\n      limits:\n        cpu: 100m\n",
    );
    n.ok(&[
        "patch",
        "pod",
        "deadline",
        "-p",
        "{\"spec\":{\"activeDeadlineSeconds\":1}}",
    ]);
    let p = eventually(30, "deadline to be exceeded", || {
        let p = n.json(&["get", "pod", "deadline"]);
        (p["status"]["reason"] == "DeadlineExceeded").then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Failed");
    let killed = &p["status"]["containerStatuses"][0];
    assert_eq!(killed["state"]["terminated"]["exitCode"], 137, "{p}");
    assert_eq!(killed["ready"], false, "{p}");
    assert!(n
        .ok(&["describe", "pod", "deadline"])
        .contains("Stopping container main"));
}

/// The deadline counts from the pod's start: a spinning init container is stopped too.
#[test]
fn active_deadline_seconds_stops_a_spinning_init_container() {
    let d = &*dev();
    let n = d.namespace("init-deadline");
    n.apply("apiVersion: v1\nkind: Pod\nmetadata:\n  name: init-deadline\nspec:\n  runtimeClassName: wasmtime\n  restartPolicy: Never\n  activeDeadlineSeconds: 1\n  initContainers:\n  - name: spin\n    image: registry.example/spin:1.0\n    imagePullPolicy: IfNotPresent\n    resources:\n      limits:\n        cpu: 100m\n  containers:\n  - name: main\n    image: registry.example/hello:1.0\n    imagePullPolicy: IfNotPresent\n");
    let p = eventually(30, "init-deadline to be exceeded", || {
        let p = n.json(&["get", "pod", "init-deadline"]);
        (p["status"]["reason"] == "DeadlineExceeded").then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Failed");
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 137,
        "{p}"
    );
    assert!(
        p["status"]["containerStatuses"][0]["state"]["waiting"].is_object(),
        "{p}"
    );
}

#[test]
fn a_spinning_container_is_deleted_promptly() {
    let d = &*dev();
    let n = d.namespace("spin");
    n.pod(
        "spin",
        "registry.example/spin:1.0",
        "Always",
        "    resources:\n      limits:\n        cpu: 200m\n",
    );
    eventually(30, "spin to run", || {
        (n.container_status("spin")["state"]["running"].is_object()).then_some(())
    });
    assert_eq!(n.ok(&["logs", "spin"]), "", "a silent running container");
    let t = Instant::now();
    n.ok(&["delete", "pod", "spin"]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "deleting a spinning pod took {:?}",
        t.elapsed()
    );
    // Gone, not merely unreadable.
    let (exists, _, err) = n.kubectl(&["get", "pod", "spin"], None);
    assert!(
        !exists && err.contains("pods \"spin\" not found"),
        "a deleted pod is still there, or kubectl failed otherwise: {err}"
    );
    eventually(10, "a Killing event for spin", || {
        let events = n.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=spin",
        ]);
        (events.contains("Killing") && events.contains("Stopping container main")).then_some(())
    });
}

#[test]
fn a_pods_log_files_go_with_it_also_when_force_deleted() {
    let d = &*dev();
    let n = d.namespace("files");
    n.pod("forced", "registry.example/ticker:1.0", "Never", "");
    n.pod("crash", "registry.example/fail:1.0", "Always", "");
    n.pod("kept", "registry.example/hello:1.0", "Never", "");
    n.wait_state("forced", "terminated", None);
    n.wait_state("crash", "waiting", Some("CrashLoopBackOff"));
    n.wait_state("kept", "terminated", None);
    assert!(!n.pod_logs("forced").is_empty());
    n.ok(&["delete", "pod", "forced", "--force", "--grace-period=0"]);
    eventually(10, "forced's logs to be removed", || {
        n.pod_logs("forced").is_empty().then_some(())
    });
    assert!(!n.pod_logs("crash").is_empty());
    n.ok(&["delete", "pod", "crash"]);
    eventually(10, "crash's logs to be removed", || {
        n.pod_logs("crash").is_empty().then_some(())
    });
    assert!(
        !n.pod_logs("kept").is_empty(),
        "a pod not deleted keeps its logs"
    );
}

/// Regression: a kill was a flag read at epoch ticks, so a guest waiting in `poll_oneoff`
/// outlived its deleted pod and its next line recreated the pod's log directory.
#[test]
fn a_deleted_pod_waiting_in_a_wasi_call_is_gone_with_its_files() {
    let d = &*dev();
    let n = d.namespace("dozer");
    n.pod("dozer", "registry.example/dozer:1.0", "Always", "");
    eventually(30, "dozer's first tick", || {
        let (_, logs, _) = n.kubectl(&["logs", "dozer"], None);
        logs.contains("tick").then_some(())
    });
    let t = Instant::now();
    n.ok(&["delete", "pod", "dozer"]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "deleting a waiting pod took {:?}",
        t.elapsed()
    );
    assert!(n.pod_logs("dozer").is_empty());
    // Past the guest's next wake-up: had it survived, it would have written again.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        n.pod_logs("dozer").is_empty(),
        "a deleted pod's guest still writes its log"
    );
}

/// `default`, `kube-system` and `kube-public` cannot be deleted; `kube-node-lease` can, and
/// comes back (with the node's Lease) as in Kubernetes.
#[test]
fn system_namespaces_outlive_delete_all() {
    let d = Dev::start();
    eventually(30, "the node's lease", || {
        d.kubectl(&["get", "lease", "edge-1", "-n", "kube-node-lease"], None)
            .0
            .then_some(())
    });
    let (ok, _, err) = d.kubectl(&["delete", "namespace", "default"], None);
    assert!(!ok);
    assert!(
        err.contains(
            "Error from server (Forbidden): namespaces \"default\" is forbidden: this namespace may not be deleted"
        ),
        "{err}"
    );
    let (_, _, err) = d.kubectl(&["delete", "namespace", "--all", "--wait=false"], None);
    for ns in ["default", "kube-system", "kube-public"] {
        assert!(
            err.contains(&format!("namespaces \"{ns}\" is forbidden")),
            "{ns}: {err}"
        );
        let n = d.json(&["get", "namespace", ns]);
        assert_eq!(n["status"]["phase"], "Active", "{n}");
    }
    eventually(
        30,
        "kube-node-lease and the node's lease to come back",
        || {
            let (ok, out, _) = d.kubectl(
                &[
                    "get",
                    "lease",
                    "edge-1",
                    "-n",
                    "kube-node-lease",
                    "-o",
                    "json",
                ],
                None,
            );
            let lease: Value = serde_json::from_str(&out).ok()?;
            let (_, ns, _) =
                d.kubectl(&["get", "namespace", "kube-node-lease", "-o", "json"], None);
            let ns: Value = serde_json::from_str(&ns).ok()?;
            (ok && ns["status"]["phase"] == "Active"
                && ns["metadata"]["deletionTimestamp"].is_null())
            .then_some(lease)
        },
    );
}

/// A separate `skiff agent` process (node n1) for server `s`, with its data in `data`.
fn agent_for(s: &common::Server, node: &common::Node) -> Child {
    let data = &node.data;
    let log = s.dir.path().join(format!(
        "agent-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    // Killed with the test's thread, also when the test fails before killing it.
    common::die_with_parent(&mut Command::new(env!("CARGO_BIN_EXE_skiff")))
        .args([
            "agent",
            "--node-name",
            "n1",
            "--port",
            "0",
            common::NO_IMAGE_GC,
        ])
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .arg("--data-dir")
        .arg(data)
        .args(["--cni-bridge", &node.bridge])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The body curl gets from `url` (3 s at most), if it gets one.
fn curl(url: &str) -> Option<String> {
    let o = Command::new("curl")
        .args(["-s", "-m", "3", url])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The CPU time process `pid` has used (user and system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15, in clock ticks.
    // Safety: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / hz)
}

/// Imports `wat` into the agent store `data` as registry.example/NAME:1.
fn import_wat(s: &common::Server, data: &std::path::Path, name: &str, wat: &str) {
    let file = s.dir.path().join(format!("{name}.wat"));
    std::fs::write(&file, wat).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["images", "import"])
        .arg(&file)
        .args(["--name", &format!("registry.example/{name}:1")])
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn a_status_written_while_the_server_is_down_arrives_later() {
    let mut s = common::Server::start();
    let node = common::Node::new(s.dir.path().join("agent"));
    let data = node.data.clone();
    let mut agent = agent_for(&s, &node);
    import_wat(&s, &data, "ticker", TICKER);
    eventually(30, "node n1", || {
        s.kubectl(&["get", "node", "n1"])
            .status
            .success()
            .then_some(())
    });
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\nspec:\n  runtimeClassName: wasmtime\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: registry.example/ticker:1\n";
    assert!(s
        .kubectl_stdin(&["apply", "-f", "-"], manifest)
        .status
        .success());
    eventually(30, "ticker running", || {
        (s.json(&["get", "pod", "ticker"])["status"]["phase"] == "Running").then_some(())
    });
    // The container ends (after 1.5 s) while the API server is away.
    s.kill9();
    // Meanwhile the agent waits: retrying with back-off, not in a loop (its watches once
    // burnt half a core each while the server was away).
    let before = cpu_time(agent.id());
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_time(agent.id()) - before;
    assert!(
        used < Duration::from_millis(800),
        "the agent used {used:?} of CPU in 4 s without its server"
    );
    s.restart();
    let phase = eventually(30, "the agent to report the pod's end", || {
        let p = s.json(&["get", "pod", "ticker"])["status"]["phase"].clone();
        (p != "Running").then_some(p)
    });
    assert_eq!(phase, "Succeeded");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn an_agent_started_before_its_server_waits_for_it() {
    let mut s = common::Server::start();
    let node = common::Node::new(s.dir.path().join("agent"));
    s.kill9();
    let mut agent = agent_for(&s, &node);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent gave up while the API server was down"
    );
    s.restart();
    eventually(30, "node n1 to register", || {
        s.kubectl(&["get", "node", "n1"])
            .status
            .success()
            .then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A separate `skiff agent` process, killed and restarted: it finds its pods again,
/// restarts what was running (once), and leaves completed pods alone.
#[test]
fn agent_restart_adopts_its_pods() {
    let s = common::Server::start();
    let node = common::Node::new(s.dir.path().join("agent"));
    let data = node.data.clone();
    let spawn_agent = || agent_for(&s, &node);
    let mut agent = spawn_agent();
    eventually(30, "node n1", || {
        s.kubectl(&["get", "node", "n1"])
            .status
            .success()
            .then_some(())
    });
    for (name, wat) in [("spin", SPIN), ("hello", common::HELLO)] {
        import_wat(&s, &data, name, wat);
    }
    let pod = |name: &str, image: &str, restart: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: wasmtime\n  restartPolicy: {restart}\n  containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    resources:\n      limits:\n        cpu: 100m\n---\n")
    };
    let manifest = pod("long", "registry.example/spin:1", "Always")
        + &pod("done", "registry.example/hello:1", "Never");
    let o = s.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.status.success());
    let status = |name: &str| s.json(&["get", "pod", name])["status"].clone();
    eventually(30, "long running and done completed", || {
        let long = status("long");
        let done = status("done");
        (long["containerStatuses"][0]["state"]["running"].is_object()
            && done["phase"] == "Succeeded")
            .then_some(())
    });
    let done_before = status("done")["containerStatuses"][0].clone();

    agent.kill().unwrap();
    agent.wait().unwrap();
    let mut agent = spawn_agent();
    let long = eventually(30, "long running again", || {
        let st = status("long")["containerStatuses"][0].clone();
        (st["state"]["running"].is_object() && st["restartCount"] == 1).then_some(st)
    });
    assert_eq!(
        long["lastState"]["terminated"]["message"],
        "the node agent restarted"
    );
    std::thread::sleep(Duration::from_secs(2));
    let again = status("long")["containerStatuses"][0].clone();
    assert_eq!(
        again["restartCount"], 1,
        "restarted once, not again: {again}"
    );
    assert_eq!(
        status("done")["containerStatuses"][0],
        done_before,
        "a completed pod is left alone"
    );

    step("a pod deleted while its agent is down goes away when the agent is back, unstarted");
    agent.kill().unwrap();
    agent.wait().unwrap();
    let starts = || {
        s.json(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=long,reason=Started",
        ])["items"]
            .as_array()
            .map_or(0, |a| {
                a.iter()
                    .map(|e| e["count"].as_i64().unwrap_or(1))
                    .sum::<i64>()
            })
    };
    let started_before = starts();
    let o = s.kubectl(&["delete", "pod", "long", "--wait=false"]);
    assert!(o.status.success());
    assert!(
        s.json(&["get", "pod", "long"])["metadata"]["deletionTimestamp"].is_string(),
        "a bound pod is only marked while its node is away"
    );
    let mut agent = spawn_agent();
    eventually(30, "long to be gone", || {
        (!s.kubectl(&["get", "pod", "long"]).status.success()).then_some(())
    });
    assert_eq!(
        starts(),
        started_before,
        "no container of a pod being deleted is started again"
    );

    step("the files of a pod force-deleted while its agent is down go when it is back");
    assert!(!pod_logs_in(&data, "default", "done").is_empty());
    let _ = agent.kill();
    let _ = agent.wait();
    let o = s.kubectl(&["delete", "pod", "done", "--force", "--grace-period=0"]);
    assert!(o.status.success());
    let mut agent = spawn_agent();
    eventually(30, "done's logs to be removed", || {
        pod_logs_in(&data, "default", "done")
            .is_empty()
            .then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

/// The log directories an agent (data directory `data`) keeps for pod `name` of `ns`.
fn pod_logs_in(data: &std::path::Path, ns: &str, name: &str) -> Vec<PathBuf> {
    let prefix = format!("{ns}_{name}_");
    std::fs::read_dir(data.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Applies example `ex`'s manifest (wasm-examples/EX/pod.yaml) in `n`.
fn apply_example(n: &Ns, ex: &str) {
    let manifest = common::root().join(format!("wasm-examples/{ex}/pod.yaml"));
    n.ok(&["apply", "-f", manifest.to_str().unwrap()]);
}

/// Waits for `pod` to succeed.
fn succeeded(n: &Ns, pod: &str) {
    eventually(30, &format!("{pod} to succeed"), || {
        (n.json(&["get", "pod", pod])["status"]["phase"] == "Succeeded").then_some(())
    })
}

/// The hello example: arguments and output.
#[test]
fn the_hello_example_prints_its_arguments() {
    let d = &*dev();
    let n = d.namespace("ex-hello");
    apply_example(&n, "hello");
    succeeded(&n, "hello-wasm");
    assert_eq!(
        n.ok(&["logs", "hello-wasm"]),
        "Hello from a Wasm pod on Skiff!\narg 1: from\narg 2: kubectl\n"
    );
}

/// hello-component: a preview 2 command component (wasi:cli/run).
#[test]
fn the_hello_component_example_runs_as_a_command_component() {
    let d = &*dev();
    let n = d.namespace("ex-component");
    apply_example(&n, "hello-component");
    succeeded(&n, "hello-component");
    assert_eq!(
        n.ok(&["logs", "hello-component"]),
        "Hello from a Wasm pod on Skiff!\narg 1: as\narg 2: a\narg 3: component\n"
    );
}

/// config-reader: env from a ConfigMap and the downward API, a read-only configMap volume, a
/// writable volume.
#[test]
fn the_config_reader_example_reads_its_config_map_and_writes_its_volume() {
    let d = &*dev();
    let n = d.namespace("ex-config");
    apply_example(&n, "config-reader");
    succeeded(&n, "config-reader");
    let logs = n.ok(&["logs", "config-reader"]);
    assert!(
        logs.contains("greeting=Hello pod=config-reader message=configuration from a ConfigMap"),
        "{logs}"
    );
    assert!(logs.contains("config volume writable: no"), "{logs}");
    let uid = n.json(&["get", "pod", "config-reader"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let report = d
        .dir
        .path()
        .join(format!("data/agent/pods/{uid}/volumes/data/report.txt"));
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "Hello, configuration from a ConfigMap\n"
    );
}

/// shared-volume: two containers share an emptyDir.
#[test]
fn the_shared_volume_example_passes_a_note_between_containers() {
    let d = &*dev();
    let n = d.namespace("ex-shared");
    apply_example(&n, "shared-volume");
    succeeded(&n, "shared-volume");
    assert_eq!(
        n.ok(&["logs", "shared-volume", "-c", "writer"]),
        "note written\n"
    );
    assert_eq!(
        n.ok(&["logs", "shared-volume", "-c", "reader"]),
        "read: written by the writer container\n"
    );
}

/// http-hello: a wasi:http handler component, served at the pod's IP.
#[test]
fn the_http_hello_example_answers_at_the_pods_ip() {
    let d = &*dev();
    let n = d.namespace("ex-http");
    apply_example(&n, "http-hello");
    let ip = eventually(30, "http-hello running", || {
        let pod = n.json(&["get", "pod", "http-hello"]);
        (pod["status"]["phase"] == "Running")
            .then(|| pod["status"]["podIP"].as_str().unwrap().to_string())
    });
    let body = eventually(30, "an answer from http-hello", || {
        curl(&format!("http://{ip}:8080/from/the/node"))
    });
    assert_eq!(
        body,
        "Hello from a Wasm HTTP handler on Skiff: GET /from/the/node\n"
    );
}

#[test]
fn wasm_images_are_pulled_from_a_registry() {
    let reg = common::oci::Registry::start(None);
    let secured = common::oci::Registry::start(Some(("skiff", "s3cret")));
    let hello = common::root().join("wasm-examples/out/hello.wasm");
    let image = format!("127.0.0.1:{}/examples/hello:1.0", reg.port);
    let (ok, out) = common::oci::push(&hello, &image, None);
    assert!(ok, "{out}");
    let private = format!("127.0.0.1:{}/private/hello:1.0", secured.port);
    let (ok, _) = common::oci::push(&hello, &private, None);
    assert!(!ok, "pushing without credentials must fail");
    let (ok, out) = common::oci::push(&hello, &private, Some(("skiff", "s3cret")));
    assert!(ok, "{out}");

    let d = &*dev();
    let d = d.namespace("pulled");

    step("an anonymous pull (imagePullPolicy Always)");
    let pod = |name: &str, image: &str, secret: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: wasmtime\n  restartPolicy: Never\n{secret}  containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: Always\n")
    };
    let (ok, _, err) = d.kubectl(&["apply", "-f", "-"], Some(&pod("pulled", &image, "")));
    assert!(ok, "{err}");
    let done = |p: &str| {
        eventually(60, &format!("{p} to finish"), || {
            let v = d.json(&["get", "pod", p]);
            matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(v)
        })
    };
    let v = done("pulled");
    assert_eq!(v["status"]["phase"], "Succeeded", "{v}");
    assert!(v["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap()
        .contains("@sha256:"));
    assert!(d
        .ok(&["logs", "pulled"])
        .starts_with("Hello from a Wasm pod on Skiff!"));
    let describe = d.ok(&["describe", "pod", "pulled"]);
    assert!(
        describe.contains("Pulling") && describe.contains("Successfully pulled image"),
        "{describe}"
    );

    step("a private registry needs the pod's imagePullSecrets");
    let (ok, _, err) = d.kubectl(&["apply", "-f", "-"], Some(&pod("denied", &private, "")));
    assert!(ok, "{err}");
    eventually(30, "denied to fail pulling", || {
        let s = d.json(&["get", "pod", "denied"])["status"]["containerStatuses"][0]["state"]
            ["waiting"]["reason"]
            .clone();
        matches!(s.as_str(), Some("ErrImagePull" | "ImagePullBackOff")).then_some(())
    });
    d.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server=127.0.0.1:{}", secured.port),
        "--docker-username=skiff",
        "--docker-password=s3cret",
    ]);
    let (ok, _, err) = d.kubectl(
        &["apply", "-f", "-"],
        Some(&pod(
            "allowed",
            &private,
            "  imagePullSecrets:\n  - name: regcred\n",
        )),
    );
    assert!(ok, "{err}");
    assert_eq!(done("allowed")["status"]["phase"], "Succeeded");
}

#[test]
fn oci_images_with_a_wasm_entrypoint_run() {
    let reg = common::oci::Registry::start(None);
    let hello = common::root().join("wasm-examples/out/hello.wasm");
    let image = format!("127.0.0.1:{}/examples/hello-oci:1", reg.port);
    common::oci::push_app_image(&hello, &image);
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "#!/bin/sh\necho native\n").unwrap();
    let native = format!("127.0.0.1:{}/examples/native:1", reg.port);
    common::oci::push_app_image(script.path(), &native);

    let d = &*dev();
    let d = d.namespace("oci-entrypoint");
    let pod = |name: &str, image: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: wasmtime\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {image}\n")
    };

    step("the image's Entrypoint (a link to a Wasm file, relative to WorkingDir) and Cmd run");
    let (ok, _, err) = d.kubectl(&["apply", "-f", "-"], Some(&pod("from-oci", &image)));
    assert!(ok, "{err}");
    let v = eventually(60, "from-oci to finish", || {
        let v = d.json(&["get", "pod", "from-oci"]);
        matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(v)
    });
    assert_eq!(v["status"]["phase"], "Succeeded", "{v}");
    assert_eq!(
        d.ok(&["logs", "from-oci"]),
        "Hello from a Wasm pod on Skiff!\narg 1: from\narg 2: an-oci-image\n"
    );
    let manifest = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    let digest = String::from_utf8_lossy(&manifest.stdout).trim().to_string();
    assert_eq!(
        v["status"]["containerStatuses"][0]["imageID"],
        format!("{image}@{digest}"),
        "a regular image is known by its manifest digest"
    );

    step("an image whose entrypoint is not Wasm is refused to a Wasm-only pod, with the reason");
    let (ok, _, err) = d.kubectl(&["apply", "-f", "-"], Some(&pod("native", &native)));
    assert!(ok, "{err}");
    let msg = eventually(30, "native to fail", || {
        let w = d.json(&["get", "pod", "native"])["status"]["containerStatuses"][0]["state"]
            ["waiting"]
            .clone();
        (w["reason"] == "CreateContainerError")
            .then(|| w["message"].as_str().unwrap_or_default().to_string())
    });
    assert!(
        msg.contains("pods of RuntimeClass wasmtime run Wasm only"),
        "{msg}"
    );
    let events = d.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=native",
    ]);
    assert!(
        events.contains("is not a Wasm image (its entrypoint is not a Wasm module)"),
        "{msg}\n{events}"
    );
}

/// A pod on the node's network that did not ask for it (`hostNetwork`) reaches nothing of
/// the node's own: not its loopback, where the API server listens.
/// `curl <INTERNAL-IP>:<nodePort>` answers: the dev node reports the host's address (the
/// default route's), not loopback, where node ports do not answer.
#[test]
fn a_node_port_answers_at_the_nodes_internal_ip() {
    let d = &*dev();
    let n = d.namespace("ex-nodeport");
    apply_example(&n, "http-hello");
    n.ok(&[
        "expose",
        "pod",
        "http-hello",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ]);
    let svc = n.json(&["get", "service", "http-hello"]);
    let port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    let wide = n.ok(&["get", "node", "edge-1", "-o", "wide"]);
    let ip = n.ok(&[
        "get",
        "node",
        "edge-1",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    let parsed: std::net::IpAddr = ip.parse().expect("an InternalIP");
    assert!(!parsed.is_loopback(), "{wide}");
    assert!(wide.contains(&ip), "{wide}");
    let body = eventually(30, "an answer at the node port", || {
        curl(&format!("http://{ip}:{port}/via/node-port"))
    });
    assert_eq!(
        body,
        "Hello from a Wasm HTTP handler on Skiff: GET /via/node-port\n"
    );
}

#[test]
fn a_guest_on_the_nodes_network_cannot_reach_the_nodes_loopback() {
    const NOBODY: u32 = 65534;
    let d = Dev::start_as(Some(NOBODY));
    eventually(30, "node Ready", || {
        d.kubectl(&["get", "node", "edge-1"], None).0.then_some(())
    });
    let probe = d.dir.path().join("net-probe.wasm");
    std::fs::copy(
        common::root().join("wasm-examples/out/net-probe.wasm"),
        &probe,
    )
    .unwrap();
    std::os::unix::fs::chown(&probe, Some(NOBODY), Some(NOBODY)).unwrap();
    d.import_file(&probe, "skiff.local/examples/net-probe:1.0");
    let kubeconfig = std::fs::read_to_string(d.kubeconfig()).unwrap();
    let api = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .unwrap()
        .to_string();
    for (name, host) in [("guarded", false), ("host", true)] {
        let pod = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  hostNetwork: {host}\n  runtimeClassName: wasmtime\n  restartPolicy: Never\n  containers:\n  - name: probe\n    image: skiff.local/examples/net-probe:1.0\n    imagePullPolicy: Never\n    args: [\"refused={api}\"]\n");
        let (ok, _, err) = d.kubectl(&["apply", "-f", "-"], Some(&pod));
        assert!(ok, "{err}");
    }
    let logs = |name: &str| {
        eventually(30, &format!("{name} to finish"), || {
            let p = d.json(&["get", "pod", name]);
            matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                .then(|| d.ok(&["logs", name]))
        })
    };
    assert_eq!(logs("guarded"), "refused: access-denied\n");
    // A hostNetwork pod asked for the node's network, loopback included.
    assert_eq!(logs("host"), "refused: connected\n");
}

#[test]
fn dev_runs_wasm_pods_without_root() {
    const NOBODY: u32 = 65534;
    let d = Dev::start_as(Some(NOBODY));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
    eventually(30, "node Ready", || {
        d.kubectl(&["get", "node", "edge-1"], None).0.then_some(())
    });
    // The image is a copy nobody can read.
    let hello = d.dir.path().join("hello.wasm");
    std::fs::copy(common::root().join("wasm-examples/out/hello.wasm"), &hello).unwrap();
    std::os::unix::fs::chown(&hello, Some(NOBODY), Some(NOBODY)).unwrap();
    d.import_file(&hello, "skiff.local/examples/hello:1.0");
    let manifest = common::root().join("wasm-examples/hello/pod.yaml");
    d.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let phase = eventually(30, "hello-wasm to finish", || {
        let v = d.json(&["get", "pod", "hello-wasm"]);
        let p = v["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        matches!(p.as_str(), "Succeeded" | "Failed").then_some(p)
    });
    assert_eq!(phase, "Succeeded");
    assert_eq!(
        d.ok(&["logs", "hello-wasm"]),
        "Hello from a Wasm pod on Skiff!\narg 1: from\narg 2: kubectl\n"
    );
    // Without root the pod lives on the node's network, and an Event says so.
    let events = d.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=hello-wasm",
    ]);
    assert!(
        events.contains("NodeNetwork")
            && events.contains("the pod's containers use the node's network"),
        "{events}"
    );
    // The node does not offer runc: a pod that may hold OCI containers is kept off it.
    let node = d.json(&["get", "node", "edge-1"]);
    assert_eq!(node["metadata"]["labels"]["runtime.skiff.dev/oci"], "false");
    let (ok, _, err) = d.kubectl(&["run", "oci", "--image=busybox", "--restart=Never"], None);
    assert!(ok, "{err}");
    let msg = eventually(30, "the scheduler's reason", || {
        let p = d.json(&["get", "pod", "oci"]);
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled")?
            .clone();
        (c["reason"] == "Unschedulable").then(|| c["message"].to_string())
    });
    assert!(
        msg.contains("node(s) didn't offer the OCI runtime (runc)"),
        "{msg}"
    );
}
