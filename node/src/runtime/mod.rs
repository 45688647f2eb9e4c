//! Container runtimes behind one narrow trait: a runtime sees an image, arguments,
//! environment, mounts, limits and where output goes — never the whole pod spec. The pod
//! sandbox (volumes, and later the network namespace) is prepared outside and shared.

pub mod oci;
pub mod wasm;

use crate::images::{Content, Image};
use crate::layout::ContainerId;
use crate::logs::LogFile;
use crate::sandbox::Mount;

/// A container's securityContext merged with its pod's (the container's fields win).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Security {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub supplemental_groups: Vec<i64>,
    pub read_only_root_filesystem: bool,
    pub privileged: bool,
    /// `None`: not set (Kubernetes then allows escalation; Skiff does not).
    pub allow_privilege_escalation: Option<bool>,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// The seccomp profile asked for; `None`: not set (the node's default applies).
    pub seccomp: Option<Seccomp>,
}

/// A `seccompProfile` of a container's (or its pod's) securityContext.
#[derive(Clone, Debug, PartialEq)]
pub enum Seccomp {
    Unconfined,
    RuntimeDefault,
    /// A profile file beneath the node's seccomp root (validated by the API server).
    Localhost(String),
}

/// What a runtime needs to start one container.
pub struct ContainerSpec {
    /// `<namespace>/<pod>/<container>`, for logs and errors.
    pub id: String,
    /// This run's unique name on the node (`<pod uid>-<container>-<run>`): a runtime's
    /// container ID.
    pub run_id: String,
    /// The pod's uid (its containers are grouped by it on the node).
    pub pod_uid: String,
    /// The container's host name (the pod's).
    pub hostname: String,
    /// Files of the pod sandbox bound at these paths (`/etc/hosts`, `/etc/resolv.conf`).
    pub files: Vec<(String, std::path::PathBuf)>,
    pub security: Security,
    /// The image's `User`, if it names one.
    pub image_user: Option<String>,
    /// Thousandths of a CPU the container asks for (its share under contention).
    pub cpu_request_millis: Option<u64>,
    /// The TCP ports the container declares (`containerPort`), in order.
    pub ports: Vec<u16>,
    /// The image's content (a Wasm module or component, or a root file system) and its
    /// digest.
    pub image: crate::images::Content,
    pub image_digest: String,
    /// `command` followed by `args`; the first is the program name.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    /// The container keeps a stdin open for `kubectl attach` (`stdin`), closed after the
    /// first session (`stdinOnce`); it runs on a terminal (`tty`).
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// The PID namespace the pod's containers share, if they do (`shareProcessNamespace`).
    pub pid_namespace: Option<std::path::PathBuf>,
    /// The pod's network: the container's sockets are made there.
    pub network: crate::sandbox::Network,
    /// How the container's name lookups resolve where the runtime resolves them (Wasm
    /// guests; an OCI container's libc reads the pod's resolv.conf).
    pub resolver: Option<std::sync::Arc<crate::dns::lookup::Resolver>>,
    pub log: LogFile,
    /// Bytes of memory (linear memories and tables) the container may use.
    pub memory_limit: Option<u64>,
    /// Thousandths of a CPU the container may use.
    pub cpu_limit_millis: Option<u64>,
    /// Held by the runtime until the container is really gone (nothing of it runs or
    /// writes any more).
    pub alive: Alive,
}

/// Counts the containers (of a pod) that still exist, so that their owner can wait until
/// none does: each container's runtime holds an [`Alive`] from [`Containers::token`] for as
/// long as anything of the container runs.
#[derive(Clone, Default)]
pub struct Containers(std::sync::Arc<Count>);

/// (A `watch` channel would do, at ~380 bytes a pod: it keeps eight `Notify`s.)
#[derive(Default)]
struct Count {
    n: std::sync::atomic::AtomicUsize,
    none: tokio::sync::Notify,
}

