//! Wasm images from OCI registries (oci-client): pulls that accept the CNCF Wasm artifact
//! format, the older Wasm media types, and regular OCI/Docker images whose entrypoint file
//! is Wasm; they verify digests and land in the node's image store; and `skiff push`, which publishes a module or component as a CNCF Wasm artifact.
//! Registries on loopback are spoken to over plain HTTP, as Docker does; others over
//! HTTPS unless listed as insecure.

mod manifest;

use std::net::IpAddr;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use std::path::PathBuf;

use crate::images::{Image, ImageError, ImageStore, RunConfig};
use crate::layers::{Budget, Compression};

/// Registry credentials.
pub use oci_client::secrets::RegistryAuth as Auth;

/// The CNCF TAG Runtime Wasm artifact config and layer (what `skiff push` produces).
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
/// Older formats pulls also accept.
const WASM_TO_OCI_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
const RUNWASI_COMPONENT_LAYER: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
const WASM_LAYERS: &[&str] = &[WASM_LAYER, WASM_TO_OCI_LAYER, RUNWASI_COMPONENT_LAYER];
/// Symbolic links followed to find an entrypoint, at most.
const MAX_LINKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {0:?}: {1}")]
    Reference(String, String),
    #[error("{0}")]
    Registry(String),
    #[error("{image} is not a Wasm image (layers: {layers})")]
    NotWasm { image: String, layers: String },
    #[error("{image}: {reason}")]
    NoWasmEntrypoint { image: String, reason: String },
    #[error("{image}: layer digest mismatch: expected {expected}, got {actual}")]
    Digest {
        image: String,
        expected: String,
        actual: String,
    },
    /// A size the manifest or the registry gives is over a limit, or off.
    #[error("{image}: {reason}")]
    Size { image: String, reason: String },
    #[error(transparent)]
    Store(#[from] ImageError),
}

/// Default limits of a pull: a layer (as downloaded, and unpacked), and an image's layers
/// together.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 4 << 30;
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 8 << 30;

/// How pulls go: which registries speak plain HTTP, and how large what they send may be
/// (sizes from the network are claims, checked as the bytes come, never allocated).
#[derive(Clone, Debug)]
pub struct PullOptions {
    pub insecure: Vec<String>,
    pub max_layer_bytes: u64,
    pub max_image_bytes: u64,
    /// The most bytes a Wasm binary may have (the node compiles no larger one).
    pub max_wasm_bytes: u64,
    /// A pull that receives nothing for this long has stalled and fails (the kubelet's
    /// image pull progress deadline), so a registry that stops sending holds no pull.
    pub progress_deadline: std::time::Duration,
}

/// The default progress deadline of a pull.
pub const DEFAULT_PROGRESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure: Vec::new(),
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_wasm_bytes: crate::runtime::wasm::MAX_WASM_BYTES,
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
        }
    }
}

