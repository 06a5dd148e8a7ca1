//! Address arithmetic for `ipBlock`s: prefixes, inclusive address ranges of one family, a block
//! minus its exceptions, and a range back to the fewest prefixes that cover it exactly.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use apiary_api::networking_v1::{Cidr, IpBlock};

/// An address prefix with its host bits cleared, such as `10.1.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// An address family: its bit width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Address bits.
    pub fn width(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// The highest address, as a number.
    pub fn max(self) -> u128 {
        match self {
            Self::V4 => u128::from(u32::MAX),
            Self::V6 => u128::MAX,
        }
    }

    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn addr(self, n: u128) -> IpAddr {
        match self {
            // In range by construction: V4 numbers never exceed `u32::MAX`.
            Self::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
            Self::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The host-bit mask of a prefix length (the bits *not* fixed), within the family's width.
fn host_mask(family: Family, len: u8) -> u128 {
    let host_bits = u32::from(family.width() - len);
    if host_bits == 128 {
        u128::MAX
    } else {
        ((1u128 << host_bits) - 1) & family.max()
    }
}

impl Prefix {
    /// `ip/len` with the host bits cleared; `len` is capped at the family's width.
    pub fn new(ip: IpAddr, len: u8) -> Self {
        let family = Family::of(ip);
        let len = len.min(family.width());
        let n = number(ip) & !host_mask(family, len);
        Self {
            addr: family.addr(n),
            len,
        }
    }

    /// The first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The addresses it covers.
    pub fn range(&self) -> Range {
        let family = Family::of(self.addr);
        let lo = number(self.addr);
        Range {
            family,
            lo,
            hi: lo | host_mask(family, self.len),
        }
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range().contains(ip)
    }
}

impl From<Cidr> for Prefix {
    fn from(c: Cidr) -> Self {
        Self::new(c.addr, c.prefix_len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Addresses `lo..=hi` of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub family: Family,
    pub lo: u128,
    pub hi: u128,
}

impl Range {
    /// The single address `ip`.
    pub fn single(ip: IpAddr) -> Self {
        let n = number(ip);
        Self {
            family: Family::of(ip),
            lo: n,
            hi: n,
        }
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.lo..=self.hi).contains(&number(ip))
    }

    /// `self` minus `other`: none, one or two ranges.
    pub fn subtract(self, other: Range) -> Vec<Range> {
        if other.family != self.family || other.hi < self.lo || other.lo > self.hi {
            return vec![self];
        }
        let mut out = Vec::new();
        if other.lo > self.lo {
            out.push(Range {
                hi: other.lo - 1,
                ..self
            });
        }
        if other.hi < self.hi {
            out.push(Range {
                lo: other.hi + 1,
                ..self
            });
        }
        out
    }

    /// The fewest prefixes whose union is exactly this range, lowest first: at each step the
    /// largest aligned block that starts at the next uncovered address and stays inside.
    pub fn prefixes(&self) -> Vec<Prefix> {
        let width = self.family.width();
        let mut out = Vec::new();
        let mut lo = self.lo;
        loop {
            // Largest block aligned at `lo`: as many host bits as `lo` has trailing zeros …
            let mut host_bits = if lo == 0 {
                u32::from(width)
            } else {
                lo.trailing_zeros().min(u32::from(width))
            };
            // … shrunk until it ends at or before `hi`.
            while host_bits > 0 && lo + host_mask(self.family, width - host_bits as u8) > self.hi {
                host_bits -= 1;
            }
            let len = width - host_bits as u8;
            out.push(Prefix::new(self.family.addr(lo), len));
            let end = lo + host_mask(self.family, len);
            if end >= self.hi {
                return out;
            }
            lo = end + 1;
        }
    }
}

/// The addresses an `ipBlock` matches: its CIDR minus every `except`, as disjoint ranges.
/// An unparsable CIDR matches nothing, an unparsable `except` removes nothing (as
/// [`IpBlock::contains`] reads them).
pub fn block_ranges(block: &IpBlock) -> Vec<Range> {
    let Ok(cidr) = block.cidr.parse::<Cidr>() else {
        return Vec::new();
    };
    let mut ranges = vec![Prefix::from(cidr).range()];
    for except in block.except.iter().filter_map(|e| e.parse::<Cidr>().ok()) {
        let cut = Prefix::from(except).range();
        ranges = ranges.into_iter().flat_map(|r| r.subtract(cut)).collect();
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        Prefix::from(s.parse::<Cidr>().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn strings(ps: &[Prefix]) -> Vec<String> {
        ps.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn prefixes_clear_host_bits() {
        assert_eq!(p("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(p("10.1.2.3/0").to_string(), "0.0.0.0/0");
        assert_eq!(p("10.1.2.3/32").to_string(), "10.1.2.3/32");
        assert_eq!(p("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(p("::1/0").range().hi, u128::MAX);
        assert!(p("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!p("10.0.0.0/8").contains(ip("11.0.0.0")));
        assert!(!p("0.0.0.0/0").contains(ip("::1")), "families never mix");
    }

    #[test]
    fn a_range_becomes_the_fewest_exact_prefixes() {
        let r = |lo: &str, hi: &str| Range {
            family: Family::of(ip(lo)),
            lo: number(ip(lo)),
            hi: number(ip(hi)),
        };
        assert_eq!(
            strings(&r("0.0.0.0", "255.255.255.255").prefixes()),
            ["0.0.0.0/0"]
        );
        assert_eq!(
            strings(&r("10.0.0.5", "10.0.0.5").prefixes()),
            ["10.0.0.5/32"]
        );
        assert_eq!(
            strings(&r("10.0.0.1", "10.0.0.6").prefixes()),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        // The complement of one address in a /24.
        assert_eq!(
            strings(&r("10.0.0.0", "10.0.0.254").prefixes()),
            [
                "10.0.0.0/25",
                "10.0.0.128/26",
                "10.0.0.192/27",
                "10.0.0.224/28",
                "10.0.0.240/29",
                "10.0.0.248/30",
                "10.0.0.252/31",
                "10.0.0.254/32"
            ]
        );
        assert_eq!(
            strings(&r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").prefixes()),
            ["::/0"]
        );
        assert_eq!(strings(&r("::1", "::3").prefixes()), ["::1/128", "::2/127"]);
    }

    #[test]
    fn blocks_subtract_their_exceptions() {
        let block = IpBlock {
            cidr: "10.0.0.0/24".into(),
            except: vec!["10.0.0.0/26".into(), "10.0.0.128/25".into(), "bad".into()],
        };
        let ranges = block_ranges(&block);
        assert_eq!(ranges.len(), 1);
        assert_eq!(strings(&ranges[0].prefixes()), ["10.0.0.64/26"]);
        for a in 0..=255u8 {
            let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, a));
            assert_eq!(
                ranges.iter().any(|r| r.contains(addr)),
                block.contains(addr),
                "{addr}"
            );
        }
        // An exception in the middle leaves two ranges; one covering everything leaves none.
        let middle = IpBlock {
            cidr: "10.0.0.0/8".into(),
            except: vec!["10.1.0.0/16".into()],
        };
        assert_eq!(block_ranges(&middle).len(), 2);
        let all = IpBlock {
            cidr: "10.0.0.0/8".into(),
            except: vec!["0.0.0.0/0".into()],
        };
        assert!(block_ranges(&all).is_empty());
        let bad = IpBlock {
            cidr: "10.0.0.0".into(),
            except: vec![],
        };
        assert!(block_ranges(&bad).is_empty());
        let v6_except_on_v4 = IpBlock {
            cidr: "10.0.0.0/8".into(),
            except: vec!["::/0".into()],
        };
        assert_eq!(block_ranges(&v6_except_on_v4).len(), 1);
    }
}
