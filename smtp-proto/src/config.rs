//! Session configuration: identity, extensions, policies, limits, timeouts.
//!
//! A [`Config`] is shared by every session of a server (`Arc<Config>`); start
//! from [`Config::default`] and change fields.

use std::net::IpAddr;
use std::time::Duration;

use crate::sasl::Mechanism;

/// Which ESMTP extensions EHLO/LHLO advertises (and so which the session accepts).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870); the figure is [`Limits::max_message_size`].
    pub size: bool,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034); replies carry RFC 3463 codes only when on.
    pub enhanced_status_codes: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// CHUNKING, the BDAT command (RFC 3030).
    pub chunking: bool,
    /// BINARYMIME (RFC 3030); needs `chunking`.
    pub binarymime: bool,
    /// DSN (RFC 3461): RET, ENVID, NOTIFY, ORCPT.
    pub dsn: bool,
    /// REQUIRETLS (RFC 8689), advertised only under TLS.
    pub requiretls: bool,
    /// LIMITS (RFC 9422): advertises `RCPTMAX`.
    pub limits: bool,
    /// HELP in the EHLO list and the HELP command.
    pub help: bool,
    /// STARTTLS (RFC 3207): set when the caller can upgrade; offered only before TLS.
    pub starttls: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions {
            pipelining: true,
            size: true,
            eightbitmime: true,
            enhanced_status_codes: true,
            smtputf8: true,
            chunking: true,
            binarymime: true,
            dsn: true,
            requiretls: false,
            limits: true,
            help: true,
            starttls: false,
        }
    }
}

/// AUTH (RFC 4954) policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthPolicy {
    /// Mechanisms offered; empty means AUTH is off.
    pub mechanisms: Vec<Mechanism>,
    /// Offer and accept AUTH on a connection without TLS (off by default:
    /// credentials would cross the network in clear text).
    pub allow_plaintext: bool,
    /// MAIL is refused (`530 5.7.0`) until the client authenticated.
    pub required: bool,
    /// Failed AUTH attempts per client address per minute, across
    /// sessions, after which AUTH gets `454 4.7.0` without a check; each
    /// failure also holds the client's next command for
    /// [`Limits::error_delay`] doubled per recent failure (at most 30
    /// seconds), in this session and the next ones. 0 turns both off. The
    /// core has no memory across sessions: the server kit counts.
    pub max_failures: u32,
}

/// Who may hand over another client's facts (Postfix's XCLIENT and
/// XFORWARD). Both are off unless networks are listed; a client outside
/// them is not offered the command and gets `550 5.7.0` for it. The
/// address checked is the one the connection came from (after a PROXY
/// header), never one an XCLIENT itself set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Forwarding {
    /// Networks allowed XCLIENT: the real client's address, name, HELO and
    /// login replace the session's, and the session restarts with a new
    /// greeting (front proxies such as nginx's mail proxy).
    pub xclient_from: Vec<Cidr>,
    /// Networks allowed XFORWARD: the original client's facts are recorded
    /// for the next transaction (content filters, Postfix's `smtp` client).
    pub xforward_from: Vec<Cidr>,
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare
/// address is a `/32` or `/128`), e.g. the peers whose PROXY header is
/// believed, or the front proxies allowed XCLIENT ([`Forwarding`]).
///
/// ```
/// use smtp_proto::config::Cidr;
///
/// let net: Cidr = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped");
/// assert!(!net.contains("192.0.2.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr`'s first `prefix` bits; `None` if `prefix` is
    /// longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// The prefix length: how many leading bits the network fixes.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            match u32::from(prefix) {
                0 => 0,
                p => bits >> (width - p.min(width)),
            }
        }
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let (n, i) = (u32::from(net).into(), u32::from(ip).into());
                masked(n, 32, self.prefix) == masked(i, 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.into(), 128, self.prefix) == masked(ip.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?}: expected an IP network such as 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix).ok_or_else(bad)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            mechanisms: Vec::new(),
            allow_plaintext: false,
            required: false,
            max_failures: 10,
        }
    }
}

/// What to do with a message whose line endings are not CRLF, or whose lines
/// are too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentPolicy {
    /// Reject the whole message after its end (nothing is delivered).
    #[default]
    Reject,
    /// Accept it as it is.
    Accept,
}

/// What to do about protocol hygiene violations (input before the greeting,
/// improper pipelining).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViolationPolicy {
    /// Report them as [`crate::server::Event::Violation`] and go on.
    #[default]
    Report,
    /// Report them, answer `554 5.5.0` and close the connection.
    Disconnect,
}

