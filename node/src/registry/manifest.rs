//! An image's manifest, fetched by the agent itself rather than by oci-client (which reads
//! a registry's answer whole): at most [`MAX_MANIFEST_BYTES`] are read (containerd's
//! limit), the digest is checked against the reference's, and an index is resolved to
//! this machine's platform. Authentication is oci-client's, so its token serves the
//! blob pulls that follow.

use oci_client::manifest::{OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

use super::{registry_err, RegistryError};

/// The most bytes a manifest may have (containerd's `MaxManifestSize`).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The manifest types a pull accepts.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Where and how to ask.
pub struct Fetch<'a> {
    pub client: &'a Client,
    pub reference: &'a Reference,
    /// The image as the pod names it (for messages).
    pub image: &'a str,
    pub auth: &'a RegistryAuth,
    pub plain_http: bool,
    pub progress_deadline: std::time::Duration,
}

impl Fetch<'_> {
    /// The image's manifest (an index resolved to this platform's) and its digest.
    pub async fn manifest(&self) -> Result<(OciImageManifest, String), RegistryError> {
        let token = self
            .client
            .auth(self.reference, self.auth, RegistryOperation::Pull)
            .await
            .map_err(registry_err)?;
        let http = reqwest::Client::builder()
            .connect_timeout(self.progress_deadline)
            .read_timeout(self.progress_deadline)
            .build()
            .map_err(registry_err)?;
        let first = match (self.reference.digest(), self.reference.tag()) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => "latest",
        };
        let (body, digest) = self.get(&http, token.as_deref(), first).await?;
        if let Some(want) = self.reference.digest() {
            self.check_digest(want, &digest)?;
        }
        let parsed: serde_json::Value = self.decode(&body)?;
        if parsed.get("manifests").is_none() {
            return Ok((self.decode(&body)?, digest));
        }
        let index: OciImageIndex = self.decode(&body)?;
        let chosen =
            oci_client::client::current_platform_resolver(&index.manifests).ok_or_else(|| {
                RegistryError::Registry(format!(
                    "{}: no manifest for this platform in the image index",
                    self.image
                ))
            })?;
        let (body, digest) = self.get(&http, token.as_deref(), &chosen).await?;
        self.check_digest(&chosen, &digest)?;
        Ok((self.decode(&body)?, digest))
    }

    fn check_digest(&self, want: &str, got: &str) -> Result<(), RegistryError> {
        if want == got {
            return Ok(());
        }
        Err(RegistryError::Digest {
            image: self.image.into(),
            expected: want.into(),
            actual: got.into(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, RegistryError> {
        serde_json::from_slice(body)
            .map_err(|e| RegistryError::Registry(format!("{}: invalid manifest: {e}", self.image)))
    }

    /// GETs the manifest `tag_or_digest`, reading at most [`MAX_MANIFEST_BYTES`]; its
    /// bytes and their digest.
    async fn get(
        &self,
        http: &reqwest::Client,
        token: Option<&str>,
        tag_or_digest: &str,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let scheme = if self.plain_http { "http" } else { "https" };
        let url = format!(
            "{scheme}://{}/v2/{}/manifests/{tag_or_digest}",
            self.reference.resolve_registry(),
            self.reference.repository()
        );
        let mut req = http.get(&url).header("Accept", ACCEPT);
        req = match (token, self.auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, RegistryAuth::Basic(user, password)) => req.basic_auth(user, Some(password)),
            _ => req,
        };
        let mut res = req.send().await.map_err(registry_err)?;
        let status = res.status();
        let too_big = || RegistryError::Size {
            image: self.image.into(),
            reason: format!("the registry sent a manifest of more than {MAX_MANIFEST_BYTES} bytes"),
        };
        if res
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(registry_err)? {
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
            return Err(RegistryError::Registry(format!(
                "{url}: {status}: {}",
                text.trim()
            )));
        }
        let digest = format!("sha256:{:x}", Sha256::digest(&body));
        Ok((body, digest))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, serve};
    use super::*;

    async fn fetch(port: u16, image: &str) -> Result<(OciImageManifest, String), RegistryError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reference: Reference = format!("127.0.0.1:{port}/{image}").parse().unwrap();
        let client = Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        Fetch {
            client: &client,
            reference: &reference,
            image,
            auth: &RegistryAuth::Anonymous,
            plain_http: true,
            progress_deadline: std::time::Duration::from_secs(5),
        }
        .manifest()
        .await
    }

    const MANIFEST: &str = r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "size": 2},
        "layers": []}"#;

    #[tokio::test]
    async fn an_endless_manifest_is_refused_at_the_limit() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (port, task) = serve(|path| {
            if path.contains("/manifests/") {
                // No length: the body goes on for as long as it is read.
                ("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n{\"schemaVersion\": 2, \"x\": \"".into(), None)
            } else {
                ok(b"{}", "application/json")
            }
        })
        .await;
        // Through the whole pull, as an agent meets it.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::images::ImageStore::open(dir.path()).unwrap();
        let pulled = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            super::super::pull(
                &store,
                &format!("127.0.0.1:{port}/endless:1"),
                &RegistryAuth::Anonymous,
                &Default::default(),
            ),
        )
        .await
        .expect("the pull ends");
        let err = pulled.unwrap_err();
        assert!(
            err.to_string()
                .contains("manifest of more than 4194304 bytes"),
            "{err}"
        );
        // One that says so up front is refused before its body is read.
        task.abort();
        let (port, task) = serve(|path| {
            if path.contains("/manifests/") {
                (
                    "HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\nConnection: close\r\n\r\n"
                        .into(),
                    Some(Vec::new()),
                )
            } else {
                ok(b"{}", "application/json")
            }
        })
        .await;
        let err = fetch(port, "claims:1").await.unwrap_err();
        assert!(err.to_string().contains("manifest of more than"), "{err}");
        task.abort();
    }

    #[tokio::test]
    async fn an_index_resolves_to_this_platforms_manifest_with_digests_checked() {
        let manifest_digest = format!("sha256:{:x}", Sha256::digest(MANIFEST.as_bytes()));
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let index = format!(
            r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
                {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:{}", "size": 5, "platform": {{"os": "windows", "architecture": "{arch}"}}}},
                {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{manifest_digest}", "size": {}, "platform": {{"os": "linux", "architecture": "{arch}"}}}}]}}"#,
            "b".repeat(64),
            MANIFEST.len()
        );
        let wanted = manifest_digest.clone();
        let (port, task) = serve(move |path| {
            if path.ends_with(&wanted) {
                ok(
                    MANIFEST.as_bytes(),
                    "application/vnd.oci.image.manifest.v1+json",
                )
            } else if path.contains("/manifests/") {
                ok(index.as_bytes(), "application/vnd.oci.image.index.v1+json")
            } else {
                ok(b"{}", "application/json")
            }
        })
        .await;
        let (manifest, digest) = fetch(port, "multi:1").await.unwrap();
        assert_eq!(digest, manifest_digest);
        assert_eq!(manifest.config.size, 2);
        // Asked by a digest the registry's bytes do not have: refused.
        let wrong = format!("multi@sha256:{}", "c".repeat(64));
        let err = fetch(port, &wrong).await.unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        task.abort();
    }
}
