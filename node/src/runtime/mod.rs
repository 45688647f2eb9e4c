//! Container runtimes behind one narrow trait: a runtime sees an image, arguments,
//! environment, mounts, limits and where output goes — never the whole pod spec. The pod
//! sandbox (volumes, and later the network namespace) is prepared outside and shared.

pub mod wasm;

use crate::logs::LogFile;

/// A directory of the pod sandbox, visible to a container at `guest_path`.
#[derive(Clone, Debug)]
pub struct Mount {
    pub dir: crate::sandbox::HostDir,
    pub guest_path: String,
    pub read_only: bool,
}

/// What a runtime needs to start one container.
pub struct ContainerSpec {
    /// `<namespace>/<pod>/<container>`, for logs and errors.
    pub id: String,
    /// The image's content (a Wasm module or component, or a root file system) and its
    /// digest.
    pub image: crate::images::Content,
    pub image_digest: String,
    /// `command` followed by `args`; the first is the program name.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    /// The pod's network: the container's sockets are made there.
    pub network: crate::sandbox::Network,
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
pub struct Containers(std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Containers {
    pub fn token(&self) -> Alive {
        self.0.send_modify(|n| *n += 1);
        Alive(self.0.clone())
    }

    /// Resolves when no token is held.
    pub async fn gone(&self) {
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// One container's share of [`Containers`]; dropped when the container is gone.
pub struct Alive(std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
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

    /// Stops the container now.
    fn kill(&self) {
        self.kill_switch().kill()
    }
}

#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// The runtime's name, as node labels and container IDs show it.
    fn name(&self) -> &'static str;
    /// Prepares the image (compiling it, once per digest).
    async fn prepare(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;
    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Running>, RuntimeError>;
}
