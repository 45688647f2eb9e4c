//! OCI registries and images for tests: a real registry (Debian's docker-registry, CNCF
//! distribution) on loopback, images built with umoci from busybox-static and pushed with
//! skopeo, Wasm pushed with `skiff push`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A real registry (CNCF distribution) on loopback, with basic auth.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_on("127.0.0.1", htpasswd)
    }

    /// A registry listening on `host` (say, a test LAN's gateway address; agents then
    /// need `--insecure-registry host:port`).
    pub fn start_on(host: &str, htpasswd: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let mut config = format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}:{port}\n", dir.path().join("data").display());
        if let Some((user, pass)) = htpasswd {
            let o = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils)");
            std::fs::write(dir.path().join("htpasswd"), o.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package; run scripts/setup.sh)");
        super::eventually(20, "the registry", || {
            std::net::TcpStream::connect((host, port))
                .is_ok()
                .then_some(())
        });
        Registry {
            child,
            port,
            _dir: dir,
        }
    }
}

pub fn push(file: &std::path::Path, image: &str, creds: Option<(&str, &str)>) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
    c.arg("push").arg(file).arg(image);
    if !image.starts_with("127.0.0.1:") && !image.starts_with("localhost:") {
        c.arg("--insecure");
    }
    if let Some((u, p)) = creds {
        c.args(["--username", u, "--password", p]);
    }
    let o = c.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Builds a regular OCI image (umoci) holding `payload` as /app/program, with the
/// entrypoint `./main` (a symbolic link to it) in WorkingDir /app, and pushes it (skopeo)
/// to `image`.
pub fn push_app_image(payload: &std::path::Path, image: &str) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let bundle = dir.path().join("bundle");
    let tagged = format!("{}:1", layout.display());
    run("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    run("umoci", &["new", "--image", &tagged]);
    run(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &tagged,
            bundle.to_str().unwrap(),
        ],
    );
    let app = bundle.join("rootfs/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(payload, app.join("program")).unwrap();
    std::os::unix::fs::symlink("program", app.join("main")).unwrap();
    run(
        "umoci",
        &["repack", "--image", &tagged, bundle.to_str().unwrap()],
    );
    run(
        "umoci",
        &[
            "config",
            "--image",
            &tagged,
            "--config.workingdir",
            "/app",
            "--config.entrypoint",
            "./main",
            "--config.cmd",
            "from",
            "--config.cmd",
            "an-oci-image",
        ],
    );
    run(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{tagged}"),
            &format!("docker://{image}"),
        ],
    );
}

fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (run scripts/setup.sh): {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds a busybox image (Debian's busybox-static with every applet linked in /bin, Cmd
/// `sh`), compressed with `compression` (`gzip` or `zstd`), and pushes it to `image`
/// (with `creds` if the registry wants them).
pub fn push_busybox(image: &str, compression: &str, creds: Option<(&str, &str)>) {
    push_busybox_with(image, compression, creds, &[]);
}

/// [`push_busybox`] with extra files (path in the image, content).
pub fn push_busybox_with(
    image: &str,
    compression: &str,
    creds: Option<(&str, &str)>,
    files: &[(&str, &str)],
) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let bundle = dir.path().join("bundle");
    let tagged = format!("{}:1", layout.display());
    run("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    run("umoci", &["new", "--image", &tagged]);
    run(
        "umoci",
        &["unpack", "--image", &tagged, bundle.to_str().unwrap()],
    );
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("busybox-static (run scripts/setup.sh)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    // A user to run as by name.
    let etc = bundle.join("rootfs/etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\napp:x:1234:\n").unwrap();
    for (path, content) in files {
        let file = bundle.join("rootfs").join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    run(
        "umoci",
        &["repack", "--image", &tagged, bundle.to_str().unwrap()],
    );
    run(
        "umoci",
        &["config", "--image", &tagged, "--config.cmd", "sh"],
    );
    let mut args = vec!["copy".to_string(), "--dest-tls-verify=false".to_string()];
    if compression == "zstd" {
        args.extend([
            "--dest-compress-format".into(),
            "zstd".into(),
            "--dest-compress".into(),
        ]);
    }
    if let Some((u, p)) = creds {
        args.push(format!("--dest-creds={u}:{p}"));
    }
    args.push(format!("oci:{tagged}"));
    args.push(format!("docker://{image}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("skopeo", &args);
}

/// Pushes a Wasm file as a CNCF Wasm artifact; panics on failure.
pub fn push_wasm(file: &Path, image: &str) {
    let (ok, out) = push(file, image, None);
    assert!(ok, "{out}");
}

/// Copies an image within a loopback registry, written as a Docker v2 schema 2 image.
pub fn copy_as_docker(from: &str, to: &str) {
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            &format!("docker://{from}"),
            &format!("docker://{to}"),
        ],
    );
}

/// Puts a multi-platform index at `registry/repo:tag` (an OCI image index, or a Docker
/// manifest list if `docker`) whose entries are the manifests of tags of the same
/// repository, each for the architecture given (linux).
pub fn push_index(registry: &str, repo: &str, tag: &str, entries: &[(&str, &str)], docker: bool) {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(arch, from)| {
            let dir = tempfile::tempdir().unwrap();
            let body = dir.path().join("manifest");
            // The manifest's media type is its Content-Type (OCI manifests need not say).
            let o = Command::new("curl")
                .args(["-sSf", "-o"])
                .arg(&body)
                .args([
                    "-w",
                    "%{content_type}",
                    "-H",
                    "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
                    &format!("http://{registry}/v2/{repo}/manifests/{from}"),
                ])
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
            let media_type = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let bytes = std::fs::read(&body).unwrap();
            let sum = Command::new("sha256sum").arg(&body).output().unwrap();
            let hex = String::from_utf8_lossy(&sum.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            serde_json::json!({
                "mediaType": media_type,
                "digest": format!("sha256:{hex}"),
                "size": bytes.len(),
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    let media_type = if docker {
        "application/vnd.docker.distribution.manifest.list.v2+json"
    } else {
        "application/vnd.oci.image.index.v1+json"
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    curl_put(
        index.to_string().as_bytes(),
        media_type,
        &format!("http://{registry}/v2/{repo}/manifests/{tag}"),
    );
}

/// PUTs `body` (as `content_type`) to `url` with curl; panics on failure.
fn curl_put(body: &[u8], content_type: &str, url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    run(
        "curl",
        &[
            "-sSf",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            &format!("@{}", file.display()),
            url,
        ],
    );
}

/// Uploads `data` as a blob of `repo` on a loopback registry; its digest.
fn push_blob(registry: &str, repo: &str, data: &[u8]) -> String {
    use sha2::Digest;
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(data));
    let o = Command::new("curl")
        .args(["-sSf", "-X", "POST", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let headers = String::from_utf8_lossy(&o.stdout);
    let location = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .expect("an upload location");
    let url = if location.starts_with('/') {
        format!("http://{registry}{location}")
    } else {
        location
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    curl_put(
        data,
        "application/octet-stream",
        &format!("{url}{sep}digest={digest}"),
    );
    digest
}

/// Puts an image at `registry/repo:tag` whose manifest says what a hostile registry
/// would: each layer (gzip tar bytes) with the size given, whatever its real one, and the
/// config with `config_size` if given.
pub fn push_claiming_image(
    registry: &str,
    repo: &str,
    tag: &str,
    layers: &[(&[u8], i64)],
    config_size: Option<i64>,
) {
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = push_blob(registry, repo, config);
    let config_size = config_size.unwrap_or(config.len() as i64);
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(data, size)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": push_blob(registry, repo, data),
                "size": size,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    curl_put(
        manifest.to_string().as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
        &format!("http://{registry}/v2/{repo}/manifests/{tag}"),
    );
}
