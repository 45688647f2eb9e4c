//! Pod networking through the CNI plugins (Debian's `containernetworking-plugins`): a
//! network namespace per pod, given its `eth0` and address by a conflist the agent writes
//! (bridge + host-local IPAM over the node's `podCIDR` + portmap for `hostPort`s) and its
//! `lo` by the loopback plugin, as the kubelet's CRI runtime does. What a teardown needs
//! (the namespace, the conflist used, the plugins' result) is kept in the pod's directory,
//! so a pod is torn down exactly even by a later agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skiff_api::cidr::Cidr;

use super::netns;

/// The CNI spec version the conflist speaks (Debian 12's plugins speak up to 1.0.0).
const CNI_VERSION: &str = "1.0.0";
const NETWORK_NAME: &str = "skiff";
const STATE_FILE: &str = "network.json";
const IFNAME: &str = "eth0";
/// A plugin that takes longer than this has hung.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} failed to {command} the pod network: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("pod network state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("removing the pods' bridge: {0}")]
    Bridge(String),
}

/// The node's pod network: where the plugins are, the conflist they run with, and pod
/// networks made ahead of their pods.
#[derive(Debug)]
pub struct Cni {
    bin_dir: PathBuf,
    conflist: Value,
    /// Where pinned namespaces go; per agent, so several agents on one host do not meet.
    netns_dir: PathBuf,
    pub pod_cidr: Cidr,
    warm: Warm,
}

/// Pod networks set up ahead (namespace, `lo`, `eth0` and address), each in a directory
/// of its own under `dir` as a pod's would be, handed whole to pods that need no
/// `hostPort`: the plugins' ~15 ms leave a pod's start and run between starts instead.
#[derive(Debug)]
struct Warm {
    dir: PathBuf,
    target: usize,
    ready: std::sync::Mutex<std::collections::VecDeque<PathBuf>>,
    /// Wakes the refill when a network is taken.
    taken: tokio::sync::Notify,
}

/// A port a container asks the node to forward (`hostPort`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Who the network is for (the plugins' `CNI_ARGS`, as the kubelet passes them).
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// What a pod's network directory records, written before the plugins run (so a crash
/// half way is still torn down) and again with their result.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    netns: PathBuf,
    bin_dir: PathBuf,
    container_id: String,
    cni_args: String,
    /// The plugins run for this pod (the portmap plugin only where there are ports to map).
    conflist: Value,
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
    #[serde(default)]
    result: Option<Value>,
}

impl State {
    /// The network this state describes, if it was set up whole and its namespace is there.
    fn network(&self) -> Option<PodNetwork> {
        let ip = first_ip(self.result.as_ref()?)?;
        netns::exists(&self.netns).then(|| PodNetwork {
            netns: self.netns.clone(),
            ip,
        })
    }
}

/// A pod's network: its namespace and address.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub ip: String,
}

/// The network namespace recorded in the pod directory `dir`, if there is one and it exists.
pub fn recorded_netns(dir: &Path) -> Option<PathBuf> {
    let state = read_state(&dir.join(STATE_FILE)).ok()?;
    netns::exists(&state.netns).then_some(state.netns)
}

