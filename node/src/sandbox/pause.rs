//! The holder of a pod's shared PID namespace (`shareProcessNamespace`), as Kubernetes'
//! pause container: `skiff pause` becomes PID 1 of a new PID namespace that the pod's
//! containers join, and reaps what is reparented to it. It outlives the agent (a
//! restarted agent finds it by the pid kept in the pod's directory) and goes with the
//! pod's sandbox; when it goes, the kernel ends whatever still runs in the namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PID_FILE: &str = "pause.pid";

/// `skiff pause --pod UID` (before any thread starts): makes the namespace, forks its PID
/// 1, prints that process's pid (as the node sees it) and returns.
pub fn run(_pod_uid: &str) -> i32 {
    // Safety: unshare and fork while the process has one thread.
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID) < 0 {
            eprintln!("unshare: {}", std::io::Error::last_os_error());
            return 1;
        }
        match libc::fork() {
            -1 => {
                eprintln!("fork: {}", std::io::Error::last_os_error());
                1
            }
            0 => reap(),
            child => {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "{child}");
                let _ = out.flush();
                0
            }
        }
    }
}

/// PID 1 of the namespace: no terminal, no stdio of the agent's, reaping forever.
fn reap() -> ! {
    // Safety: plain syscalls on descriptors this process owns.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    loop {
        let mut status = 0;
        // Safety: waitpid into an owned int.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            // No children now; containers' processes may be reparented here later.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The pid of the pod's pause process, if it runs (checked by its command line: a pid
/// recorded earlier may have been reused).
fn running(dir: &Path) -> Option<i32> {
    let uid = dir.file_name()?.to_string_lossy().into_owned();
    crate::procs::recorded(&dir.join(PID_FILE), &["pause", "--pod", &uid])
}

/// The shared PID namespace of the pod whose directory is `dir` (named by its uid):
/// started by `exe` now, or the one an earlier agent started.
pub fn ensure(dir: &Path, exe: &Path) -> std::io::Result<PathBuf> {
    if let Some(pid) = running(dir) {
        return Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")));
    }
    let uid = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = std::process::Command::new(exe)
        .args(["pause", "--pod", &uid])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()?;
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            std::io::Error::other(format!(
                "the pause process did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(PID_FILE), pid.to_string())?;
    Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")))
}

/// Ends the pod's pause process (and with it whatever still runs in its namespace).
pub fn stop(dir: &Path) {
    if let Some(pid) = running(dir) {
        // Safety: a signal to a process verified to be the pod's pause.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}
