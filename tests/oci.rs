//! OCI containers end to end: a real registry holding a busybox image the tests build
//! (umoci + busybox-static, pushed with skopeo), a server and an agent running it through
//! runc in pods with their own network namespaces, driven with the real kubectl. One
//! cluster for the file (each scenario in its own namespace); the agent-restart scenario
//! has its own.

mod common;

use std::time::Duration;

use common::oci::Registry;
use common::{eventually, Agent, Server, Shared, SharedGuard};
use serde_json::Value;

struct Cluster {
    agent: Agent,
    server: Server,
    registry: Registry,
    secured: Registry,
}

impl Cluster {
    fn busybox(&self) -> String {
        format!("127.0.0.1:{}/test/busybox:1", self.registry.port)
    }

    fn wasm(&self) -> String {
        format!("127.0.0.1:{}/test/shared-volume:1", self.registry.port)
    }

    fn http_hello(&self) -> String {
        format!("127.0.0.1:{}/test/http-hello:1", self.registry.port)
    }

    fn net_probe(&self) -> String {
        format!("127.0.0.1:{}/test/net-probe:1", self.registry.port)
    }
}

fn cluster() -> SharedGuard<Cluster> {
    static CLUSTER: Shared<Cluster> = Shared::new();
    CLUSTER.get(|| {
        let registry = Registry::start(None);
        let secured = Registry::start(Some(("skiff", "s3cret")));
        common::oci::push_busybox(
            &format!("127.0.0.1:{}/test/busybox:1", registry.port),
            "gzip",
            None,
        );
        common::oci::push_busybox(
            &format!("127.0.0.1:{}/private/busybox:zstd", secured.port),
            "zstd",
            Some(("skiff", "s3cret")),
        );
        let wasm = common::root().join("wasm-examples/out/shared-volume.wasm");
        common::oci::push_wasm(
            &wasm,
            &format!("127.0.0.1:{}/test/shared-volume:1", registry.port),
        );
        common::oci::push_wasm(
            &common::root().join("wasm-examples/out/http-hello.wasm"),
            &format!("127.0.0.1:{}/test/http-hello:1", registry.port),
        );
        common::oci::push_wasm(
            &common::root().join("wasm-examples/out/net-probe.wasm"),
            &format!("127.0.0.1:{}/test/net-probe:1", registry.port),
        );
        let server = Server::start();
        let agent = Agent::start_in(&server, "oci1", None, &["--seccomp-default"]);
        eventually(60, "a node offering runc with its pod range", || {
            let n = server.try_json(&["get", "node", "oci1"])?;
            (n["metadata"]["labels"]["runtime.skiff.dev/oci"] == "true"
                && n["spec"]["podCIDR"].is_string())
            .then_some(())
        });
        Cluster {
            agent,
            server,
            registry,
            secured,
        }
    })
}

fn namespace(c: &Cluster, ns: &str) {
    c.server.ok(&["create", "namespace", ns]);
}

/// Waits for the pod to end; its status.
fn finished(c: &Cluster, ns: &str, name: &str) -> Value {
    eventually(90, &format!("pod {name} to finish"), || {
        let p = c.server.json(&["get", "pod", name, "-n", ns]);
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            .then(|| p["status"].clone())
    })
}

fn running(c: &Cluster, ns: &str, name: &str) -> Value {
    eventually(90, &format!("pod {name} running"), || {
        let p = c.server.json(&["get", "pod", name, "-n", ns]);
        (p["status"]["phase"] == "Running").then(|| p["status"].clone())
    })
}

fn logs(c: &Cluster, ns: &str, pod: &str, container: &str) -> String {
    c.server.ok(&["logs", pod, "-n", ns, "-c", container])
}

#[test]
fn busybox_runs_in_its_pod_as_its_security_context_and_limits_say() {
    let c = &*cluster();
    namespace(c, "basics");
    let script = "id; hostname; grep ^CapBnd /proc/self/status; \
        cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; \
        cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max 2>/dev/null; \
        cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; \
        ip -4 -o addr show eth0; tail -1 /etc/hosts; \
        touch /rootfs-is-writable 2>/dev/null || echo read-only root; \
        grep '^overlay / ' /proc/mounts; \
        echo to stderr >&2; exit 3";
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bb\n  namespace: basics\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", {script:?}]\n    securityContext:\n      runAsUser: 1000\n      runAsGroup: 2000\n      readOnlyRootFilesystem: true\n      capabilities:\n        drop: [\"ALL\"]\n        add: [\"NET_BIND_SERVICE\"]\n    resources:\n      limits:\n        cpu: 250m\n        memory: 64Mi\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let status = finished(c, "basics", "bb");
    let cs = &status["containerStatuses"][0];
    assert_eq!(cs["state"]["terminated"]["exitCode"], 3, "{status}");
    assert_eq!(cs["state"]["terminated"]["reason"], "Error");
    assert!(cs["containerID"].as_str().unwrap().starts_with("runc://"));
    assert!(cs["imageID"].as_str().unwrap().contains("@sha256:"));
    let out = logs(c, "basics", "bb", "main");
    assert!(out.contains("uid=1000 gid=2000"), "{out}");
    assert!(out.lines().any(|l| l == "bb"), "the pod's host name: {out}");
    // NET_BIND_SERVICE (bit 10) alone is left to gain (a non-root process's effective
    // set is empty after exec, as in Kubernetes).
    assert!(out.contains("CapBnd:\t0000000000000400"), "{out}");
    assert!(
        out.contains(&(64 * 1024 * 1024).to_string()),
        "memory limit: {out}"
    );
    assert!(out.contains("25000"), "cpu quota: {out}");
    assert!(out.contains("4096"), "pids limit: {out}");
    let ip = status["podIP"].as_str().unwrap();
    assert!(out.contains(&format!("inet {ip}/")), "{out}");
    assert!(out.contains(&format!("{ip}\tbb")), "/etc/hosts: {out}");
    assert!(out.contains("read-only root"), "{out}");
    // Read-only, and still nosuid and nodev (runc's own remount would drop them).
    let root = out
        .lines()
        .find(|l| l.starts_with("overlay / "))
        .unwrap_or_default();
    let flags: Vec<&str> = root
        .split(' ')
        .nth(3)
        .unwrap_or_default()
        .split(',')
        .collect();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(
            flags.contains(&flag),
            "{flag} missing from the root mount: {root}"
        );
    }
    assert!(out.contains("to stderr"), "{out}");
}

#[test]
fn an_oom_killed_container_says_so() {
    let c = &*cluster();
    namespace(c, "oom");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hog\n  namespace: oom\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"tail /dev/zero\"]\n    resources:\n      limits:\n        memory: 16Mi\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let status = finished(c, "oom", "hog");
    let t = &status["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{status}");
    assert_eq!(t["exitCode"], 137);
    let table = c.server.ok(&["get", "pod", "hog", "-n", "oom"]);
    assert!(table.contains("OOMKilled"), "{table}");
}

