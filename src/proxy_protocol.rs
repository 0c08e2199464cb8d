//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in
//! front of warren opens each TCP connection with a header naming the
//! client it forwards, so logs, limits and the API show the client, not the
//! balancer.
//!
//! Only connections from `--proxy-protocol-from` networks are read this
//! way, and from there the header is required (as HAProxy's `accept-proxy`
//! does): anyone else could claim any address. The header is read to its
//! last byte and no further, so what follows (AMQP, or a TLS ClientHello)
//! is left in the socket for the handshake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::net::Peer;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The spec's bound on a version 1 line, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// Both versions are at least this long; what is read first.
const SHORTEST: usize = 8;
/// Enough for a version 1 line, or a version 2 header with a few TLVs.
const PEEK: usize = 256;

/// What the bytes read so far make of a header.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Read at least this many more bytes (and no more than that, so
    /// nothing past the header is taken).
    Incomplete(usize),
    /// The header is `length` bytes; `client` is the address it names, or
    /// `None` when it names none (a balancer's own health check: LOCAL in
    /// version 2, UNKNOWN in version 1, or an address family other than
    /// TCP over IPv4 or IPv6).
    Complete {
        length: usize,
        client: Option<SocketAddr>,
    },
    Invalid(&'static str),
}

/// Parses the start of a connection as a PROXY header.
pub fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() < SHORTEST {
        return Parsed::Incomplete(SHORTEST - bytes.len());
    }
    if bytes.starts_with(V1_PREFIX) {
        parse_v1(bytes)
    } else if bytes.starts_with(&V2_SIGNATURE[..SHORTEST]) {
        parse_v2(bytes)
    } else {
        Parsed::Invalid("no PROXY protocol header")
    }
}

/// Whether a client's first bytes are a PROXY header (for telling why a
/// connection from an untrusted address is not AMQP).
pub fn looks_like_header(bytes: &[u8]) -> bool {
    bytes.starts_with(V1_PREFIX) || bytes.starts_with(&V2_SIGNATURE[..SHORTEST])
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    let Some(end) = bytes.windows(2).position(|pair| pair == b"\r\n") else {
        if bytes.len() >= V1_MAX {
            return Parsed::Invalid("PROXY v1 line longer than 107 bytes");
        }
        // Each read stops where the line could end.
        return Parsed::Incomplete(if bytes.ends_with(b"\r") { 1 } else { 2 });
    };
    let length = end + 2;
    let Ok(line) = std::str::from_utf8(&bytes[V1_PREFIX.len()..end]) else {
        return Parsed::Invalid("PROXY v1 line is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let client = match fields.as_slice() {
        ["UNKNOWN", ..] => None,
        [family @ ("TCP4" | "TCP6"), source, _destination, source_port, _destination_port] => {
            let Ok(ip) = source.parse::<IpAddr>() else {
                return Parsed::Invalid("PROXY v1 source address is not an IP address");
            };
            if ip.is_ipv4() != (*family == "TCP4") {
                return Parsed::Invalid("PROXY v1 source address does not match its family");
            }
            let Some(port) = port_number(source_port) else {
                return Parsed::Invalid("PROXY v1 source port is not a port number");
            };
            Some(SocketAddr::new(ip, port))
        }
        _ => return Parsed::Invalid("PROXY v1 line is not TCP4, TCP6 or UNKNOWN with 4 fields"),
    };
    Parsed::Complete { length, client }
}

/// A decimal port as the spec writes it: no sign, no leading zeros.
fn port_number(text: &str) -> Option<u16> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    if bytes.len() < V2_FIXED {
        return Parsed::Incomplete(V2_FIXED - bytes.len());
    }
    if &bytes[..V2_SIGNATURE.len()] != V2_SIGNATURE {
        return Parsed::Invalid("PROXY v2 signature is wrong");
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("PROXY protocol version is not 2");
    }
    let length = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if bytes.len() < length {
        return Parsed::Incomplete(length - bytes.len());
    }
    let addresses = &bytes[V2_FIXED..length];
    let client = match (command, bytes[13]) {
        // LOCAL: the balancer speaking for itself.
        (0, _) => None,
        // PROXY over TCP (STREAM) on IPv4, then IPv6.
        (1, 0x11) if addresses.len() >= 12 => {
            let ip = Ipv4Addr::from(<[u8; 4]>::try_from(&addresses[..4]).expect("4 bytes"));
            Some(SocketAddr::new(ip.into(), port_at(addresses, 8)))
        }
        (1, 0x21) if addresses.len() >= 36 => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&addresses[..16]).expect("16 bytes"));
            Some(SocketAddr::new(ip.into(), port_at(addresses, 32)))
        }
        (1, 0x11 | 0x21) => return Parsed::Invalid("PROXY v2 address block is too short"),
        (1, _) => None,
        _ => return Parsed::Invalid("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    Parsed::Complete { length, client }
}

fn port_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Reads the header from a connection, and no byte after it. The caller
/// bounds the time (the handshake deadline); the size is bounded by the
/// protocol (107 bytes, or 16 + 65,535).
pub async fn read_header(stream: &mut TcpStream) -> std::io::Result<Option<SocketAddr>> {
    let mut bytes = Vec::with_capacity(V1_MAX);
    // The whole header usually arrives in one segment: look at it without
    // taking it, then take exactly the header. Otherwise read it piece by
    // piece, each piece no longer than what must still come.
    let mut peeked = [0u8; PEEK];
    let seen = stream.peek(&mut peeked).await?;
    if let Parsed::Complete { length, .. } = parse(&peeked[..seen]) {
        bytes.resize(length, 0);
        stream.read_exact(&mut bytes).await?;
    }
    loop {
        match parse(&bytes) {
            Parsed::Complete { client, .. } => return Ok(client),
            Parsed::Invalid(why) => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why))
            }
            Parsed::Incomplete(more) => {
                let had = bytes.len();
                bytes.resize(had + more, 0);
                stream.read_exact(&mut bytes[had..]).await?;
            }
        }
    }
}