/// The most bytes an image's config may have (a few KiB in practice; containerd caps
/// manifests and configs alike).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The image's config, streamed: no more than its descriptor declares, nor than
/// [`MAX_CONFIG_BYTES`], its digest checked.
async fn fetch_config(
    client: &Client,
    reference: &Reference,
    image: &str,
    desc: &OciDescriptor,
) -> Result<String, RegistryError> {
    use futures::StreamExt;
    let too = |reason: String| RegistryError::Size {
        image: image.into(),
        reason,
    };
    let declared = u64::try_from(desc.size).unwrap_or(u64::MAX);
    if declared > MAX_CONFIG_BYTES {
        return Err(too(format!(
            "its config declares {declared} bytes, more than the {MAX_CONFIG_BYTES} a config may have"
        )));
    }
    let mut stream = client
        .pull_blob_stream(reference, desc)
        .await
        .map_err(registry_err)?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(registry_err)?;
        if (out.len() + chunk.len()) as u64 > declared {
            return Err(too(format!(
                "the registry sent more than the {declared} bytes the manifest declares for its config"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Refuses, before anything is downloaded, layers whose declared sizes are over the
/// limits or more than the node's free disk.
fn check_declared(
    store: &ImageStore,
    image: &str,
    layers: &[&OciDescriptor],
    opts: &PullOptions,
) -> Result<(), RegistryError> {
    let too = |reason: String| RegistryError::Size {
        image: image.into(),
        reason,
    };
    let mut total = 0u64;
    for l in layers {
        let size = u64::try_from(l.size)
            .map_err(|_| too(format!("layer {} declares a negative size", l.digest)))?;
        if size > opts.max_layer_bytes {
            return Err(too(format!(
                "layer {} declares {size} bytes, more than this node's limit of {} (--max-layer-size)",
                l.digest, opts.max_layer_bytes
            )));
        }
        total = total.saturating_add(size);
    }
    if total > opts.max_image_bytes {
        return Err(too(format!(
            "its layers declare {total} bytes, more than this node's limit of {} (--max-image-size)",
            opts.max_image_bytes
        )));
    }
    let (disk, free) = crate::agent::node_info::disk(store.dir());
    if disk > 0 && free < total {
        return Err(too(format!(
            "its layers declare {total} bytes; the node's disk has {free} bytes free"
        )));
    }
    Ok(())
}

/// A registry client's error with its causes ("error sending request: dns error: ..."):
/// the top line alone rarely says what went wrong.
fn registry_err(e: impl std::error::Error) -> RegistryError {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        cause = c.source();
    }
    RegistryError::Registry(msg)
}

fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                registry
            }
        })
        .unwrap_or(registry);
    let host = host.trim_matches(['[', ']']);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `registry` is spoken to over plain HTTP (loopback, or listed as insecure).
fn plain_http(registry: &str, insecure: &[String]) -> bool {
    is_loopback(registry) || insecure.iter().any(|r| r == registry)
}

/// A registry that does not accept a connection this soon is unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client for `registry`; each read waits at most `progress_deadline`.
fn client_for(
    registry: &str,
    insecure: &[String],
    progress_deadline: std::time::Duration,
) -> Client {
    let protocol = if plain_http(registry, insecure) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT.min(progress_deadline)),
        read_timeout: Some(progress_deadline),
        ..Default::default()
    })
}

fn parse(image: &str) -> Result<Reference, RegistryError> {
    Reference::try_from(image).map_err(|e| RegistryError::Reference(image.into(), e.to_string()))
}

