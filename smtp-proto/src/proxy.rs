//! HAProxy PROXY protocol header parsing, versions 1 and 2.
//!
//! A load balancer in front of the SMTP server can prepend a PROXY protocol
//! header to each connection to tell the server the original client address
//! (see haproxy's `doc/proxy-protocol.txt`). [`parse_proxy_header`] looks at
//! the start of a connection's byte stream and reports whether a complete
//! header is there, how long it is, and what it says. It never allocates and
//! never blocks: feed it the bytes received so far and call it again when more
//! arrive while it answers [`ProxyParse::Incomplete`].
//!
//! The parser is strict, as the specification demands: anything that does not
//! exactly match the protocol is refused, and the caller should then close the
//! connection. Only accept PROXY headers from trusted proxies.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest version 2 header (16-byte fixed part plus payload) that is accepted.
pub const MAX_HEADER_LEN: usize = 4096;

/// Longest version 1 line, CRLF included (section 2.1 of the specification).
const V1_MAX_LEN: usize = 107;

/// The version 1 signature, including the space that must follow it.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// The 12-byte version 2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Length of the fixed part of a version 2 header.
const V2_FIXED_LEN: usize = 16;

/// The outcome of [`parse_proxy_header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyParse {
    /// More bytes are needed before the header can be accepted or refused.
    Incomplete,
    /// A complete, valid header was found.
    Done {
        /// What the header says.
        header: ProxyHeader,
        /// The header's length in bytes; the bytes after it belong to SMTP.
        consumed: usize,
    },
    /// The input is not a valid PROXY protocol header; close the connection.
    Invalid(ProxyError),
}

/// A parsed PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The protocol version: 1 (text) or 2 (binary).
    pub version: u8,
    /// Whether the connection is relayed or was made by the proxy itself.
    pub command: ProxyCommand,
    /// The transport of the original connection.
    pub transport: Transport,
    /// The original client's address, when the header carries one.
    pub source: Option<SocketAddr>,
    /// The address the client originally connected to, when the header carries one.
    pub destination: Option<SocketAddr>,
}

/// The command of a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyCommand {
    /// The connection is relayed on behalf of a client (every version 1 header).
    Proxy,
    /// The proxy made the connection itself (e.g. a health check): use the
    /// real connection's addresses.
    Local,
}

/// The transport protocol and address family announced by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP over IPv4.
    Tcp4,
    /// TCP over IPv6.
    Tcp6,
    /// UDP over IPv4 (version 2 only).
    Udp4,
    /// UDP over IPv6 (version 2 only).
    Udp6,
    /// A Unix domain socket, stream or datagram (version 2 only); no address is reported.
    Unix,
    /// Unknown or unspecified: `UNKNOWN` in version 1, `AF_UNSPEC` in version 2.
    Unknown,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyError {
    /// The input starts with neither the version 1 nor the version 2 signature.
    NotProxy,
    /// The header does not follow the protocol's syntax.
    Malformed,
    /// A version 1 line without CRLF in its first 107 bytes, or a version 2
    /// header longer than [`MAX_HEADER_LEN`].
    TooLong,
    /// A version 2 signature followed by a version other than 2.
    UnsupportedVersion,
    /// A version 2 command other than LOCAL (0) or PROXY (1).
    UnsupportedCommand,
    /// A version 2 address family or transport protocol that the
    /// specification does not define.
    UnsupportedFamily,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotProxy => "not a PROXY protocol header",
            Self::Malformed => "malformed PROXY protocol header",
            Self::TooLong => "PROXY protocol header too long",
            Self::UnsupportedVersion => "unsupported PROXY protocol version",
            Self::UnsupportedCommand => "unsupported PROXY protocol command",
            Self::UnsupportedFamily => "unsupported PROXY protocol address family or transport",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses a PROXY protocol header (version 1 or 2) at the start of `input`.
///
/// `input` holds the first bytes received on the connection, possibly not all
/// of the header yet. The answer is [`ProxyParse::Incomplete`] while the bytes
/// so far could still start a valid header, [`ProxyParse::Done`] with the
/// header and its length once it is complete, and [`ProxyParse::Invalid`] as
/// soon as the bytes cannot be a valid header (in particular
/// [`ProxyError::NotProxy`] as soon as they match neither signature).
pub fn parse_proxy_header(input: &[u8]) -> ProxyParse {
    if input.starts_with(V2_SIGNATURE) {
        parse_v2(input)
    } else if input.starts_with(V1_SIGNATURE) {
        parse_v1(input)
    } else if V2_SIGNATURE.starts_with(input) || V1_SIGNATURE.starts_with(input) {
        ProxyParse::Incomplete
    } else {
        ProxyParse::Invalid(ProxyError::NotProxy)
    }
}

/// Parses a version 1 header; `input` starts with `"PROXY "`.
fn parse_v1(input: &[u8]) -> ProxyParse {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        if input.len() >= V1_MAX_LEN {
            return ProxyParse::Invalid(ProxyError::TooLong);
        }
        if !v1_protocol_plausible(&input[V1_SIGNATURE.len()..]) {
            return ProxyParse::Invalid(ProxyError::Malformed);
        }
        return ProxyParse::Incomplete;
    };
    // A bare LF never ends a line (section 2.1).
    let (Some(b'\r'), Some(line)) = (
        input.get(lf.wrapping_sub(1)),
        input.get(V1_SIGNATURE.len()..lf.saturating_sub(1)),
    ) else {
        return ProxyParse::Invalid(ProxyError::Malformed);
    };
    match parse_v1_fields(line) {
        Some(header) => ProxyParse::Done {
            header,
            consumed: lf + 1,
        },
        None => ProxyParse::Invalid(ProxyError::Malformed),
    }
}

