//! Shared harness for end-to-end tests: real `skiff` processes and the real kubectl.
#![allow(dead_code)]

pub mod lan;
pub mod oci;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned kubectl installed by `scripts/setup.sh`.
pub fn kubectl_bin() -> PathBuf {
    let p = std::env::var_os("SKIFF_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/kubectl"));
    assert!(
        p.exists(),
        "kubectl not found at {}: run scripts/setup.sh",
        p.display()
    );
    p
}

/// kubectl v1.32, from the google-cloud-cli `kubectl` package (`scripts/setup.sh`).
pub fn kubectl_132_bin() -> PathBuf {
    let p = PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    assert!(
        p.exists(),
        "kubectl 1.32 not found at {}: run scripts/setup.sh",
        p.display()
    );
    p
}

pub fn python_bin() -> PathBuf {
    let p = root().join(".tools/venv/bin/python");
    assert!(
        p.exists(),
        "Python client not installed at {}: run scripts/setup.sh",
        p.display()
    );
    p
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pod networks of the test clusters running at once must not meet: each cluster takes
/// its own pod range (`10.N.0.0/16`) and each agent its own bridge.
static NETWORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn network_id() -> u32 {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_stale_bridges);
    NETWORKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Test bridges an earlier, interrupted run left (a test process killed before its
/// clusters were reset): their routes would shadow this run's pod ranges. Run before this
/// process makes any bridge of its own (test processes run one at a time).
fn remove_stale_bridges() {
    let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        if ["skt", "skd", "skn", "skl"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
    // Hosts of test LANs (see [`lan`]).
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("skh") {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// `--cluster-cidr` of test cluster `id`.
pub fn cluster_cidr(id: u32) -> String {
    format!("10.{}.0.0/16", 20 + id % 200)
}

/// Tears down what a killed agent's pods left on the node (`skiff reset`): their
/// containers, network namespaces, addresses and masquerade rules, and the bridge. Called
/// from `Drop`s (maybe while a failed test unwinds): says what went wrong rather than panic
/// again.
pub fn reset_node(agent_data: &Path, bridge: &str) {
    reset_node_in(None, agent_data, bridge)
}

/// `program`, run in network namespace `netns` (of /run/netns) if one is given. With
/// nsenter, which enters the network namespace only (`ip netns exec` also remounts /sys,
/// and runc then finds no cgroup file system).
pub fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// [`reset_node`] of an agent that ran in network namespace `netns`.
pub fn reset_node_in(netns: Option<&str>, agent_data: &Path, bridge: &str) {
    let o = in_netns(netns, env!("CARGO_BIN_EXE_skiff"))
        .args(["reset", "--cni-bridge", bridge, "--data-dir"])
        .arg(agent_data)
        .output();
    match o {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("skiff reset failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => eprintln!("skiff reset did not run: {e}"),
    }
}

/// Makes a spawned process die with the test process (also one killed before its
/// [`Shared`] fixtures were torn down): it gets SIGKILL when the thread that spawned it
/// ends, so shared ones are spawned from a thread that lives as long as the process.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // Safety: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A node's data directory and bridge for agents a test starts by hand; dropped, it resets
/// the node (declare it after the server, so it goes first).
pub struct Node {
    pub data: PathBuf,
    pub bridge: String,
}

impl Node {
    pub fn new(data: PathBuf) -> Node {
        Node {
            data,
            bridge: format!("skn{}", network_id() + 1000 * (std::process::id() % 100)),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        reset_node(&self.data, &self.bridge);
    }
}

/// A fixture shared by the tests of a file (a cluster started once, by the first test that
/// asks for it), dropped (its processes stopped, its node reset) when the test process
/// exits: whichever tests a filter selected, however they ended. No test count to keep.
pub struct Shared<T: Send + Sync + 'static> {
    value: std::sync::Mutex<Option<std::sync::Arc<T>>>,
}

/// A test's hold on a [`Shared`] fixture.
pub struct SharedGuard<T: Send + Sync + 'static>(std::sync::Arc<T>);

impl<T: Send + Sync + 'static> Shared<T> {
    pub const fn new() -> Self {
        Shared {
            value: std::sync::Mutex::new(None),
        }
    }

    /// The fixture, made by `init` for the first test (on a thread that outlives the test,
    /// see [`die_with_parent`]); a failed `init` is tried again by the next test.
    pub fn get(&'static self, init: fn() -> T) -> SharedGuard<T> {
        // Held while `init` runs: the other tests wait for the one fixture.
        let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = &*value {
            return SharedGuard(v.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let v = std::sync::Arc::new(init());
            tx.send(v).unwrap();
            loop {
                std::thread::park();
            }
        });
        let v = rx.recv().expect("the shared fixture failed to start");
        *value = Some(v.clone());
        at_exit(Box::new(move || {
            let v = self.value.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(v);
        }));
        SharedGuard(v)
    }
}

impl<T: Send + Sync + 'static> std::ops::Deref for SharedGuard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

type Teardown = Box<dyn FnOnce() + Send>;

/// What [`Shared`] fixtures leave to the process's exit, in the order they were made.
static TEARDOWNS: std::sync::Mutex<Vec<Teardown>> = std::sync::Mutex::new(Vec::new());

/// Runs `f` when the test process exits. The test harness returns from `main` (all passed)
/// or calls `exit` (some failed); both run C `atexit` handlers, while Rust drops no
/// statics. A process killed by a signal runs nothing: its children die with it (see
/// [`die_with_parent`]) and the next run sweeps its bridges ([`network_id`]).
fn at_exit(f: Teardown) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // Safety: registers a plain function; nothing else to uphold.
        if unsafe { libc::atexit(run_teardowns) } != 0 {
            eprintln!("atexit failed: shared fixtures will not be torn down");
        }
    });
    TEARDOWNS.lock().unwrap_or_else(|e| e.into_inner()).push(f);
}

/// Tears the fixtures down, the last made first. A panic must not unwind into libc.
extern "C" fn run_teardowns() {
    let teardowns = std::mem::take(&mut *TEARDOWNS.lock().unwrap_or_else(|e| e.into_inner()));
    for f in teardowns.into_iter().rev() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            eprintln!("tearing down a shared test fixture panicked");
        }
    }
}

