//! The pod sandbox: what a pod's containers share whatever runtime runs them: the pod's
//! volumes, each a directory on the node (emptyDir under the pod's directory, hostPath as
//! given, configMap and secret projected as files with their modes) that the runtimes mount
//! at each container's `volumeMounts`, its network namespace ([`network`], [`netns`]) and,
//! with `shareProcessNamespace`, its PID namespace ([`pause`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Secret, Volume, VolumeMount};

pub mod netns;
pub mod network;
pub mod pause;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("volume {volume:?}: this volume type is not supported on Skiff nodes")]
    Unsupported { volume: String },
    /// A configMap or secret the pod needs could not be read.
    #[error("{0}")]
    Source(String),
    #[error("volume {volume:?}: {source}")]
    Io {
        volume: String,
        source: std::io::Error,
    },
    /// A projected file's path is absolute, has `..`, or leads outside the volume.
    #[error("volume {volume:?}: item path {path:?}: {reason}")]
    ItemPath {
        volume: String,
        path: String,
        reason: String,
    },
    /// The kubelet's words for a subPath that cannot be mounted.
    #[error(
        "failed to prepare subPath for volumeMount {volume:?} of container {container:?}: {reason}"
    )]
    SubPath {
        volume: String,
        container: String,
        reason: String,
    },
    #[error("Failed to create pod sandbox: {0}")]
    Network(#[from] network::NetworkError),
    #[error("Failed to create pod sandbox: the shared PID namespace: {0}")]
    PidNamespace(std::io::Error),
    #[error("Failed to create pod sandbox: writing /etc files: {0}")]
    Etc(std::io::Error),
}

impl SandboxError {
    /// The kubelet's event reason for a sandbox that could not be created.
    pub fn reason(&self) -> &'static str {
        match self {
            SandboxError::Network(_) | SandboxError::PidNamespace(_) | SandboxError::Etc(_) => {
                "FailedCreatePodSandBox"
            }
            _ => "FailedMount",
        }
    }
}

/// A directory of the pod sandbox, visible to a container at `guest_path`.
#[derive(Clone, Debug)]
pub struct Mount {
    pub dir: HostDir,
    pub guest_path: String,
    pub read_only: bool,
}

/// `name` as one element of a path on the node: names from the API (namespaces, pods,
/// containers, volumes) are validated there, but an object stored before a rule existed
/// must not reach outside its directory either, so `/`, NUL, `%`, `.` and `..` are escaped.
pub fn path_element(name: &str) -> String {
    if name.is_empty() || name == "." || name == ".." {
        return format!("%{name}");
    }
    name.replace('%', "%25")
        .replace('/', "%2F")
        .replace('\0', "%00")
}

/// Checks a path from a manifest that must stay beneath its root: relative, without `..`
/// (symbolic links are refused later, while it is opened).
fn descending(path: &str) -> Result<&Path, &'static str> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err("must be a relative path");
    }
    if p.components().any(|c| c == Component::ParentDir) || path.contains('\0') {
        return Err("must not contain '..'");
    }
    Ok(p)
}

/// A directory of the node, open. Runtimes mount it through `/proc/self/fd/N`, so what they
/// mount is the directory that was checked, whatever happens to its path afterwards.
#[derive(Clone, Debug)]
pub struct HostDir(Arc<std::fs::File>);

impl HostDir {
    /// Opens a directory by its path on the node (a hostPath volume, or one the agent made).
    pub fn open(path: &Path) -> std::io::Result<HostDir> {
        cap_primitives::fs::open_ambient_dir(path, cap_primitives::ambient_authority())
            .map(|f| HostDir(Arc::new(f)))
    }