impl Containers {
    pub fn token(&self) -> Alive {
        self.0.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Alive(self.0.clone())
    }

    /// Resolves when no token is held.
    pub async fn gone(&self) {
        loop {
            let none = self.0.none.notified();
            tokio::pin!(none);
            // Listening before looking: a last token dropped in between still wakes us.
            none.as_mut().enable();
            if self.0.n.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            none.await;
        }
    }
}

/// One container's share of [`Containers`]; dropped when the container is gone.
pub struct Alive(std::sync::Arc<Count>);

impl Drop for Alive {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// Kubernetes' reason: `Completed`, `Error`, `OOMKilled`.
    pub reason: &'static str,
    pub message: Option<String>,
}

impl Exit {
    pub fn code(code: i32) -> Exit {
        Exit {
            code,
            reason: if code == 0 { "Completed" } else { "Error" },
            message: None,
        }
    }

    /// Ended by a kill (SIGKILL's 137, as a runc container would).
    pub fn killed(message: Option<String>) -> Exit {
        Exit {
            code: 137,
            reason: "Error",
            message,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid image {image}: {reason}")]
    InvalidImage { image: String, reason: String },
    #[error("cannot start container {id}: {reason}")]
    Start { id: String, reason: String },
    /// The container's settings cannot be honoured (the kubelet's CreateContainerConfigError).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Exec(String),
}

/// Stops a container (it then ends with exit code 137) whatever it is doing; cheap to
/// clone and keep.
#[derive(Clone)]
pub struct KillSwitch(std::sync::Arc<dyn Fn() + Send + Sync>);

impl KillSwitch {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        KillSwitch(std::sync::Arc::new(f))
    }

    pub fn kill(&self) {
        (self.0)()
    }
}

/// A started container. Dropping it kills the container.
#[async_trait::async_trait]
pub trait Running: Send {
    /// Waits for the container to end.
    async fn wait(&mut self) -> Exit;
    fn kill_switch(&self) -> KillSwitch;
    /// Asks the container to stop (SIGTERM); a runtime without signals stops it at once.
    fn terminate_switch(&self) -> KillSwitch {
        self.kill_switch()
    }

    /// Stops the container now.
    fn kill(&self) {
        self.kill_switch().kill()
    }
}

/// A process run in a container (`kubectl exec`): its streams, a way to resize its
/// terminal (if it has one; its stderr then goes to the terminal too), and its exit code.
pub struct ExecProcess {
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stdout: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Columns, rows.
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
    pub exit: std::pin::Pin<Box<dyn std::future::Future<Output = i32> + Send>>,
}

#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// The runtime's name, as node labels and container IDs show it.
    fn name(&self) -> &'static str;
    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Running>, RuntimeError>;
    /// A container a previous agent started (its ID without the `name://` prefix), if it
    /// still runs or left its exit: a restarted agent goes on with it. Runtimes whose
    /// containers live in the agent's process have none.
    async fn adopt(&self, _run_id: &str, _alive: Alive) -> Option<Box<dyn Running>> {
        None
    }
    /// Attaches to a running container's main process (its ID without the `name://`
    /// prefix): its output from now on, its stdin, its terminal.
    async fn attach(
        &self,
        _run_id: &str,
        _stdin: bool,
        _tty: bool,
    ) -> Result<ExecProcess, RuntimeError> {
        Err(RuntimeError::Exec(format!(
            "the {} runtime cannot attach to its containers",
            self.name()
        )))
    }
    /// Runs `argv` in a running container (its ID without the `name://` prefix).
    async fn exec(
        &self,
        _run_id: &str,
        _argv: &[String],
        _stdin: bool,
        _tty: bool,
    ) -> Result<ExecProcess, RuntimeError> {
        Err(RuntimeError::Exec(format!(
            "the {} runtime cannot run commands in its containers",
            self.name()
        )))
    }
}