/// Pulls `image` into `store`; returns it as stored (its digest is the Wasm layer's).
pub async fn pull(
    store: &ImageStore,
    image: &str,
    auth: &RegistryAuth,
    opts: &PullOptions,
) -> Result<Image, RegistryError> {
    let reference = parse(image)?;
    let client = client_for(reference.registry(), &opts.insecure, opts.progress_deadline);
    let (manifest, manifest_digest) = manifest::Fetch {
        client: &client,
        reference: &reference,
        image,
        auth,
        plain_http: plain_http(reference.registry(), &opts.insecure),
        progress_deadline: opts.progress_deadline,
    }
    .manifest()
    .await?;
    let config = fetch_config(&client, &reference, image, &manifest.config).await?;
    let wasm_layer = manifest
        .layers
        .iter()
        .find(|l| WASM_LAYERS.contains(&l.media_type.as_str()));
    let Some(layer) = wasm_layer else {
        // Filesystem layers of regular OCI and Docker images: one whose entrypoint file is
        // Wasm (starts with `\0asm`) runs on the Wasm runtime, any other on runc.
        let all_tar = !manifest.layers.is_empty()
            && manifest
                .layers
                .iter()
                .all(|l| Compression::of(&l.media_type).is_some());
        if all_tar {
            let missing: Vec<&OciDescriptor> = manifest
                .layers
                .iter()
                .filter(|l| !store.layers.has(&l.digest))
                .collect();
            check_declared(store, image, &missing, opts)?;
            let pulling = Pulling {
                client: &client,
                reference: &reference,
                image,
                max_layer_bytes: opts.max_layer_bytes,
                max_image_bytes: opts.max_image_bytes,
                max_wasm_bytes: opts.max_wasm_bytes,
            };
            return pull_filesystem_image(
                store,
                &pulling,
                &manifest.layers,
                &manifest_digest,
                &config,
            )
            .await;
        }
        return Err(RegistryError::NotWasm {
            image: image.into(),
            layers: manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    check_declared(store, image, &[layer], opts)?;
    if u64::try_from(layer.size).is_ok_and(|n| n > opts.max_wasm_bytes) {
        return Err(RegistryError::Size {
            image: image.into(),
            reason: format!(
                "its Wasm layer declares {} bytes, more than this node's limit of {} (--max-wasm-size)",
                layer.size, opts.max_wasm_bytes
            ),
        });
    }
    let pulling = Pulling {
        client: &client,
        reference: &reference,
        image,
        max_layer_bytes: opts.max_layer_bytes,
        max_image_bytes: opts.max_image_bytes,
        max_wasm_bytes: opts.max_wasm_bytes,
    };
    let tmp =
        tempfile::tempdir_in(store.dir()).map_err(|e| RegistryError::Registry(e.to_string()))?;
    let file = pulling.fetch(layer, tmp.path(), 0).await?;
    // Its size is checked (the declared one, within the limit): now it may be read whole.
    let data = tokio::fs::read(&file)
        .await
        .map_err(|e| RegistryError::Registry(e.to_string()))?;
    let actual = format!("sha256:{:x}", Sha256::digest(&data));
    if actual != layer.digest {
        return Err(RegistryError::Digest {
            image: image.into(),
            expected: layer.digest.clone(),
            actual,
        });
    }
    let digest = store.put_blob(&data)?;
    Ok(store.tag(image, &digest)?)
}

/// One image's pull: its registry client (holding the token from the manifest pull),
/// reference and name, and how large a layer may be.
struct Pulling<'a> {
    client: &'a Client,
    reference: &'a Reference,
    image: &'a str,
    max_layer_bytes: u64,
    max_image_bytes: u64,
    max_wasm_bytes: u64,
}

impl Pulling<'_> {
    fn fail(&self, reason: String) -> RegistryError {
        RegistryError::NoWasmEntrypoint {
            image: self.image.into(),
            reason,
        }
    }

    /// Downloads `layer` into `dir` as file `layer-<i>`, streamed: the registry may send
    /// neither more nor fewer bytes than the descriptor declares (checked against the
    /// limit beforehand), and the digest is checked at the end (by oci-client's stream).
    async fn fetch(
        &self,
        layer: &OciDescriptor,
        dir: &std::path::Path,
        i: usize,
    ) -> Result<PathBuf, RegistryError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let size = |reason: String| RegistryError::Size {
            image: self.image.into(),
            reason,
        };
        let declared = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if declared > self.max_layer_bytes {
            return Err(size(format!(
                "layer {} declares {declared} bytes, more than this node's limit of {} (--max-layer-size)",
                layer.digest, self.max_layer_bytes
            )));
        }
        let f = dir.join(format!("layer-{i}"));
        let mut out = tokio::fs::File::create(&f)
            .await
            .map_err(|e| self.fail(format!("{}: {e}", f.display())))?;
        let mut stream = self
            .client
            .pull_blob_stream(self.reference, layer)
            .await
            .map_err(registry_err)?;
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(registry_err)?;
            got += chunk.len() as u64;
            if got > declared {
                return Err(size(format!(
                    "the registry sent more than the {declared} bytes the manifest declares for layer {}",
                    layer.digest
                )));
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| self.fail(format!("{}: {e}", f.display())))?;
        }
        out.flush()
            .await
            .map_err(|e| self.fail(format!("{}: {e}", f.display())))?;
        if got != declared {
            return Err(size(format!(
                "the registry sent {got} of the {declared} bytes the manifest declares for layer {}",
                layer.digest
            )));
        }
        Ok(f)
    }
}