/// Tells whether the partial text after `"PROXY "` can still begin a valid protocol token.
fn v1_protocol_plausible(rest: &[u8]) -> bool {
    [&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN"].iter().any(|token| {
        let n = rest.len().min(token.len());
        rest[..n] == token[..n]
    })
}

/// Parses the fields of a version 1 line, between `"PROXY "` and CRLF.
fn parse_v1_fields(line: &[u8]) -> Option<ProxyHeader> {
    if let Some(rest) = line.strip_prefix(b"UNKNOWN") {
        // The receiver must ignore anything between UNKNOWN and the CRLF.
        if !rest.is_empty() && rest.first() != Some(&b' ') {
            return None;
        }
        return Some(ProxyHeader {
            version: 1,
            command: ProxyCommand::Proxy,
            transport: Transport::Unknown,
            source: None,
            destination: None,
        });
    }
    let mut fields = line.split(|&b| b == b' ');
    let protocol = fields.next()?;
    let (src, dst, sport, dport) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if fields.next().is_some() {
        return None;
    }
    let (transport, src_ip, dst_ip) = match protocol {
        b"TCP4" => (
            Transport::Tcp4,
            IpAddr::V4(parse_v1_ipv4(src)?),
            IpAddr::V4(parse_v1_ipv4(dst)?),
        ),
        b"TCP6" => (
            Transport::Tcp6,
            IpAddr::V6(parse_v1_ipv6(src)?),
            IpAddr::V6(parse_v1_ipv6(dst)?),
        ),
        _ => return None,
    };
    Some(ProxyHeader {
        version: 1,
        command: ProxyCommand::Proxy,
        transport,
        source: Some(SocketAddr::new(src_ip, parse_v1_port(sport)?)),
        destination: Some(SocketAddr::new(dst_ip, parse_v1_port(dport)?)),
    })
}

