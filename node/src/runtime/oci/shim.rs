//! The container shim (`skiff shim`), one process per runc container, as containerd's
//! shims: it outlives the agent, so a restarted agent adopts its running containers
//! instead of restarting them. It detaches (forks, starts a session), becomes the
//! container's subreaper, runs `runc create` and `runc start` with pipes for the
//! container's stdout and stderr (or, for a `tty` container, the terminal runc hands to
//! its console socket), copies them into the container's CRI log and to clients attached
//! through the bundle's attach socket (`kubectl attach`: they also feed the container's
//! stdin), waits for the
//! container's init to end, reads whether the cgroup OOM-killed it, deletes the runc
//! container and writes the exit status into the bundle (`exit.json`, durably).
//!
//! It tells the agent it started (or why not) on its stdout: one line, `started <pid>` or
//! `error <message>`.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::attach;

use crate::logs::{LogFile, Stream};

/// What `skiff shim` is told.
#[derive(Clone, Debug, clap::Args)]
pub struct ShimArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long)]
    pub runc: PathBuf,
    #[arg(long)]
    pub runc_root: PathBuf,
    #[arg(long)]
    pub log: PathBuf,
    #[arg(long)]
    pub max_log_bytes: u64,
    #[arg(long, default_value_t = 5)]
    pub max_log_files: u32,
    /// The container's cgroup (as in its spec), read for OOM kills.
    #[arg(long)]
    pub cgroup: String,
    /// The container's stdin is kept open for attached clients (`stdin`), closed after the
    /// first session (`stdinOnce`); it runs on a terminal (`tty`).
    #[arg(long)]
    pub stdin: bool,
    #[arg(long)]
    pub stdin_once: bool,
    #[arg(long)]
    pub tty: bool,
}

impl ShimArgs {
    /// The command line that starts a shim with these arguments.
    pub fn command(&self, exe: &Path) -> Command {
        let mut c = Command::new(exe);
        c.arg("shim")
            .args(["--id", &self.id])
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--runc")
            .arg(&self.runc)
            .arg("--runc-root")
            .arg(&self.runc_root)
            .arg("--log")
            .arg(&self.log)
            .args(["--max-log-bytes", &self.max_log_bytes.to_string()])
            .args(["--max-log-files", &self.max_log_files.to_string()])
            .args(["--cgroup", &self.cgroup]);
        for (on, flag) in [
            (self.stdin, "--stdin"),
            (self.stdin_once, "--stdin-once"),
            (self.tty, "--tty"),
        ] {
            if on {
                c.arg(flag);
            }
        }
        c
    }
}

/// The exit status a shim leaves in the bundle.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitFile {
    pub code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    /// Why the container never started, if it did not.
    #[serde(default)]
    pub error: Option<String>,
}

pub const EXIT_FILE: &str = "exit.json";
pub const PID_FILE: &str = "shim.pid";
const INIT_PID_FILE: &str = "init.pid";
const RUNC_LOG: &str = "runc.log";
/// Where runc hands over the terminal of a `tty` container.
const CONSOLE_SOCKET: &str = "console.sock";

pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // Safety: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: both were just opened and are owned by nothing else.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// runc's own words for a failure: the last `msg` of its JSON log.
fn runc_error(bundle: &Path, fallback: &str) -> String {
    let log = std::fs::read_to_string(bundle.join(RUNC_LOG)).unwrap_or_default();
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| fallback.to_string())
}

fn runc(args: &ShimArgs) -> Command {
    let mut c = Command::new(&args.runc);
    c.arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(args.bundle.join(RUNC_LOG))
        .args(["--log-format", "json"]);
    c
}

/// Whether the container's cgroup counted an OOM kill (cgroup v2's `memory.events`, or
/// v1's `memory.oom_control`).
fn oom_killed(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    let counted = |path: PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim().parse::<u64>()))
            })
            .and_then(Result::ok)
            .is_some_and(|n| n > 0)
    };
    counted(Path::new("/sys/fs/cgroup").join(rel).join("memory.events"))
        || counted(
            Path::new("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control"),
        )
}

