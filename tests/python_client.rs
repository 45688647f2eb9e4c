//! The official Python `kubernetes` client (from PyPI) against a real server.

mod common;

use common::{python_bin, root, Server};

#[test]
fn python_client_lists_creates_patches_and_watches() {
    let s = Server::start();
    let out = std::process::Command::new(python_bin())
        .arg(root().join("tests/python/client_test.py"))
        .arg(s.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client test failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
}