/// Size limits; every buffer the session keeps is bounded by these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: 512). MAIL
    /// and RCPT lines may be longer by what the advertised extensions'
    /// parameters add (RFC 1869 §4.1.2: SIZE, BODY, SMTPUTF8, DSN's RET,
    /// ENVID, NOTIFY and ORCPT, AUTH=, REQUIRETLS); AUTH response lines
    /// may be up to 12288 octets (RFC 4954 §4).
    pub max_command_line: usize,
    /// Longest text line in a message, CRLF included (RFC 5321 §4.5.3.1.6: 1000).
    pub max_text_line: usize,
    /// What to do with longer text lines.
    pub long_lines: ContentPolicy,
    /// What to do with a bare LF or bare CR in a message (SMTP smuggling).
    pub bare_line_endings: ContentPolicy,
    /// What to do with a NUL octet in a text message (`\r\n\0.\r\n` ends
    /// the message for a receiver that drops NULs: SMTP smuggling again).
    /// Refused with `550 5.6.0` by default; BINARYMIME bodies are exempt.
    pub nul_bytes: ContentPolicy,
    /// Largest message in octets; 0 means no limit (then SIZE is advertised without a figure).
    pub max_message_size: u64,
    /// Most accepted recipients per transaction (RFC 5321 §4.5.3.1.8: at least 100).
    pub max_recipients: usize,
    /// Errors after which every reply is delayed (the caller sleeps
    /// [`Limits::error_delay`]); Postfix's soft error limit.
    pub soft_error_limit: u32,
    /// Delay asked for per error once past the soft limit.
    pub error_delay: Duration,
    /// Errors after which the session answers `421 4.7.0` and closes.
    pub hard_error_limit: u32,
    /// NOOP, RSET, VRFY, EXPN and HELP commands (and RCPTs past the recipient
    /// limit) allowed before each further one counts as an error.
    pub junk_command_limit: u32,
    /// Size of the input buffer (bytes read but not yet processed).
    pub input_buffer: usize,
    /// Replies waiting to be written beyond which the session stops reading
    /// (a client that does not read replies is paused, not buffered forever).
    pub max_pending_output: usize,
    /// Messages per session; 0 means no limit. Past it, MAIL gets `421 4.7.0`.
    pub max_messages: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_command_line: 512,
            max_text_line: 1000,
            long_lines: ContentPolicy::Reject,
            bare_line_endings: ContentPolicy::Reject,
            nul_bytes: ContentPolicy::Reject,
            max_message_size: 35 * 1024 * 1024,
            max_recipients: 100,
            soft_error_limit: 10,
            error_delay: Duration::from_secs(1),
            hard_error_limit: 20,
            junk_command_limit: 100,
            input_buffer: 16 * 1024,
            max_pending_output: 64 * 1024,
            max_messages: 0,
        }
    }
}

/// Server timeouts (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Waiting for the next complete command (RFC: 5 minutes). A deadline:
    /// partial bytes do not move it.
    pub command: Duration,
    /// Waiting for the next complete line of a DATA body or the next BDAT
    /// octets (RFC: 3 minutes per data block).
    pub data: Duration,
    /// After this long without input, a session with no unread input and
    /// no unwritten output frees its buffers, once per silence (the next
    /// read takes a small input buffer again: a session that received a
    /// 16 KiB-buffered body goes back to 1 KiB).
    /// [`crate::server::Session::poll_timeout`] includes this soft
    /// deadline; reaching it never closes anything. `Duration::MAX` turns
    /// it off.
    pub release_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(300),
            data: Duration::from_secs(180),
            release_idle: Duration::from_secs(1),
        }
    }
}

/// Everything a session needs to know that does not change per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Our host name, in the greeting, the EHLO reply and the Received header.
    pub hostname: String,
    /// Text after the host name in the 220 greeting. In LMTP a leading
    /// `ESMTP` word is sent as `LMTP` (so the default greets as `LMTP ready`).
    pub greeting: String,
    /// LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient after the body.
    pub lmtp: bool,
    /// Advertised extensions.
    pub extensions: Extensions,
    /// AUTH policy.
    pub auth: AuthPolicy,
    /// XCLIENT and XFORWARD permission.
    pub forwarding: Forwarding,
    /// MAIL, RCPT, DATA, BDAT, AUTH, VRFY and EXPN are refused with
    /// `530 5.7.0` before TLS (RFC 3207 §4).
    pub require_tls: bool,
    /// Expect a HAProxy PROXY protocol (v1 or v2) header before anything else.
    pub proxy_protocol: bool,
    /// Accept common malformed addresses (`local.@domain`, missing brackets).
    pub lenient_addresses: bool,
    /// MAIL before HELO/EHLO is refused (`503 5.5.1`). On by default (RFC 5321 §4.1.4).
    pub require_helo: bool,
    /// What to do about hygiene violations.
    pub violations: ViolationPolicy,
    /// Limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".into(),
            greeting: "ESMTP ready".into(),
            lmtp: false,
            extensions: Extensions::default(),
            auth: AuthPolicy::default(),
            forwarding: Forwarding::default(),
            require_tls: false,
            proxy_protocol: false,
            lenient_addresses: false,
            require_helo: true,
            violations: ViolationPolicy::Report,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

impl Config {
    /// A default configuration with the given host name.
    pub fn new(hostname: impl Into<String>) -> Self {
        Config {
            hostname: hostname.into(),
            ..Config::default()
        }
    }
}