/// Runs a shim; returns its exit code. `report` is where the start line goes (stdout).
pub fn run(args: ShimArgs) -> i32 {
    // Detach: the agent reaps the parent at once; the child is nobody's child but init's
    // (or a subreaper's), in a session of its own, so it outlives the agent.
    // Safety: called first thing, while the process has one thread.
    match unsafe { libc::fork() } {
        -1 => return 1,
        0 => {}
        _ => return 0,
    }
    // Safety: plain syscalls.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let mut report = std::io::stdout();
    let _ = std::fs::write(args.bundle.join(PID_FILE), std::process::id().to_string());
    let exit = match start(&args) {
        Ok(started) => {
            let _ = writeln!(report, "started {}", started.init);
            let _ = report.flush();
            // The agent reads one line; then nothing of ours goes there.
            // Safety: closing our stdout, which nothing else uses.
            unsafe { libc::close(1) };
            supervise(&args, started)
        }
        Err(e) => {
            let _ = writeln!(report, "error {}", e.replace('\n', " "));
            let _ = report.flush();
            // Nothing to clean in runc beyond a half-created container.
            let _ = runc(&args)
                .args(["delete", "--force", "--", &args.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            ExitFile {
                code: 128,
                signal: None,
                oom_killed: false,
                error: Some(e),
            }
        }
    };
    let _ = write_durably(
        &args.bundle.join(EXIT_FILE),
        &serde_json::to_vec(&exit).expect("JSON"),
    );
    0
}

/// The container's output: two pipes, or its terminal.
enum Streams {
    Pipes { out: OwnedFd, err: OwnedFd },
    Terminal(OwnedFd),
}

/// A started container: its init's pid, its output, and the attach socket served.
struct Started {
    init: i32,
    streams: Streams,
    hub: Arc<attach::Hub>,
}

/// `runc create` then `runc start`; serves the attach socket from before the container
/// runs, so that a client attaching at once misses nothing.
fn start(args: &ShimArgs) -> Result<Started, String> {
    let bundle = std::fs::File::open(&args.bundle).map_err(|e| e.to_string())?;
    let me = std::process::id();
    let mut create = runc(args);
    create
        .arg("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(args.bundle.join(INIT_PID_FILE));
    let (streams, sink, terminal) = if args.tty {
        // runc makes the terminal and hands its master to a console socket.
        let path = attach::socket_path(me, &bundle, CONSOLE_SOCKET);
        let console = UnixListener::bind(&path).map_err(|e| format!("console socket: {e}"))?;
        create.arg("--console-socket").arg(&path);
        let receiver = std::thread::spawn(move || {
            let (conn, _) = console.accept()?;
            attach::receive_fd(&conn)
        });
        let created = create
            .args(["--", &args.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running {}: {e}", args.runc.display()))?;
        if !created.success() {
            // Unblock the receiver if runc never connected.
            let _ = UnixStream::connect(&path);
            let _ = receiver.join();
            return Err(runc_error(&args.bundle, "runc create failed"));
        }
        let master = receiver
            .join()
            .map_err(|_| "the console receiver panicked".to_string())?
            .map_err(|e| format!("the container's terminal: {e}"))?;
        let input = args
            .stdin
            .then(|| master.try_clone())
            .transpose()
            .map_err(|e| e.to_string())?;
        let sizer = master.try_clone().map_err(|e| e.to_string())?;
        (Streams::Terminal(master), input, Some(sizer))
    } else {
        let (out_r, out_w) = pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
        let (stdin, sink) = if args.stdin {
            let (r, w) = pipe().map_err(|e| e.to_string())?;
            (Stdio::from(r), Some(w))
        } else {
            (Stdio::null(), None)
        };
        let created = create
            .args(["--", &args.id])
            .stdin(stdin)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .status()
            .map_err(|e| format!("running {}: {e}", args.runc.display()))?;
        if !created.success() {
            return Err(runc_error(&args.bundle, "runc create failed"));
        }
        (
            Streams::Pipes {
                out: out_r,
                err: err_r,
            },
            sink,
            None,
        )
    };
    let init: i32 = std::fs::read_to_string(args.bundle.join(INIT_PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("runc left no init pid")?;
    let hub = Arc::new(attach::Hub::default());
    let listener = UnixListener::bind(attach::socket_path(me, &bundle, attach::SOCKET))
        .map_err(|e| format!("attach socket: {e}"))?;
    attach::serve(
        listener,
        hub.clone(),
        Arc::new(attach::Input::new(sink, args.stdin_once, terminal)),
    );
    let started = runc(args)
        .args(["start", "--", &args.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !started.success() {
        return Err(runc_error(&args.bundle, "runc start failed"));
    }
    Ok(Started { init, streams, hub })
}

/// Copies one output stream into the log and to attached clients until every writer is
/// gone (a terminal's master then fails to read).
fn copy(
    pipe: OwnedFd,
    log: LogFile,
    hub: Arc<attach::Hub>,
    stream: Stream,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(pipe);
        let mut buf = vec![0u8; 32 * 1024];
        let to = match stream {
            Stream::Stdout => attach::Output::Stdout,
            Stream::Stderr => attach::Output::Stderr,
        };
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = log.write(stream, &buf[..n]);
                    hub.send(to, &buf[..n]);
                }
            }
        }
    })
}

/// Waits for the container's init to end (reaping whatever else is reparented here),
/// finishes its log, and removes the runc container.
fn supervise(args: &ShimArgs, started: Started) -> ExitFile {
    let rotation = crate::logs::Rotation {
        max_bytes: args.max_log_bytes,
        max_files: args.max_log_files,
    };
    let log = LogFile::new(&args.log, rotation);
    let Started { init, streams, hub } = started;
    let copiers = match streams {
        Streams::Pipes { out, err } => vec![
            copy(out, log.clone(), hub.clone(), Stream::Stdout),
            copy(err, log.clone(), hub.clone(), Stream::Stderr),
        ],
        Streams::Terminal(master) => vec![copy(master, log.clone(), hub.clone(), Stream::Stdout)],
    };
    let (code, signal) = loop {
        let mut status = 0;
        // Safety: waitpid into an owned int.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No children left: the init went without us seeing it.
            break (137, Some(libc::SIGKILL));
        }
        if pid != init {
            continue;
        }
        if libc::WIFEXITED(status) {
            break (libc::WEXITSTATUS(status), None);
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            break (128 + sig, Some(sig));
        }
    };
    // The pipes close when the last process holding them is gone (with the init of a
    // PID namespace, all of them); a stray holder does not keep the shim.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for c in copiers {
        while !c.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = log.finish();
    hub.close();
    let oom = oom_killed(&args.cgroup);
    let _ = runc(args)
        .args(["delete", "--force", "--", &args.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    ExitFile {
        code,
        signal,
        oom_killed: oom,
        error: None,
    }
}
