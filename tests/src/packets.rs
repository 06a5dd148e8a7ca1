//! Crafted packets for `BPF_PROG_RUN` tests.

use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// The Ethernet source address of every crafted frame: register it as the sending pod's MAC
/// (`from_pod` drops frames not from the pod's own address and MAC).
pub const SOURCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub const TCP_HLEN: usize = 20;
pub const SCTP_HLEN: usize = 12;

/// An Ethernet frame carrying IPv4/UDP with `payload_len` zero bytes: `42 + payload_len` bytes.
pub fn udp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Vec<u8> {
    l4_frame(17, src, dst, sport, dport, payload_len)
}

/// An Ethernet frame carrying IPv4 and a transport header of `protocol` (TCP: a SYN; UDP; SCTP:
/// the common header), then `payload_len` zero bytes. Checksums of the transport are left zero:
/// the programs under test read ports, not checksums.
pub fn l4_frame(
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Vec<u8> {
    let l4_len = match protocol {
        6 => TCP_HLEN,
        17 => UDP_HLEN,
        132 => SCTP_HLEN,
        other => panic!("no frame for IP protocol {other}"),
    };
    let ip_len = u16::try_from(IPV4_HLEN + l4_len + payload_len).expect("fits in one IP packet");
    let mut frame = Vec::with_capacity(ETH_HLEN + usize::from(ip_len));
    // Ethernet: locally administered MACs, EtherType IPv4.
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    frame.extend_from_slice(&SOURCE_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4 header without options.
    let mut ip = [0u8; IPV4_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    // Every one of the three starts with the source and destination ports.
    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    match protocol {
        6 => {
            l4[12] = 5 << 4; // data offset: 5 words
            l4[13] = 0x02; // SYN
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
        }
        // UDP: length; checksum 0 means "none" for IPv4.
        17 => l4[4..6].copy_from_slice(&(ip_len - IPV4_HLEN as u16).to_be_bytes()),
        _ => {}
    }
    frame.extend_from_slice(&l4);
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

    #[test]
    fn transport_headers_carry_the_ports_and_protocol() {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        for (protocol, header) in [(6, TCP_HLEN), (17, UDP_HLEN), (132, SCTP_HLEN)] {
            let frame = l4_frame(protocol, src, dst, 1234, 80, 4);
            assert_eq!(frame.len(), ETH_HLEN + IPV4_HLEN + header + 4);
            assert_eq!(frame[ETH_HLEN + 9], protocol);
            let l4 = &frame[ETH_HLEN + IPV4_HLEN..];
            assert_eq!(&l4[..4], &[0x04, 0xd2, 0, 80]);
        }
    }
}
