//! Data directories no other host user can enter: they hold every Secret, token and
//! container file system (as etcd keeps its data directory, and the kubelet its root,
//! 0700).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The mode of a private directory.
pub const MODE: u32 = 0o700;

/// Makes `dir` (and missing parents) with mode 0700; an existing one that lets group or
/// others in is tightened to 0700, and its former mode returned so that the caller says
/// so.
pub fn ensure(dir: &Path) -> std::io::Result<Option<u32>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700 | MODE))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directories_are_made_private_and_loose_ones_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let made = tmp.path().join("a/b");
        assert_eq!(ensure(&made).unwrap(), None);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&made), 0o700);
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(ensure(&made).unwrap(), Some(0o755));
        assert_eq!(mode(&made), 0o700);
    }
}
