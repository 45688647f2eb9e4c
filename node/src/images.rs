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

/// A stored image: its digest and content.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub reference: String,
    /// The Wasm blob's digest, or for a regular OCI image its manifest's.
    pub digest: String,
    pub content: Content,
    /// Bytes it takes (the Wasm blob, or the compressed layers).
    pub size: u64,
    /// How a regular OCI image says to run it (Wasm artifacts carry none).
    pub run: Option<RunConfig>,
}

/// What an image holds, which decides the runtime that runs it.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    /// A Wasm module or component (an artifact, or a regular image's Wasm entrypoint).
    Wasm(PathBuf),
    /// A root file system: the unpacked layer directories, bottom first.
    Rootfs(Vec<PathBuf>),
}

/// The parts of an OCI image config that say how to run it (`config.Entrypoint`, ...).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid` (regular images only).
    #[serde(default)]
    pub user: Option<String>,
}

/// A regular OCI image: which blob holds its Wasm entrypoint, or which layers make its
/// root file system; and how to run it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    wasm: String,
    /// Layer digests, bottom first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<String>,
    #[serde(default)]
    size: u64,
    run: RunConfig,
}

pub struct ImageStore {
    dir: PathBuf,
    /// Unpacked layers of regular images.
    pub layers: crate::layers::LayerStore,
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

pub use skiff_api::image::normalize;

impl ImageStore {
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let refs = read_refs(&dir.join("refs.json"))?;
        let layers = dir.join("layers");
        Ok(ImageStore {
            layers: crate::layers::LayerStore::open(&layers).map_err(io(&layers))?,
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

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    fn record_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("records")
            .join(digest.trim_start_matches("sha256:"))
            .with_extension("json")
    }

    /// Records a regular OCI image (by its manifest digest) whose entrypoint is the Wasm
    /// blob `wasm`.
    pub fn put_record(
        &self,
        manifest_digest: &str,
        wasm: &str,
        run: &RunConfig,
    ) -> Result<(), ImageError> {
        let size = std::fs::metadata(self.blob_path(wasm)).map_or(0, |m| m.len());
        self.write_record(
            manifest_digest,
            Record {
                wasm: wasm.to_string(),
                layers: Vec::new(),
                size,
                run: run.clone(),
            },
        )
    }

    /// Records a regular OCI image (by its manifest digest) whose root file system is the
    /// unpacked `layers` (digests, bottom first) taking `size` bytes compressed.
    pub fn put_rootfs_record(
        &self,
        manifest_digest: &str,
        layers: Vec<String>,
        size: u64,
        run: &RunConfig,
    ) -> Result<(), ImageError> {
        self.write_record(
            manifest_digest,
            Record {
                wasm: String::new(),
                layers,
                size,
                run: run.clone(),
            },
        )
    }

    fn write_record(&self, manifest_digest: &str, record: Record) -> Result<(), ImageError> {
        let path = self.record_path(manifest_digest);
        let dir = self.dir.join("records");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&record).expect("serializable"))
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The image stored under `digest` (a Wasm blob, or a regular image's record).
    fn image(&self, reference: String, digest: String) -> Option<Image> {
        let record = match std::fs::read(self.record_path(&digest)) {
            Ok(b) => serde_json::from_slice::<Record>(&b).ok()?,
            Err(_) => {
                let path = self.blob_path(&digest);
                let size = std::fs::metadata(&path).ok()?.len();
                return Some(Image {
                    reference,
                    digest,
                    content: Content::Wasm(path),
                    size,
                    run: None,
                });
            }
        };
        let content = if record.layers.is_empty() {
            let path = self.blob_path(&record.wasm);
            path.exists().then_some(Content::Wasm(path))?
        } else {
            let dirs: Option<Vec<PathBuf>> = record
                .layers
                .iter()
                .map(|d| self.layers.path(d).filter(|p| p.is_dir()))
                .collect();
            Content::Rootfs(dirs?)
        };
        Some(Image {
            reference,
            digest,
            content,
            size: record.size,
            run: Some(record.run),
        })
    }

    /// Records `reference` → `digest` (of a stored blob or record).
    pub fn tag(&self, reference: &str, digest: &str) -> Result<Image, ImageError> {
        let reference = normalize(reference);
        let mut refs = self.refs();
        refs.0.insert(reference.clone(), digest.to_string());
        self.save_refs(&refs.0)?;
        refs.1 = std::fs::metadata(self.dir.join("refs.json"))
            .and_then(|m| m.modified())
            .ok();
        drop(refs);
        self.image(reference, digest.to_string())
            .ok_or_else(|| ImageError::Corrupt(format!("{digest} is not stored")))
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
        self.image(reference, digest)
    }

    /// The stored images for the node's `status.images`: the references of each digest
    /// (and `name@digest`), with the size of its Wasm blob.
    pub fn summary(&self) -> Vec<(Vec<String>, u64)> {
        let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (reference, digest) in self.list() {
            by_digest.entry(digest).or_default().push(reference);
        }
        by_digest
            .into_iter()
            .filter_map(|(digest, mut names)| {
                let size = self.image(names[0].clone(), digest.clone())?.size;
                let repo = names[0]
                    .rsplit_once(':')
                    .map_or(names[0].as_str(), |(r, _)| r)
                    .to_string();
                names.push(format!("{repo}@{digest}"));
                Some((names, size))
            })
            .collect()
    }

    /// Every stored image (each digest some reference names) and the bytes it takes.
    pub fn stored(&self) -> Vec<(String, u64)> {
        let digests: std::collections::BTreeSet<String> =
            self.list().into_iter().map(|(_, d)| d).collect();
        digests
            .into_iter()
            .filter_map(|d| {
                let size = self.image(String::new(), d.clone())?.size;
                Some((d, size))
            })
            .collect()
    }

    /// Deletes the image stored under `digest`: every reference to it, then its record,
    /// its Wasm blob and its unpacked layers unless another image still has them.
    /// Blocking. The caller makes sure no container uses it.
    pub fn remove(&self, digest: &str) -> Result<(), ImageError> {
        let mut refs = self.refs();
        refs.0.retain(|_, d| d != digest);
        self.save_refs(&refs.0)?;
        refs.1 = std::fs::metadata(self.dir.join("refs.json"))
            .and_then(|m| m.modified())
            .ok();
        // What the remaining images hold (read under the lock: no tag comes in between).
        let mut kept_blobs = std::collections::HashSet::new();
        let mut kept_layers = std::collections::HashSet::new();
        for d in refs.0.values() {
            match self.read_record(d) {
                Some(r) => {
                    kept_blobs.insert(r.wasm);
                    kept_layers.extend(r.layers);
                }
                None => {
                    kept_blobs.insert(d.clone());
                }
            }
        }
        let gone = |path: PathBuf, r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        };
        let (wasm, layers) = match self.read_record(digest) {
            Some(r) => {
                let path = self.record_path(digest);
                gone(path.clone(), std::fs::remove_file(&path))?;
                (r.wasm, r.layers)
            }
            None => (digest.to_string(), Vec::new()),
        };
        if !wasm.is_empty() && !kept_blobs.contains(&wasm) {
            let path = self.blob_path(&wasm);
            gone(path.clone(), std::fs::remove_file(&path))?;
        }
        for layer in layers.iter().filter(|l| !kept_layers.contains(*l)) {
            if let Some(path) = self.layers.path(layer) {
                gone(path.clone(), std::fs::remove_dir_all(&path))?;
            }
        }
        Ok(())
    }

