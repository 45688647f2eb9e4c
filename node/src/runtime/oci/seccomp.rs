//! seccomp filters of runc containers, as containerd's CRI chooses them: `RuntimeDefault`
//! is containerd's default profile (an allow-list: everything else fails with EPERM),
//! widened by the capabilities the container holds; `Localhost` is a profile file (the
//! Docker/containerd JSON format) beneath the node's seccomp root (`<data-dir>/seccomp`,
//! as the kubelet's `<root-dir>/seccomp`); `Unconfined` is none. A container that asks
//! for nothing gets the node's default (`--seccomp-default` makes it RuntimeDefault, as
//! the kubelet's flag). Privileged containers are never filtered (containerd's rule).

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder,
};
use serde::Deserialize;

use crate::runtime::Seccomp;

/// A profile file larger than this is not a profile.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// containerd's words, which the kubelet shows as CreateContainerError.
    #[error(
        "failed to generate seccomp spec opts: cannot load seccomp profile {path:?}: {reason}"
    )]
    Load { path: String, reason: String },
    #[error("failed to generate seccomp spec opts: {0}")]
    Profile(String),
}

/// The node's seccomp settings (agent flags).
#[derive(Clone, Debug)]
pub struct Policy {
    /// Where `Localhost` profiles are.
    pub root: std::path::PathBuf,
    /// RuntimeDefault for containers that ask for nothing (`--seccomp-default`).
    pub default_to_runtime: bool,
}

impl Policy {
    /// The filter of a container holding `caps` (names without `CAP_`); `None`: unconfined.
    pub fn filter(
        &self,
        asked: Option<&Seccomp>,
        privileged: bool,
        caps: &HashSet<String>,
    ) -> Result<Option<LinuxSeccomp>, SeccompError> {
        if privileged {
            return Ok(None);
        }
        match asked {
            Some(Seccomp::RuntimeDefault) => Ok(Some(runtime_default(caps))),
            None if self.default_to_runtime => Ok(Some(runtime_default(caps))),
            Some(Seccomp::Unconfined) | None => Ok(None),
            Some(Seccomp::Localhost(rel)) => localhost(&self.root, rel, caps).map(Some),
        }
    }
}

/// Allowed to every container under the default profile. Not io_uring's calls, which
/// containerd 2 and Docker dropped from theirs after container escapes through them.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "_llseek",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "poll", "ppoll",
    "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease",
    "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64",
    "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat", "renameat2",
    "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile",
    "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr",
    "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4",
    "sigprocmask", "sigreturn", "socket", "socketcall", "socketpair", "splice", "stat",
    "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork",
    "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
];

/// Allowed to holders of a capability (the calls that capability guards).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("SYS_BOOT", &["reboot"]),
    ("SYS_CHROOT", &["chroot"]),
    (
        "SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("SYS_PACCT", &["acct"]),
    (
        "SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    ("SYSLOG", &["syslog"]),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
];

/// Namespace flags of clone(2): without CAP_SYS_ADMIN a container may clone, not unshare.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// personality(2) values a container may set (the default, and the UNAME26/32-bit ones).
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// The seccomp architectures of this build's machine (its own first, then the compat
/// ones), and its own extra calls.
fn native() -> (Vec<Arch>, &'static [&'static str]) {
    match std::env::consts::ARCH {
        "x86_64" => (
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
            &["arch_prctl", "modify_ldt"],
        ),
        "aarch64" => (
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
        ),
        "riscv64" => (vec![Arch::ScmpArchRiscv64], &["riscv_flush_icache"]),
        "s390x" => (
            vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
            &[
                "s390_pci_mmio_read",
                "s390_pci_mmio_write",
                "s390_runtime_instr",
            ],
        ),
        _ => (vec![], &[]),
    }
}

/// Go's name of this machine's architecture (what profiles' `includes.arches` say).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn syscall(names: &[&str], action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(action);
    if !args.is_empty() {
        b = b.args(args);
    }
    built(b.build())
}

fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> LinuxSeccompArgBuilder {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op)
}

fn built<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("every field of a fixed rule is set")
}