/// Parses a decimal number of 1 to 5 digits without heading zeroes, at most `max`.
fn parse_v1_decimal(field: &[u8], max: u32) -> Option<u32> {
    if field.is_empty() || field.len() > 5 || (field.len() > 1 && field[0] == b'0') {
        return None;
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    (value <= max).then_some(value)
}

/// Parses a port number, 0-65535 without heading zeroes.
fn parse_v1_port(field: &[u8]) -> Option<u16> {
    u16::try_from(parse_v1_decimal(field, 65535)?).ok()
}

/// Parses a dotted-quad IPv4 address: exactly four decimal numbers 0-255 without heading zeroes.
fn parse_v1_ipv4(field: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = field.split(|&b| b == b'.');
    for octet in &mut octets {
        *octet = u8::try_from(parse_v1_decimal(parts.next()?, 255)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses a textual IPv6 address (hexadecimal groups, at most one `::`).
fn parse_v1_ipv6(field: &[u8]) -> Option<Ipv6Addr> {
    // The standard parser implements the usual textual forms, including an
    // embedded dotted quad; it refuses zone identifiers and prefixes.
    if !field
        .iter()
        .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
    {
        return None;
    }
    core::str::from_utf8(field).ok()?.parse().ok()
}

/// Parses a version 2 header; `input` starts with the 12-byte signature.
fn parse_v2(input: &[u8]) -> ProxyParse {
    let Some(&ver_cmd) = input.get(12) else {
        return ProxyParse::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return ProxyParse::Invalid(ProxyError::UnsupportedVersion);
    }
    let command = match ver_cmd & 0x0f {
        0 => ProxyCommand::Local,
        1 => ProxyCommand::Proxy,
        _ => return ProxyParse::Invalid(ProxyError::UnsupportedCommand),
    };
    let Some(&fam) = input.get(13) else {
        return ProxyParse::Incomplete;
    };
    // (transport, length of the address block)
    let family = match fam {
        0x00 => Some((Transport::Unknown, 0)),
        0x11 => Some((Transport::Tcp4, 12)),
        0x12 => Some((Transport::Udp4, 12)),
        0x21 => Some((Transport::Tcp6, 36)),
        0x22 => Some((Transport::Udp6, 36)),
        0x31 | 0x32 => Some((Transport::Unix, 216)),
        _ => None,
    };
    // With LOCAL, "the receiver must [...] discard the protocol block including
    // the family which is ignored": an undefined family is only an error for PROXY.
    let (transport, addr_len) = match (family, command) {
        (Some(family), _) => family,
        (None, ProxyCommand::Local) => (Transport::Unknown, 0),
        (None, ProxyCommand::Proxy) => {
            return ProxyParse::Invalid(ProxyError::UnsupportedFamily);
        }
    };
    let (Some(&len_hi), Some(&len_lo)) = (input.get(14), input.get(15)) else {
        return ProxyParse::Incomplete;
    };
    let payload_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let total = V2_FIXED_LEN + payload_len;
    if total > MAX_HEADER_LEN {
        return ProxyParse::Invalid(ProxyError::TooLong);
    }
    if command == ProxyCommand::Proxy && payload_len < addr_len {
        return ProxyParse::Invalid(ProxyError::Malformed);
    }
    let Some(payload) = input.get(V2_FIXED_LEN..total) else {
        return ProxyParse::Incomplete;
    };
    let header = match command {
        // The whole block is skipped, whatever it holds.
        ProxyCommand::Local => ProxyHeader {
            version: 2,
            command,
            transport,
            source: None,
            destination: None,
        },
        ProxyCommand::Proxy => {
            let Some((addresses, tlvs)) = payload.split_at_checked(addr_len) else {
                return ProxyParse::Invalid(ProxyError::Malformed);
            };
            // With AF_UNSPEC the payload's layout is unknown: it is skipped whole.
            if transport != Transport::Unknown && !tlvs_well_formed(tlvs) {
                return ProxyParse::Invalid(ProxyError::Malformed);
            }
            let (source, destination) = v2_addresses(transport, addresses);
            ProxyHeader {
                version: 2,
                command,
                transport,
                source,
                destination,
            }
        }
    };
    ProxyParse::Done {
        header,
        consumed: total,
    }
}

/// Decodes a version 2 address block of the right length for `transport`.
fn v2_addresses(transport: Transport, block: &[u8]) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*block.get(at)?, *block.get(at + 1)?]))
    };
    let decoded = match transport {
        Transport::Tcp4 | Transport::Udp4 => (|| {
            let src: [u8; 4] = block.get(0..4)?.try_into().ok()?;
            let dst: [u8; 4] = block.get(4..8)?.try_into().ok()?;
            Some((
                SocketAddr::new(IpAddr::from(src), port(8)?),
                SocketAddr::new(IpAddr::from(dst), port(10)?),
            ))
        })(),
        Transport::Tcp6 | Transport::Udp6 => (|| {
            let src: [u8; 16] = block.get(0..16)?.try_into().ok()?;
            let dst: [u8; 16] = block.get(16..32)?.try_into().ok()?;
            Some((
                SocketAddr::new(IpAddr::from(src), port(32)?),
                SocketAddr::new(IpAddr::from(dst), port(34)?),
            ))
        })(),
        Transport::Unix | Transport::Unknown => None,
    };
    match decoded {
        Some((src, dst)) => (Some(src), Some(dst)),
        None => (None, None),
    }
}

