//! OCI containers through runc: each run gets a bundle (`<containers>/<pod uid>/<run id>/`)
//! whose `rootfs` is an overlay of the image's unpacked layers with a writable layer of its
//! own, and whose `config.json` [`spec`] builds; a [`shim`] process per container runs runc
//! and outlives the agent, so a restarted agent adopts running containers. A container's
//! end is read from the exit file its shim leaves; a kill is `runc kill --all … KILL`.

mod attach;
mod exec;
mod readonly;
pub mod seccomp;
pub mod shim;
pub mod spec;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Alive, ContainerSpec, Exit, KillSwitch, Running, Runtime, RuntimeError};
use crate::images::Content;
use crate::layout::Layout;
use shim::{ExitFile, ShimArgs, EXIT_FILE, PID_FILE};

/// How long a shim may take to say it started the container.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The cgroup parent of every container of this runtime.
const CGROUP_PARENT: &str = "/skiff";

pub struct OciRuntime(Arc<Inner>);

struct Inner {
    runc: PathBuf,
    /// runc's state directory (`runc --root`): per agent.
    root: PathBuf,
    /// Where the bundles are (by pod).
    layout: Layout,
    /// The agent's own binary, which is also the shim.
    exe: PathBuf,
    /// Set when the agent shuts down: containers stay, for the next agent to adopt.
    detached: AtomicBool,
    /// The most processes a container may have (the kubelet's `--pod-max-pids`).
    pids_limit: Option<i64>,
    /// Whether `privileged: true` containers may run here (the kubelet's
    /// `--allow-privileged`).
    allow_privileged: bool,
    seccomp: seccomp::Policy,
}

/// Settings of the runtime (agent flags).
#[derive(Clone, Debug)]
pub struct OciConfig {
    pub runc: PathBuf,
    pub pids_limit: Option<i64>,
    pub allow_privileged: bool,
    /// RuntimeDefault for containers that ask for no seccomp profile (the kubelet's
    /// `--seccomp-default`).
    pub seccomp_default: bool,
}

fn start_error(id: &str, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Start {
        id: id.into(),
        reason: reason.to_string(),
    }
}

impl OciRuntime {
    /// The runtime, if this node can run OCI containers (root, runc, overlayfs); else why
    /// not.
    pub fn detect(layout: &Layout, config: &OciConfig) -> Result<OciRuntime, String> {
        // Safety: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the agent does not run as root".into());
        }
        let version = std::process::Command::new(&config.runc)
            .arg("--version")
            .output()
            .map_err(|e| format!("{} cannot run: {e}", config.runc.display()))?;
        if !version.status.success() {
            return Err(format!("{} --version failed", config.runc.display()));
        }
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.lines().any(|l| l.ends_with("\toverlay")) {
            return Err("the kernel has no overlay file system".into());
        }
        let exe = std::env::current_exe().map_err(|e| format!("the agent's own binary: {e}"))?;
        let inner = Inner {
            runc: config.runc.clone(),
            root: layout.runc_state(),
            layout: layout.clone(),
            exe,
            detached: AtomicBool::new(false),
            pids_limit: config.pids_limit,
            allow_privileged: config.allow_privileged,
            seccomp: seccomp::Policy {
                root: layout.seccomp(),
                default_to_runtime: config.seccomp_default,
            },
        };
        for d in [inner.root.clone(), inner.layout.bundles()] {
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Ok(OciRuntime(Arc::new(inner)))
    }

    /// From now on, dropping a container leaves it running (the agent is shutting down).
    pub fn detach(&self) {
        self.0.detached.store(true, Ordering::SeqCst);
    }