/// containerd's default profile for a container holding `caps`.
pub fn runtime_default(caps: &HashSet<String>) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    let (arches, own) = native();
    let mut rules = vec![syscall(ALLOWED, Allow, vec![]), syscall(own, Allow, vec![])];
    for p in PERSONALITIES {
        rules.push(syscall(
            &["personality"],
            Allow,
            vec![built(arg(0, *p, LinuxSeccompOperator::ScmpCmpEq).build())],
        ));
    }
    // Before 4.8 a traced process could get around the filter (containerd's rule).
    if kernel_at_least(4, 8) {
        rules.push(syscall(&["ptrace"], Allow, vec![]));
    }
    for (cap, calls) in BY_CAPABILITY {
        if caps.contains(*cap) {
            rules.push(syscall(calls, Allow, vec![]));
        }
    }
    if !caps.contains("SYS_ADMIN") {
        // s390's clone takes its flags second.
        let index = if std::env::consts::ARCH == "s390x" {
            1
        } else {
            0
        };
        let masked = arg(
            index,
            CLONE_NAMESPACES,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )
        .value_two(0u64)
        .build();
        let masked = built(masked);
        rules.push(syscall(&["clone"], Allow, vec![masked]));
        // clone3's flags are behind a pointer: ENOSYS sends libc back to clone.
        let mut clone3 = syscall(&["clone3"], Errno, vec![]);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        rules.push(clone3);
    }
    LinuxSeccompBuilder::default()
        .default_action(Errno)
        .architectures(arches)
        .syscalls(rules)
        .build()
        .expect("every field of the default profile is set")
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    version_at_least(&release, major, minor)
}

fn version_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// A profile file in the format Docker and containerd read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    name: String,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

/// When a rule applies: to these architectures (Go's names), capabilities, kernels.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: String,
}

fn cap_name(c: &str) -> &str {
    c.strip_prefix("CAP_").unwrap_or(c)
}

impl Rule {
    fn applies(&self, caps: &HashSet<String>) -> bool {
        let arch = go_arch();
        let ex = &self.excludes;
        if ex.arches.iter().any(|a| a == arch) || ex.caps.iter().any(|c| caps.contains(cap_name(c)))
        {
            return false;
        }
        let inc = &self.includes;
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
            return false;
        }
        if !inc.caps.iter().all(|c| caps.contains(cap_name(c))) {
            return false;
        }
        if let Some((major, minor)) = inc.min_kernel.split_once('.') {
            let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
                return false;
            };
            return kernel_at_least(major, minor);
        }
        true
    }
}

/// The `Localhost` profile `rel` (beneath `root`) for a container holding `caps`.
pub fn localhost(
    root: &Path,
    rel: &str,
    caps: &HashSet<String>,
) -> Result<LinuxSeccomp, SeccompError> {
    let shown = root.join(rel).display().to_string();
    let load = |reason: String| SeccompError::Load {
        path: shown.clone(),
        reason,
    };
    let text = read_beneath(root, Path::new(rel)).map_err(|e| load(e.to_string()))?;
    let file: ProfileFile = serde_json::from_slice(&text)
        .map_err(|e| load(format!("decoding seccomp profile failed: {e}")))?;
    parse(file, caps)
}

