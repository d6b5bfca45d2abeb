//! IPv4 subnets of user networks: parsing `--subnet`, overlap checks,
//! the default subnet of a new network, and handing out addresses.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where default subnets come from: 10.89.N.0/24, as podman picks them.
const DEFAULT_BASE: [u8; 2] = [10, 89];

/// Errors of subnets and addresses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubnetError {
    /// Not `A.B.C.D/N`.
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.90.0.0/24")]
    Syntax(String),
    /// Too small for a gateway and a container, or wider than /8.
    #[error("invalid subnet {0}: the prefix length must be between 8 and 29")]
    Size(String),
    /// Host bits set (`10.1.2.3/24`).
    #[error("invalid subnet {0}: host bits are set (did you mean {1}?)")]
    HostBits(String, String),
    /// No free /24 left in 10.89.0.0/16.
    #[error("no free subnet left in 10.89.0.0/16: give one with --subnet")]
    Exhausted,
    /// Every address of the subnet is in use.
    #[error("no free address left in subnet {0}")]
    Full(String),
}

/// An IPv4 subnet (network address and prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Subnet {
    /// Parses `A.B.C.D/N`; the address must be the network's own.
    pub fn parse(s: &str) -> Result<Self, SubnetError> {
        let syntax = || SubnetError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if !(8..=29).contains(&prefix) {
            return Err(SubnetError::Size(s.to_string()));
        }
        let net = Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        };
        if net.addr != addr {
            return Err(SubnetError::HostBits(s.to_string(), net.to_string()));
        }
        Ok(net)
    }

    fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    fn last(&self) -> u32 {
        self.first() | !mask(self.prefix)
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// The gateway: the first host address (the bridge's, where the DNS
    /// responder listens).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + 1)
    }

    /// The lowest address after the gateway that `taken` does not hold.
    pub fn allocate(&self, taken: &[Ipv4Addr]) -> Result<Ipv4Addr, SubnetError> {
        (self.first() + 2..self.last())
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| SubnetError::Full(self.to_string()))
    }

    /// The first 10.89.N.0/24 that overlaps none of `used`.
    pub fn next_default(used: &[Subnet]) -> Result<Subnet, SubnetError> {
        (0..=255u8)
            .map(|n| Subnet {
                addr: Ipv4Addr::new(DEFAULT_BASE[0], DEFAULT_BASE[1], n, 0),
                prefix: 24,
            })
            .find(|s| !used.iter().any(|u| u.overlaps(s)))
            .ok_or(SubnetError::Exhausted)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_refuses_bad_ones() {
        let s = Subnet::parse("10.90.0.0/24").unwrap();
        assert_eq!(s.addr, Ipv4Addr::new(10, 90, 0, 0));
        assert_eq!(s.prefix, 24);
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 90, 0, 1));
        assert_eq!(s.to_string(), "10.90.0.0/24");
        assert!(matches!(
            Subnet::parse("10.90.0.0"),
            Err(SubnetError::Syntax(_))
        ));
        assert!(matches!(
            Subnet::parse("10.300.0.0/24"),
            Err(SubnetError::Syntax(_))
        ));
        assert!(matches!(
            Subnet::parse("10.0.0.0/30"),
            Err(SubnetError::Size(_))
        ));
        assert_eq!(
            Subnet::parse("10.90.0.7/24"),
            Err(SubnetError::HostBits(
                "10.90.0.7/24".into(),
                "10.90.0.0/24".into()
            ))
        );
    }

    #[test]
    fn overlap_is_any_shared_address() {
        let a = Subnet::parse("10.90.0.0/16").unwrap();
        let b = Subnet::parse("10.90.5.0/24").unwrap();
        let c = Subnet::parse("10.91.0.0/24").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&b));
    }

    #[test]
    fn addresses_skip_gateway_taken_and_broadcast() {
        let s = Subnet::parse("10.1.0.0/29").unwrap();
        let two = Ipv4Addr::new(10, 1, 0, 2);
        assert_eq!(s.allocate(&[]).unwrap(), two);
        assert_eq!(s.allocate(&[two]).unwrap(), Ipv4Addr::new(10, 1, 0, 3));
        let taken: Vec<_> = (2..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        assert_eq!(
            s.allocate(&taken),
            Err(SubnetError::Full("10.1.0.0/29".into()))
        );
    }

    #[test]
    fn default_subnets_avoid_used_ones() {
        assert_eq!(
            Subnet::next_default(&[]).unwrap().to_string(),
            "10.89.0.0/24"
        );
        let used = [
            Subnet::parse("10.89.0.0/24").unwrap(),
            Subnet::parse("10.89.1.0/25").unwrap(),
        ];
        assert_eq!(
            Subnet::next_default(&used).unwrap().to_string(),
            "10.89.2.0/24"
        );
        assert_eq!(
            Subnet::next_default(&[Subnet::parse("10.89.0.0/16").unwrap()]),
            Err(SubnetError::Exhausted)
        );
    }
}
