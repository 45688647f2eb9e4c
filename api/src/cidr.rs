//! CIDR ranges (`10.244.0.0/16`) as Kubernetes reads them (Go's `net.ParseCIDR`): the
//! control plane carves node pod ranges from the cluster range, the agent hands its node's
//! range to the CNI plugins and finds the pod gateway in it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")]
pub struct CidrError;

/// An address and a prefix length; the address may have host bits set (`10.0.0.7/24`), as
/// Kubernetes accepts, [`Cidr::network`] clears them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = s.split_once('/').ok_or(CidrError)?;
        let addr: IpAddr = addr.parse().map_err(|_| CidrError)?;
        // Go accepts only plain decimal digits here.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError);
        }
        let prefix: u8 = prefix.parse().map_err(|_| CidrError)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError);
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// The range's first address (host bits cleared).
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask4(self.prefix))),
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6((bits & mask).into())
            }
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// The IPv4 range's `n`th address (0 is the network address), if within the range.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let IpAddr::V4(a) = self.network().addr else {
            return None;
        };
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(a) + n))
    }

    /// How many subranges of length `prefix` an IPv4 range holds (0 if `prefix` is shorter
    /// than the range's own).
    pub fn subnets(&self, prefix: u8) -> u64 {
        match self.addr {
            IpAddr::V4(_) if prefix >= self.prefix && prefix <= 32 => {
                1u64 << (prefix - self.prefix)
            }
            _ => 0,
        }
    }

    /// The `i`th subrange of length `prefix` of an IPv4 range.
    pub fn subnet(&self, prefix: u8, i: u64) -> Option<Cidr> {
        if i >= self.subnets(prefix) {
            return None;
        }
        let IpAddr::V4(a) = self.network().addr else {
            return None;
        };
        let step = 1u64 << (32 - u32::from(prefix));
        let base = u64::from(u32::from(a)) + i * step;
        Some(Cidr {
            addr: IpAddr::V4(Ipv4Addr::from(base as u32)),
            prefix,
        })
    }

    /// Which subrange of length `prefix` of this IPv4 range `other` is, if it is one.
    pub fn index_of(&self, prefix: u8, other: &Cidr) -> Option<u64> {
        let (IpAddr::V4(base), IpAddr::V4(o)) = (self.network().addr, other.addr) else {
            return None;
        };
        if other.prefix != prefix || self.subnets(prefix) == 0 {
            return None;
        }
        let o = u32::from(o);
        if o & mask4(self.prefix) != u32::from(base) || o & !mask4(prefix) != 0 {
            return None;
        }
        Some(u64::from(o - u32::from(base)) >> (32 - u32::from(prefix)))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network().addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(ip)) => u32::from(ip) & mask4(self.prefix) == u32::from(n),
            (IpAddr::V6(_), IpAddr::V6(ip)) => {
                Cidr {
                    addr: IpAddr::V6(ip),
                    prefix: self.prefix,
                }
                .network()
                    == self.network()
            }
            _ => false,
        }
    }
}

fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_as_go_does() {
        assert_eq!(c("10.244.0.0/16").to_string(), "10.244.0.0/16");
        assert_eq!(c("10.0.0.7/24").network().to_string(), "10.0.0.0/24");
        assert_eq!(c("2001:db8::1/64").network().to_string(), "2001:db8::/64");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/",
            "::/129",
        ] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError), "{bad}");
        }
    }

    #[test]
    fn carves_subranges() {
        let cluster = c("10.244.0.0/16");
        assert_eq!(cluster.subnets(24), 256);
        assert_eq!(cluster.subnet(24, 3), Some(c("10.244.3.0/24")));
        assert_eq!(cluster.subnet(24, 256), None);
        assert_eq!(cluster.index_of(24, &c("10.244.3.0/24")), Some(3));
        assert_eq!(cluster.index_of(24, &c("10.245.3.0/24")), None);
        assert_eq!(cluster.index_of(24, &c("10.244.3.1/24")), None);
        let node = c("10.244.3.0/24");
        assert_eq!(node.host(1), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(node.host(256), None);
        assert!(node.contains("10.244.3.200".parse().unwrap()));
        assert!(!node.contains("10.244.4.1".parse().unwrap()));
    }
}