    /// Kills and removes every container of pod `uid` still on the node (its pod is gone).
    pub async fn remove_pod(&self, uid: &str) {
        let dir = self.0.layout.pod_bundles(uid);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let bundle = e.path();
            let id = e.file_name().to_string_lossy().into_owned();
            self.0.kill(&id);
            if let Some(pid) = shim_pid(&bundle, &id) {
                wait_pid(pid).await;
            }
            cleanup(&bundle);
        }
        let _ = std::fs::remove_dir_all(&dir);
        remove_pod_cgroups(uid);
    }

    /// A stopped agent's containers, all gone (`skiff reset`): killed through runc, their
    /// shims waited for, their bundles unmounted and removed, their pods' cgroups removed.
    /// Needs no detection: a node reset after runc went still gets its mounts back.
    pub async fn reset(layout: &Layout, runc: &Path) {
        let rt = OciRuntime(Arc::new(Inner {
            runc: runc.to_path_buf(),
            root: layout.runc_state(),
            layout: layout.clone(),
            exe: PathBuf::new(),
            detached: AtomicBool::new(false),
            pids_limit: None,
            allow_privileged: false,
            seccomp: seccomp::Policy {
                root: layout.seccomp(),
                default_to_runtime: false,
            },
        }));
        for uid in rt.pods() {
            rt.remove_pod(&uid).await;
        }
    }

    /// The pods (uids) that have containers on the node.
    pub fn pods(&self) -> Vec<String> {
        std::fs::read_dir(self.0.layout.bundles())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Inner {
    fn runc(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.runc);
        c.arg("--root").arg(&self.root);
        c
    }

    /// SIGKILL to every process of the container (whatever it is doing); nothing if it is
    /// gone.
    fn kill(&self, id: &str) {
        self.signal(id, "KILL");
    }

    fn signal(&self, id: &str, signal: &str) {
        let _ = self
            .runc()
            .args(["kill", "--all", "--", id, signal])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The pid of a container's shim if it still runs (and is that shim, not a reused pid).
fn shim_pid(bundle: &Path, id: &str) -> Option<i32> {
    crate::procs::recorded(&bundle.join(PID_FILE), &["shim", "--id", id])
}

fn pidfd(pid: i32) -> Option<OwnedFd> {
    // Safety: pidfd_open returns a new descriptor we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // Safety: a fresh descriptor.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves when process `pid` (not a child of ours) has ended.
async fn wait_pid(pid: i32) {
    let Some(fd) = pidfd(pid) else {
        return;
    };
    // Safety: an OwnedFd keeps its descriptor open and the same until dropped.
    match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            // No reactor for it: poll.
            while shim_alive(pid) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn shim_alive(pid: i32) -> bool {
    // Safety: kill with signal 0 only checks.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn cpath(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// Mounts the container's root file system: the layers (bottom first) under a writable
/// layer of its own; `nodev`, and `nosuid` unless the container may gain privileges (a
/// set-user-ID file of an image or of a writable layer then gives root to no one).
fn mount_rootfs(layers: &[PathBuf], bundle: &Path, suid: bool) -> std::io::Result<PathBuf> {
    let (upper, work, rootfs) = (
        bundle.join("upper"),
        bundle.join("work"),
        bundle.join("rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d)?;
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    if lower.is_empty() || lower.iter().any(|l| l.contains([',', ':'])) {
        return Err(std::io::Error::other("unusable layer paths"));
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let (src, target, fstype, data) = (
        c"overlay",
        cpath(&rootfs)?,
        c"overlay",
        std::ffi::CString::new(options).map_err(std::io::Error::other)?,
    );
    let flags = libc::MS_NODEV | if suid { 0 } else { libc::MS_NOSUID };
    // Safety: mount with valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rootfs)
}

/// Removes pod `uid`'s cgroup directories (runc removes each container's own, not their
/// parent), in every hierarchy: cgroup v2's, or each v1 controller's. Only empty ones go.
pub fn remove_pod_cgroups(uid: &str) {
    let rel = format!(
        "{}/{}",
        CGROUP_PARENT.trim_start_matches('/'),
        crate::sandbox::path_element(uid)
    );
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(&rel)];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(e.path().join(&rel));
    }
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// The mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn umount(path: &Path) {
    if let Ok(target) = cpath(path) {
        // Safety: umount2 with a valid path; failure (not mounted) is fine.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Unmounts a container's root file system and volume binds and removes its bundle. A
/// bundle with a mount left is not removed: removing through a mount would delete a
/// volume's files.
fn cleanup(bundle: &Path) {
    for m in mounts_under(bundle) {
        umount(&m);
    }
    if mounts_under(bundle).is_empty() {
        let _ = std::fs::remove_dir_all(bundle);
    } else {
        tracing::warn!(bundle = %bundle.display(), "a container bundle still has mounts; left in place");
    }
}

/// Binds a volume directory the agent holds open at `target` in the agent's own mount
/// namespace (runc, in a namespace of its own, can bind only paths, and a path could be
/// swapped for a link meanwhile: this one is a mount of exactly the checked directory).
fn bind_volume(dir: &crate::sandbox::HostDir, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    let (src, dst) = (cpath(&dir.path())?, cpath(target)?);
    // Safety: mount with valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `name` of the image's `User` in the root file system's `etc/passwd` or `etc/group`
/// (read beneath the root: its links cannot lead out).
fn lookup(rootfs: &Path, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    use std::io::Read;
    let root =
        cap_primitives::fs::open_ambient_dir(rootfs, cap_primitives::ambient_authority()).ok()?;
    let mut opts = cap_primitives::fs::OpenOptions::new();
    opts.read(true);
    let mut text = String::new();
    cap_primitives::fs::open(&root, Path::new(file), &opts)
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| {
            let id = f[2].parse().ok()?;
            Some((id, f.get(3).and_then(|g| g.parse().ok())))
        })?
    })
}

/// The uid and gid a container runs as: `runAsUser`/`runAsGroup`, else the image's `User`
/// (numbers, or names from its `/etc/passwd`), else root; `runAsNonRoot` refuses root.
fn resolve_user(spec: &ContainerSpec, rootfs: &Path) -> Result<(u32, u32), RuntimeError> {
    let sec = &spec.security;
    let image_user = spec.image_user.as_deref().unwrap_or_default();
    let (user, group) = image_user.split_once(':').unwrap_or((image_user, ""));
    let named_user = !user.is_empty() && user.parse::<u32>().is_err();
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = sec.run_as_user {
        uid = u as u32;
    } else if !user.is_empty() {
        match user.parse::<u32>() {
            Ok(u) => uid = u,
            Err(_) => {
                let (u, g) = lookup(rootfs, "etc/passwd", user).ok_or_else(|| {
                    RuntimeError::Config(format!(
                        "unable to find user {user}: no matching entries in passwd file"
                    ))
                })?;
                uid = u;
                gid = g.unwrap_or(0);
            }
        }
    }
    if let Some(g) = sec.run_as_group {
        gid = g as u32;
    } else if !group.is_empty() {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => lookup(rootfs, "etc/group", group)
                .map(|(g, _)| g)
                .ok_or_else(|| {
                    RuntimeError::Config(format!(
                        "unable to find group {group}: no matching entries in group file"
                    ))
                })?,
        };
    }
    if sec.run_as_non_root {
        if sec.run_as_user.is_none() && named_user {
            return Err(RuntimeError::Config(format!(
                "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (container: {})",
                spec.id
            )));
        }
        if uid == 0 {
            return Err(RuntimeError::Config(format!(
                "container has runAsNonRoot and image will run as root (container: {})",
                spec.id
            )));
        }
    }
    Ok((uid, gid))
}

impl OciRuntime {
    fn config(
        &self,
        spec: &ContainerSpec,
        bundle: &Path,
        rootfs: &Path,
        cgroup: &str,
    ) -> Result<spec::Config, RuntimeError> {
        let sec = &spec.security;
        if sec.privileged && !self.0.allow_privileged {
            return Err(RuntimeError::Config(
                "privileged containers are not allowed on this node".into(),
            ));
        }
        let (uid, gid) = resolve_user(spec, rootfs)?;
        let capabilities = spec::capabilities(&sec.add_capabilities, &sec.drop_capabilities)
            .map_err(|e| RuntimeError::Config(e.to_string()))?;
        let seccomp = (self.0.seccomp)
            .filter(sec.seccomp.as_ref(), sec.privileged, &capabilities)
            .map_err(|e| start_error(&spec.id, e))?;
        let netns = match &spec.network {
            crate::sandbox::Network::Node | crate::sandbox::Network::Shared => None,
            crate::sandbox::Network::Pod(ns) => Some(ns.path().to_path_buf()),
        };
        let mut binds = Vec::with_capacity(spec.mounts.len() + spec.files.len());
        for (i, m) in spec.mounts.iter().enumerate() {
            let source = bundle.join("volumes").join(i.to_string());
            bind_volume(&m.dir, &source).map_err(|e| {
                start_error(&spec.id, format!("binding volume at {}: {e}", m.guest_path))
            })?;
            binds.push(spec::Bind {
                source,
                destination: m.guest_path.clone(),
                read_only: m.read_only,
            });
        }
        for (guest, host) in &spec.files {
            // Files a volume mounts over stay the volume's.
            if !binds.iter().any(|b| b.destination == *guest) {
                binds.push(spec::Bind {
                    source: host.clone(),
                    destination: guest.clone(),
                    read_only: false,
                });
            }
        }
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        if !spec.env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.push(format!("HOSTNAME={}", spec.hostname));
        }
        Ok(spec::Config {
            argv: spec.argv.clone(),
            env,
            cwd: spec.working_dir.clone().unwrap_or_else(|| "/".into()),
            hostname: spec.hostname.clone(),
            uid,
            gid,
            additional_gids: sec.supplemental_groups.iter().map(|g| *g as u32).collect(),
            read_only_root: sec.read_only_root_filesystem,
            netns,
            pidns: spec.pid_namespace.clone(),
            binds,
            capabilities,
            privileged: sec.privileged,
            // Kubernetes allows escalation unless told not to; Skiff forbids it unless
            // told to allow it (or the container is privileged).
            no_new_privileges: sec.allow_privilege_escalation != Some(true),
            memory_limit: spec.memory_limit.map(|b| b as i64),
            cpu_limit_millis: spec.cpu_limit_millis.map(|m| m as i64),
            cpu_request_millis: spec.cpu_request_millis.map(|m| m as i64),
            pids_limit: self.0.pids_limit,
            cgroups_path: cgroup.to_string(),
            terminal: spec.tty,
            seccomp,
        })
    }
}

/// A runc container, through its shim.
struct OciContainer {
    rt: Arc<Inner>,
    id: String,
    bundle: PathBuf,
    shim: i32,
    /// Held until the container is gone and its bundle removed.
    alive: Option<Alive>,
}

impl OciContainer {
    fn exit(&self) -> Exit {
        let read = std::fs::read(self.bundle.join(EXIT_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<ExitFile>(&b).ok());
        match read {
            Some(e) if e.oom_killed => Exit {
                code: 137,
                reason: "OOMKilled",
                message: None,
            },
            Some(ExitFile {
                error: Some(msg), ..
            }) => Exit {
                code: 128,
                reason: "StartError",
                message: Some(msg),
            },
            Some(e) => Exit::code(e.code),
            None => Exit::killed(Some(
                "the container's shim ended without an exit status".into(),
            )),
        }
    }
}

#[async_trait::async_trait]
impl Running for OciContainer {
    async fn wait(&mut self) -> Exit {
        wait_pid(self.shim).await;
        let exit = self.exit();
        let bundle = self.bundle.clone();
        let _ = tokio::task::spawn_blocking(move || cleanup(&bundle)).await;
        self.alive = None;
        exit
    }

    fn kill_switch(&self) -> KillSwitch {
        let (rt, id) = (self.rt.clone(), self.id.clone());
        KillSwitch::new(move || {
            let (rt, id) = (rt.clone(), id.clone());
            std::thread::spawn(move || rt.kill(&id));
        })
    }

    /// SIGTERM to the container's processes.
    fn terminate_switch(&self) -> KillSwitch {
        let (rt, id) = (self.rt.clone(), self.id.clone());
        KillSwitch::new(move || {
            let (rt, id) = (rt.clone(), id.clone());
            std::thread::spawn(move || rt.signal(&id, "TERM"));
        })
    }
}

impl Drop for OciContainer {
    fn drop(&mut self) {
        let Some(alive) = self.alive.take() else {
            return;
        };
        if self.rt.detached.load(Ordering::SeqCst) {
            return;
        }
        // Dropped while running (its pod is going): kill it, then clean up once its shim
        // is gone; the pod's token goes last.
        let (rt, id, bundle, shim) = (
            self.rt.clone(),
            self.id.clone(),
            self.bundle.clone(),
            self.shim,
        );
        let (rt2, id2) = (rt.clone(), id.clone());
        let finish = async move {
            let _ = tokio::task::spawn_blocking({
                let (rt, id) = (rt.clone(), id.clone());
                move || rt.kill(&id)
            })
            .await;
            wait_pid(shim).await;
            let _ = tokio::task::spawn_blocking(move || cleanup(&bundle)).await;
            drop(alive);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(finish);
            }
            Err(_) => {
                rt2.kill(&id2);
            }
        }
    }
}

#[async_trait::async_trait]
impl Runtime for OciRuntime {
    fn name(&self) -> &'static str {
        "runc"
    }

    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Running>, RuntimeError> {
        let Content::Rootfs(layers) = &spec.image else {
            return Err(RuntimeError::InvalidImage {
                image: spec.image_digest.clone(),
                reason: "not a root file system image".into(),
            });
        };
        let id = spec.run_id.clone();
        let bundle = self.0.layout.bundle(&spec.pod_uid, &id);
        // A leftover of an earlier attempt with this name goes first.
        self.0.kill(&id);
        let _ = self
            .0
            .runc()
            .args(["delete", "--force", "--", &id])
            .stderr(std::process::Stdio::null())
            .status();
        cleanup(&bundle);
        std::fs::create_dir_all(&bundle).map_err(|e| start_error(&spec.id, e))?;
        let fail = |e: RuntimeError| {
            cleanup(&bundle);
            e
        };
        let sec = &spec.security;
        let suid = sec.privileged || sec.allow_privilege_escalation == Some(true);
        let rootfs = mount_rootfs(layers, &bundle, suid).map_err(|e| {
            fail(start_error(
                &spec.id,
                format!("mounting the root file system: {e}"),
            ))
        })?;
        let cgroup = format!(
            "{CGROUP_PARENT}/{}/{}",
            crate::sandbox::path_element(&spec.pod_uid),
            crate::sandbox::path_element(&id)
        );
        let config = self
            .config(&spec, &bundle, &rootfs, &cgroup)
            .map_err(fail)?;
        let mut oci =
            spec::build(&config).map_err(|e| fail(RuntimeError::Config(e.to_string())))?;
        if config.read_only_root {
            // Read-only here, keeping nosuid and nodev (runc's remount would drop them).
            match readonly::make_readonly(&rootfs, &oci, suid) {
                Ok(()) => {
                    let mut root = oci.root().clone().unwrap_or_default();
                    root.set_readonly(Some(false));
                    oci.set_root(Some(root));
                }
                Err(e) => tracing::debug!(id = %spec.id, error = %e, "read-only root left to runc"),
            }
        }
        oci.save(bundle.join("config.json"))
            .map_err(|e| fail(start_error(&spec.id, e)))?;
        let args = ShimArgs {
            id: id.clone(),
            bundle: bundle.clone(),
            runc: self.0.runc.clone(),
            runc_root: self.0.root.clone(),
            log: spec.log.path(),
            max_log_bytes: spec.log.rotation().max_bytes,
            max_log_files: spec.log.rotation().max_files,
            cgroup,
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
            tty: spec.tty,
        };
        let mut child = tokio::process::Command::from(args.command(&self.0.exe))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| fail(start_error(&spec.id, format!("starting the shim: {e}"))))?;
        let stdout = child.stdout.take().expect("piped");
        // The shim forks and its first process ends at once.
        let _ = child.wait().await;
        let line = tokio::time::timeout(START_TIMEOUT, async {
            use tokio::io::AsyncBufReadExt;
            let mut line = String::new();
            let _ = tokio::io::BufReader::new(stdout).read_line(&mut line).await;
            line
        })
        .await
        .unwrap_or_default();
        match line.trim().split_once(' ') {
            Some(("started", _)) => {}
            Some(("error", msg)) => {
                return Err(fail(start_error(&spec.id, msg)));
            }
            _ => {
                self.0.kill(&id);
                return Err(fail(start_error(&spec.id, "the shim did not report")));
            }
        }
        let shim = shim_pid(&bundle, &id)
            .ok_or_else(|| start_error(&spec.id, "the shim is gone"))
            .or_else(|e| {
                // It may have ended with the container already: its exit is there.
                if bundle.join(EXIT_FILE).exists() {
                    Ok(-1)
                } else {
                    Err(e)
                }
            })?;
        Ok(Box::new(OciContainer {
            rt: self.0.clone(),
            id,
            bundle,
            shim,
            alive: Some(spec.alive),
        }))
    }

    async fn exec(
        &self,
        run_id: &str,
        argv: &[String],
        stdin: bool,
        tty: bool,
    ) -> Result<super::ExecProcess, RuntimeError> {
        if tty {
            exec::with_terminal(self.0.runc(), run_id, argv)
        } else {
            exec::with_pipes(self.0.runc(), run_id, argv, stdin)
        }
    }

    async fn attach(
        &self,
        run_id: &str,
        stdin: bool,
        tty: bool,
    ) -> Result<super::ExecProcess, RuntimeError> {
        let bundle = self
            .0
            .layout
            .find_bundle(run_id)
            .ok_or_else(|| RuntimeError::Exec(format!("container {run_id} not found")))?;
        attach::connect(&bundle, stdin, tty).await
    }

    async fn adopt(&self, run_id: &str, alive: Alive) -> Option<Box<dyn Running>> {
        let bundle = self.0.layout.find_bundle(run_id)?;
        let shim = match shim_pid(&bundle, run_id) {
            Some(pid) => pid,
            None if bundle.join(EXIT_FILE).exists() => -1,
            None => return None,
        };
        Some(Box::new(OciContainer {
            rt: self.0.clone(),
            id: run_id.to_string(),
            bundle,
            shim,
            alive: Some(alive),
        }))
    }
}