    /// Opens `sub` beneath this directory, following no symbolic link out of it; with
    /// `create`, missing directories are made (beneath it too), as the kubelet does for
    /// a subPath.
    fn beneath(&self, sub: &Path, create: bool) -> std::io::Result<HostDir> {
        match cap_primitives::fs::open_dir(&self.0, sub) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                self.create_dirs(sub)?;
                cap_primitives::fs::open_dir(&self.0, sub)
            }
            r => r,
        }
        .map(|f| HostDir(Arc::new(f)))
    }

    fn create_dirs(&self, sub: &Path) -> std::io::Result<()> {
        let mut prefix = PathBuf::new();
        for c in sub.components() {
            prefix.push(c);
            match cap_primitives::fs::create_dir(
                &self.0,
                &prefix,
                &cap_primitives::fs::DirOptions::new(),
            ) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes a file at `sub` beneath this directory (its directories made beneath it).
    fn write_file(&self, sub: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(parent) = sub.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.create_dirs(parent)?;
        }
        let mut opts = cap_primitives::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        let mut f = cap_primitives::fs::open(&self.0, sub, &opts)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// The path through which the open directory is reached.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

/// Where a sandbox reads the configMaps and secrets its volumes project.
#[async_trait::async_trait]
pub trait Sources: Sync {
    async fn config_map(&self, name: &str) -> Result<ConfigMap, String>;
    async fn secret(&self, name: &str) -> Result<Secret, String>;
}

/// What a pod's sandbox is made of, decided beforehand from the pod and the node
/// (config first, then the sandbox: [`Sandbox::create`] is the one place that makes it).
pub struct SandboxConfig<'a> {
    /// The pod's directory on the node: volumes, `/etc` files, network state.
    pub dir: &'a Path,
    pub volumes: &'a [Volume],
    pub network: NetworkConfig<'a>,
    /// The containers share a PID namespace (`shareProcessNamespace`, on a node with runc).
    pub share_pid: bool,
    /// The containers' host name.
    pub hostname: String,
    /// `hostAliases`: an address and its names, for `/etc/hosts`.
    pub aliases: Vec<(String, Vec<String>)>,
    /// The pod's `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// The pod's resolver (its Wasm guests' name lookups): the pod's own where it gets a
    /// network of its own (it is bound to it), else one the node's network shares.
    pub resolver: Option<Arc<crate::dns::lookup::Resolver>>,
}

/// Which network a pod's containers get.
pub enum NetworkConfig<'a> {
    /// The node's, at the node's address `ip`: `hostNetwork` pods (`host`: they also see
    /// the node's `/etc/hosts`) and pods of a node that cannot give them their own.
    Node { ip: String, host: bool },
    /// One of the pod's own, from the CNI plugins, forwarding `ports` (`hostPort`s).
    Pod {
        cni: Arc<network::Cni>,
        who: network::PodRef<'a>,
        ports: Vec<network::PortMapping>,
    },
}

/// A pod's volumes, ready to mount, and the network its containers live in.
pub struct Sandbox {
    /// Volume name -> (its root, open; read-only source).
    volumes: BTreeMap<String, (HostDir, bool)>,
    pub network: Network,
    /// The pod's address (its own, or the node's on the node's network).
    pub ip: String,
    /// The PID namespace the pod's containers share (`shareProcessNamespace`), if they do.
    pub pid_namespace: Option<PathBuf>,
    /// The containers' host name.
    pub hostname: String,
    /// Where the files of the sandbox containers see are ([`Sandbox::files`]).
    etc: PathBuf,
    /// The pod's resolver (its Wasm guests' name lookups).
    pub resolver: Option<std::sync::Arc<crate::dns::lookup::Resolver>>,
}

/// Who a pod's `/etc/hosts` names.
struct HostsEntries<'a> {
    hostname: &'a str,
    pod_ip: &'a str,
    /// `hostAliases`: an address and its names.
    aliases: Vec<(String, Vec<String>)>,
    host_network: bool,
}

/// The kubelet's managed `/etc/hosts` of a pod.
fn hosts_file(e: &HostsEntries<'_>) -> String {
    let mut out = if e.host_network {
        let node = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        format!("# Kubernetes-managed hosts file (host network).\n{node}")
    } else {
        format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{}\n",
            e.pod_ip, e.hostname
        )
    };
    if !e.aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &e.aliases {
            out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    out
}

/// The network a pod's containers live in.
#[derive(Clone, Default)]
pub enum Network {
    /// The node's own (`hostNetwork` pods; nodes that cannot isolate pods).
    #[default]
    Node,
    /// The pod's own namespace (its Wasm guests' sockets are made there).
    Pod(Arc<netns::Netns>),
    /// The node's, for a pod that did not ask for it (the node cannot give it one): its
    /// Wasm guests may not reach the node's loopback, link-local or own addresses.
    Shared,
}

impl Network {
    /// The pod's own namespace, if it has one.
    pub fn netns(&self) -> Option<Arc<netns::Netns>> {
        match self {
            Network::Node | Network::Shared => None,
            Network::Pod(ns) => Some(ns.clone()),
        }
    }
}