/// A regular OCI image: finds its entrypoint (`Entrypoint`, else `Cmd`, resolved against
/// `WorkingDir`) in its layers, from the top one down, and keeps it alone if it is Wasm;
/// any other image is unpacked whole, layer by layer, as a root file system for runc.
async fn pull_filesystem_image(
    store: &ImageStore,
    pulling: &Pulling<'_>,
    layers: &[OciDescriptor],
    manifest_digest: &str,
    config: &str,
) -> Result<Image, RegistryError> {
    let image = pulling.image;
    let run: RunConfig = serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|v| serde_json::from_value(v["config"].clone()).ok())
        .unwrap_or_default();
    // Layers are fetched once each, on demand, top first (they may be large: kept on disk).
    let tmp = tempfile::tempdir_in(store.dir())
        .map_err(|e| pulling.fail(format!("temporary directory: {e}")))?;
    let mut fetched: Vec<Option<PathBuf>> = vec![None; layers.len()];
    let program = run
        .entrypoint
        .iter()
        .flatten()
        .chain(run.cmd.iter().flatten())
        .next();
    let wasm = match program {
        Some(program) => {
            find_entrypoint(pulling, layers, &run, program, &tmp, &mut fetched).await?
        }
        None => None,
    };
    if let Some(wasm) = wasm.filter(|w| w.starts_with(b"\0asm")) {
        let wasm_digest = store.put_blob(&wasm)?;
        store.put_record(manifest_digest, &wasm_digest, &run)?;
        return Ok(store.tag(image, manifest_digest)?);
    }
    // A root file system: every layer unpacked (once per node), its digest checked.
    let mut digests = Vec::with_capacity(layers.len());
    let mut size = 0u64;
    let mut image_left = pulling.max_image_bytes;
    for (i, layer) in layers.iter().enumerate() {
        digests.push(layer.digest.clone());
        size += layer.size.max(0) as u64;
        if store.layers.has(&layer.digest) {
            continue;
        }
        let file = match &fetched[i] {
            Some(f) => f.clone(),
            None => pulling.fetch(layer, tmp.path(), i).await?,
        };
        tracing::info!(%image, layer = %layer.digest, size = layer.size, n = i + 1, of = layers.len(), "layer pulled; unpacking");
        // The image's layers share one budget as they unpack, as each has its own.
        let mut budget = if image_left < pulling.max_layer_bytes {
            Budget {
                left: image_left,
                flag: "--max-image-size",
            }
        } else {
            Budget::layer(pulling.max_layer_bytes)
        };
        let before = budget.left;
        let (layer_store, digest, media_type) = (
            store.layers.clone(),
            layer.digest.clone(),
            layer.media_type.clone(),
        );
        budget = tokio::task::spawn_blocking(move || {
            let blob = std::fs::File::open(&file)?;
            layer_store
                .unpack_within(
                    std::io::BufReader::new(blob),
                    &digest,
                    &media_type,
                    &mut budget,
                )
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(budget)
        })
        .await
        .map_err(|e| pulling.fail(e.to_string()))?
        .map_err(|e| pulling.fail(e.to_string()))?;
        image_left = image_left.saturating_sub(before - budget.left);
    }
    tracing::info!(%image, layers = layers.len(), bytes = size, "image unpacked");
    store.put_rootfs_record(manifest_digest, digests, size, &run)?;
    Ok(store.tag(image, manifest_digest)?)
}

/// The entrypoint file's bytes, looked up through the layers top first (following links
/// and whiteouts); `None` if the image does not have it.
async fn find_entrypoint(
    pulling: &Pulling<'_>,
    layers: &[OciDescriptor],
    run: &RunConfig,
    program: &str,
    tmp: &tempfile::TempDir,
    fetched: &mut [Option<PathBuf>],
) -> Result<Option<Vec<u8>>, RegistryError> {
    let workdir = run.working_dir.as_deref().unwrap_or("/");
    let mut target = clean_path(&format!("{workdir}/{program}"));
    let mut links = 0;
    let (limit, wasm_cap) = (pulling.max_layer_bytes, pulling.max_wasm_bytes);
    let wasm = 'search: loop {
        for (i, layer) in layers.iter().enumerate().rev() {
            let file = match &fetched[i] {
                Some(f) => f.clone(),
                None => {
                    let f = pulling.fetch(layer, tmp.path(), i).await?;
                    fetched[i] = Some(f.clone());
                    f
                }
            };
            let compression = Compression::of(&layer.media_type).unwrap_or(Compression::None);
            let wanted = target.clone();
            let found = tokio::task::spawn_blocking(move || {
                find_in_layer(&file, compression, &wanted, limit, wasm_cap)
            })
            .await
            .map_err(|e| pulling.fail(e.to_string()))?
            .map_err(|e| pulling.fail(format!("reading layer {}: {e}", layer.digest)))?;
            match found {
                Found::File(bytes) => break 'search bytes,
                Found::Link(to) if links < MAX_LINKS => {
                    links += 1;
                    target = clean_path(&match to.strip_prefix('/') {
                        Some(_) => to,
                        None => format!("{}/{to}", parent(&target)),
                    });
                    continue 'search;
                }
                Found::Link(_) => {
                    return Err(pulling.fail(format!("too many symbolic links resolving /{target}")))
                }
                Found::Deleted => return Ok(None),
                Found::Absent => {}
            }
        }
        return Ok(None);
    };
    Ok(Some(wasm))
}