#[test]
fn a_wasm_init_container_leaves_a_file_that_busybox_reads() {
    let c = &*cluster();
    namespace(c, "mixed");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mixed\n  namespace: mixed\nspec:\n  restartPolicy: Never\n  volumes:\n  - name: shared\n    emptyDir: {{}}\n  initContainers:\n  - name: writer\n    image: {}\n    args: [\"write\"]\n    volumeMounts:\n    - name: shared\n      mountPath: /shared\n  containers:\n  - name: reader\n    image: {}\n    command: [\"cat\", \"/shared/note.txt\"]\n    volumeMounts:\n    - name: shared\n      mountPath: /shared\n      readOnly: true\n",
        c.wasm(),
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let status = finished(c, "mixed", "mixed");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let init = &status["initContainerStatuses"][0];
    assert!(init["containerID"].as_str().unwrap().starts_with("wasm://"));
    assert_eq!(logs(c, "mixed", "mixed", "writer"), "note written\n");
    assert_eq!(
        logs(c, "mixed", "mixed", "reader"),
        "written by the writer container\n"
    );
}

/// The issue's headline: a pod whose containers are a Wasm HTTP component and busybox;
/// busybox reaches the component over localhost, the node at the pod's IP.
#[test]
fn busybox_reaches_a_wasm_http_component_of_its_pod_over_localhost() {
    let c = &*cluster();
    namespace(c, "sidecar");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: sidecar\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: hello\n    image: {}\n    ports:\n    - containerPort: 8080\n  - name: client\n    image: {}\n    command: [\"sh\", \"-c\", \"until wget -qO- http://localhost:8080/from/busybox 2>/dev/null; do sleep 0.2; done; exec sleep 3600\"]\n",
        c.http_hello(),
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let status = eventually(90, "both containers running", || {
        let p = c.server.json(&["get", "pod", "web", "-n", "sidecar"]);
        let all = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .all(|s| s["ready"] == true);
        all.then(|| p["status"].clone())
    });
    let ids: Vec<&str> = status["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["containerID"].as_str().unwrap_or_default())
        .collect();
    assert!(
        ids.iter().any(|i| i.starts_with("wasm://"))
            && ids.iter().any(|i| i.starts_with("runc://")),
        "{ids:?}"
    );
    let got = eventually(30, "busybox's answer", || {
        let l = logs(c, "sidecar", "web", "client");
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(
        got,
        "Hello from a Wasm HTTP handler on Skiff: GET /from/busybox\n"
    );
    let ip = status["podIP"].as_str().unwrap();
    let body = eventually(30, "the node's answer", || {
        http_get(&format!("{ip}:8080"), "/from/the/node")
    });
    assert_eq!(
        body,
        "Hello from a Wasm HTTP handler on Skiff: GET /from/the/node\n"
    );
    // Each request had an instance of its own: the component logged both.
    let served = logs(c, "sidecar", "web", "hello");
    assert!(
        served.contains("GET /from/busybox") && served.contains("GET /from/the/node"),
        "{served}"
    );
    c.server.ok(&[
        "delete",
        "pod",
        "web",
        "-n",
        "sidecar",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(
        http_get(&format!("{ip}:8080"), "/").is_none(),
        "still served after deletion"
    );
}

/// A native sidecar (an init container with `restartPolicy: Always`): a Wasm HTTP
/// component started before the main busybox container, which reaches it over localhost;
/// when the main container is done, the sidecar is stopped and the pod Succeeded.
#[test]
fn a_native_wasm_sidecar_serves_the_main_container_and_stops_after_it() {
    let c = &*cluster();
    namespace(c, "native");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: job\n  namespace: native\nspec:\n  restartPolicy: Never\n  initContainers:\n  - name: server\n    image: {}\n    restartPolicy: Always\n    ports:\n    - containerPort: 8080\n  containers:\n  - name: main\n    image: {}\n    command: [\"wget\", \"-qO-\", \"http://localhost:8080/from/main\"]\n",
        c.http_hello(),
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let status = finished(c, "native", "job");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    // The sidecar was up before the main container ran (its first try got the answer).
    assert_eq!(
        logs(c, "native", "job", "main"),
        "Hello from a Wasm HTTP handler on Skiff: GET /from/main\n"
    );
    let sidecar = &status["initContainerStatuses"][0];
    assert!(sidecar["state"]["terminated"].is_object(), "{status}");
    let started = sidecar["state"]["terminated"]["startedAt"]
        .as_str()
        .unwrap();
    let main_started = status["containerStatuses"][0]["state"]["terminated"]["startedAt"]
        .as_str()
        .unwrap();
    assert!(started <= main_started, "{status}");
}

/// Deleting a pod sends its runc containers SIGTERM and gives them the grace period: a
/// container that handles it ends cleanly (and the deletion does not wait the whole
/// period); one that ignores it is killed when the period is over.
#[test]
fn deletion_terminates_runc_containers_gracefully() {
    let c = &*cluster();
    namespace(c, "graceful");
    let out = tempfile::tempdir().unwrap();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: polite\n  namespace: graceful\nspec:\n  terminationGracePeriodSeconds: 20\n  volumes:\n  - name: out\n    hostPath:\n      path: {}\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'echo terminated > /out/signal; exit 0' TERM; echo up > /out/signal; while true; do sleep 0.1; done\"]\n    volumeMounts:\n    - name: out\n      mountPath: /out\n",
        out.path().display(),
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    running(c, "graceful", "polite");
    let signal = out.path().join("signal");
    eventually(30, "the container to be up", || {
        (std::fs::read_to_string(&signal).ok()? == "up\n").then_some(())
    });
    let t = std::time::Instant::now();
    c.server.ok(&[
        "delete",
        "pod",
        "polite",
        "-n",
        "graceful",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert_eq!(std::fs::read_to_string(&signal).unwrap(), "terminated\n");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // A container that ignores SIGTERM (a shell as PID 1 without a trap) is killed after
    // the grace period.
    let stubborn = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stubborn\n  namespace: graceful\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"while true; do sleep 0.1; done\"]\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &stubborn);
    running(c, "graceful", "stubborn");
    let t = std::time::Instant::now();
    c.server.ok(&[
        "delete",
        "pod",
        "stubborn",
        "-n",
        "graceful",
        "--wait=true",
        "--timeout=60s",
    ]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

/// `kubectl exec` (websocket v5 through the API server to the agent, `runc exec` there):
/// output streams apart, stdin and its end, exit codes; `kubectl cp` both ways; a Wasm
/// container refuses with the reason.
#[test]
fn kubectl_exec_and_cp_reach_a_runc_container() {
    let c = &*cluster();
    namespace(c, "exec");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\n  namespace: exec\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: bb\n    image: {}\n    command: [\"sleep\", \"3600\"]\n  - name: wasm\n    image: {}\n",
        c.busybox(),
        c.http_hello()
    );
    c.server.apply_stdin(&[], &pod);
    eventually(90, "both containers running", || {
        let p = c.server.json(&["get", "pod", "box", "-n", "exec"]);
        let all = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .all(|s| s["ready"] == true);
        all.then_some(())
    });
    let o = c.server.kubectl(&[
        "exec",
        "box",
        "-n",
        "exec",
        "-c",
        "bb",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; hostname; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\nbox\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("err\n") && err.contains("command terminated with exit code 3"),
        "{err}"
    );
    // Input, to its end (cat ends when stdin closes).
    let o = c.server.kubectl_stdin(
        &[
            "exec",
            "-i",
            "box",
            "-n",
            "exec",
            "-c",
            "bb",
            "--",
            "sh",
            "-c",
            "cat; echo done",
        ],
        "line one\nline two\n",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "line one\nline two\ndone\n"
    );
    // kubectl cp is exec with tar, both ways.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("note.txt");
    std::fs::write(&local, "copied in\n").unwrap();
    c.server.ok(&[
        "cp",
        local.to_str().unwrap(),
        "exec/box:/etc/note.txt",
        "-c",
        "bb",
    ]);
    assert_eq!(
        c.server.ok(&[
            "exec",
            "box",
            "-n",
            "exec",
            "-c",
            "bb",
            "--",
            "cat",
            "/etc/note.txt"
        ]),
        "copied in\n"
    );
    let back = dir.path().join("back.txt");
    c.server.ok(&[
        "cp",
        "exec/box:/etc/note.txt",
        back.to_str().unwrap(),
        "-c",
        "bb",
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");
    // The same over SPDY (kubectl's fallback, and older clients' way).
    let o = c
        .server
        .kubectl_cmd(&[
            "exec",
            "-i",
            "box",
            "-n",
            "exec",
            "-c",
            "bb",
            "--",
            "sh",
            "-c",
            "cat; echo spdy >&2; exit 6",
        ])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"over spdy\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "over spdy\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("spdy\n"),
        "{o:?}"
    );
    // A Wasm container has nothing to run commands with: a clear error.
    let o = c
        .server
        .kubectl(&["exec", "box", "-n", "exec", "-c", "wasm", "--", "ls"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot exec in a Wasm container"), "{err}");
}

/// A node takes no more pods than its range can address: a /24 gives 253 (not the
/// 1,000 of --max-pods), so a burst never leaves pods waiting for an address forever.
#[test]
fn a_nodes_pod_capacity_is_what_its_range_can_address() {
    let c = &*cluster();
    let n = eventually(30, "the node's pod capacity", || {
        let n = c.server.json(&["get", "node", "oci1"]);
        (n["status"]["allocatable"]["pods"] == "253").then_some(n)
    });
    assert_eq!(n["status"]["capacity"]["pods"], "253", "{n}");
    assert!(n["spec"]["podCIDR"].as_str().unwrap().ends_with("/24"));
}

/// A status is what its writers say, not what runs: `kubectl exec` into a pod whose
/// status (written through `pods/status`) names another pod's container, or runc flags,
/// still runs in the pod's own container.
#[test]
fn exec_runs_in_the_agents_container_whatever_the_status_says() {
    let c = &*cluster();
    namespace(c, "forged");
    for name in ["victim", "intruder"] {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: forged\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: bb\n    image: {}\n    command: [\"sleep\", \"3600\"]\n",
            c.busybox()
        );
        c.server.apply_stdin(&[], &pod);
    }
    let victim = running(c, "forged", "victim");
    running(c, "forged", "intruder");
    let victims = victim["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap();
    for forged in [victims, "runc://--help"] {
        let patch = format!(
            "[{{\"op\":\"replace\",\"path\":\"/status/containerStatuses/0/containerID\",\"value\":\"{forged}\"}}]"
        );
        c.server.ok(&[
            "patch",
            "pod",
            "intruder",
            "-n",
            "forged",
            "--subresource=status",
            "--type=json",
            "-p",
            &patch,
        ]);
        let p = c.server.json(&["get", "pod", "intruder", "-n", "forged"]);
        assert_eq!(p["status"]["containerStatuses"][0]["containerID"], forged);
        let o = c
            .server
            .kubectl(&["exec", "intruder", "-n", "forged", "--", "hostname"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout), "intruder\n", "{o:?}");
    }
    c.server
        .ok(&["delete", "namespace", "forged", "--wait=false"]);
}

/// `kubectl exec -it` on a terminal (util-linux `script` gives kubectl one): the process
/// has a terminal of its own in the container, reads what is typed and its exit code
/// comes back.
#[test]
fn kubectl_exec_with_a_terminal() {
    let c = &*cluster();
    namespace(c, "tty");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\n  namespace: tty\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: bb\n    image: {}\n    command: [\"sleep\", \"3600\"]\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    running(c, "tty", "box");
    let out = common::kubectl_on_a_terminal(
        &c.server,
        "exec -it box -n tty -- sh -c 'tty; read line; echo got-$line; exit 4'",
        b"typed\n",
    );
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("got-typed"), "{out}");
    assert!(out.contains("command terminated with exit code 4"), "{out}");
}

/// `kubectl run -i --rm` attaches to the new container: what is piped in reaches its stdin
/// (closed at the end: stdinOnce), its output comes back, and the pod goes afterwards.
#[test]
fn kubectl_run_attaches_to_a_runc_container() {
    let c = &*cluster();
    namespace(c, "attach");
    let image = c.busybox();
    let o = c.server.kubectl_stdin(
        &[
            "run",
            "att",
            "-n",
            "attach",
            "-i",
            "--rm",
            "--restart=Never",
            "--image",
            &image,
            "--command",
            "--",
            "sh",
            "-c",
            "read line; echo got-$line; cat; echo eof",
        ],
        "hello\nworld\n",
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(out.contains("got-hello\nworld\neof\n"), "{out}");
    assert!(out.contains("pod \"att\" deleted"), "{out}");
}

/// `kubectl attach -it` to a container on a terminal: the shell's terminal is the
/// session's, what is typed reaches it, and the session ends when it exits.
#[test]
fn kubectl_attach_with_a_terminal() {
    let c = &*cluster();
    namespace(c, "attach-tty");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sh\n  namespace: attach-tty\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: sh\n    image: {}\n    command: [\"sh\"]\n    stdin: true\n    tty: true\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    running(c, "attach-tty", "sh");
    let out = common::kubectl_on_a_terminal(
        &c.server,
        "attach -it sh -n attach-tty",
        b"tty; echo got-$((6*7)); exit 3\n",
    );
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("got-42"), "{out}");
    let status = finished(c, "attach-tty", "sh");
    assert_eq!(
        status["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3,
        "{status}"
    );
    // What the terminal showed is the container's log too.
    assert!(logs(c, "attach-tty", "sh", "sh").contains("got-42"));
}

/// `shareProcessNamespace`: a pod's containers see each other's processes (PID 1 is the
/// pod's, not theirs) and can signal them.
#[test]
fn containers_of_a_pod_sharing_its_process_namespace_see_each_other() {
    let c = &*cluster();
    namespace(c, "sharepid");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shared\n  namespace: sharepid\nspec:\n  shareProcessNamespace: true\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: a\n    image: {image}\n    command: [\"sleep\", \"3601\"]\n  - name: b\n    image: {image}\n    command: [\"sleep\", \"3602\"]\n",
        image = c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    running(c, "sharepid", "shared");
    let ps = c.server.ok(&[
        "exec", "shared", "-n", "sharepid", "-c", "b", "--", "ps", "-o", "pid,args",
    ]);
    assert!(
        ps.contains("sleep 3601") && ps.contains("sleep 3602"),
        "{ps}"
    );
    let first = ps.lines().nth(1).unwrap_or_default();
    assert!(
        first.trim().starts_with("1 ") && !first.contains("sleep"),
        "{ps}"
    );
    // b ends a's process: a restarts.
    let pid = ps
        .lines()
        .find(|l| l.contains("sleep 3601"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    c.server.ok(&[
        "exec", "shared", "-n", "sharepid", "-c", "b", "--", "kill", &pid,
    ]);
    eventually(60, "a restarted", || {
        let p = c.server.json(&["get", "pod", "shared", "-n", "sharepid"]);
        let a = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "a")?
            .clone();
        (a["restartCount"] == 1 && a["state"]["running"].is_object()).then_some(())
    });
    // The namespace's holder goes with the pod.
    let uid = c.server.json(&["get", "pod", "shared", "-n", "sharepid"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let trace = c.agent.trace(&uid);
    c.server
        .ok(&["delete", "pod", "shared", "-n", "sharepid", "--wait=true"]);
    let left = c.agent.leftovers(&[trace]);
    assert!(left.is_empty(), "{left:?}");
}

/// A grpc readiness probe against gRPC's own health server (grpcio, on the node: the pod
/// uses the node's network): Ready follows SERVING and NOT_SERVING.
#[test]
fn a_grpc_readiness_probe_follows_the_health_service() {
    let c = &*cluster();
    namespace(c, "grpc");
    let script = r#"
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
h = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(h, server)
port = server.add_insecure_port("0.0.0.0:0")
server.start()
h.set("", health_pb2.HealthCheckResponse.SERVING)
print(port, flush=True)
for line in sys.stdin:
    serving = line.strip() == "serving"
    h.set("", health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING)
"#;
    let mut server = common::die_with_parent(&mut std::process::Command::new(common::python_bin()))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    {
        use std::io::BufRead;
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
    }
    let port = port.trim().to_string();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: g\n  namespace: grpc\nspec:\n  hostNetwork: true\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [\"sleep\", \"3600\"]\n    readinessProbe:\n      grpc:\n        port: {port}\n      periodSeconds: 1\n      failureThreshold: 1\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let ready = |want: &'static str| {
        eventually(60, &format!("Ready {want}"), || {
            let p = c.server.json(&["get", "pod", "g", "-n", "grpc"]);
            let cond = p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            (cond["status"] == want).then_some(())
        })
    };
    ready("True");
    let mut tell = server.stdin.take().unwrap();
    use std::io::Write;
    writeln!(tell, "not").unwrap();
    ready("False");
    let events = c.server.ok(&["get", "events", "-n", "grpc"]);
    assert!(events.contains("NOT_SERVING"), "{events}");
    writeln!(tell, "serving").unwrap();
    ready("True");
    let _ = server.kill();
    let _ = server.wait();
}

/// A startup probe holds liveness back until it passes (a slow starter is not restarted),
/// and a container whose startup probe never passes is restarted.
#[test]
fn startup_probes_hold_liveness_back_and_restart_what_never_starts() {
    let c = &*cluster();
    namespace(c, "startup");
    let pod = |name: &str, start: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: startup\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"{start}; exec sleep 3600\"]\n    startupProbe:\n      exec:\n        command: [\"test\", \"-f\", \"/etc/started\"]\n      periodSeconds: 1\n      failureThreshold: 6\n    livenessProbe:\n      exec:\n        command: [\"test\", \"-f\", \"/etc/started\"]\n      periodSeconds: 1\n      failureThreshold: 1\n",
            c.busybox()
        )
    };
    c.server
        .apply_stdin(&[], &pod("slow", "sleep 3; touch /etc/started"));
    c.server.apply_stdin(&[], &pod("never", "true"));
    let main = |name: &str| {
        c.server.json(&["get", "pod", name, "-n", "startup"])["status"]["containerStatuses"][0]
            .clone()
    };
    eventually(60, "the slow starter started", || {
        (main("slow")["started"] == true && main("slow")["ready"] == true).then_some(())
    });
    eventually(60, "the never-starter restarted", || {
        (main("never")["restartCount"].as_i64() >= Some(1)).then_some(())
    });
    assert_eq!(main("slow")["restartCount"], 0, "{}", main("slow"));
    let events = c.server.ok(&["get", "events", "-n", "startup"]);
    assert!(events.contains("Startup probe failed"), "{events}");
}

/// Containers get the Services of their namespace as environment variables (the
/// kubelet's and Docker links'), unless the pod turns service links off; the container's
/// own `env` wins.
#[test]
fn services_of_the_namespace_are_in_the_environment() {
    let c = &*cluster();
    namespace(c, "svcenv");
    c.server.ok(&[
        "create",
        "service",
        "clusterip",
        "web-api",
        "-n",
        "svcenv",
        "--tcp=80:8080",
    ]);
    let ip = c
        .server
        .json(&["get", "service", "web-api", "-n", "svcenv"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let pod = |name: &str, links: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: svcenv\nspec:\n  restartPolicy: Never\n{links}  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"env | grep ^WEB_API | sort\"]\n    env:\n    - name: WEB_API_SERVICE_PORT_80_8080\n      value: mine\n",
            c.busybox()
        )
    };
    c.server.apply_stdin(&[], &pod("linked", ""));
    c.server
        .apply_stdin(&[], &pod("unlinked", "  enableServiceLinks: false\n"));
    for name in ["linked", "unlinked"] {
        finished(c, "svcenv", name);
    }
    let linked = logs(c, "svcenv", "linked", "main");
    for want in [
        format!("WEB_API_SERVICE_HOST={ip}"),
        "WEB_API_SERVICE_PORT=80".to_string(),
        "WEB_API_SERVICE_PORT_80_8080=mine".to_string(),
        format!("WEB_API_PORT=tcp://{ip}:80"),
        format!("WEB_API_PORT_80_TCP_ADDR={ip}"),
    ] {
        assert!(linked.lines().any(|l| l == want), "{want} not in {linked}");
    }
    assert_eq!(
        logs(c, "svcenv", "unlinked", "main"),
        "WEB_API_SERVICE_PORT_80_8080=mine\n"
    );
}

/// A failing liveness probe (exec, in a runc container) restarts the container, with the
/// kubelet's events; the restarted container gets a fresh root file system.
#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    let c = &*cluster();
    namespace(c, "liveness");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: live\n  namespace: liveness\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: bb\n    image: {}\n    command: [\"sh\", \"-c\", \"touch /etc/healthy; exec sleep 3600\"]\n    livenessProbe:\n      exec:\n        command: [\"test\", \"-f\", \"/etc/healthy\"]\n      periodSeconds: 1\n      failureThreshold: 2\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    running(c, "liveness", "live");
    std::thread::sleep(Duration::from_secs(3));
    let p = c.server.json(&["get", "pod", "live", "-n", "liveness"]);
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "a passing probe restarts nothing"
    );
    c.server
        .ok(&["exec", "live", "-n", "liveness", "--", "rm", "/etc/healthy"]);
    let p = eventually(60, "the restart", || {
        let p = c.server.json(&["get", "pod", "live", "-n", "liveness"]);
        let cs = &p["status"]["containerStatuses"][0];
        (cs["restartCount"] == 1 && cs["state"]["running"].is_object()).then(|| p.clone())
    });
    assert_eq!(p["status"]["phase"], "Running");
    let events = c.server.ok(&[
        "get",
        "events",
        "-n",
        "liveness",
        "--field-selector",
        "involvedObject.name=live",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
}

/// Readiness probes (httpGet against a Wasm component, exec in busybox) drive the
/// containers' `ready` and the pod's Ready condition.
#[test]
fn readiness_probes_drive_the_pods_ready_condition() {
    let c = &*cluster();
    namespace(c, "readiness");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ready\n  namespace: readiness\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {}\n    ports:\n    - name: http\n      containerPort: 8080\n    readinessProbe:\n      httpGet:\n        path: /healthz\n        port: http\n      periodSeconds: 1\n  - name: bb\n    image: {}\n    command: [\"sleep\", \"3600\"]\n    readinessProbe:\n      exec:\n        command: [\"test\", \"-f\", \"/etc/ready\"]\n      periodSeconds: 1\n",
        c.http_hello(),
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let ready_of = |p: &Value, name: &str| {
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .map(|s| s["ready"].clone())
    };
    let condition = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"].clone())
    };
    // The component answers its probe; busybox is not ready yet, so neither is the pod.
    let p = eventually(60, "web ready", || {
        let p = c.server.json(&["get", "pod", "ready", "-n", "readiness"]);
        (ready_of(&p, "web") == Some(Value::Bool(true))).then_some(p)
    });
    assert_eq!(ready_of(&p, "bb"), Some(Value::Bool(false)), "{p}");
    assert_eq!(condition(&p), Some(Value::from("False")), "{p}");
    eventually(60, "bb running", || {
        let p = c.server.json(&["get", "pod", "ready", "-n", "readiness"]);
        let bb = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "bb")?
            .clone();
        bb["state"]["running"].is_object().then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let p = c.server.json(&["get", "pod", "ready", "-n", "readiness"]);
    assert_eq!(
        ready_of(&p, "bb"),
        Some(Value::Bool(false)),
        "running but not ready: {p}"
    );
    assert_eq!(condition(&p), Some(Value::from("False")), "{p}");
    c.server.ok(&[
        "exec",
        "ready",
        "-n",
        "readiness",
        "-c",
        "bb",
        "--",
        "touch",
        "/etc/ready",
    ]);
    eventually(30, "the pod Ready", || {
        let p = c.server.json(&["get", "pod", "ready", "-n", "readiness"]);
        (condition(&p) == Some(Value::from("True"))).then_some(())
    });
    let served = logs(c, "readiness", "ready", "web");
    assert!(
        served.contains("GET /healthz"),
        "the probe reached the component: {served}"
    );
    assert!(c
        .server
        .ok(&["get", "pod", "ready", "-n", "readiness"])
        .contains("2/2"));
}

/// `kubectl port-forward` to a Wasm component and to busybox's httpd bound to the pod's
/// own localhost only, over the websocket tunnel kubectl 1.33 speaks first and over SPDY
/// (its fallback); a port nothing listens on is reported.
#[test]
fn kubectl_port_forward_reaches_both_runtimes() {
    let c = &*cluster();
    namespace(c, "forward");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: both\n  namespace: forward\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: hello\n    image: {}\n    ports:\n    - containerPort: 8080\n  - name: httpd\n    image: {}\n    command: [\"sh\", \"-c\", \"mkdir -p /www && echo local only > /www/index.html && exec httpd -f -p 127.0.0.1:9090 -h /www\"]\n",
        c.http_hello(),
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    eventually(90, "both containers running", || {
        let p = c.server.json(&["get", "pod", "both", "-n", "forward"]);
        let all = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .all(|s| s["ready"] == true);
        all.then_some(())
    });
    for (websockets, local) in [
        ("true", common::free_port()),
        ("false", common::free_port()),
    ] {
        let other = common::free_port();
        let mut pf = c
            .server
            .kubectl_cmd(&[
                "port-forward",
                "pod/both",
                "-n",
                "forward",
                &format!("{local}:8080"),
                &format!("{other}:9090"),
            ])
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let body = eventually(30, "the component through port-forward", || {
            http_get(&format!("127.0.0.1:{local}"), "/forwarded")
        });
        assert_eq!(
            body, "Hello from a Wasm HTTP handler on Skiff: GET /forwarded\n",
            "websockets={websockets}"
        );
        let body = eventually(30, "httpd through port-forward", || {
            http_get(&format!("127.0.0.1:{other}"), "/index.html")
        });
        assert_eq!(body, "local only\n", "websockets={websockets}");
        let _ = pf.kill();
        let _ = pf.wait();
    }
    // Nothing listens on 7777: kubectl says why.
    let local = common::free_port();
    let mut pf = c
        .server
        .kubectl_cmd(&[
            "port-forward",
            "pod/both",
            "-n",
            "forward",
            &format!("{local}:7777"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(30, "the forward to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", local))
            .ok()
            .map(|_| ())
    });
    let _ = http_get(&format!("127.0.0.1:{local}"), "/");
    std::thread::sleep(Duration::from_secs(1));
    let _ = pf.kill();
    let o = pf.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error forwarding port 7777"), "{err}");
}

/// A `hostPort` forwards the node's port to the pod (the portmap plugin), and goes with
/// the pod.
#[test]
fn a_host_port_reaches_the_pod_and_goes_with_it() {
    let c = &*cluster();
    namespace(c, "hostport");
    let port = common::free_port();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hp\n  namespace: hostport\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: hello\n    image: {}\n    ports:\n    - containerPort: 8080\n      hostPort: {port}\n",
        c.http_hello()
    );
    c.server.apply_stdin(&[], &pod);
    running(c, "hostport", "hp");
    let body = eventually(30, "the pod through its host port", || {
        http_get(&format!("127.0.0.1:{port}"), "/via/host/port")
    });
    assert_eq!(
        body,
        "Hello from a Wasm HTTP handler on Skiff: GET /via/host/port\n"
    );
    c.server.ok(&[
        "delete",
        "pod",
        "hp",
        "-n",
        "hostport",
        "--wait=true",
        "--timeout=60s",
    ]);
    let nat = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains(&format!("--dport {port}")),
        "the forwarding rule outlived the pod"
    );
}

#[test]
fn pods_reach_each_other_and_the_node_reaches_them() {
    let c = &*cluster();
    namespace(c, "traffic");
    let server = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: traffic\nspec:\n  containers:\n  - name: httpd\n    image: {}\n    command: [\"sh\", \"-c\", \"mkdir -p /www && echo served by $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &server);
    let ip = running(c, "traffic", "web")["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    // From the node.
    let body = eventually(30, "the node to reach the pod", || {
        http_get(&format!("{ip}:8080"), "/index.html")
    });
    assert!(body.contains("served by web"), "{body}");
    // From another pod.
    let client = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: traffic\nspec:\n  restartPolicy: Never\n  containers:\n  - name: wget\n    image: {}\n    command: [\"wget\", \"-qO-\", \"http://{ip}:8080/index.html\"]\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &client);
    let status = finished(c, "traffic", "client");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(logs(c, "traffic", "client", "wget"), "served by web\n");
}

/// A plain HTTP/1.0 GET; the body, if the server answered.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[test]
fn a_private_zstd_image_needs_the_pods_pull_secret() {
    let c = &*cluster();
    namespace(c, "private");
    let image = format!("127.0.0.1:{}/private/busybox:zstd", c.secured.port);
    let pod = |name: &str, secret: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: private\nspec:\n  restartPolicy: Never\n{secret}  containers:\n  - name: main\n    image: {image}\n    command: [\"echo\", \"pulled\"]\n")
    };
    c.server.apply_stdin(&[], &pod("denied", ""));
    eventually(60, "the pull to be refused", || {
        let s = c.server.json(&["get", "pod", "denied", "-n", "private"]);
        let reason = s["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
        matches!(reason.as_str(), Some("ErrImagePull" | "ImagePullBackOff")).then_some(())
    });
    c.server.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "-n",
        "private",
        &format!("--docker-server=127.0.0.1:{}", c.secured.port),
        "--docker-username=skiff",
        "--docker-password=s3cret",
    ]);
    c.server.apply_stdin(
        &[],
        &pod("allowed", "  imagePullSecrets:\n  - name: regcred\n"),
    );
    let status = finished(c, "private", "allowed");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(logs(c, "private", "allowed", "main"), "pulled\n");
}

/// Sizes from a registry are claims: an image whose manifest declares a 1 PiB layer
/// (which once made the agent allocate it, and abort, over and over), or a layer smaller
/// than the registry then sends, is refused with the reason, and the node goes on.
#[test]
fn images_claiming_sizes_they_do_not_have_are_refused_and_the_node_goes_on() {
    let c = &*cluster();
    namespace(c, "claims");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "content\n").unwrap();
    let o = std::process::Command::new("tar")
        .args(["czf", "-", "-C"])
        .arg(dir.path())
        .arg("file")
        .output()
        .unwrap();
    let layer = o.stdout;
    let registry = format!("127.0.0.1:{}", c.registry.port);
    let push = |repo: &str, layer_size: i64, config_size: Option<i64>| {
        common::oci::push_claiming_image(&registry, repo, "1", &[(&layer, layer_size)], config_size)
    };
    push("hostile/huge", 1 << 50, None);
    push("hostile/short", 10, None);
    push("hostile/config", layer.len() as i64, Some(1 << 40));
    push("hostile/shortconfig", layer.len() as i64, Some(10));
    let pod = |name: &str, image: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: claims\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {image}\n    command: [\"echo\", \"ran\"]\n")
    };
    for (name, why) in [
        ("huge", "declares 1125899906842624 bytes, more than this node's limit of 4294967296 (--max-layer-size)"),
        ("short", "the registry sent more than the 10 bytes the manifest declares"),
        ("config", "its config declares 1099511627776 bytes, more than the 4194304"),
        ("shortconfig", "the registry sent more than the 10 bytes the manifest declares for its config"),
    ] {
        c.server.apply_stdin(&[], &pod(name, &format!("{registry}/hostile/{name}:1")));
        let waiting = eventually(60, "the pull to be refused", || {
            let s = c.server.json(&["get", "pod", name, "-n", "claims"]);
            let w = s["status"]["containerStatuses"][0]["state"]["waiting"].clone();
            (w["reason"] == "ErrImagePull").then_some(w)
        });
        let msg = waiting["message"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{waiting}");
    }
    c.server.apply_stdin(&[], &pod("fine", &c.busybox()));
    let status = finished(c, "claims", "fine");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(logs(c, "claims", "fine", "main"), "ran\n");
}

/// A Wasm guest's wasi:sockets and outgoing wasi:http live in its pod's network: over
/// the pod's localhost it reaches busybox's TCP echo and web server and another Wasm
/// container's UDP echo, resolves names, and reaches the node through the pod's gateway;
/// a port open only on the node's own loopback is not its localhost's.
#[test]
fn wasm_guests_use_sockets_and_http_in_their_pods_network() {
    let c = &*cluster();
    namespace(c, "sockets");
    // Open on the node's loopback only: the guest's 127.0.0.1 is the pod's, so refused.
    let node_only = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let node_only = node_only.local_addr().unwrap().port();
    // On every address of the node: reached through the pod's gateway.
    let node = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let node_port = node.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in node.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nnode says hi\n",
            );
        }
    });
    let cidr = c.server.json(&["get", "node", "oci1"])["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_string();
    let net = cidr.split('/').next().unwrap().rsplit_once('.').unwrap().0;
    let gateway = format!("{net}.1");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: net\n  namespace: sockets\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: servers\n    image: {busybox}\n    command: [\"sh\", \"-c\", \"mkdir -p /tmp/www && echo hello-from-busybox > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && exec nc -ll -p 7000 -e cat\"]\n  - name: echo\n    image: {probe}\n    args: [\"udp-echo=7001\"]\n  - name: probe\n    image: {probe}\n    args: [\"tcp=127.0.0.1:7000:ping\", \"udp=127.0.0.1:7001:hey\", \"lookup=localhost\", \"refused=127.0.0.1:{node_only}\", \"http=127.0.0.1:8080/index.html\", \"http={gateway}:{node_port}/\"]\n",
        busybox = c.busybox(),
        probe = c.net_probe(),
    );
    c.server.apply_stdin(&[], &pod);
    let probe = eventually(90, "the probe's end", || {
        let p = c.server.json(&["get", "pod", "net", "-n", "sockets"]);
        let s = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "probe")?
            .clone();
        s["state"]["terminated"].is_object().then_some(s)
    });
    let out = logs(c, "sockets", "net", "probe");
    assert_eq!(
        out,
        format!(
            "tcp: ping\nudp: hey\nlookup localhost: 127.0.0.1\nlookup localhost: 0:0:0:0:0:0:0:1\nrefused: connection-refused\nhttp 200: hello-from-busybox\nhttp 200: node says hi\n"
        ),
        "{probe}"
    );
    assert_eq!(probe["state"]["terminated"]["exitCode"], 0, "{probe}");
    assert_eq!(
        logs(c, "sockets", "net", "echo"),
        "udp-echo: hey answered\n"
    );
    assert!(probe["containerID"]
        .as_str()
        .unwrap()
        .starts_with("wasm://"));
}

/// Docker v2 schema 2 images, OCI image indexes and Docker manifest lists run; an index
/// is resolved to this node's platform (the other platform's image comes first).
#[test]
fn docker_images_and_multi_platform_indexes_resolve_to_this_platform() {
    let c = &*cluster();
    namespace(c, "formats");
    let registry = format!("127.0.0.1:{}", c.registry.port);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    for a in [arch, other] {
        let image = format!("{registry}/test/multi:{a}");
        common::oci::push_busybox_with(&image, "gzip", None, &[("/platform", a)]);
        common::oci::copy_as_docker(&image, &format!("{registry}/test/multi:{a}-docker"));
    }
    let this_docker = format!("{arch}-docker");
    let other_docker = format!("{other}-docker");
    common::oci::push_index(
        &registry,
        "test/multi",
        "oci-index",
        &[(other, other), (arch, arch)],
        false,
    );
    common::oci::push_index(
        &registry,
        "test/multi",
        "docker-list",
        &[(other, &other_docker), (arch, &this_docker)],
        true,
    );
    for (name, tag) in [
        ("docker", this_docker.as_str()),
        ("index", "oci-index"),
        ("list", "docker-list"),
    ] {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: formats\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {registry}/test/multi:{tag}\n    command: [\"cat\", \"/platform\"]\n"
        );
        c.server.apply_stdin(&[], &pod);
        let status = finished(c, "formats", name);
        assert_eq!(status["phase"], "Succeeded", "{name}: {status}");
        // The last line, unterminated, ends as a full log line (as containerd logs it).
        assert_eq!(
            logs(c, "formats", name, "main"),
            format!("{arch}\n"),
            "{name}"
        );
    }
}

/// A container cannot reach the node's files through a volume: a symbolic link another
/// container planted in an emptyDir (`escape -> /`) is refused as a `subPath`
/// (CVE-2017-1002101's shape), while a real directory there mounts.
#[test]
fn a_sub_path_through_a_planted_symlink_is_refused() {
    let c = &*cluster();
    namespace(c, "subpath");
    let pod = |name: &str, sub: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: subpath\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  initContainers:\n  - name: plant\n    image: {image}\n    command: [\"sh\", \"-c\", \"ln -s / /data/escape && ln -s ../.. /data/up && mkdir /data/ok && echo inside > /data/ok/f\"]\n    volumeMounts:\n    - name: data\n      mountPath: /data\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"ls /mnt; cat /mnt/f\"]\n    volumeMounts:\n    - name: data\n      mountPath: /mnt\n      subPath: {sub}\n  volumes:\n  - name: data\n    emptyDir: {{}}\n",
            image = c.busybox()
        )
    };
    for (name, sub) in [("root", "escape"), ("parent", "up")] {
        c.server.apply_stdin(&[], &pod(name, sub));
        let msg = eventually(60, "the refusal", || {
            let s = c.server.json(&["get", "pod", name, "-n", "subpath"]);
            let w = s["status"]["containerStatuses"][0]["state"]["waiting"].clone();
            (w["reason"] == "CreateContainerConfigError").then(|| w["message"].to_string())
        });
        assert!(msg.contains(sub), "{msg}");
        let s = c.server.json(&["get", "pod", name, "-n", "subpath"]);
        assert!(s["status"]["containerStatuses"][0]["state"]["running"].is_null());
        let never = c
            .server
            .fails(&["logs", name, "-n", "subpath", "-c", "main"]);
        assert!(
            never.contains("is waiting to start: CreateContainerConfigError"),
            "{never}"
        );
    }
    c.server.apply_stdin(&[], &pod("fine", "ok"));
    let status = finished(c, "subpath", "fine");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(logs(c, "subpath", "fine", "main"), "f\ninside\n");
}

#[test]
fn run_as_non_root_refuses_an_image_that_runs_as_root() {
    let c = &*cluster();
    namespace(c, "nonroot");
    let pod = |name: &str, user: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: nonroot\nspec:\n  restartPolicy: Never\n  securityContext:\n    runAsNonRoot: true\n{user}  containers:\n  - name: main\n    image: {}\n    command: [\"id\"]\n",
            c.busybox()
        )
    };
    c.server.apply_stdin(&[], &pod("root", ""));
    let msg = eventually(60, "the refusal", || {
        let s = c.server.json(&["get", "pod", "root", "-n", "nonroot"]);
        let w = s["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError").then(|| w["message"].to_string())
    });
    assert!(
        msg.contains("container has runAsNonRoot and image will run as root"),
        "{msg}"
    );
    c.server
        .apply_stdin(&[], &pod("user", "    runAsUser: 4321\n"));
    let status = finished(c, "nonroot", "user");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert!(logs(c, "nonroot", "user", "main").starts_with("uid=4321"));
}

#[test]
fn a_crashing_container_restarts_and_keeps_its_previous_log() {
    let c = &*cluster();
    namespace(c, "crash");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: crash\n  namespace: crash\nspec:\n  restartPolicy: OnFailure\n  volumes:\n  - name: state\n    emptyDir: {{}}\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"if [ -e /state/ran ]; then echo second run; exit 0; fi; touch /state/ran; echo first run; exit 7\"]\n    volumeMounts:\n    - name: state\n      mountPath: /state\n",
        c.busybox()
    );
    c.server.apply_stdin(&[], &pod);
    let status = finished(c, "crash", "crash");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let cs = &status["containerStatuses"][0];
    assert_eq!(cs["restartCount"], 1);
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 7);
    assert_eq!(logs(c, "crash", "crash", "main"), "second run\n");
    let previous = c.server.ok(&["logs", "crash", "-n", "crash", "--previous"]);
    assert_eq!(previous, "first run\n");
}

/// The issue's leak check: 1,000 pods, each a Wasm HTTP component and a busybox container
/// with a memory limit in one sandbox, created and deleted 25 at a time, leave no network
/// namespace, veth, address, mount, cgroup, process, runc container or directory behind.
#[test]
fn a_thousand_created_and_deleted_pods_leave_nothing_behind() {
    let c = &*cluster();
    namespace(c, "churn");
    let (batch, rounds) = (25, 40);
    let mut pods = Vec::new();
    let started = std::time::Instant::now();
    for round in 0..rounds {
        let manifests: String = (0..batch)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: churn\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {}\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    resources:\n      limits:\n        memory: 32Mi\n",
                    c.http_hello(),
                    c.busybox()
                )
            })
            .collect::<Vec<_>>()
            .join("---\n");
        c.server.apply_stdin(&[], &manifests);
        c.server.ok(&[
            "wait",
            "--for=condition=Ready",
            "pods",
            "--all",
            "-n",
            "churn",
            "--timeout=120s",
        ]);
        let list = c.server.json(&["get", "pods", "-n", "churn"]);
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), batch, "round {round}");
        for p in items {
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
            "--timeout=120s",
        ]);
        let left = c.agent.leftovers(&pods[pods.len() - batch..]);
        assert!(left.is_empty(), "round {round}: {left:?}");
        eprintln!("round {round} done at {:.1?}", started.elapsed());
    }
    eprintln!(
        "{} pods created and deleted in {:.0?}",
        pods.len(),
        started.elapsed()
    );
    // Nothing of any of them came back, and every veth on the bridge is a namespace's the
    // agent holds (made ahead for pods to come).
    let left = c.agent.leftovers(&pods);
    assert!(left.is_empty(), "{left:?}");
    c.agent.only_held_veths();
}

/// A killed agent's containers keep running; the restarted agent adopts them (same
/// container, no restart) and can still stop them.
#[test]
fn a_restarted_agent_adopts_running_containers() {
    let c = &*cluster();
    let server = Server::start();
    let mut agent = Agent::start(&server, "adopter");
    eventually(60, "the node", || {
        let n = server.try_json(&["get", "node", "adopter"])?;
        n["spec"]["podCIDR"].is_string().then_some(())
    });
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: steady\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"echo started; exec sleep 3601\"]\n",
        c.busybox()
    );
    server.apply_stdin(&[], &pod);
    let status = eventually(90, "steady running", || {
        let p = server.json(&["get", "pod", "steady"]);
        (p["status"]["phase"] == "Running").then(|| p["status"].clone())
    });
    let id = status["containerStatuses"][0]["containerID"].clone();
    agent.kill9();
    // The container outlives its agent.
    let sleeping = || {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", "sleep 3601"])
            .output()
            .unwrap();
        !ps.stdout.is_empty()
    };
    assert!(sleeping());
    agent.restart();
    std::thread::sleep(Duration::from_secs(3));
    let after = server.json(&["get", "pod", "steady"])["status"].clone();
    assert_eq!(after["phase"], "Running", "{after}");
    assert_eq!(after["containerStatuses"][0]["containerID"], id, "{after}");
    assert_eq!(after["containerStatuses"][0]["restartCount"], 0, "{after}");
    assert_eq!(server.ok(&["logs", "steady"]), "started\n");
    server.ok(&["delete", "pod", "steady", "--wait=true", "--timeout=60s"]);
    let uid = status["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("runc://")
        .to_string();
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(agent.data.join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&runc.stdout).contains(&uid));
}

/// seccomp as asked: the node's default (this agent runs with `--seccomp-default`) and
/// RuntimeDefault filter a container, Unconfined does not, a Localhost profile from the
/// node's seccomp directory refuses what it lists, and a missing one stops the container
/// with the reason.
#[test]
fn seccomp_profiles_confine_runc_containers_as_asked() {
    let c = &*cluster();
    namespace(c, "seccomp");
    let profiles = c.agent.data.join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mode = "grep ^Seccomp: /proc/self/status";
    let container = |name: &str, profile: &str, script: &str| {
        let sc = if profile.is_empty() {
            String::new()
        } else {
            format!("    securityContext:\n      seccompProfile:\n{profile}")
        };
        format!(
            "  - name: {name}\n    image: {}\n    command: [\"sh\", \"-c\", {script:?}]\n{sc}",
            c.busybox()
        )
    };
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: filtered\n  namespace: seccomp\nspec:\n  restartPolicy: Never\n  containers:\n{}{}{}{}",
        container("unset", "", mode),
        container("unconfined", "        type: Unconfined\n", mode),
        container(
            "runtime",
            "        type: RuntimeDefault\n",
            &format!("{mode}; unshare -U true && echo unshared || echo refused"),
        ),
        container(
            "local",
            "        type: Localhost\n        localhostProfile: profiles/no-mkdir.json\n",
            "mkdir /made && echo made || echo refused; touch /file && echo touched",
        ),
    );
    c.server.apply_stdin(&[], &pod);
    let status = finished(c, "seccomp", "filtered");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    // 2: a filter is installed; 0: none.
    assert_eq!(logs(c, "seccomp", "filtered", "unset"), "Seccomp:\t2\n");
    assert_eq!(
        logs(c, "seccomp", "filtered", "unconfined"),
        "Seccomp:\t0\n"
    );
    let runtime = logs(c, "seccomp", "filtered", "runtime");
    assert!(runtime.starts_with("Seccomp:\t2\n"), "{runtime}");
    assert!(
        runtime.contains("refused"),
        "unshare under RuntimeDefault: {runtime}"
    );
    let local = logs(c, "seccomp", "filtered", "local");
    assert!(local.contains("Operation not permitted"), "{local}");
    assert!(local.contains("refused\ntouched"), "{local}");

    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: missing\n  namespace: seccomp\nspec:\n  restartPolicy: Never\n  securityContext:\n    seccompProfile:\n      type: Localhost\n      localhostProfile: profiles/none.json\n  containers:\n{}",
        container("main", "", "true"),
    );
    c.server.apply_stdin(&[], &pod);
    let waiting = eventually(60, "the container waiting with the reason", || {
        let p = c.server.json(&["get", "pod", "missing", "-n", "seccomp"]);
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerError").then_some(w)
    });
    let message = waiting["message"].as_str().unwrap();
    assert!(
        message.contains("cannot load seccomp profile") && message.contains("profiles/none.json"),
        "{message}"
    );
}

/// Local storage limits as the kubelet's eviction manager enforces them: an emptyDir
/// past its sizeLimit and a container writing past its ephemeral-storage limit (within
/// the pod's total, 11Mi) get their pods evicted, with the kubelet's reason, message,
/// condition and Event.
#[test]
fn pods_past_their_local_storage_limits_are_evicted() {
    let c = &*cluster();
    namespace(c, "storage");
    let pod = |name: &str, extra: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: storage\nspec:\n  terminationGracePeriodSeconds: 30\n  volumes:\n  - name: scratch\n    emptyDir:\n      sizeLimit: 1Mi\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", {script:?}]\n    volumeMounts:\n    - name: scratch\n      mountPath: /scratch\n{extra}",
            c.busybox()
        )
    };
    let fill =
        |to: &str| format!("dd if=/dev/urandom of={to} bs=1024 count=2048 && exec sleep 3600");
    c.server
        .apply_stdin(&[], &pod("volume", "", &fill("/scratch/f")));
    c.server.apply_stdin(
        &[],
        &pod(
            "layer",
            &format!(
                "    resources:\n      limits:\n        ephemeral-storage: 1Mi\n  - name: idle\n    image: {}\n    command: [\"sleep\", \"3600\"]\n    resources:\n      limits:\n        ephemeral-storage: 10Mi\n",
                c.busybox()
            ),
            &fill("/f"),
        ),
    );
    c.server.apply_stdin(
        &[],
        &pod(
            "within",
            "",
            "dd if=/dev/urandom of=/scratch/f bs=1024 count=256 && exec sleep 3600",
        ),
    );
    for (name, message) in [
        (
            "volume",
            "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ",
        ),
        (
            "layer",
            "Container main exceeded its local ephemeral storage limit \"1Mi\". ",
        ),
    ] {
        let status = finished(c, "storage", name);
        assert_eq!(status["phase"], "Failed", "{status}");
        assert_eq!(status["reason"], "Evicted", "{status}");
        assert_eq!(status["message"], message, "{status}");
        let disruption = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "DisruptionTarget")
            .cloned()
            .unwrap_or_default();
        assert_eq!(disruption["reason"], "TerminationByKubelet", "{status}");
        let t = &status["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["exitCode"], 137, "{status}");
        let events = c.server.ok(&[
            "get",
            "events",
            "-n",
            "storage",
            "--field-selector",
            &format!("involvedObject.name={name},reason=Evicted"),
        ]);
        assert!(events.contains("Warning"), "{events}");
    }
    // A pod within its limit runs on.
    let p = c.server.json(&["get", "pod", "within", "-n", "storage"]);
    assert_eq!(p["status"]["phase"], "Running", "{p}");
    let describe = c.server.ok(&["describe", "pod", "volume", "-n", "storage"]);
    assert!(
        describe.contains("Reason:           Evicted")
            && describe.contains("Usage of EmptyDir volume \"scratch\" exceeds the limit"),
        "{describe}"
    );
}

/// Image garbage collection as the kubelet's: past the high threshold (1% here, so this
/// disk is always past it) the agent deletes images no pod on the node uses, files and
/// all, keeps those in use, and says on the node that it could not free enough (the low
/// threshold, 0%, cannot be reached).
#[test]
fn unused_images_are_collected_past_the_high_threshold() {
    let c = &*cluster();
    let server = Server::start();
    let agent = Agent::start_in(
        &server,
        "gc1",
        None,
        &[
            "--image-gc-high-threshold=1",
            "--image-gc-low-threshold=0",
            "--minimum-image-ttl-duration=0s",
            "--image-gc-period=1s",
        ],
    );
    eventually(60, "node gc1 ready for runc pods", || {
        let n = server.try_json(&["get", "node", "gc1"])?;
        (n["metadata"]["labels"]["runtime.skiff.dev/oci"] == "true"
            && n["spec"]["podCIDR"].is_string())
        .then_some(())
    });
    let pod = |name: &str, image: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n{extra}")
    };
    server.apply_stdin(
        &[],
        &pod("kept", &c.busybox(), "    command: [\"sleep\", \"3600\"]\n"),
    );
    server.apply_stdin(&[], &pod("done", &c.wasm(), "    args: [\"write\"]\n"));
    let node_images = || -> Vec<String> {
        let n = server.json(&["get", "node", "gc1"]);
        n["status"]["images"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect()
    };
    eventually(90, "both images on the node, in use", || {
        let names = node_images();
        let p = server.json(&["get", "pod", "done"]);
        (names.contains(&c.busybox())
            && names.contains(&c.wasm())
            && matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .then_some(())
    });
    let blobs = agent.data.join("images/blobs/sha256");
    let count = || std::fs::read_dir(&blobs).unwrap().count();
    let before = count();
    // In use while its pod exists; unused once it is gone.
    std::thread::sleep(Duration::from_secs(3));
    assert!(node_images().contains(&c.wasm()), "collected while in use");
    server.ok(&["delete", "pod", "done", "--wait=true"]);
    eventually(60, "the unused image collected", || {
        (!node_images().contains(&c.wasm())).then_some(())
    });
    assert!(count() < before, "its blob is gone too");
    assert!(
        node_images().contains(&c.busybox()),
        "an image in use stays"
    );
    let p = server.json(&["get", "pod", "kept"]);
    assert_eq!(p["status"]["phase"], "Running", "{p}");
    let events = server.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Node,reason=ImageGCFailed",
    ]);
    assert!(
        events.contains("Failed to garbage collect required amount of images. Attempted to free"),
        "{events}"
    );
    server.ok(&["delete", "pod", "kept", "--wait=true"]);
    drop(agent);
}