impl Sandbox {
    /// Makes the pod's sandbox from `config`: its volumes (under the pod's directory), its
    /// network, its PID namespace, then its `/etc` files (which name the pod's address).
    pub async fn create(
        config: SandboxConfig<'_>,
        sources: &impl Sources,
    ) -> Result<Sandbox, SandboxError> {
        let dir = config.dir;
        let volumes = make_volumes(dir, config.volumes, sources).await?;
        let (network, ip, host_network) = match config.network {
            NetworkConfig::Node { ip, host: true } => (Network::Node, ip, true),
            NetworkConfig::Node { ip, host: false } => (Network::Shared, ip, false),
            NetworkConfig::Pod { cni, who, ports } => {
                let net = cni.setup(dir, &who, ports).await?;
                let ns = netns::Netns::open(&net.netns).map_err(|source| {
                    network::NetworkError::Netns {
                        path: net.netns.clone(),
                        source,
                    }
                })?;
                (Network::Pod(ns), net.ip, false)
            }
        };
        let pid_namespace = if config.share_pid {
            let dir = dir.to_path_buf();
            let made =
                tokio::task::spawn_blocking(move || pause::ensure(&dir, &std::env::current_exe()?))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
            Some(made.map_err(SandboxError::PidNamespace)?)
        } else {
            None
        };
        let hosts = HostsEntries {
            hostname: &config.hostname,
            pod_ip: &ip,
            aliases: config.aliases,
            host_network,
        };
        let etc = write_etc(dir, &hosts, &config.resolv_conf).map_err(SandboxError::Etc)?;
        if let (Some(r), Network::Pod(ns)) = (&config.resolver, &network) {
            r.bind(ns.clone());
        }
        Ok(Sandbox {
            volumes,
            network,
            ip,
            pid_namespace,
            hostname: config.hostname,
            etc,
            resolver: config.resolver,
        })
    }

    /// Files of the sandbox containers see (`/etc/hosts`, `/etc/hostname`,
    /// `/etc/resolv.conf`): guest path, file on the node.
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        ETC_FILES
            .iter()
            .map(|name| (format!("/etc/{name}"), self.etc.join(name)))
            .collect()
    }

    /// What `c` mounts: its `volumeMounts` onto the sandbox's volumes, a `subPath` (or a
    /// `subPathExpr` expanded with the container's `env`) opened beneath its volume;
    /// configMap and secret volumes are always read-only.
    pub fn mounts(
        &self,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, SandboxError> {
        let mut out = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some((root, ro)) = self.volumes.get(&m.name) else {
                continue;
            };
            let dir = match sub_path(m, env) {
                None => root.clone(),
                Some(sub) => {
                    let fail = |reason: String| SandboxError::SubPath {
                        volume: m.name.clone(),
                        container: c.name.clone(),
                        reason,
                    };
                    let rel = descending(&sub).map_err(|r| fail(format!("{sub:?} {r}")))?;
                    root.beneath(rel, !ro)
                        .map_err(|e| fail(format!("{sub:?}: {e}")))?
                }
            };
            out.push(Mount {
                dir,
                guest_path: m.mount_path.clone(),
                read_only: *ro || m.read_only == Some(true),
            });
        }
        Ok(out)
    }

    /// Removes what the sandbox created under the pod's directory `dir` (hostPath volumes
    /// are the node's and stay): its PID namespace, its network (the plugins' DEL and the namespace, as
    /// recorded there), then its files. The files stay if the network could not go, so that
    /// a later attempt still knows what to undo.
    pub async fn remove(dir: &Path) -> Result<(), network::NetworkError> {
        pause::stop(dir);
        network::teardown(dir).await?;
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}

