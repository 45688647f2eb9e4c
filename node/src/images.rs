//! The node's image store: content-addressed blobs (`blobs/sha256/<hex>`) and a table of
//! references (`refs.json`: image reference → digest). `skiff images import` fills it for
//! air-gapped nodes; registry pulls add to it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image references file is corrupt: {0}")]
    Corrupt(String),
}

/// A stored image: its digest and the Wasm bytes' path.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    pub path: PathBuf,
}

pub struct ImageStore {
    dir: PathBuf,
    /// The references, and the modification time of the file they were read from (other
    /// processes, like `skiff images import`, may change it).
    refs: Mutex<(BTreeMap<String, String>, Option<std::time::SystemTime>)>,
}

fn read_refs(
    path: &Path,
) -> Result<(BTreeMap<String, String>, Option<std::time::SystemTime>), ImageError> {
    match std::fs::read(path) {
        Ok(b) => {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            Ok((
                serde_json::from_slice(&b).map_err(|e| ImageError::Corrupt(e.to_string()))?,
                mtime,
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((BTreeMap::new(), None)),
        Err(e) => Err(ImageError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `name` → `name:latest` when it has neither tag nor digest, as Docker does.
pub fn normalize(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

impl ImageStore {
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let refs = read_refs(&dir.join("refs.json"))?;
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            refs: Mutex::new(refs),
        })
    }

    /// The references, re-read if another process changed the file.
    fn refs(
        &self,
    ) -> std::sync::MutexGuard<'_, (BTreeMap<String, String>, Option<std::time::SystemTime>)> {
        let mut refs = self.refs.lock().expect("refs");
        let path = self.dir.join("refs.json");
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime != refs.1 {
            match read_refs(&path) {
                Ok(fresh) => *refs = fresh,
                Err(e) => tracing::warn!(error = %e, "re-reading image references failed"),
            }
        }
        refs
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn save_refs(&self, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let path = self.dir.join("refs.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(refs).expect("serializable"))
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Stores `data` as a blob; returns its digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<String, ImageError> {
        let digest = format!("sha256:{:x}", Sha256::digest(data));
        let path = self.blob_path(&digest);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, data).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok(digest)
    }

    /// Records `reference` → `digest`.
    pub fn tag(&self, reference: &str, digest: &str) -> Result<Image, ImageError> {
        let reference = normalize(reference);
        let mut refs = self.refs();
        refs.0.insert(reference.clone(), digest.to_string());
        self.save_refs(&refs.0)?;
        refs.1 = std::fs::metadata(self.dir.join("refs.json"))
            .and_then(|m| m.modified())
            .ok();
        Ok(Image {
            reference,
            digest: digest.into(),
            path: self.blob_path(digest),
        })
    }

    /// Imports a Wasm file under `reference` (`skiff images import`).
    pub fn import(&self, file: &Path, reference: &str) -> Result<Image, ImageError> {
        let mut data = Vec::new();
        std::fs::File::open(file)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io(file))?;
        let digest = self.put_blob(&data)?;
        self.tag(reference, &digest)
    }

    /// The stored image for a reference (by tag, or `name@sha256:…` by digest).
    pub fn resolve(&self, reference: &str) -> Option<Image> {
        let reference = normalize(reference);
        let digest = match reference.split_once('@') {
            Some((_, d)) => d.to_string(),
            None => self.refs().0.get(&reference)?.clone(),
        };
        let path = self.blob_path(&digest);
        path.exists().then(|| Image {
            reference,
            digest,
            path,
        })
    }

    pub fn list(&self) -> Vec<(String, String)> {
        self.refs()
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_and_resolves_by_tag_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.wasm");
        std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        let img = store.import(&file, "example.com/hello").unwrap();
        assert_eq!(img.reference, "example.com/hello:latest");
        assert!(img.digest.starts_with("sha256:"));
        let again = ImageStore::open(&dir.path().join("images")).unwrap();
        assert_eq!(
            again.resolve("example.com/hello:latest").unwrap().digest,
            img.digest
        );
        assert!(again
            .resolve(&format!("example.com/hello@{}", img.digest))
            .is_some());
        assert!(again.resolve("example.com/other:1").is_none());
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
    }
}
