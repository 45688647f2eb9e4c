//! Processes run in a container (`kubectl exec`), through `runc exec`: with pipes, or with a
//! terminal.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::runtime::{ExecProcess, RuntimeError};

/// The exit code of a process's status (128 + the signal that ended it).
fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(128)
}

/// Runs `argv` in container `id` with pipes for its stdin (if `stdin`), stdout and stderr.
pub fn with_pipes(
    runc: std::process::Command,
    id: &str,
    argv: &[String],
    stdin: bool,
) -> Result<ExecProcess, RuntimeError> {
    let mut cmd = tokio::process::Command::from(runc);
    cmd.args(["exec", "--", id])
        .args(argv)
        .stdin(if stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| RuntimeError::Exec(e.to_string()))?;
    let stdin = child
        .stdin
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>);
    let stdout = Box::new(child.stdout.take().expect("piped"));
    let stderr = Box::new(child.stderr.take().expect("piped"));
    Ok(ExecProcess {
        stdin,
        stdout,
        stderr: Some(stderr),
        resize: None,
        exit: Box::pin(async move { child.wait().await.map(code_of).unwrap_or(128) }),
    })
}

/// Sets a terminal's size.
pub(super) fn set_size(fd: i32, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // Safety: TIOCSWINSZ with an owned winsize on a terminal descriptor.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// A new pseudo-terminal pair: (master, slave).
fn openpty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    // Safety: openpty fills two descriptors we then own.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: both were just opened and are owned by nothing else.
    unsafe { Ok((OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))) }
}

/// Runs `argv` in container `id` on a terminal. `runc exec --tty` (not detached) gives the
/// process a terminal of the container's own and relays it to runc's stdio, which must be
/// a terminal: runc gets the slave of a pair whose master is the process's stdin and
/// output here, as its controlling terminal, so a resize of the master reaches runc as
/// SIGWINCH and runc resizes the container's terminal. runc's exit code is the process's.
pub fn with_terminal(
    runc: std::process::Command,
    id: &str,
    argv: &[String],
) -> Result<ExecProcess, RuntimeError> {
    let fail = |e: &dyn std::fmt::Display| RuntimeError::Exec(e.to_string());
    let (master, slave) = openpty().map_err(|e| fail(&e))?;
    let mut cmd = tokio::process::Command::from(runc);
    cmd.args(["exec", "--tty", "--", id])
        .args(argv)
        .stdin(std::process::Stdio::from(
            slave.try_clone().map_err(|e| fail(&e))?,
        ))
        .stdout(std::process::Stdio::from(
            slave.try_clone().map_err(|e| fail(&e))?,
        ))
        .stderr(std::process::Stdio::from(slave))
        .kill_on_drop(true);
    // Safety: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(&e))?;
    let sizer = master.try_clone().map_err(|e| fail(&e))?;
    let writer = std::fs::File::from(master.try_clone().map_err(|e| fail(&e))?);
    let reader = std::fs::File::from(master);
    Ok(ExecProcess {
        stdin: Some(Box::new(tokio::fs::File::from_std(writer))),
        stdout: Box::new(tokio::fs::File::from_std(reader)),
        stderr: None,
        resize: Some(Box::new(move |cols, rows| {
            set_size(sizer.as_raw_fd(), cols, rows)
        })),
        exit: Box::pin(async move { child.wait().await.map(code_of).unwrap_or(128) }),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    /// An ID is never taken for one of runc's options, whatever it looks like.
    #[tokio::test]
    async fn the_container_id_is_an_operand_of_runc_exec() {
        let echo = std::process::Command::new("echo");
        let argv = ["hostname".to_string()];
        let mut p = super::with_pipes(echo, "--cap=CAP_SYS_ADMIN", &argv, false).unwrap();
        let mut out = String::new();
        p.stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "exec -- --cap=CAP_SYS_ADMIN hostname\n");
        assert_eq!(p.exit.await, 0);
    }
}