/// What a layer says about a path.
enum Found {
    File(Vec<u8>),
    Link(String),
    /// A whiteout: lower layers' copies are gone.
    Deleted,
    Absent,
}

/// `a/./b/../c` → `a/c`, without a leading slash (as paths appear in layer tars).
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Looks for `target` in a layer blob, reading at most `limit` bytes of tar, and of a
/// Wasm file at most `wasm_cap`.
fn find_in_layer(
    file: &std::path::Path,
    compression: Compression,
    target: &str,
    limit: u64,
    wasm_cap: u64,
) -> std::io::Result<Found> {
    use std::io::Read;
    let f = std::io::BufReader::new(std::fs::File::open(file)?);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f)?),
    };
    let reader = crate::layers::Limited {
        inner: reader,
        budget: crate::layers::Budget::layer(limit),
    };
    let name = target.rsplit('/').next().unwrap_or(target);
    let dir = parent(target);
    let whiteout = clean_path(&format!("{dir}/.wh.{name}"));
    let mut opaque_dirs: Vec<String> = Vec::new();
    let bound = crate::layers::HeaderBound::default();
    let mut archive = tar::Archive::new(bound.wrap(reader));
    let mut entries = archive.entries()?;
    while let Some(entry) = bound.next(&mut entries) {
        let mut entry = entry?;
        let path = clean_path(&entry.path()?.to_string_lossy());
        if path == target {
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let to = entry
                    .link_name()?
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Hard links name a path from the layer's root.
                return Ok(Found::Link(if kind.is_hard_link() {
                    format!("/{to}")
                } else {
                    to
                }));
            }
            // The header's size is a claim: the bytes are read as they come. Only a Wasm
            // file is read whole (the caller keeps nothing else), up to what the node
            // compiles.
            let mut bytes = Vec::new();
            (&mut entry).take(4).read_to_end(&mut bytes)?;
            if bytes != b"\0asm" {
                return Ok(Found::File(bytes));
            }
            (&mut entry).take(wasm_cap).read_to_end(&mut bytes)?;
            if entry.read(&mut [0u8; 1])? > 0 {
                return Err(std::io::Error::other(format!(
                    "the Wasm entrypoint has more than the {wasm_cap} bytes this node compiles (--max-wasm-size)"
                )));
            }
            return Ok(Found::File(bytes));
        }
        if path == whiteout {
            return Ok(Found::Deleted);
        }
        if let Some(d) = path.strip_suffix("/.wh..wh..opq") {
            opaque_dirs.push(d.to_string());
        }
    }
    // An opaque directory hides everything below it in lower layers.
    if opaque_dirs
        .iter()
        .any(|d| target.starts_with(&format!("{d}/")))
    {
        return Ok(Found::Deleted);
    }
    Ok(Found::Absent)
}

/// Publishes `wasm` as a CNCF Wasm artifact at `image`; returns the manifest URL.
pub async fn push(
    wasm: Vec<u8>,
    image: &str,
    auth: &RegistryAuth,
    insecure: &[String],
) -> Result<String, RegistryError> {
    let reference = parse(image)?;
    let client = client_for(reference.registry(), insecure, DEFAULT_PROGRESS_DEADLINE);
    let digest = format!("sha256:{:x}", Sha256::digest(&wasm));
    let component = crate::runtime::wasm::is_component(&wasm);
    let config = serde_json::json!({
        "created": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "architecture": "wasm",
        "os": if component { "wasip2" } else { "wasip1" },
        "layerDigests": [digest],
    });
    let mut config_json = config.clone();
    if component {
        config_json["component"] = serde_json::json!({});
    }
    let layers = [ImageLayer::new(wasm, WASM_LAYER.into(), None)];
    let config = Config::new(
        serde_json::to_vec(&config_json).expect("json"),
        WASM_CONFIG_V0.to_string(),
        None,
    );
    let resp = client
        .push(&reference, &layers, config, auth, None)
        .await
        .map_err(registry_err)?;
    Ok(resp.manifest_url)
}

