//! Processes the agent starts to outlive it (shims, pause processes), found again by the
//! pid they recorded.

use std::path::Path;

/// The pid recorded in `pid_file`, if that process still runs with `args` in its command
/// line (in a row): a recorded pid may since have gone to another process.
pub fn recorded(pid_file: &Path, args: &[&str]) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let have: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    have.windows(args.len())
        .any(|w| w.iter().zip(args).all(|(h, a)| *h == a.as_bytes()))
        .then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_pid_counts_only_with_its_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        std::fs::write(&file, std::process::id().to_string()).unwrap();
        let me: Vec<String> = std::env::args().collect();
        let first = me[0].as_str();
        assert_eq!(recorded(&file, &[first]), Some(std::process::id() as i32));
        assert_eq!(recorded(&file, &["shim", "--id", "x"]), None);
        std::fs::write(&file, "not a pid").unwrap();
        assert_eq!(recorded(&file, &[first]), None);
        assert_eq!(recorded(&dir.path().join("none"), &[first]), None);
    }
}