/// Creates `volumes` under the pod's directory `dir`: each one's root, open, and whether
/// it is a read-only projection.
async fn make_volumes(
    dir: &Path,
    volumes: &[Volume],
    sources: &impl Sources,
) -> Result<BTreeMap<String, (HostDir, bool)>, SandboxError> {
    let mut out = BTreeMap::new();
    for v in volumes {
        let io = |source| SandboxError::Io {
            volume: v.name.clone(),
            source,
        };
        let own = dir.join("volumes").join(path_element(&v.name));
        let projected: Option<(BTreeMap<String, Vec<u8>>, _, _)> =
            if v.host_path.is_some() || v.empty_dir.is_some() {
                None
            } else if let Some(c) = &v.config_map {
                let cm = match sources.config_map(&c.name).await {
                    Ok(cm) => cm,
                    Err(_) if c.optional == Some(true) => ConfigMap::default(),
                    Err(e) => return Err(SandboxError::Source(e)),
                };
                let data = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .chain(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    )
                    .collect();
                Some((data, c.items.as_deref(), c.default_mode))
            } else if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let secret = match sources.secret(&name).await {
                    Ok(s) => s,
                    Err(_) if s.optional == Some(true) => Secret::default(),
                    Err(e) => return Err(SandboxError::Source(e)),
                };
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                Some((data, s.items.as_deref(), s.default_mode))
            } else {
                return Err(SandboxError::Unsupported {
                    volume: v.name.clone(),
                });
            };
        let root = match &v.host_path {
            Some(h) => {
                let host = Path::new(&h.path);
                if host.components().any(|c| c == Component::ParentDir) {
                    return Err(io(std::io::Error::other(format!(
                        "hostPath {:?} must not contain '..'",
                        h.path
                    ))));
                }
                std::fs::create_dir_all(host).map_err(io)?;
                HostDir::open(host).map_err(io)?
            }
            None => {
                std::fs::create_dir_all(&own).map_err(io)?;
                HostDir::open(&own).map_err(io)?
            }
        };
        if let Some((data, items, mode)) = &projected {
            project(&root, &v.name, data, *items, *mode)?;
        }
        out.insert(v.name.clone(), (root, projected.is_some()));
    }
    Ok(out)
}

/// Writes the pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` (`resolv`) under
/// the pod's directory `dir`: the directory they are in.
fn write_etc(dir: &Path, hosts: &HostsEntries<'_>, resolv: &str) -> std::io::Result<PathBuf> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let contents = [
        hosts_file(hosts).into_bytes(),
        format!("{}\n", hosts.hostname).into_bytes(),
        resolv.as_bytes().to_vec(),
    ];
    for (name, bytes) in ETC_FILES.iter().zip(contents) {
        std::fs::write(etc.join(name), bytes)?;
    }
    Ok(etc)
}

/// The files of `/etc` a pod's sandbox gives its containers.
const ETC_FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];

/// A mount's subPath, or its subPathExpr with `$(VAR)` expanded from `env`.
fn sub_path(m: &VolumeMount, env: &[(String, String)]) -> Option<String> {
    if let Some(s) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
        return Some(s.to_string());
    }
    let expr = m.sub_path_expr.as_deref().filter(|s| !s.is_empty())?;
    Some(crate::expansion::expand(expr, |name| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }))
}

