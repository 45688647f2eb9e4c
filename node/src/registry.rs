//! Wasm images from OCI registries (oci-client): pulls that accept the CNCF Wasm artifact
//! format and the older Wasm media types, verify digests and land in the node's image
//! store; and `skiff push`, which publishes a module or component as a CNCF Wasm artifact.
//! Registries on loopback are spoken to over plain HTTP, as Docker does; others over
//! HTTPS unless listed as insecure.

use std::net::IpAddr;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::images::{Image, ImageError, ImageStore};

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

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {0:?}: {1}")]
    Reference(String, String),
    #[error("{0}")]
    Registry(String),
    #[error("{image} is not a Wasm image (layers: {layers})")]
    NotWasm { image: String, layers: String },
    #[error("{image}: layer digest mismatch: expected {expected}, got {actual}")]
    Digest {
        image: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Store(#[from] ImageError),
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

fn client_for(registry: &str, insecure: &[String]) -> Client {
    let protocol = if is_loopback(registry) || insecure.iter().any(|r| r == registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
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
    insecure: &[String],
) -> Result<Image, RegistryError> {
    let reference = parse(image)?;
    let client = client_for(reference.registry(), insecure);
    let (manifest, _manifest_digest, _config) = client
        .pull_manifest_and_config(&reference, auth)
        .await
        .map_err(|e| RegistryError::Registry(format!("{e}")))?;
    let layer: &OciDescriptor = manifest
        .layers
        .iter()
        .find(|l| WASM_LAYERS.contains(&l.media_type.as_str()))
        .ok_or_else(|| RegistryError::NotWasm {
            image: image.into(),
            layers: manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let mut data: Vec<u8> = Vec::with_capacity(layer.size.max(0) as usize);
    client
        .pull_blob(&reference, layer, &mut data)
        .await
        .map_err(|e| RegistryError::Registry(format!("{e}")))?;
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

/// Publishes `wasm` as a CNCF Wasm artifact at `image`; returns the manifest URL.
pub async fn push(
    wasm: Vec<u8>,
    image: &str,
    auth: &RegistryAuth,
    insecure: &[String],
) -> Result<String, RegistryError> {
    let reference = parse(image)?;
    let client = client_for(reference.registry(), insecure);
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
        .map_err(|e| RegistryError::Registry(format!("{e}")))?;
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

    #[test]
    fn components_are_told_from_modules() {
        assert!(crate::runtime::wasm::is_component(b"\0asm\x0d\0\x01\0"));
        assert!(!crate::runtime::wasm::is_component(b"\0asm\x01\0\0\0"));
    }
}
