//! The pod sandbox: what a pod's containers share whatever runtime runs them. Today that is
//! the pod's volumes, each a directory on the node (emptyDir under the pod's directory,
//! hostPath as given, configMap and secret projected as files with their modes) that the
//! runtimes mount at each container's `volumeMounts`; the pod's network namespace joins it
//! with pod networking.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Secret, Volume};

use crate::runtime::Mount;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("volume {volume:?}: this volume type is not supported on Skiff nodes")]
    Unsupported { volume: String },
    /// A configMap or secret the pod needs could not be read.
    #[error("{0}")]
    Source(String),
    #[error("volume {volume:?}: {source}")]
    Io {
        volume: String,
        source: std::io::Error,
    },
}

/// Where a sandbox reads the configMaps and secrets its volumes project.
#[async_trait::async_trait]
pub trait Sources: Sync {
    async fn config_map(&self, name: &str) -> Result<ConfigMap, String>;
    async fn secret(&self, name: &str) -> Result<Secret, String>;
}

/// A pod's volumes, ready to mount.
#[derive(Default)]
pub struct Sandbox {
    /// Volume name -> (host directory, read-only source).
    volumes: BTreeMap<String, (PathBuf, bool)>,
}

impl Sandbox {
    /// Creates `volumes` under the pod's directory `dir`.
    pub async fn create(
        dir: &Path,
        volumes: &[Volume],
        sources: &impl Sources,
    ) -> Result<Sandbox, SandboxError> {
        let mut out = BTreeMap::new();
        for v in volumes {
            let io = |source| SandboxError::Io {
                volume: v.name.clone(),
                source,
            };
            let own = dir.join("volumes").join(&v.name);
            let host = if let Some(h) = &v.host_path {
                PathBuf::from(&h.path)
            } else if v.empty_dir.is_some() {
                own
            } else if let Some(c) = &v.config_map {
                let cm = match sources.config_map(&c.name).await {
                    Ok(cm) => cm,
                    Err(_) if c.optional == Some(true) => ConfigMap::default(),
                    Err(e) => return Err(SandboxError::Source(e)),
                };
                let data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .chain(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    )
                    .collect();
                project(&own, &data, c.items.as_deref(), c.default_mode).map_err(io)?;
                own
            } else if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let secret = match sources.secret(&name).await {
                    Ok(s) => s,
                    Err(_) if s.optional == Some(true) => Secret::default(),
                    Err(e) => return Err(SandboxError::Source(e)),
                };
                let data: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                project(&own, &data, s.items.as_deref(), s.default_mode).map_err(io)?;
                own
            } else {
                return Err(SandboxError::Unsupported {
                    volume: v.name.clone(),
                });
            };
            std::fs::create_dir_all(&host).map_err(io)?;
            let read_only_source = v.config_map.is_some() || v.secret.is_some();
            out.insert(v.name.clone(), (host, read_only_source));
        }
        Ok(Sandbox { volumes: out })
    }

    /// What `c` mounts: its `volumeMounts` (with `subPath`) onto the sandbox's volumes;
    /// configMap and secret volumes are always read-only.
    pub fn mounts(&self, c: &Container) -> Vec<Mount> {
        c.volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| {
                let (host, ro) = self.volumes.get(&m.name)?;
                let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    Some(sub) => host.join(sub),
                    None => host.clone(),
                };
                Some(Mount {
                    host_path: host,
                    guest_path: m.mount_path.clone(),
                    read_only: *ro || m.read_only == Some(true),
                })
            })
            .collect()
    }

    /// Removes what the sandbox created under the pod's directory `dir` (hostPath volumes
    /// are the node's and stay).
    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Writes configMap/secret keys (or the chosen items) as files with their modes.
fn project(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let files: Vec<(String, &Vec<u8>, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v, i.mode)))
            .collect(),
        None => data.iter().map(|(k, v)| (k.clone(), v, None)).collect(),
    };
    for (path, bytes, mode) in files {
        let p = dir.join(&path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        let mode = mode.or(default_mode).unwrap_or(0o644) as u32;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, SecretVolumeSource, VolumeMount,
    };
    use std::os::unix::fs::PermissionsExt;

    struct Fixed;

    #[async_trait::async_trait]
    impl Sources for Fixed {
        async fn config_map(&self, name: &str) -> Result<ConfigMap, String> {
            match name {
                "cfg" => Ok(ConfigMap {
                    data: Some([("a.txt".to_string(), "A".to_string())].into()),
                    ..Default::default()
                }),
                _ => Err(format!("configmap {name:?} not found")),
            }
        }
        async fn secret(&self, name: &str) -> Result<Secret, String> {
            Err(format!("secret {name:?} not found"))
        }
    }

    #[tokio::test]
    async fn volumes_are_projected_and_mounted_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = vec![
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "cfg".into(),
                    items: Some(vec![KeyToPath {
                        key: "a.txt".into(),
                        path: "sub/renamed.txt".into(),
                        mode: Some(0o400),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "maybe".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("absent".into()),
                    optional: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let sandbox = Sandbox::create(dir.path(), &volumes, &Fixed).await.unwrap();
        let file = dir.path().join("volumes/config/sub/renamed.txt");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "A");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let c = Container {
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/tmp".into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "config".into(),
                    mount_path: "/etc/app".into(),
                    read_only: Some(false),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let mounts: Vec<(String, bool)> = sandbox
            .mounts(&c)
            .into_iter()
            .map(|m| (m.guest_path, m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [("/tmp".to_string(), false), ("/etc/app".to_string(), true)],
            "a configMap volume stays read-only even when the mount asks otherwise"
        );

        let missing = vec![Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "other".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let err = Sandbox::create(dir.path(), &missing, &Fixed)
            .await
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "configmap \"other\" not found");
        let nfs = vec![Volume {
            name: "remote".into(),
            ..Default::default()
        }];
        let err = Sandbox::create(dir.path(), &nfs, &Fixed)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "volume \"remote\": this volume type is not supported on Skiff nodes"
        );
    }
}
