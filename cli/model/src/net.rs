//! Addresses and names as NixOS and Linux accept them.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Serialize, Serializer};

/// An IPv4 address with its prefix length, as written on an interface ("10.10.1.2/24").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            "missing the prefix length (write it as ADDRESS/PREFIX, e.g. 10.10.1.2/24)".to_string()
        })?;
        let addr: Ipv4Addr = a.parse().map_err(|_| {
            format!("`{a}` is not an IPv4 address (experiment LANs are IPv4, e.g. 10.10.1.2)")
        })?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|n| *n <= 32)
            .ok_or_else(|| format!("`{p}` is not a prefix length from 0 to 32"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.addr) & self.mask()
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn is_network_address(&self) -> bool {
        self.prefix <= 30 && self.addr == self.network().addr
    }

    pub fn is_broadcast_address(&self) -> bool {
        self.prefix <= 30 && self.addr == self.broadcast()
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A MAC address, shown in Linux's form (lowercase, colons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Accepts 12 hex digits, bare (CloudLab manifests) or separated by `:` or `-`.
    pub fn parse(s: &str) -> Result<Mac, String> {
        // Checked where written, without collecting the digits: every node has a MAC.
        let is_sep = |c: char| c == ':' || c == '-';
        let seps = s.chars().filter(|&c| is_sep(c)).count();
        if seps != 0 && seps != 5 {
            return Err(
                "separators must come between every pair of digits (aa:bb:cc:dd:ee:ff)".into(),
            );
        }
        let mut hex = s.chars().filter(|&c| !is_sep(c));
        if s.len() - seps != 12 || !hex.clone().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "a MAC address is 12 hex digits; this has {} characters that are not separators",
                hex.count()
            ));
        }
        let mut out = [0u8; 6];
        for o in &mut out {
            let mut digit = || hex.next().and_then(|c| c.to_digit(16)).unwrap_or(0) as u8;
            *o = (digit() << 4) | digit();
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// NixOS `networking.hostName`: `^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$` (no dots).
pub fn is_nixos_hostname(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// A DNS name (RFC 1123 labels) or an IP address, as an SSH target.
pub fn is_host(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
        // An all-numeric dotted name is a mistyped IP address, not a host name.
        && !s.split('.').all(|l| l.bytes().all(|c| c.is_ascii_digit()))
}

/// A Linux/NixOS user name.
pub fn is_username(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Cluster names and tags: used in file names and selectors, so a narrow alphabet.
pub fn is_simple_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            Mac::parse("90e2ba24d115").unwrap().to_string(),
            "90:e2:ba:24:d1:15"
        );
        assert_eq!(
            Mac::parse("90:E2:BA:24:D1:15").unwrap().to_string(),
            "90:e2:ba:24:d1:15"
        );
        assert!(Mac::parse("90e2ba24d11").is_err());
        assert!(Mac::parse("90e2ba24d11g").is_err());
        assert!(Mac::parse("90:e2ba24d115").is_err());
    }

    #[test]
    fn cidrs() {
        let c = Ipv4Cidr::parse("10.10.1.2/24").unwrap();
        assert_eq!(c.network().to_string(), "10.10.1.0/24");
        assert!(c.contains("10.10.1.200".parse().unwrap()));
        assert!(!c.contains("10.10.2.1".parse().unwrap()));
        assert!(
            Ipv4Cidr::parse("10.10.1.0/24")
                .unwrap()
                .is_network_address()
        );
        assert!(
            Ipv4Cidr::parse("10.10.1.255/24")
                .unwrap()
                .is_broadcast_address()
        );
        assert!(Ipv4Cidr::parse("10.10.1.2").is_err());
        assert!(Ipv4Cidr::parse("10.10.1.2/33").is_err());
        assert!(Ipv4Cidr::parse("10.10.1.300/24").is_err());
    }

    #[test]
    fn names() {
        assert!(is_nixos_hostname("worker1"));
        assert!(is_nixos_hostname("node_1"));
        assert!(!is_nixos_hostname("node1.example"));
        assert!(!is_nixos_hostname("-node"));
        assert!(is_host("c220g5-110231.wisc.cloudlab.us"));
        assert!(is_host("10.233.0.11"));
        assert!(!is_host("bad host"));
        assert!(!is_host("10.233.0.300"));
        assert!(is_username("alice"));
        assert!(!is_username("Alice"));
    }
}