/// Checks that `tlvs` is a sequence of complete type-length-value records.
fn tlvs_well_formed(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        let [_kind, hi, lo, rest @ ..] = tlvs else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        match rest.get(len..) {
            Some(next) => tlvs = next,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn v4(a: [u8; 4], port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
    }

    fn v6(s: &str, port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::V6(SocketAddrV6::new(
            s.parse().unwrap(),
            port,
            0,
            0,
        )))
    }

    fn done(input: &[u8]) -> (ProxyHeader, usize) {
        match parse_proxy_header(input) {
            ProxyParse::Done { header, consumed } => (header, consumed),
            other => panic!("expected Done for {input:?}, got {other:?}"),
        }
    }

    fn invalid(input: &[u8]) -> ProxyError {
        match parse_proxy_header(input) {
            ProxyParse::Invalid(e) => e,
            other => panic!("expected Invalid for {input:?}, got {other:?}"),
        }
    }

    /// Every strict prefix is Incomplete, and the whole header parses the same
    /// with and without trailing SMTP bytes.
    fn check_incremental(header: &[u8]) {
        for n in 0..header.len() {
            assert_eq!(
                parse_proxy_header(&header[..n]),
                ProxyParse::Incomplete,
                "prefix of {n} bytes"
            );
        }
        let (alone, consumed) = done(header);
        assert_eq!(consumed, header.len());
        let mut with_smtp = header.to_vec();
        with_smtp.extend_from_slice(b"EHLO client.example\r\n");
        assert_eq!(done(&with_smtp), (alone, consumed));
    }

    fn v2(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn tcp4_block() -> Vec<u8> {
        let mut b = vec![192, 168, 0, 1, 192, 168, 0, 11];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn tcp6_block() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut b = src.octets().to_vec();
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&1234u16.to_be_bytes());
        b.extend_from_slice(&25u16.to_be_bytes());
        b
    }

    // ---- version 1 ----

    #[test]
    fn v1_spec_example_tcp4() {
        let input = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, consumed) = done(input);
        assert_eq!(consumed, 47);
        assert_eq!(&input[consumed..], b"GET / HTTP/1.1\r\n");
        assert_eq!(
            h,
            ProxyHeader {
                version: 1,
                command: ProxyCommand::Proxy,
                transport: Transport::Tcp4,
                source: v4([192, 168, 0, 1], 56324),
                destination: v4([192, 168, 0, 11], 443),
            }
        );
    }

    #[test]
    fn v1_tcp6() {
        let (h, _) = done(b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 1234 25\r\n");
        assert_eq!(h.transport, Transport::Tcp6);
        assert_eq!(h.source, v6("2001:db8::1", 1234));
        assert_eq!(h.destination, v6("2001:db8::2", 25));
    }

    #[test]
    fn v1_max_lengths() {
        let line = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(line.len(), 56);
        assert_eq!(done(line).1, 56);
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        assert_eq!(done(line.as_bytes()).1, 104);
        let line = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(line.len(), 107);
        let (h, consumed) = done(line.as_bytes());
        assert_eq!(consumed, 107);
        assert_eq!(h.transport, Transport::Unknown);
        check_incremental(line.as_bytes());
    }

    #[test]
    fn v1_unknown() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN whatever goes here\r\n",
        ] {
            let (h, consumed) = done(line);
            assert_eq!(consumed, line.len());
            assert_eq!(
                h,
                ProxyHeader {
                    version: 1,
                    command: ProxyCommand::Proxy,
                    transport: Transport::Unknown,
                    source: None,
                    destination: None,
                }
            );
        }
        assert_eq!(invalid(b"PROXY UNKNOWNX\r\n"), ProxyError::Malformed);
    }

    #[test]
    fn v1_ports_and_zero() {
        let (h, _) = done(b"PROXY TCP4 0.0.0.0 10.0.0.1 0 65535\r\n");
        assert_eq!(h.source, v4([0, 0, 0, 0], 0));
        assert_eq!(h.destination, v4([10, 0, 0, 1], 65535));
    }

    #[test]
    fn v1_incremental() {
        check_incremental(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        check_incremental(b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 25\r\n");
        check_incremental(b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v1_errors() {
        let malformed: &[&[u8]] = &[
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", // bare LF
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n", // missing port
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 1\r\n", // extra field
            b"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n", // double space
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n", // trailing space
            b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n", // heading zero
            b"PROXY TCP4 192.168.0.256 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1.5 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n", // wrong family
            b"PROXY TCP6 192.168.0.1 2001:db8::2 1 2\r\n",        // wrong family
            b"PROXY TCP6 2001:db8::1%eth0 2001:db8::2 1 2\r\n",   // zone id
            b"PROXY TCP6 2001:db8:::1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +5632 443\r\n", // sign
            b"PROXY TCP4 192.168.0.1 192.168.0.11 05632 443\r\n", // heading zero
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n", // out of range
            b"PROXY TCP4 192.168.0.1 192.168.0.11 123456 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 \r\n",
            b"PROXY tcp4 192.168.0.1 192.168.0.11 56324 443\r\n", // case
            b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY \r\n",
            b"PROXY UDP", // early: cannot become a valid protocol token
            b"PROXY TCP5",
            b"PROXY TCP4\t",
        ];
        for input in malformed {
            assert_eq!(
                invalid(input),
                ProxyError::Malformed,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn v1_too_long() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(106, b'x');
        assert_eq!(parse_proxy_header(&line), ProxyParse::Incomplete);
        line.push(b'x');
        assert_eq!(invalid(&line), ProxyError::TooLong);
        // A CRLF just past the limit does not help.
        line.extend_from_slice(b"\r\n");
        assert_eq!(invalid(&line), ProxyError::TooLong);
        // 106 bytes then CR: the LF would be byte 108.
        line.truncate(106);
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), 108);
        assert_eq!(invalid(&line), ProxyError::TooLong);
    }

    #[test]
    fn not_proxy() {
        for input in [
            &b"EHLO client.example\r\n"[..],
            b"E",
            b"PROXX",
            b"PROXYX",
            b"proxy TCP4",
            b"\r\n\r\n\x01",
            b"\r\nQUIT",
            b"\n",
        ] {
            assert_eq!(invalid(input), ProxyError::NotProxy, "{input:?}");
        }
        assert_eq!(parse_proxy_header(b""), ProxyParse::Incomplete);
        assert_eq!(parse_proxy_header(b"PROX"), ProxyParse::Incomplete);
        assert_eq!(parse_proxy_header(b"\r\n\r\n\0"), ProxyParse::Incomplete);
    }

    // ---- version 2 ----

    #[test]
    fn v2_tcp4() {
        let input = v2(0x21, 0x11, &tcp4_block());
        assert_eq!(input.len(), 28);
        let (h, consumed) = done(&input);
        assert_eq!(consumed, 28);
        assert_eq!(
            h,
            ProxyHeader {
                version: 2,
                command: ProxyCommand::Proxy,
                transport: Transport::Tcp4,
                source: v4([192, 168, 0, 1], 56324),
                destination: v4([192, 168, 0, 11], 443),
            }
        );
        check_incremental(&input);
    }

    #[test]
    fn v2_udp4_and_udp6() {
        let (h, _) = done(&v2(0x21, 0x12, &tcp4_block()));
        assert_eq!(h.transport, Transport::Udp4);
        assert_eq!(h.source, v4([192, 168, 0, 1], 56324));
        let (h, _) = done(&v2(0x21, 0x22, &tcp6_block()));
        assert_eq!(h.transport, Transport::Udp6);
        assert_eq!(h.destination, v6("2001:db8::2", 25));
    }

    #[test]
    fn v2_tcp6() {
        let input = v2(0x21, 0x21, &tcp6_block());
        assert_eq!(input.len(), 52);
        let (h, consumed) = done(&input);
        assert_eq!(consumed, 52);
        assert_eq!(h.transport, Transport::Tcp6);
        assert_eq!(h.source, v6("2001:db8::1", 1234));
        assert_eq!(h.destination, v6("2001:db8::2", 25));
        check_incremental(&input);
    }

    #[test]
    fn v2_unix() {
        for fam in [0x31, 0x32] {
            let input = v2(0x21, fam, &[b'/'; 216]);
            let (h, consumed) = done(&input);
            assert_eq!(consumed, 16 + 216);
            assert_eq!(h.transport, Transport::Unix);
            assert_eq!((h.source, h.destination), (None, None));
        }
        assert_eq!(invalid(&v2(0x21, 0x31, &[0; 215])), ProxyError::Malformed);
    }

    #[test]
    fn v2_unspec() {
        let input = v2(0x21, 0x00, &[]);
        let (h, consumed) = done(&input);
        assert_eq!(consumed, 16);
        assert_eq!(h.transport, Transport::Unknown);
        assert_eq!(h.command, ProxyCommand::Proxy);
        assert_eq!((h.source, h.destination), (None, None));
        // Address bytes with AF_UNSPEC are ignored (but still skipped).
        let (h, consumed) = done(&v2(0x21, 0x00, &[1, 2, 3, 4]));
        assert_eq!(consumed, 20);
        assert_eq!(h.source, None);
    }

    #[test]
    fn v2_local() {
        // A typical health check: LOCAL, AF_UNSPEC, no address.
        let input = v2(0x20, 0x00, &[]);
        let (h, consumed) = done(&input);
        assert_eq!(consumed, 16);
        assert_eq!(
            h,
            ProxyHeader {
                version: 2,
                command: ProxyCommand::Local,
                transport: Transport::Unknown,
                source: None,
                destination: None,
            }
        );
        check_incremental(&input);
        // LOCAL with an address block: the block is skipped, no address reported.
        let input = v2(0x20, 0x11, &tcp4_block());
        let (h, consumed) = done(&input);
        assert_eq!(consumed, 28);
        assert_eq!(h.command, ProxyCommand::Local);
        assert_eq!(h.transport, Transport::Tcp4);
        assert_eq!((h.source, h.destination), (None, None));
        // LOCAL ignores the family, even an undefined one, and a short block.
        let (h, _) = done(&v2(0x20, 0x77, &[]));
        assert_eq!(h.transport, Transport::Unknown);
        let (h, _) = done(&v2(0x20, 0x11, &[1, 2]));
        assert_eq!(h.source, None);
    }

    #[test]
    fn v2_with_tlvs() {
        let mut payload = tcp4_block();
        // PP2_TYPE_AUTHORITY "mx.example"
        payload.extend_from_slice(&[0x02, 0x00, 0x0a]);
        payload.extend_from_slice(b"mx.example");
        // PP2_TYPE_NOOP, empty
        payload.extend_from_slice(&[0x04, 0x00, 0x00]);
        // PP2_TYPE_SSL with a version sub-TLV
        payload.extend_from_slice(&[0x20, 0x00, 0x0e, 0x01, 0, 0, 0, 0]);
        payload.extend_from_slice(&[0x21, 0x00, 0x06]);
        payload.extend_from_slice(b"TLSv13");
        let input = v2(0x21, 0x11, &payload);
        let (h, consumed) = done(&input);
        assert_eq!(consumed, input.len());
        assert_eq!(h.source, v4([192, 168, 0, 1], 56324));
        check_incremental(&input);

        let mut payload = tcp6_block();
        payload.extend_from_slice(&[0x05, 0x00, 0x02, 0xab, 0xcd]);
        let (h, consumed) = done(&v2(0x21, 0x21, &payload));
        assert_eq!(consumed, 16 + 36 + 5);
        assert_eq!(h.source, v6("2001:db8::1", 1234));
    }

    #[test]
    fn v2_bad_tlvs() {
        // A TLV whose value runs past the declared length.
        let mut payload = tcp4_block();
        payload.extend_from_slice(&[0x02, 0x00, 0x05, b'a', b'b']);
        assert_eq!(invalid(&v2(0x21, 0x11, &payload)), ProxyError::Malformed);
        // Trailing bytes too short for a TLV header.
        for extra in [&[0x04][..], &[0x04, 0x00]] {
            let mut payload = tcp4_block();
            payload.extend_from_slice(extra);
            assert_eq!(invalid(&v2(0x21, 0x11, &payload)), ProxyError::Malformed);
        }
    }

    #[test]
    fn v2_errors() {
        assert_eq!(
            invalid(&v2(0x11, 0x11, &tcp4_block())),
            ProxyError::UnsupportedVersion
        );
        assert_eq!(
            invalid(&v2(0x31, 0x11, &tcp4_block())),
            ProxyError::UnsupportedVersion
        );
        assert_eq!(
            invalid(&v2(0x22, 0x11, &tcp4_block())),
            ProxyError::UnsupportedCommand
        );
        assert_eq!(
            invalid(&v2(0x2f, 0x11, &tcp4_block())),
            ProxyError::UnsupportedCommand
        );
        for fam in [0x01, 0x10, 0x13, 0x41, 0xff] {
            assert_eq!(
                invalid(&v2(0x21, fam, &tcp6_block())),
                ProxyError::UnsupportedFamily,
                "{fam:#x}"
            );
        }
        // Address block shorter than the family needs.
        assert_eq!(invalid(&v2(0x21, 0x11, &[0; 11])), ProxyError::Malformed);
        assert_eq!(invalid(&v2(0x21, 0x21, &[0; 35])), ProxyError::Malformed);
        assert_eq!(
            invalid(&v2(0x21, 0x21, &tcp4_block())),
            ProxyError::Malformed
        );
        // Errors are reported as soon as the deciding byte is there.
        let sig = V2_SIGNATURE.to_vec();
        assert_eq!(
            invalid(&[&sig[..], &[0x10]].concat()),
            ProxyError::UnsupportedVersion
        );
        assert_eq!(
            invalid(&[&sig[..], &[0x21, 0x99]].concat()),
            ProxyError::UnsupportedFamily
        );
        assert_eq!(
            invalid(&[&sig[..], &[0x21, 0x11, 0x00, 0x04]].concat()),
            ProxyError::Malformed
        );
    }

    #[test]
    fn v2_too_long() {
        let mut payload = tcp4_block();
        payload.extend_from_slice(&[0x04]);
        payload.extend_from_slice(
            &u16::try_from(MAX_HEADER_LEN - 16 - 12 - 3)
                .unwrap()
                .to_be_bytes(),
        );
        payload.resize(MAX_HEADER_LEN - 16, 0);
        let input = v2(0x21, 0x11, &payload);
        assert_eq!(input.len(), MAX_HEADER_LEN);
        assert_eq!(done(&input).1, MAX_HEADER_LEN);

        // One byte more is refused, from the length field alone.
        let header = v2(0x21, 0x11, &vec![0; MAX_HEADER_LEN - 15]);
        assert_eq!(invalid(&header[..16]), ProxyError::TooLong);
        assert_eq!(invalid(&header), ProxyError::TooLong);
        assert_eq!(
            invalid(&[&V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat()),
            ProxyError::TooLong
        );
    }

    #[test]
    fn error_display() {
        assert_eq!(
            ProxyError::NotProxy.to_string(),
            "not a PROXY protocol header"
        );
        let e: Box<dyn std::error::Error> = Box::new(ProxyError::TooLong);
        assert!(e.to_string().contains("too long"));
    }

    proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let ProxyParse::Done { consumed, .. } = parse_proxy_header(&input) {
                prop_assert!(consumed <= input.len());
            }
        }

        #[test]
        fn never_panics_after_v1_signature(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let input = [V1_SIGNATURE, &tail[..]].concat();
            if let ProxyParse::Done { consumed, .. } = parse_proxy_header(&input) {
                prop_assert!(consumed <= input.len());
            }
        }

        #[test]
        fn never_panics_after_v2_signature(
            ver_cmd in prop_oneof![Just(0x20u8), Just(0x21u8), any::<u8>()],
            fam in prop_oneof![Just(0x00u8), Just(0x11u8), Just(0x21u8), Just(0x31u8), any::<u8>()],
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut input = V2_SIGNATURE.to_vec();
            input.push(ver_cmd);
            input.push(fam);
            input.extend_from_slice(&u16::try_from(tail.len()).unwrap().to_be_bytes());
            input.extend_from_slice(&tail);
            if let ProxyParse::Done { consumed, .. } = parse_proxy_header(&input) {
                prop_assert!(consumed <= input.len());
            }
        }

        #[test]
        fn v1_tcp4_roundtrip(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>()) {
            let line = format!(
                "PROXY TCP4 {} {} {sp} {dp}\r\n",
                Ipv4Addr::from(src),
                Ipv4Addr::from(dst)
            );
            let (h, consumed) = done(line.as_bytes());
            prop_assert_eq!(consumed, line.len());
            prop_assert_eq!(h.source, v4(src, sp));
            prop_assert_eq!(h.destination, v4(dst, dp));
        }

        #[test]
        fn v1_tcp6_roundtrip(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), sp in any::<u16>(), dp in any::<u16>()) {
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let line = format!("PROXY TCP6 {src} {dst} {sp} {dp}\r\n");
            let (h, consumed) = done(line.as_bytes());
            prop_assert_eq!(consumed, line.len());
            prop_assert_eq!(h.source, Some(SocketAddr::new(IpAddr::V6(src), sp)));
            prop_assert_eq!(h.destination, Some(SocketAddr::new(IpAddr::V6(dst), dp)));
        }
    }
}