/// The directories of the pod networks made ahead under the conf dir `conf_dir`.
pub fn warm_dirs(conf_dir: &Path) -> Vec<PathBuf> {
    entries(&conf_dir.join(WARM_DIR))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

const WARM_DIR: &str = "warm";

impl Cni {
    /// The pod network of a node whose pod range is `pod_cidr`: writes the conflist into
    /// `conf_dir` (for people and tools to read; the agent runs what it keeps in memory).
    /// Up to `warm` pod networks are kept made ahead once [`Cni::keep_warm`] runs.
    pub fn new(
        bin_dir: &Path,
        conf_dir: &Path,
        netns_dir: &Path,
        bridge: &str,
        pod_cidr: Cidr,
        cluster_cidr: Cidr,
        warm: usize,
    ) -> Result<Cni, NetworkError> {
        let network = pod_cidr.network();
        let conflist = json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    // Pods reach beyond the node with the node's address: one rule for the
                    // node's whole range (see `ensure_masquerade`), not iptables runs and a
                    // chain per pod on every start and stop.
                    "ipMasq": false,
                    // A pod reaches itself through a Service (later) by hairpin.
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": network.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": conf_dir.join("ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            ],
        });
        let state = |reason: String| NetworkError::State {
            path: conf_dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(conf_dir).map_err(|e| state(e.to_string()))?;
        ensure_masquerade(
            &network.to_string(),
            &cluster_cidr.network().to_string(),
            bridge,
        )
        .map_err(state)?;
        let text = serde_json::to_vec_pretty(&conflist).expect("JSON");
        std::fs::write(conf_dir.join("10-skiff.conflist"), text)
            .map_err(|e| state(e.to_string()))?;
        Ok(Cni {
            bin_dir: bin_dir.to_path_buf(),
            conflist,
            netns_dir: netns_dir.to_path_buf(),
            pod_cidr,
            warm: Warm {
                dir: conf_dir.join(WARM_DIR),
                target: warm,
                ready: Default::default(),
                taken: Default::default(),
            },
        })
    }

    /// The pod's network, set up now, or the one a previous agent set up (its namespace
    /// still there): a pod keeps its address across agent restarts. A pod without
    /// `hostPort`s takes one made ahead when there is one.
    pub async fn setup(
        &self,
        dir: &Path,
        pod: &PodRef<'_>,
        port_mappings: Vec<PortMapping>,
    ) -> Result<PodNetwork, NetworkError> {
        let state_path = dir.join(STATE_FILE);
        if let Ok(state) = read_state(&state_path) {
            if let Some(net) = state.network() {
                return Ok(net);
            }
            // Half set up: undo it and start again.
            teardown(dir).await?;
        }
        if port_mappings.is_empty() {
            if let Some(net) = self.take_warm(dir).await {
                return Ok(net);
            }
        }
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.uid, pod.uid
        );
        self.make(dir, pod.uid, cni_args, port_mappings).await
    }

    /// Sets up a network for `container_id` recorded in `dir`; undone whole on failure.
    async fn make(
        &self,
        dir: &Path,
        container_id: &str,
        cni_args: String,
        port_mappings: Vec<PortMapping>,
    ) -> Result<PodNetwork, NetworkError> {
        let state_path = dir.join(STATE_FILE);
        let netns_path = self.netns_dir.join(format!("skiff-{container_id}"));
        let mut conflist = self.conflist.clone();
        if port_mappings.is_empty() {
            // Nothing to map: the portmap plugin would only cost a run on ADD and an
            // iptables sweep on DEL.
            if let Some(plugins) = conflist["plugins"].as_array_mut() {
                plugins.retain(|p| p.pointer("/capabilities/portMappings").is_none());
            }
        }
        let state = State {
            netns: netns_path.clone(),
            bin_dir: self.bin_dir.clone(),
            container_id: container_id.to_string(),
            cni_args,
            conflist,
            port_mappings,
            result: None,
        };
        write_state(&state_path, &state)?;
        let done = async {
            netns::create(&netns_path).map_err(|source| NetworkError::Netns {
                path: netns_path.clone(),
                source,
            })?;
            // `lo` and `eth0` are independent: their plugins run side by side.
            let ((), result) = tokio::try_join!(
                run_loopback(&self.bin_dir, &state),
                run_list(&self.bin_dir, "ADD", &state, None)
            )?;
            let ip = first_ip(&result).ok_or_else(|| NetworkError::Plugin {
                plugin: "bridge".into(),
                command: "ADD",
                message: format!("no IPv4 address in its result {result}"),
            })?;
            Ok::<_, NetworkError>((result, ip))
        };
        match done.await {
            Ok((result, ip)) => {
                let state = State {
                    result: Some(result),
                    ..state
                };
                write_state(&state_path, &state)?;
                Ok(PodNetwork {
                    netns: netns_path,
                    ip,
                })
            }
            Err(e) => {
                if let Err(undo) = teardown(dir).await {
                    tracing::warn!(error = %undo, "undoing a failed pod network setup");
                }
                Err(e)
            }
        }
    }

    /// Moves a network made ahead into the pod directory `dir` (its record renamed there:
    /// at any instant it belongs to the pool or to the pod, whatever crashes).
    async fn take_warm(&self, dir: &Path) -> Option<PodNetwork> {
        loop {
            let from = self.warm.ready.lock().expect("warm").pop_front()?;
            self.warm.taken.notify_one();
            let moved = (|| {
                let net = read_state(&from.join(STATE_FILE))
                    .ok()
                    .and_then(|s| s.network())
                    .ok_or_else(|| std::io::Error::other("not set up whole"))?;
                std::fs::create_dir_all(dir)?;
                std::fs::rename(from.join(STATE_FILE), dir.join(STATE_FILE))?;
                std::fs::File::open(dir)?.sync_all()?;
                let _ = std::fs::remove_dir(&from);
                Ok::<_, std::io::Error>(net)
            })();
            match moved {
                Ok(net) => return Some(net),
                Err(e) => {
                    tracing::warn!(path = %from.display(), error = %e, "a pod network made ahead is unusable");
                    remove_dir(&from).await;
                }
            }
        }
    }

    /// Keeps the pool of networks made ahead full: adopts (or removes) what an earlier
    /// agent left, then makes one whenever one is taken. Runs until dropped.
    pub async fn keep_warm(self: std::sync::Arc<Self>) {
        for dir in entries(&self.warm.dir) {
            let whole = read_state(&dir.join(STATE_FILE))
                .ok()
                .and_then(|s| s.network())
                .is_some();
            let kept = whole && {
                let mut ready = self.warm.ready.lock().expect("warm");
                let room = ready.len() < self.warm.target;
                if room {
                    ready.push_back(dir.clone());
                }
                room
            };
            if !kept {
                remove_dir(&dir).await;
            }
        }
        let mut made = 0u64;
        loop {
            while self.warm.ready.lock().expect("warm").len() < self.warm.target {
                made += 1;
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let id = format!("warm-{:x}-{made}", nanos);
                let dir = self.warm.dir.join(&id);
                match self.make(&dir, &id, "IgnoreUnknown=1".into(), vec![]).await {
                    Ok(_) => self.warm.ready.lock().expect("warm").push_back(dir),
                    Err(e) => {
                        tracing::warn!(error = %e, "making a pod network ahead failed");
                        let _ = std::fs::remove_dir_all(&dir);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            self.warm.taken.notified().await;
        }
    }
}

/// Tears down the network recorded in `dir` and removes the directory (kept if the
/// teardown fails, for a later attempt).
async fn remove_dir(dir: &Path) {
    match teardown(dir).await {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(dir);
        }
        Err(e) => tracing::warn!(path = %dir.display(), error = %e, "tearing down a pod network"),
    }
}

/// Tears down the network recorded in the pod directory `dir` (the plugins' DEL in reverse
/// order, then the namespace); nothing recorded, nothing to do. Safe to repeat.
pub async fn teardown(dir: &Path) -> Result<(), NetworkError> {
    let state_path = dir.join(STATE_FILE);
    let state = match read_state(&state_path) {
        Ok(s) => s,
        Err(_) if !state_path.exists() => return Ok(()),
        Err(e) => return Err(e),
    };
    run_list(&state.bin_dir, "DEL", &state, state.result.clone()).await?;
    netns::remove(&state.netns).map_err(|source| NetworkError::Netns {
        path: state.netns.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&state_path);
    Ok(())
}

/// The comment marking the masquerade rule of a bridge's pods.
fn masquerade_comment(bridge: &str) -> String {
    format!("skiff pods of {bridge}")
}

fn iptables(args: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new("iptables")
        .args(["-w", "-t", "nat"])
        .args(args)
        .output()
}

/// Masquerades traffic from the node's pod range to anywhere outside the cluster's (one
/// rule, added once): pods on other nodes see a pod's own address.
fn ensure_masquerade(cidr: &str, cluster_cidr: &str, bridge: &str) -> Result<(), String> {
    let comment = masquerade_comment(bridge);
    let rule = [
        "POSTROUTING",
        "-s",
        cidr,
        "!",
        "-d",
        cluster_cidr,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "MASQUERADE",
    ];
    let check: Vec<&str> = ["-C"].into_iter().chain(rule).collect();
    if iptables(&check).is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let add: Vec<&str> = ["-A"].into_iter().chain(rule).collect();
    match iptables(&add) {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "iptables: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("iptables: {e}")),
    }
}

/// Removes the masquerade rule of a bridge's pods, if there is one.
fn remove_masquerade(bridge: &str) {
    let Ok(out) = iptables(&["-S", "POSTROUTING"]) else {
        return;
    };
    let comment = masquerade_comment(bridge);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains(&format!("\"{comment}\"")) {
            continue;
        }
        // `-A POSTROUTING -s ... --comment "skiff pods of X" -j MASQUERADE`: the same words
        // after -D (the quoted comment is one of them).
        let mut words: Vec<String> = Vec::new();
        let mut quoted: Option<String> = None;
        for w in line.split(' ').skip(1) {
            match quoted.as_mut() {
                Some(q) => {
                    q.push(' ');
                    q.push_str(w.trim_end_matches('"'));
                    if w.ends_with('"') {
                        words.push(quoted.take().unwrap_or_default());
                    }
                }
                None if w.starts_with('"') && !(w.len() > 1 && w.ends_with('"')) => {
                    quoted = Some(w.trim_start_matches('"').to_string())
                }
                None => words.push(w.trim_matches('"').to_string()),
            }
        }
        let args: Vec<&str> = ["-D"]
            .into_iter()
            .chain(words.iter().map(String::as_str))
            .collect();
        let _ = iptables(&args);
    }
}

/// Removes the pods' bridge (the plugins create it, and leave it when the last pod goes)
/// and the masquerade rule of its pods. Missing is fine.
pub fn remove_bridge(bridge: &str) -> Result<(), NetworkError> {
    remove_masquerade(bridge);
    let out = std::process::Command::new("ip")
        .args(["link", "del", "dev", bridge])
        .output()
        .map_err(|e| NetworkError::Bridge(e.to_string()))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.contains("Cannot find device") {
        return Ok(());
    }
    Err(NetworkError::Bridge(err.trim().to_string()))
}

/// Why `bridge` cannot hold pod range `pod_cidr` here, if it cannot: it exists with an
/// IPv4 address outside the range, as when another agent on this host (in this network
/// namespace) took it for its own range, and every pod's network would fail.
pub fn bridge_taken(bridge: &str, pod_cidr: Cidr) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show", "dev", bridge])
        .output()
        .ok()?;
    if !out.status.success() {
        return None; // No such bridge yet: the plugin makes it.
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let foreign = links
        .as_array()?
        .iter()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
        .find(|a| {
            let ip = a.split('/').next().and_then(|ip| ip.parse().ok());
            ip.is_some_and(|ip| !pod_cidr.contains(ip))
        })?;
    Some(format!(
        "bridge {bridge} holds {foreign}, outside this node's pod range {pod_cidr}: another agent on this host uses it (give each its own --cni-bridge)"
    ))
}

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/cni";

fn read_state(path: &Path) -> Result<State, NetworkError> {
    let bad = |reason: String| NetworkError::State {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// Writes the state durably (a crash must not lose what a teardown needs).
fn write_state(path: &Path, state: &State) -> Result<(), NetworkError> {
    let bad = |e: std::io::Error| NetworkError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bad)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(bad)?;
        f.write_all(&serde_json::to_vec(state).expect("JSON"))
            .map_err(bad)?;
        f.sync_all().map_err(bad)?;
    }
    std::fs::rename(&tmp, path).map_err(bad)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(bad)?;
    }
    Ok(())
}

/// The first IPv4 address of a CNI result, without its prefix length.
fn first_ip(result: &Value) -> Option<String> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

/// Brings up the pod's `lo` (a network of its own, as the CRI runtimes do).
async fn run_loopback(bin_dir: &Path, state: &State) -> Result<(), NetworkError> {
    let conf = json!({"cniVersion": CNI_VERSION, "name": "cni-loopback", "type": "loopback"});
    run_plugin(bin_dir, "ADD", state, "lo", &conf).await?;
    Ok(())
}

/// Runs the conflist's plugins for `command`: ADD in order (each gets the previous one's
/// result), DEL in reverse (each gets the cached result). DEL errors that only say the
/// thing is gone are not errors.
async fn run_list(
    bin_dir: &Path,
    command: &'static str,
    state: &State,
    cached: Option<Value>,
) -> Result<Value, NetworkError> {
    let plugins: Vec<Value> = state.conflist["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ordered: Vec<&Value> = if command == "DEL" {
        plugins.iter().rev().collect()
    } else {
        plugins.iter().collect()
    };
    let mut prev = cached;
    for plugin in ordered {
        let mut conf = plugin.clone();
        conf["cniVersion"] = state.conflist["cniVersion"].clone();
        conf["name"] = state.conflist["name"].clone();
        if let Some(p) = &prev {
            conf["prevResult"] = p.clone();
        }
        if conf.pointer("/capabilities/portMappings") == Some(&json!(true)) {
            conf["runtimeConfig"] = json!({"portMappings": state.port_mappings});
        }
        let out = run_plugin(bin_dir, command, state, IFNAME, &conf).await?;
        if command == "ADD" {
            prev = Some(out);
        }
    }
    Ok(prev.unwrap_or(Value::Null))
}

async fn run_plugin(
    bin_dir: &Path,
    command: &'static str,
    state: &State,
    ifname: &str,
    conf: &Value,
) -> Result<Value, NetworkError> {
    let plugin = conf["type"].as_str().unwrap_or_default().to_string();
    let fail = |message: String| NetworkError::Plugin {
        plugin: plugin.clone(),
        command,
        message,
    };
    if plugin.is_empty() || plugin.contains('/') {
        return Err(fail("no valid plugin type".into()));
    }
    // A namespace that is gone already (DEL after a crash) is passed empty, as the spec says.
    let netns = if netns::exists(&state.netns) {
        state.netns.to_string_lossy().into_owned()
    } else {
        String::new()
    };
    let mut child = tokio::process::Command::new(bin_dir.join(&plugin))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &state.container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", &state.cni_args)
        .env("CNI_PATH", bin_dir)
        // The plugins run iptables, found on the PATH.
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("{}: {e}", bin_dir.join(&plugin).display())))?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(&serde_json::to_vec(conf).expect("JSON"))
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("no answer within {PLUGIN_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if out.status.success() {
        return Ok(parsed);
    }
    let msg = parsed["msg"].as_str().map_or_else(
        || String::from_utf8_lossy(&out.stderr).trim().to_string(),
        |m| match parsed["details"].as_str() {
            Some(d) if !d.is_empty() => format!("{m}: {d}"),
            _ => m.to_string(),
        },
    );
    Err(fail(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::netns::tests::privileged;

    #[test]
    fn results_give_the_ipv4_address() {
        let r = json!({"ips": [{"address": "fd00::2/64"}, {"address": "10.244.1.5/24", "gateway": "10.244.1.1"}]});
        assert_eq!(first_ip(&r).as_deref(), Some("10.244.1.5"));
        assert_eq!(first_ip(&json!({})), None);
    }

    /// A pod network set up and torn down for real: the pod has its address on eth0, the
    /// host reaches it, a second setup of the same pod gives the same network, teardown
    /// leaves no namespace, veth or address allocation.
    #[tokio::test]
    async fn pods_get_an_address_the_host_reaches_and_leave_nothing() {
        assert!(privileged(), "this test needs root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("sktest{}", std::process::id() % 100000);
        let cni = Cni::new(
            Path::new(DEFAULT_BIN_DIR),
            &dir.path().join("cni"),
            &dir.path().join("netns"),
            &bridge,
            "10.250.7.0/24".parse().unwrap(),
            "10.250.0.0/16".parse().unwrap(),
            0,
        )
        .unwrap();
        let pod_dir = dir.path().join("pod");
        let pod = PodRef {
            namespace: "default",
            name: "web",
            uid: "0b3c6a2e-uid",
        };
        let net = cni.setup(&pod_dir, &pod, vec![]).await.unwrap();
        assert!(cni.pod_cidr.contains(net.ip.parse().unwrap()), "{}", net.ip);
        assert_ne!(net.ip, "10.250.7.1", "the gateway is the bridge's");
        // Again (an agent restart): the same network, not a second one.
        let again = cni.setup(&pod_dir, &pod, vec![]).await.unwrap();
        assert_eq!(
            (again.ip.as_str(), &again.netns),
            (net.ip.as_str(), &net.netns)
        );
        // A listener in the pod's namespace is reached from the host at the pod's address.
        let ns = netns::Netns::open(&net.netns).unwrap();
        let listener = ns
            .run(|| std::net::TcpListener::bind("0.0.0.0:8080"))
            .unwrap()
            .unwrap();
        let ip = net.ip.clone();
        let reached = tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect_timeout(
                &format!("{ip}:8080").parse().unwrap(),
                Duration::from_secs(2),
            )
        })
        .await
        .unwrap();
        assert!(reached.is_ok(), "{reached:?}");
        drop((listener, ns));
        teardown(&pod_dir).await.unwrap();
        teardown(&pod_dir).await.unwrap();
        assert!(!net.netns.exists());
        let leases: Vec<_> = std::fs::read_dir(dir.path().join("cni/ipam/skiff"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        assert_eq!(leases, Vec::<String>::new());
        let links = std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", &bridge])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&links.stdout).trim(), "");
        // One masquerade rule for the node's range, gone with the bridge.
        let rules = || {
            String::from_utf8_lossy(&iptables(&["-S", "POSTROUTING"]).unwrap().stdout).into_owned()
        };
        assert!(
            rules().contains(&masquerade_comment(&bridge)),
            "{}",
            rules()
        );
        remove_bridge(&bridge).unwrap();
        assert!(
            !rules().contains(&masquerade_comment(&bridge)),
            "{}",
            rules()
        );
    }

    fn leases(conf_dir: &Path) -> usize {
        std::fs::read_dir(conf_dir.join("ipam/skiff"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok()
            })
            .count()
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..600 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}");
    }

    /// Networks made ahead: a pod without hostPorts takes one (its record moves into the
    /// pod's directory) and the pool refills; a pod with hostPorts gets its own; a later
    /// agent adopts what it needs of the pool and removes the rest.
    #[tokio::test]
    async fn pods_take_networks_made_ahead_and_the_pool_refills() {
        assert!(privileged(), "this test needs root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("skwarm{}", std::process::id() % 100000);
        let conf = dir.path().join("cni");
        let cni = |warm| {
            std::sync::Arc::new(
                Cni::new(
                    Path::new(DEFAULT_BIN_DIR),
                    &conf,
                    &dir.path().join("netns"),
                    &bridge,
                    "10.250.8.0/24".parse().unwrap(),
                    "10.250.0.0/16".parse().unwrap(),
                    warm,
                )
                .unwrap(),
            )
        };
        let first = cni(2);
        let keeper = tokio::spawn(first.clone().keep_warm());
        let ready = |c: &Cni| c.warm.ready.lock().unwrap().len();
        until("two networks made ahead", || ready(&first) == 2).await;
        assert_eq!(leases(&conf), 2);
        let pod = |uid| PodRef {
            namespace: "default",
            name: "web",
            uid,
        };
        let a_dir = dir.path().join("a");
        let a = first.setup(&a_dir, &pod("uid-a"), vec![]).await.unwrap();
        assert!(a.netns.to_string_lossy().contains("skiff-warm-"), "{a:?}");
        assert_eq!(recorded_netns(&a_dir), Some(a.netns.clone()));
        let addr = std::process::Command::new("nsenter")
            .arg(format!("--net={}", a.netns.display()))
            .args(["ip", "-4", "-o", "addr", "show", "eth0"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/", a.ip)));
        until("the pool refilled", || ready(&first) == 2).await;
        assert_eq!(warm_dirs(&conf).len(), 2);
        let ports = vec![PortMapping {
            host_port: 18080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }];
        let b_dir = dir.path().join("b");
        let b = first.setup(&b_dir, &pod("uid-b"), ports).await.unwrap();
        assert!(b.netns.ends_with("skiff-uid-b"), "{b:?}");
        assert_eq!(ready(&first), 2);
        assert_eq!(leases(&conf), 4);
        // A later agent wanting one: adopts one, removes the other.
        keeper.abort();
        let _ = keeper.await;
        let second = cni(1);
        let keeper = tokio::spawn(second.clone().keep_warm());
        until("one network adopted, one removed", || {
            ready(&second) == 1 && warm_dirs(&conf).len() == 1
        })
        .await;
        assert_eq!(leases(&conf), 3);
        keeper.abort();
        let _ = keeper.await;
        for d in [a_dir, b_dir].into_iter().chain(warm_dirs(&conf)) {
            teardown(&d).await.unwrap();
        }
        assert_eq!(leases(&conf), 0);
        assert!(!a.netns.exists() && !b.netns.exists());
        remove_bridge(&bridge).unwrap();
    }
}
