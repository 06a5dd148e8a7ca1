//! Crafted packets for `BPF_PROG_RUN` tests.

use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// An Ethernet frame carrying IPv4/UDP with `payload_len` zero bytes: `42 + payload_len` bytes.
pub fn udp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Vec<u8> {
    let ip_len = u16::try_from(IPV4_HLEN + UDP_HLEN + payload_len).expect("fits in one IP packet");
    let mut frame = Vec::with_capacity(ETH_HLEN + usize::from(ip_len));
    // Ethernet: locally administered MACs, EtherType IPv4.
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4 header without options.
    let mut ip = [0u8; IPV4_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    // UDP header; checksum 0 means "none" for IPv4.
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&(ip_len - IPV4_HLEN as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.resize(ETH_HLEN + usize::from(ip_len), 0);
    frame
}

/// The one's-complement sum of the header's 16-bit words (RFC 791).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_the_announced_length_and_a_valid_header_checksum() {
        let frame = udp_frame(
            Ipv4Addr::new(10, 123, 1, 2),
            Ipv4Addr::new(10, 123, 1, 3),
            4000,
            5000,
            100,
        );
        assert_eq!(frame.len(), 142);
        // A header with its checksum filled in sums to zero.
        assert_eq!(ipv4_checksum(&frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN]), 0);
        assert_eq!(&frame[ETH_HLEN + 12..ETH_HLEN + 16], &[10, 123, 1, 2]);
    }
}