/// Whether a connection from `peer` must start with a PROXY header.
pub fn expected_from(networks: &[IpNet], peer: Peer) -> bool {
    match peer {
        Peer::Tcp(addr) => trusted(networks, addr.ip()),
        Peer::Unix => false,
    }
}

/// Whether connections from `ip` carry a PROXY header.
fn trusted(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    networks.iter().any(|network| network.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse(bytes) {
            Parsed::Complete { length, client } => (length, client),
            other => panic!("{other:?} for {bytes:?}"),
        }
    }

    /// Parses `bytes` as the reader would, one requested piece at a time,
    /// and checks it never asks for a byte past the header.
    fn read_in_pieces(stream: &[u8]) -> Parsed {
        let mut taken = 0;
        loop {
            match parse(&stream[..taken]) {
                Parsed::Incomplete(more) => {
                    taken += more;
                    assert!(taken <= stream.len(), "asked past the end");
                }
                done => return done,
            }
        }
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        header.extend_from_slice(addresses);
        header
    }

    #[test]
    fn v1_names_the_client_and_ends_at_its_line() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 5673\r\n";
        let mut stream = line.to_vec();
        stream.extend_from_slice(b"AMQP\0\0\x09\x01");
        assert_eq!(
            read_in_pieces(&stream),
            Parsed::Complete {
                length: line.len(),
                client: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 5673\r\nAMQP";
        assert_eq!(
            complete(six).1,
            Some("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(complete(b"PROXY UNKNOWN\r\nAMQP"), (15, None));
        assert_eq!(complete(b"PROXY UNKNOWN ff ee 1 2\r\n").1, None);
    }

    #[test]
    fn v1_lines_that_lie_or_ramble_are_invalid() {
        for bad in [
            &b"PROXY TCP4 2001:db8::1 10.0.0.5 1 2\r\n"[..],
            b"PROXY TCP4 10.0.0.1 10.0.0.5 01 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.5 70000 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.5 1\r\n",
            b"PROXY TCP5 10.0.0.1 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 somehost 10.0.0.5 1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        let endless = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(
            read_in_pieces(&endless),
            Parsed::Invalid("PROXY v1 line longer than 107 bytes")
        );
    }

    #[test]
    fn v2_names_the_client_and_ends_at_its_length() {
        let mut addresses = vec![198, 51, 100, 9, 10, 0, 0, 5];
        addresses.extend_from_slice(&40000u16.to_be_bytes());
        addresses.extend_from_slice(&5673u16.to_be_bytes());
        addresses.extend_from_slice(&[0x04, 0, 1, 0xAA]);
        let header = v2(1, 0x11, &addresses);
        let mut stream = header.clone();
        stream.extend_from_slice(b"AMQP\0\0\x09\x01");
        assert_eq!(
            read_in_pieces(&stream),
            Parsed::Complete {
                length: header.len(),
                client: Some("198.51.100.9:40000".parse().unwrap())
            }
        );
        let mut six = vec![0u8; 36];
        six[15] = 1;
        six[32..34].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            complete(&v2(1, 0x21, &six)).1,
            Some("[::1]:7".parse().unwrap())
        );
        assert_eq!(complete(&v2(0, 0x11, &addresses)).1, None);
        assert_eq!(complete(&v2(1, 0x00, &[])).1, None);
    }

    #[test]
    fn v2_headers_that_lie_are_invalid() {
        assert!(matches!(parse(&v2(1, 0x11, &[1, 2, 3])), Parsed::Invalid(_)));
        assert!(matches!(parse(&v2(2, 0x11, &[0; 12])), Parsed::Invalid(_)));
        let mut version_one = v2(1, 0x11, &[0; 12]);
        version_one[12] = 0x11;
        assert!(matches!(parse(&version_one), Parsed::Invalid(_)));
        let mut bent = v2(1, 0x11, &[0; 12]);
        bent[10] = b'X';
        assert!(matches!(parse(&bent), Parsed::Invalid(_)));
    }

    #[test]
    fn amqp_is_not_a_header_and_nothing_is_decided_early() {
        assert_eq!(
            parse(b"AMQP\0\0\x09\x01"),
            Parsed::Invalid("no PROXY protocol header")
        );
        assert_eq!(parse(b"PRO"), Parsed::Incomplete(5));
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(V2_SIGNATURE));
        assert!(!looks_like_header(b"AMQP\0\0\x09\x01"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_parsed_without_panic_or_a_request_for_nothing(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            v2_prefix in proptest::prelude::any::<bool>(),
        ) {
            let bytes = match v2_prefix {
                true => [V2_SIGNATURE.as_slice(), &bytes].concat(),
                false => bytes,
            };
            if let Parsed::Incomplete(more) = parse(&bytes) {
                proptest::prop_assert!(more >= 1);
            }
            if let Parsed::Complete { length, .. } = parse(&bytes) {
                proptest::prop_assert!(length <= bytes.len());
            }
        }
    }

    #[test]
    fn trust_covers_the_configured_networks_and_mapped_addresses() {
        let networks: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(trusted(&networks, "10.1.2.3".parse().unwrap()));
        assert!(trusted(&networks, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(trusted(&networks, "::1".parse().unwrap()));
        assert!(!trusted(&networks, "11.0.0.1".parse().unwrap()));
        assert!(!trusted(&[], "10.1.2.3".parse().unwrap()));
    }
}