    fn read_record(&self, digest: &str) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(digest)).ok()?;
        serde_json::from_slice(&bytes).ok()
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
    fn summary_groups_references_by_digest_with_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.wasm");
        std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        let img = store.import(&file, "example.com/a:1").unwrap();
        store.import(&file, "example.com/a:2").unwrap();
        let summary = store.summary();
        assert_eq!(summary.len(), 1);
        let (names, size) = &summary[0];
        assert_eq!(*size, 8);
        assert!(
            names.contains(&"example.com/a:1".to_string())
                && names.contains(&"example.com/a:2".to_string())
        );
        assert!(names.contains(&format!("example.com/a@{}", img.digest)));
    }

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

    #[test]
    fn removing_an_image_keeps_what_others_still_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        let layer = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        for n in 1..=3 {
            std::fs::create_dir_all(store.layers.path(&layer(n)).unwrap().join("etc")).unwrap();
        }
        let run = RunConfig::default();
        // Two images share layer 1.
        let (a, b) = (layer(0xa), layer(0xb));
        store
            .put_rootfs_record(&a, vec![layer(1), layer(2)], 30, &run)
            .unwrap();
        store
            .put_rootfs_record(&b, vec![layer(1), layer(3)], 40, &run)
            .unwrap();
        store.tag("example.com/a:1", &a).unwrap();
        store.tag("example.com/a:latest", &a).unwrap();
        store.tag("example.com/b:1", &b).unwrap();
        let file = dir.path().join("m.wasm");
        std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
        let wasm = store.import(&file, "example.com/w:1").unwrap();
        let mut stored = store.stored();
        stored.sort();
        assert_eq!(stored.len(), 3);
        assert!(stored.contains(&(a.clone(), 30)) && stored.contains(&(wasm.digest.clone(), 8)));

        store.remove(&a).unwrap();
        assert!(store.resolve("example.com/a:1").is_none());
        assert!(store.resolve("example.com/a:latest").is_none());
        assert!(store.layers.has(&layer(1)), "b still has layer 1");
        assert!(!store.layers.has(&layer(2)));
        assert!(store.resolve("example.com/b:1").is_some());

        store.remove(&wasm.digest).unwrap();
        assert!(store.resolve("example.com/w:1").is_none());
        assert!(!store.blob_path(&wasm.digest).exists());
        assert_eq!(store.stored(), vec![(b.clone(), 40)]);
    }
}