/// Reads `rel` beneath `root`, following no symbolic link out of it.
fn read_beneath(root: &Path, rel: &Path) -> std::io::Result<Vec<u8>> {
    let dir = cap_primitives::fs::open_ambient_dir(root, cap_primitives::ambient_authority())?;
    let mut opts = cap_primitives::fs::OpenOptions::new();
    opts.read(true);
    let file = cap_primitives::fs::open(&dir, rel, &opts)?;
    let mut text = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_PROFILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

fn parse(file: ProfileFile, caps: &HashSet<String>) -> Result<LinuxSeccomp, SeccompError> {
    if !file.architectures.is_empty() && !file.arch_map.is_empty() {
        return Err(SeccompError::Profile(
            "both 'architectures' and 'archMap' are specified in the seccomp profile, use either 'architectures' or 'archMap'".into(),
        ));
    }
    let mut arches = file.architectures;
    // The map's entry for this machine (x86_64 on an amd64 node) and its compat ones.
    if let Some(primary) = native().0.first() {
        for m in file.arch_map.iter().filter(|m| m.architecture == *primary) {
            arches.push(m.architecture);
            arches.extend(m.sub_architectures.iter().copied());
        }
    }
    let mut rules = Vec::with_capacity(file.syscalls.len());
    for r in file.syscalls {
        if !r.name.is_empty() && !r.names.is_empty() {
            return Err(SeccompError::Profile(
                "'name' and 'names' were specified in the seccomp profile, use either 'name' or 'names'".into(),
            ));
        }
        if !r.applies(caps) {
            continue;
        }
        let names = if r.name.is_empty() {
            r.names
        } else {
            vec![r.name]
        };
        let mut b = LinuxSyscallBuilder::default().names(names).action(r.action);
        if !r.args.is_empty() {
            b = b.args(r.args);
        }
        if let Some(e) = r.errno_ret {
            b = b.errno_ret(e);
        }
        rules.push(
            b.build()
                .map_err(|e| SeccompError::Profile(e.to_string()))?,
        );
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(file.default_action)
        .architectures(arches)
        .syscalls(rules);
    if let Some(e) = file.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if !file.flags.is_empty() {
        b = b.flags(file.flags);
    }
    b.build().map_err(|e| SeccompError::Profile(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn allows(p: &LinuxSeccomp, call: &str) -> bool {
        p.syscalls().iter().flatten().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActAllow
                && r.names().iter().any(|n| n == call)
                && r.args().as_ref().is_none_or(|a| a.is_empty())
        })
    }

    #[test]
    fn the_default_profile_grows_with_capabilities() {
        let plain = runtime_default(&caps(&["CHOWN", "NET_BIND_SERVICE"]));
        assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(allows(&plain, "openat") && allows(&plain, "socket"));
        for denied in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "init_module",
            "reboot",
            "chroot",
            "io_uring_setup",
        ] {
            assert!(
                !allows(&plain, denied),
                "{denied} allowed without its capability"
            );
        }
        // clone only without namespace flags; clone3 answers ENOSYS.
        let clone = plain
            .syscalls()
            .iter()
            .flatten()
            .find(|r| r.names() == &["clone"])
            .unwrap();
        let a = &clone.args().as_ref().unwrap()[0];
        assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(
            a.value() & libc::CLONE_NEWUSER as u64,
            libc::CLONE_NEWUSER as u64
        );
        let clone3 = plain
            .syscalls()
            .iter()
            .flatten()
            .find(|r| r.names() == &["clone3"])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));

        let admin = runtime_default(&caps(&["SYS_ADMIN", "SYS_CHROOT"]));
        assert!(allows(&admin, "mount") && allows(&admin, "clone3") && allows(&admin, "chroot"));
        assert!(!allows(&admin, "reboot"));
    }

    #[test]
    fn the_node_default_and_privilege_choose_the_filter() {
        let dir = tempfile::tempdir().unwrap();
        let mut policy = Policy {
            root: dir.path().into(),
            default_to_runtime: false,
        };
        let c = caps(&["CHOWN"]);
        assert!(policy.filter(None, false, &c).unwrap().is_none());
        assert!(policy
            .filter(Some(&Seccomp::RuntimeDefault), false, &c)
            .unwrap()
            .is_some());
        policy.default_to_runtime = true;
        assert!(policy.filter(None, false, &c).unwrap().is_some());
        assert!(policy
            .filter(Some(&Seccomp::Unconfined), false, &c)
            .unwrap()
            .is_none());
        assert!(policy
            .filter(Some(&Seccomp::RuntimeDefault), true, &c)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_localhost_profile_is_read_beneath_the_root_in_dockers_format() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("profiles")).unwrap();
        std::fs::write(
            dir.path().join("profiles/p.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
                "syscalls": [
                  {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                  {"name": "mount", "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                  {"names": ["reboot"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["no-such-arch"]}}]}"#,
        )
        .unwrap();
        let p = localhost(dir.path(), "profiles/p.json", &caps(&["CHOWN"])).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rules = p.syscalls().clone().unwrap();
        assert_eq!(rules.len(), 2, "the arch-filtered rule is left out");
        assert_eq!(rules[0].errno_ret(), Some(13));
        assert_eq!(rules[1].names(), &["mount"]);
        let arches = p.architectures().clone().unwrap();
        assert_eq!(arches.len(), if native().0.is_empty() { 0 } else { 2 });
        // CAP_SYS_ADMIN excludes the mount rule.
        let admin = localhost(dir.path(), "profiles/p.json", &caps(&["SYS_ADMIN"])).unwrap();
        assert_eq!(admin.syscalls().as_ref().unwrap().len(), 1);

        // A link out of the root is not followed; a missing file says which.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("x.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.json"), dir.path().join("out.json"))
            .unwrap();
        assert!(localhost(dir.path(), "out.json", &caps(&[])).is_err());
        let missing = localhost(dir.path(), "profiles/none.json", &caps(&[])).unwrap_err();
        assert!(
            missing.to_string().contains("profiles/none.json"),
            "{missing}"
        );
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let bad = localhost(dir.path(), "bad.json", &caps(&[])).unwrap_err();
        assert!(
            bad.to_string().contains("decoding seccomp profile failed"),
            "{bad}"
        );
    }

    #[test]
    fn kernel_versions_compare_by_major_and_minor() {
        assert!(version_at_least("6.1.0-18-amd64\n", 4, 8));
        assert!(version_at_least("4.8.0", 4, 8));
        assert!(!version_at_least("4.4.0-generic", 4, 8));
        assert!(!version_at_least("", 4, 8));
    }
}