/// The RuntimeClass of pods whose containers are all Wasm.
pub const WASMTIME_CLASS: &str = "wasmtime";

/// The node's runtimes: wasmtime always, runc where the node can run it. Which of them
/// runs a container is decided here only: by its image when it starts
/// ([`Runtimes::for_image`]), then by the runtime its ID names ([`Runtimes::of`]).
pub struct Runtimes {
    pub wasm: wasm::WasmRuntime,
    pub oci: Option<oci::OciRuntime>,
}

impl Runtimes {
    /// The runtime for a new container of `image` in a pod of RuntimeClass `class`: Wasm
    /// content runs on wasmtime; a root file system on runc, unless the pod asked for
    /// Wasm only ([`WASMTIME_CLASS`]) or the node has no runc. The error is the
    /// container's waiting message.
    pub fn for_image(&self, image: &Image, class: Option<&str>) -> Result<&dyn Runtime, String> {
        match (&image.content, &self.oci) {
            (Content::Wasm(_), _) => Ok(&self.wasm),
            (Content::Rootfs(_), _) if class == Some(WASMTIME_CLASS) => Err(format!(
                "the image {} is not a Wasm image (its entrypoint is not a Wasm module): pods of RuntimeClass {WASMTIME_CLASS} run Wasm only",
                image.reference
            )),
            (Content::Rootfs(_), Some(oci)) => Ok(oci),
            (Content::Rootfs(_), None) => Err(format!(
                "the image {} is an OCI container image, which needs the OCI runtime (runc): this node does not offer it",
                image.reference
            )),
        }
    }

    /// The runtime a container's ID names, if the node has it.
    pub fn of(&self, id: &ContainerId) -> Option<&dyn Runtime> {
        self.named(id.runtime())
    }

    /// The runtime of that name, if the node has it.
    pub fn named(&self, name: &str) -> Option<&dyn Runtime> {
        if name == self.wasm.name() {
            return Some(&self.wasm);
        }
        self.oci
            .as_ref()
            .filter(|o| o.name() == name)
            .map(|o| o as &dyn Runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(content: Content) -> Image {
        Image {
            reference: "example/app:1".into(),
            digest: "sha256:0".into(),
            content,
            size: 0,
            run: None,
        }
    }

    #[test]
    fn the_image_chooses_the_runtime_then_the_id_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let rts = Runtimes {
            wasm: wasm::WasmRuntime::new(dir.path()).unwrap(),
            oci: None,
        };
        let wasm = image(Content::Wasm("app.wasm".into()));
        let rootfs = image(Content::Rootfs(vec![]));
        assert_eq!(rts.for_image(&wasm, None).unwrap().name(), "wasm");
        assert_eq!(
            rts.for_image(&wasm, Some(WASMTIME_CLASS)).unwrap().name(),
            "wasm"
        );
        let err = rts.for_image(&rootfs, Some(WASMTIME_CLASS)).err().unwrap();
        assert!(err.contains("RuntimeClass wasmtime run Wasm only"), "{err}");
        let err = rts.for_image(&rootfs, None).err().unwrap();
        assert!(err.contains("this node does not offer it"), "{err}");
        let id = |s: &str| s.parse::<ContainerId>().unwrap();
        assert_eq!(rts.of(&id("wasm://u-c-0")).map(|r| r.name()), Some("wasm"));
        // A runc container on a node without runc (say, adopted after a reconfiguration).
        assert!(rts.of(&id("runc://u-c-0")).is_none());
    }

    #[tokio::test]
    async fn a_pods_containers_are_gone_once_every_token_is() {
        use futures::FutureExt;
        let containers = Containers::default();
        assert!(containers.gone().now_or_never().is_some(), "none yet");
        let (a, b) = (containers.token(), containers.token());
        let waiter = tokio::spawn({
            let c = containers.clone();
            async move { c.gone().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one container is left");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes when the last goes")
            .unwrap();
    }
}