/// Writes configMap/secret keys (or the chosen items) as files with their modes, each
/// beneath the volume's root.
fn project(
    root: &HostDir,
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<(), SandboxError> {
    let files: Vec<(&str, &Vec<u8>, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.as_str(), v, i.mode)))
            .collect(),
        None => data.iter().map(|(k, v)| (k.as_str(), v, None)).collect(),
    };
    for (path, bytes, mode) in files {
        let fail = |reason: String| SandboxError::ItemPath {
            volume: volume.into(),
            path: path.into(),
            reason,
        };
        let rel = descending(path).map_err(|r| fail(r.into()))?;
        let mode = mode.or(default_mode).unwrap_or(0o644) as u32 & 0o777;
        root.write_file(rel, bytes, mode)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, SecretVolumeSource,
    };
    use std::os::unix::fs::PermissionsExt;

    struct Fixed;

    /// A sandbox of `volumes` on the node's network.
    fn config<'a>(dir: &'a Path, volumes: &'a [Volume]) -> SandboxConfig<'a> {
        SandboxConfig {
            dir,
            volumes,
            network: NetworkConfig::Node {
                ip: "10.0.0.1".into(),
                host: false,
            },
            share_pid: false,
            hostname: "pod".into(),
            aliases: vec![],
            resolv_conf: String::new(),
            resolver: None,
        }
    }

    #[async_trait::async_trait]
    impl Sources for Fixed {
        async fn config_map(&self, name: &str) -> Result<ConfigMap, String> {
            match name {
                "cfg" => Ok(ConfigMap {
                    data: Some([("a.txt".to_string(), "A".to_string())].into()),
                    ..Default::default()
                }),
                _ => Err(format!("configmap {name:?} not found")),
            }
        }
        async fn secret(&self, name: &str) -> Result<Secret, String> {
            Err(format!("secret {name:?} not found"))
        }
    }

    #[tokio::test]
    async fn volumes_are_projected_and_mounted_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = vec![
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "cfg".into(),
                    items: Some(vec![KeyToPath {
                        key: "a.txt".into(),
                        path: "sub/renamed.txt".into(),
                        mode: Some(0o400),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "maybe".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("absent".into()),
                    optional: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let sandbox = Sandbox::create(config(dir.path(), &volumes), &Fixed)
            .await
            .unwrap();
        let file = dir.path().join("volumes/config/sub/renamed.txt");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "A");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let c = Container {
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/tmp".into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "config".into(),
                    mount_path: "/etc/app".into(),
                    read_only: Some(false),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let mounts: Vec<(String, bool)> = sandbox
            .mounts(&c, &[])
            .unwrap()
            .into_iter()
            .map(|m| (m.guest_path, m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [("/tmp".to_string(), false), ("/etc/app".to_string(), true)],
            "a configMap volume stays read-only even when the mount asks otherwise"
        );

        let missing = vec![Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "other".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let err = Sandbox::create(config(dir.path(), &missing), &Fixed)
            .await
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "configmap \"other\" not found");
        let nfs = vec![Volume {
            name: "remote".into(),
            ..Default::default()
        }];
        let err = Sandbox::create(config(dir.path(), &nfs), &Fixed)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "volume \"remote\": this volume type is not supported on Skiff nodes"
        );
    }

    /// Regression: `subPath: /` or `../../etc` mounted a node directory into the guest, and
    /// `items: [{path: ../../../x}]` made the agent write outside the pod. Objects stored
    /// before the API server validated these must not escape either.
    #[tokio::test]
    async fn manifest_paths_stay_beneath_their_volume() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pod");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "node secret").unwrap();
        for path in ["../../../x", "/abs", "a/../../x", ".."] {
            let volumes = vec![Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "cfg".into(),
                    items: Some(vec![KeyToPath {
                        key: "a.txt".into(),
                        path: path.into(),
                        mode: None,
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }];
            let err = Sandbox::create(config(&pod, &volumes), &Fixed).await.err();
            assert!(
                matches!(err, Some(SandboxError::ItemPath { .. })),
                "{path}: {err:?}"
            );
        }
        assert!(!dir.path().join("x").exists() && !Path::new("/abs").exists());

        let volumes = vec![Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }];
        let sandbox = Sandbox::create(config(&pod, &volumes), &Fixed)
            .await
            .unwrap();
        let root = pod.join("volumes/scratch");
        // A guest (or another container) may leave symbolic links in a writable volume.
        std::os::unix::fs::symlink(&outside, root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../../outside", root.join("rel-link")).unwrap();
        std::fs::create_dir_all(root.join("inner")).unwrap();
        std::os::unix::fs::symlink("inner", root.join("ok-link")).unwrap();
        let mount = |sub: Option<&str>, expr: Option<&str>| Container {
            name: "c".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "scratch".into(),
                mount_path: "/data".into(),
                sub_path: sub.map(Into::into),
                sub_path_expr: expr.map(Into::into),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let env = vec![
            ("UP".to_string(), "../..".to_string()),
            ("POD".to_string(), "web-0".to_string()),
        ];
        for (sub, expr) in [
            (Some("/"), None),
            (Some("../../outside"), None),
            (Some("abs-link"), None),
            (Some("rel-link"), None),
            (Some("rel-link/deeper"), None),
            (None, Some("$(UP)/outside")),
        ] {
            let err = sandbox.mounts(&mount(sub, expr), &env).err();
            assert!(
                matches!(err, Some(SandboxError::SubPath { .. })),
                "{sub:?} {expr:?}: {err:?}"
            );
        }
        assert!(
            !outside.join("deeper").exists(),
            "created outside the volume"
        );
        // What stays inside works: an existing directory, a link within the volume, a
        // missing directory (made, as the kubelet does) and an expanded subPathExpr.
        for (sub, expr, made) in [
            (Some("inner"), None, "inner"),
            (Some("ok-link"), None, "inner"),
            (Some("new/dir"), None, "new/dir"),
            (None, Some("logs/$(POD)"), "logs/web-0"),
        ] {
            let mounts = sandbox.mounts(&mount(sub, expr), &env).unwrap();
            std::fs::write(mounts[0].dir.path().join("probe"), "x").unwrap();
            assert!(root.join(made).join("probe").exists(), "{sub:?} {expr:?}");
        }
    }
}
