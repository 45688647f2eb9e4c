//! The cluster's credentials, made on first start and kept in the data directory: a CA,
//! the API server's serving certificate (re-issued each start, so its names follow the
//! listen address), an admin bearer token, and the admin kubeconfig.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file with `mode` durably: a temporary file synced, renamed into place, and
/// the directory synced (credentials must survive a power loss as the store does).
fn write_synced(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    write_synced(path, data, 0o600)
}

/// The content of a private file, made with `make` (and written) if it is missing or empty.
pub(crate) fn read_or_create_private(
    path: &Path,
    make: impl FnOnce() -> Result<Vec<u8>, PkiError>,
) -> Result<Vec<u8>, PkiError> {
    match std::fs::read(path) {
        Ok(data) if !data.is_empty() => Ok(data),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => {
            let data = make()?;
            write_private(path, &data)?;
            Ok(data)
        }
    }
}

pub struct Pki {
    pub ca_pem: String,
    ca_key: KeyPair,
    pub token: String,
    dir: PathBuf,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

impl Pki {
    /// Loads the CA and token from `dir/pki`, creating them on first start.
    pub fn load_or_create(dir: &Path) -> Result<Pki, PkiError> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(io(&pki))?;
        let (ca_cert, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
        let (ca_pem, key) = if ca_cert.exists() && ca_key.exists() {
            let key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
            (
                std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?,
                KeyPair::from_pem(&key_pem)?,
            )
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&ca_key, key.serialize_pem().as_bytes())?;
            write_synced(&ca_cert, cert.pem().as_bytes(), 0o644)?;
            (cert.pem(), key)
        };
        let token_path = dir.join("token");
        let token = match std::fs::read_to_string(&token_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                use rand::RngCore;
                let mut raw = [0u8; 32];
                rand::rng().fill_bytes(&mut raw);
                let t: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                write_private(&token_path, t.as_bytes())?;
                t
            }
        };
        Ok(Pki {
            ca_pem,
            ca_key: key,
            token,
            dir: dir.to_path_buf(),
        })
    }

    /// Issues a serving certificate for `names` (DNS names or IPs), signed by the CA.
    pub fn issue_serving(
        &self,
        common_name: &str,
        names: &[String],
    ) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        p.distinguished_name = dn;
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = KeyPair::generate()?;
        let ca = ca_params();
        let issuer = Issuer::from_params(&ca, &self.ca_key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A rustls server config for the API server on `listen`.
    /// Its names: loopback, the listen and advertised addresses, the `kubernetes`
    /// Service's IP and DNS names (pods reach the server through them), the host name.
    pub fn server_tls(
        &self,
        listen: SocketAddr,
        advertise: Option<std::net::IpAddr>,
    ) -> Result<rustls::ServerConfig, PkiError> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            crate::objects::KUBERNETES_SERVICE_IP.to_string(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        for ip in [Some(listen.ip()), advertise].into_iter().flatten() {
            if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
        }
        if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
            let h = h.trim().to_lowercase();
            if !h.is_empty() && !names.contains(&h) {
                names.push(h);
            }
        }
        let (cert_pem, key_pem) = self.issue_serving("skiff-apiserver", &names)?;
        let crt = self.dir.join("pki/apiserver.crt");
        std::fs::write(&crt, &cert_pem).map_err(io(&crt))?;
        tls_config(&cert_pem, &key_pem)
    }

    /// The TLS client config the API server uses towards node agents: it presents a
    /// CA-signed client certificate (agents admit only that); like Kubernetes without
    /// `--kubelet-certificate-authority`, it does not verify the agents' self-signed
    /// serving certificates.
    pub fn node_client_tls(&self) -> Result<rustls::ClientConfig, PkiError> {
        let (cert_pem, key_pem) = self.issue_serving(
            "skiff-apiserver-node-client",
            &["skiff-apiserver".to_string()],
        )?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .ok_or_else(|| PkiError::Tls("no private key".into()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyServerCert(provider)))
            .with_client_auth_cert(certs, key)
            .map_err(|e| PkiError::Tls(e.to_string()))
    }

    /// Writes `dir/kubeconfig` for the admin, pointing at `server`.
    pub fn write_kubeconfig(&self, server: &str) -> Result<PathBuf, PkiError> {
        let path = self.dir.join("kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let body = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n    namespace: default\ncurrent-context: skiff\n",
            self.token
        );
        write_private(&path, body.as_bytes())?;
        Ok(path)
    }
}

/// Accepts any server certificate (agents' serving certificates are self-signed); the
/// signature over the handshake is still checked.
#[derive(Debug)]
struct AnyServerCert(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server TLS config (HTTP/2 and HTTP/1.1 by ALPN) from PEM strings.
pub fn tls_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, PkiError> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .ok_or_else(|| PkiError::Tls("no private key".into()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