/// A running `skiff server` in its own data directory.
pub struct Server {
    pub dir: tempfile::TempDir,
    /// The address it listens on (loopback unless started on a LAN).
    pub host: String,
    pub port: u16,
    /// Its pod range's number (see [`network_id`]).
    pub net: u32,
    child: Option<Child>,
    cache: tempfile::TempDir,
    /// The soft open-files limit it is started with, if not the test's.
    soft_open_files: Option<u64>,
}

impl Server {
    /// A server started with a soft open-files limit of `soft` (the usual 1,024, say).
    pub fn start_with_open_files(soft: u64) -> Server {
        let mut s = Server::unstarted(tempfile::tempdir().unwrap(), "127.0.0.1");
        s.soft_open_files = Some(soft);
        s.spawn();
        s
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn start() -> Server {
        Server::start_in(tempfile::tempdir().unwrap())
    }

    /// A server whose data directory is `dir/data` (prepared by the caller, e.g. with a
    /// file system mounted under it).
    pub fn start_in(dir: tempfile::TempDir) -> Server {
        Server::start_on(dir, "127.0.0.1")
    }

    /// A server listening on `host` (say, a test LAN's gateway address).
    pub fn start_on(dir: tempfile::TempDir, host: &str) -> Server {
        let mut s = Server::unstarted(dir, host);
        s.spawn();
        s
    }

    fn unstarted(dir: tempfile::TempDir, host: &str) -> Server {
        Server {
            dir,
            host: host.to_string(),
            port: free_port(),
            net: network_id(),
            child: None,
            cache: tempfile::tempdir().unwrap(),
            soft_open_files: None,
        }
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        if let Some(soft) = self.soft_open_files {
            use std::os::unix::process::CommandExt;
            // Safety: getrlimit/setrlimit are async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let child = die_with_parent(&mut cmd)
            .args(["server", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen", &format!("{}:{}", self.host, self.port)])
            .args(["--cluster-cidr", &cluster_cidr(self.net)])
            .args(extra)
            .env("SKIFF_LOG", test_log_level())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.kubeconfig().exists()
                && std::net::TcpStream::connect((self.host.as_str(), self.port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not start:\n{}", self.log());
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("kubeconfig")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the server with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Restarts the server with extra command-line flags.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill9();
        // The kubeconfig is rewritten on start; wait for the new one.
        let _ = std::fs::remove_file(self.kubeconfig());
        self.spawn_with(extra);
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        self.kubectl_cmd_with(&kubectl_bin(), args)
    }

    /// A kubectl command with another kubectl binary (another client version).
    pub fn kubectl_cmd_with(&self, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("run kubectl")
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl, asserting success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs kubectl, asserting failure; returns stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} unexpectedly succeeded:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).unwrap()
    }

    #[track_caller]
    pub fn apply_stdin(&self, extra: &[&str], manifest: &str) -> String {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        let o = self.kubectl_stdin(&args, manifest);
        assert!(
            o.status.success(),
            "kubectl apply failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// The object as JSON, or `None` if kubectl cannot get it (yet).
    pub fn try_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let o = self.kubectl(&a);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Wasm module that prints "hello from wasm" and exits 0.
pub const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "hello from wasm\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 8))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 40)))))"#;

/// A Wasm module that runs for ever: waits 2 s in `poll_oneoff`, then prints "tick".
pub const DOZER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "tick\n")
  (func (export "_start")
    (i32.store (i32.const 100) (i32.const 200))
    (i32.store (i32.const 104) (i32.const 5))
    (i64.store (i32.const 0) (i64.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 2000000000))
    (loop $l
      (drop (call $poll (i32.const 0) (i32.const 48) (i32.const 1) (i32.const 160)))
      (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120)))
      (br $l))))"#;

/// Turns image garbage collection off: this machine's disk is used past the kubelet's
/// thresholds, where agents would delete the images tests imported for later use. The
/// collector's own test (oci.rs) sets the thresholds instead.
pub const NO_IMAGE_GC: &str = "--image-gc-high-threshold=100";

/// A `skiff agent` process (node `name`) of a server, with its own data directory and port.
pub struct Agent {
    pub name: String,
    pub data: PathBuf,
    /// Its pods' bridge.
    pub bridge: String,
    kubeconfig: PathBuf,
    logs: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in (a test LAN's host), if not this one.
    pub netns: Option<String>,
    /// Extra command-line flags.
    extra: Vec<String>,
}

impl Agent {
    pub fn start(server: &Server, name: &str) -> Agent {
        Agent::start_in(server, name, None, &[])
    }

    /// An agent in network namespace `netns` (a test LAN's host), with extra flags.
    pub fn start_in(server: &Server, name: &str, netns: Option<&str>, extra: &[&str]) -> Agent {
        let bridge = format!("skt{}", network_id() + 1000 * (std::process::id() % 100));
        Agent::start_with_bridge(server, name, netns, extra, bridge)
    }

    /// An agent whose pods' bridge is `bridge` (another's, say).
    pub fn start_with_bridge(
        server: &Server,
        name: &str,
        netns: Option<&str>,
        extra: &[&str],
        bridge: String,
    ) -> Agent {
        let mut a = Agent {
            name: name.to_string(),
            data: server.dir.path().join("agents").join(name),
            bridge,
            kubeconfig: server.kubeconfig(),
            logs: server.dir.path().join("agents"),
            child: None,
            netns: netns.map(str::to_string),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        std::fs::create_dir_all(&a.data).unwrap();
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", self.name)))
            .unwrap();
        let child = die_with_parent(&mut in_netns(
            self.netns.as_deref(),
            env!("CARGO_BIN_EXE_skiff"),
        ))
        .args([
            "agent",
            "--node-name",
            &self.name,
            "--port",
            "0",
            "--kubeconfig",
        ])
        .arg(&self.kubeconfig)
        .arg("--data-dir")
        .arg(&self.data)
        .args(["--cni-bridge", &self.bridge])
        .args((!self.extra.iter().any(|f| f.starts_with("--image-gc"))).then_some(NO_IMAGE_GC))
        .args(&self.extra)
        .env("SKIFF_LOG", test_log_level())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start skiff agent");
        self.child = Some(child);
    }

    /// Loads a Wasm module (text) into the node's image store as `reference`.
    pub fn import_wat(&self, wat: &str, reference: &str) {
        let file = self
            .data
            .join(format!("{}.wat", reference.replace(['/', ':'], "_")));
        std::fs::write(&file, wat).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["images", "import"])
            .arg(&file)
            .args(["--name", reference, "--data-dir"])
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Kills the agent with SIGKILL (its pods die with it).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.logs.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}

/// What a pod of an agent's was given, read while it runs, so that after its deletion a
/// test can check all of it went.
#[derive(Clone, Debug)]
pub struct PodTrace {
    pub uid: String,
    /// Its network namespace and the CNI container ID its address is leased to, as the
    /// sandbox records them (`pods/<uid>/network.json`); none for host-network pods.
    pub netns: Option<PathBuf>,
    pub container_id: Option<String>,
}

impl Agent {
    /// The record of a running pod's sandbox.
    pub fn trace(&self, uid: &str) -> PodTrace {
        let record: serde_json::Value =
            std::fs::read(self.data.join("pods").join(uid).join("network.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        PodTrace {
            uid: uid.to_string(),
            netns: record["netns"].as_str().map(PathBuf::from),
            container_id: record["containerId"].as_str().map(str::to_string),
        }
    }

    /// What deleted pods left on the node: their directories, network namespaces and
    /// address leases, mounts, processes (shims, PID namespace holders), runc containers,
    /// bundles and cgroups.
    pub fn leftovers(&self, pods: &[PodTrace]) -> Vec<String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        let runc = Command::new("runc")
            .arg("--root")
            .arg(self.data.join("runc"))
            .args(["list", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let leases: Vec<(String, String)> = std::fs::read_dir(self.data.join("cni/ipam/skiff"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), owner)
            })
            .collect();
        let mut left = Vec::new();
        for pod in pods {
            let uid = pod.uid.as_str();
            for dir in ["pods", "containers"] {
                if self.data.join(dir).join(uid).exists() {
                    left.push(format!("{dir} directory of {uid}"));
                }
            }
            if let Some(netns) = pod.netns.as_ref().filter(|n| n.exists()) {
                left.push(format!("network namespace {} of {uid}", netns.display()));
            }
            if let Some(id) = &pod.container_id {
                for (ip, _) in leases.iter().filter(|(_, o)| o.lines().next() == Some(id)) {
                    left.push(format!("address {ip} of {uid}"));
                }
            }
            if mounts.contains(uid) {
                left.push(format!("a mount of {uid}"));
            }
            // Its shims, its PID namespace's holder.
            for p in ps.lines().filter(|l| l.contains(uid)) {
                left.push(format!("process {p:?}"));
            }
            if runc.contains(uid) {
                left.push(format!("a runc container of {uid}"));
            }
            for hierarchy in ["memory/", "pids/", "cpu/", ""] {
                let dir = format!("/sys/fs/cgroup/{hierarchy}skiff/{uid}");
                if Path::new(&dir).exists() {
                    left.push(format!("cgroup {dir}"));
                }
            }
        }
        left
    }

    /// Waits until every veth on the pods' bridge belongs to a namespace the agent holds
    /// (its pods', or one made ahead).
    #[track_caller]
    pub fn only_held_veths(&self) {
        eventually(30, "only held namespaces' veths", || {
            let veths = Command::new("ip")
                .args(["-o", "link", "show", "master", &self.bridge])
                .output()
                .unwrap();
            let veths = String::from_utf8_lossy(&veths.stdout).lines().count();
            (veths == self.namespaces_held()).then_some(())
        });
    }

    /// The network namespaces the agent holds: its pods' and those made ahead for pods to come.
    pub fn namespaces_held(&self) -> usize {
        let dirs = |d: &str| {
            std::fs::read_dir(self.data.join(d))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect::<Vec<_>>()
        };
        dirs("pods")
            .into_iter()
            .chain(dirs("cni/warm"))
            .filter_map(|d| std::fs::read(d.join("network.json")).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|r| r["netns"].as_str().is_some_and(|n| Path::new(n).exists()))
            .count()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        reset_node_in(self.netns.as_deref(), &self.data, &self.bridge);
    }
}

/// Runs kubectl with `args` (a shell command line) on a terminal (util-linux `script`
/// gives it one), types `input` once it had time to connect, and returns what the
/// terminal showed when kubectl ended.
pub fn kubectl_on_a_terminal(server: &Server, args: &str, input: &[u8]) -> String {
    let kubectl = format!(
        "{} --kubeconfig {} {args}",
        kubectl_bin().display(),
        server.kubeconfig().display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &kubectl, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    std::thread::sleep(Duration::from_secs(3));
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    }
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls `f` until it returns `Some`, or panics after `secs`.
#[track_caller]
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// Clients writing ConfigMaps concurrently until the server goes away, remembering every
/// acknowledged write (name → resourceVersion).
pub mod writers {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};
    use skiff_control_plane::bench::client::Client;

    pub const BASE: &str = "/api/v1/namespaces/default/configmaps";

    pub type Acked = Arc<Mutex<BTreeMap<String, u64>>>;

    pub fn rv_of(body: &[u8]) -> u64 {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `n` writers that create, then update, objects named `<prefix>w<i>-<j>`.
    pub fn spawn(c: &Client, n: usize, prefix: &str) -> (Vec<tokio::task::JoinHandle<()>>, Acked) {
        let acked: Acked = Arc::default();
        let mut writers = Vec::new();
        for w in 0..n {
            let (c, acked, prefix) = (c.clone(), acked.clone(), prefix.to_string());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("{prefix}w{w}-{i}");
                    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": "1"}});
                    let Ok(r) = c.send(hyper::Method::POST, BASE, "application/json", body.to_string().into()).await else { return };
                    if r.status != 201 {
                        return;
                    }
                    acked.lock().unwrap().insert(name.clone(), rv_of(&r.body));
                    let patch = json!({"data": {"v": "2"}});
                    let Ok(r) = c.send(hyper::Method::PATCH, &format!("{BASE}/{name}"), "application/merge-patch+json", patch.to_string().into()).await else { return };
                    if r.status != 200 {
                        return;
                    }
                    acked.lock().unwrap().insert(name, rv_of(&r.body));
                }
            }));
        }
        (writers, acked)
    }

    /// Creates ConfigMap `name`, asserting it was created.
    pub async fn create(c: &Client, name: &str) {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
        let r = c
            .send(
                hyper::Method::POST,
                BASE,
                "application/json",
                body.to_string().into(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    /// Every acknowledged write is there: each object at (at least) its acknowledged
    /// resourceVersion.
    pub async fn assert_present(c: &Client, acked: &BTreeMap<String, u64>) {
        for (name, rv) in acked {
            let r = c.get(&format!("{BASE}/{name}")).await.unwrap();
            assert_eq!(r.status, 200, "acknowledged object {name} lost");
            let got = rv_of(&r.body);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            // The last acknowledged write is there (a later unacknowledged one may be too).
            assert!(
                got >= *rv,
                "{name}: resourceVersion {got} older than the acknowledged {rv}"
            );
            assert!(v["data"]["v"] == "1" || v["data"]["v"] == "2");
        }
    }
}

/// The log filter of the servers and agents tests start: `SKIFF_TEST_LOG`, else info.
pub fn test_log_level() -> String {
    std::env::var("SKIFF_TEST_LOG").unwrap_or_else(|_| "info".into())
}
