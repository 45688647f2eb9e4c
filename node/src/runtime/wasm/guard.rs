//! What a Wasm guest on the node's network may reach, when its pod did not ask for that
//! network (`hostNetwork`) but the node could not give it one of its own: not the node's
//! loopback, where the node's own services listen (the API server, the agent), nor
//! link-local addresses (a cloud's metadata service), nor the node's own addresses.

use std::net::IpAddr;
use std::sync::OnceLock;

/// Whether a guest on the node's network may connect or send to `ip`.
pub(crate) fn reachable(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    // Multicast and broadcast reach the node's own sockets too.
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_loopback()
        || ip.is_unspecified()
        || link_local
        || ip.is_multicast()
        || broadcast
        || node_addresses().contains(&ip))
}

/// The node's addresses, read once (getifaddrs).
fn node_addresses() -> &'static [IpAddr] {
    static ADDRS: OnceLock<Vec<IpAddr>> = OnceLock::new();
    ADDRS.get_or_init(|| {
        let mut out = Vec::new();
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // Safety: getifaddrs fills a list we walk read-only and then free.
        unsafe {
            if libc::getifaddrs(&mut list) != 0 {
                return out;
            }
            let mut cur = list;
            while !cur.is_null() {
                let addr = (*cur).ifa_addr;
                if !addr.is_null() {
                    match i32::from((*addr).sa_family) {
                        libc::AF_INET => {
                            let sin = &*(addr as *const libc::sockaddr_in);
                            out.push(IpAddr::from(
                                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                            ));
                        }
                        libc::AF_INET6 => {
                            let sin6 = &*(addr as *const libc::sockaddr_in6);
                            out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                        }
                        _ => {}
                    }
                }
                cur = (*cur).ifa_next;
            }
            libc::freeifaddrs(list);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_loopback_link_local_and_own_addresses_are_out_of_reach() {
        for ip in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(!reachable(ip.parse().unwrap()), "{ip}");
        }
        let own = node_addresses().iter().find(|a| !a.is_loopback());
        if let Some(own) = own {
            assert!(!reachable(*own), "{own}");
        }
        assert!(reachable("10.96.0.10".parse().unwrap()));
        assert!(reachable("192.0.2.7".parse().unwrap()));
    }
}