/// Credentials for `registry` from `kubernetes.io/dockerconfigjson` secret data.
pub fn auth_from_dockerconfig(json: &[u8], registry: &str) -> Option<RegistryAuth> {
    use base64::Engine;
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let entry = auths
        .iter()
        .find(|(k, _)| {
            k.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                == registry
        })?
        .1;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some(RegistryAuth::Basic(u.into(), p.into()));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str()?)
        .ok()?;
    let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(RegistryAuth::Basic(u.into(), p.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A registry on loopback answering every request with `answer(path)`: a status line
    /// and headers, and a body that may be endless.
    pub(super) async fn serve(
        answer: impl Fn(&str) -> (String, Option<Vec<u8>>) + Send + Sync + 'static,
    ) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = std::sync::Arc::new(answer);
        let task = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut req = vec![0u8; 4096];
                    let n = conn.read(&mut req).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&req[..n]).into_owned();
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (head, body) = answer(&path);
                    let _ = conn.write_all(head.as_bytes()).await;
                    match body {
                        Some(b) => {
                            let _ = conn.write_all(&b).await;
                        }
                        // Endless: as much as the client reads.
                        None => {
                            let chunk = vec![b' '; 64 * 1024];
                            while conn.write_all(&chunk).await.is_ok() {}
                        }
                    }
                });
            }
        });
        (port, task)
    }

    pub(super) fn ok(body: &[u8], media_type: &str) -> (String, Option<Vec<u8>>) {
        (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            Some(body.to_vec()),
        )
    }

    /// A registry on loopback serving one image: `manifest` under any tag, `blobs` by
    /// digest (anything else answers `{}`).
    async fn serve_image(
        manifest: String,
        blobs: std::collections::HashMap<String, Vec<u8>>,
    ) -> (u16, tokio::task::JoinHandle<()>) {
        serve(move |path| {
            if path.contains("/manifests/") {
                return ok(
                    manifest.as_bytes(),
                    "application/vnd.oci.image.manifest.v1+json",
                );
            }
            let digest = path.rsplit('/').next().unwrap_or_default();
            ok(
                blobs.get(digest).map_or(&b"{}"[..], |b| &b[..]),
                "application/json",
            )
        })
        .await
    }

    /// Layers share the image's budget as they unpack: two layers within
    /// --max-layer-size each but past --max-image-size together are refused.
    #[tokio::test]
    async fn an_images_layers_unpack_within_the_image_limit() {
        use sha2::Digest as _;
        use std::io::Read as _;
        let _serial = crate::CPU_SERIAL.lock().await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let gz = |name: &str| {
            use std::io::Write;
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(3 << 20);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_data(&mut h, name, std::io::repeat(0).take(3 << 20))
                .unwrap();
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&b.into_inner().unwrap()).unwrap();
            e.finish().unwrap()
        };
        let sha = |b: &[u8]| format!("sha256:{:x}", sha2::Sha256::digest(b));
        let config = br#"{"config": {"Cmd": ["/bin/sh"]}}"#.to_vec();
        let layers = [gz("a"), gz("b")];
        let desc = |media: &str, b: &[u8]| serde_json::json!({"mediaType": media, "digest": sha(b), "size": b.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
        })
        .to_string();
        let mut blobs: std::collections::HashMap<String, Vec<u8>> =
            layers.iter().map(|l| (sha(l), l.clone())).collect();
        blobs.insert(sha(&config), config.clone());
        let (port, task) = serve_image(manifest, blobs).await;
        let image = format!("127.0.0.1:{port}/two:1");
        let opts = |image_mib: u64| PullOptions {
            max_layer_bytes: 4 << 20,
            max_image_bytes: image_mib << 20,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let err = pull(&store, &image, &RegistryAuth::Anonymous, &opts(5))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unpacks to more than this node's limit (--max-image-size)"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        pull(&store, &image, &RegistryAuth::Anonymous, &opts(8))
            .await
            .unwrap();
        task.abort();
    }

    /// A layer's bytes must be what its digest names before anything is taken from them:
    /// a Wasm entrypoint found in a layer the registry swapped is not stored. (oci-client's
    /// blob stream checks the digest at its end; this keeps any other fetch honest.)
    #[tokio::test]
    async fn a_layer_that_is_not_its_digest_is_refused() {
        use sha2::Digest as _;
        use std::io::Write;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let module = b"\0asm\x01\0\0\0";
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(module.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, "app.wasm", &module[..]).unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&b.into_inner().unwrap()).unwrap();
        let layer = e.finish().unwrap();
        let sha = |b: &[u8]| format!("sha256:{:x}", sha2::Sha256::digest(b));
        let config = br#"{"config": {"Cmd": ["/app.wasm"]}}"#.to_vec();
        let claimed = sha(b"the layer the manifest names");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": claimed, "size": layer.len()}],
        })
        .to_string();
        let blobs: std::collections::HashMap<String, Vec<u8>> =
            [(claimed.clone(), layer), (sha(&config), config)].into();
        let (port, task) = serve_image(manifest, blobs).await;
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let image = format!("127.0.0.1:{port}/swapped:1");
        let err = pull(
            &store,
            &image,
            &RegistryAuth::Anonymous,
            &Default::default(),
        )
        .await
        .unwrap_err();
        let msg = err.to_string().to_lowercase();
        assert!(msg.contains("digest") && msg.contains(&claimed), "{err}");
        assert!(store.resolve(&image).is_none());
        task.abort();
    }

    /// A registry that accepts and then sends nothing fails the pull at the progress
    /// deadline, not never.
    #[tokio::test]
    async fn a_stalled_registry_fails_the_pull_at_the_deadline() {
        // The binary's main installs the provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                open.push(conn);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let opts = PullOptions {
            progress_deadline: std::time::Duration::from_millis(500),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let pulled = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            pull(
                &store,
                &format!("127.0.0.1:{port}/stuck:1"),
                &RegistryAuth::Anonymous,
                &opts,
            ),
        )
        .await
        .expect("the pull ends");
        assert!(pulled.is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        held.abort();
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[test]
    fn docker_config_credentials() {
        let cfg = br#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}, "https://r.example":{"username":"a","password":"b"}}}"#;
        assert!(
            matches!(auth_from_dockerconfig(cfg, "127.0.0.1:5000"), Some(RegistryAuth::Basic(u, p)) if u == "user" && p == "pass")
        );
        assert!(
            matches!(auth_from_dockerconfig(cfg, "r.example"), Some(RegistryAuth::Basic(u, _)) if u == "a")
        );
        assert!(auth_from_dockerconfig(cfg, "other").is_none());
    }

    fn layer(
        dir: &std::path::Path,
        name: &str,
        entries: &[(&str, Option<&str>, &[u8])],
    ) -> PathBuf {
        use std::io::Write;
        let path = dir.join(name);
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (p, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            match link {
                Some(to) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, to).unwrap();
                }
                None => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
        path
    }

    #[test]
    fn entrypoints_are_found_through_links_and_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer(
            dir.path(),
            "l",
            &[
                ("./app/prog.wasm", None, b"\0asm"),
                ("app/run", Some("prog.wasm"), b""),
                ("app/.wh.gone", None, b""),
                ("data/.wh..wh..opq", None, b""),
            ],
        );
        assert!(
            matches!(find_in_layer(&l, Compression::Gzip, "app/prog.wasm", 1 << 20, 1 << 20).unwrap(), Found::File(b) if b == b"\0asm")
        );
        assert!(
            matches!(find_in_layer(&l, Compression::Gzip, "app/run", 1 << 20, 1 << 20).unwrap(), Found::Link(t) if t == "prog.wasm")
        );
        assert!(matches!(
            find_in_layer(&l, Compression::Gzip, "app/gone", 1 << 20, 1 << 20).unwrap(),
            Found::Deleted
        ));
        assert!(matches!(
            find_in_layer(&l, Compression::Gzip, "data/x.wasm", 1 << 20, 1 << 20).unwrap(),
            Found::Deleted
        ));
        assert!(matches!(
            find_in_layer(&l, Compression::Gzip, "bin/other", 1 << 20, 1 << 20).unwrap(),
            Found::Absent
        ));
        assert_eq!(clean_path("/app/./x/../prog.wasm"), "app/prog.wasm");
        assert_eq!(parent("app/prog.wasm"), "app");
    }

    #[test]
    fn components_are_told_from_modules() {
        assert!(crate::runtime::wasm::is_component(b"\0asm\x0d\0\x01\0"));
        assert!(!crate::runtime::wasm::is_component(b"\0asm\x01\0\0\0"));
    }
}
