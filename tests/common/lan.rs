//! A LAN of hosts on this machine: a bridge in the test's network namespace (its address
//! the LAN's gateway, where the server and registry listen) and, per host, a network
//! namespace joined to it by a veth, with an address of its own and a default route via
//! the gateway. Each agent runs in its host's namespace, so traffic between nodes is real
//! traffic between interfaces.

use std::process::Command;

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub struct Lan {
    pub bridge: String,
    /// The first three octets of the LAN's /24.
    prefix: String,
    hosts: Vec<String>,
}

/// A host of the LAN: its network namespace (under /run/netns) and address.
#[derive(Clone, Debug)]
pub struct Host {
    pub netns: String,
    pub ip: String,
}

impl Lan {
    pub fn new() -> Lan {
        let id = super::network_id();
        let lan = Lan {
            bridge: format!("skl{}", id + 1000 * (std::process::id() % 100)),
            prefix: format!("10.251.{}", id % 250),
            hosts: Vec::new(),
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lan.gateway()),
            "dev",
            &lan.bridge,
        ]);
        ip(&["link", "set", &lan.bridge, "up"]);
        lan
    }

    /// The gateway's address (this machine's on the LAN).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// Host `n` (1..): `<prefix>.<10 + n>`.
    pub fn host(&mut self, n: u8) -> Host {
        let netns = format!("skh{}-{n}", self.bridge.trim_start_matches("skl"));
        let veth = format!("{}v{n}", self.bridge);
        let addr = format!("{}.{}", self.prefix, 10 + u32::from(n));
        ip(&["netns", "add", &netns]);
        self.hosts.push(netns.clone());
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["link", "set", &veth, "master", &self.bridge, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", netns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["route", "add", "default", "via", &self.gateway()]);
        Host { netns, ip: addr }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
