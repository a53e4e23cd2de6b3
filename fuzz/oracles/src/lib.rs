//! The fuzz targets' oracles: entry points over `smtp-proto` that check its
//! invariants, outside the library (the library carries no fuzzing code).
//!
//! Every function here takes raw fuzzer bytes, derives whatever structured
//! input it needs from them (with a small byte reader, so no `arbitrary`
//! dependency is needed), runs one part of the core and panics
//! when an invariant breaks. The cargo-fuzz targets in `fuzz/` are
//! one-line wrappers, and `tests/fuzz_replay.rs` runs the same functions on
//! the committed seeds and on proptest inputs under plain `cargo test`.
//!
//! | function | what it checks |
//! |---|---|
//! | [`server_session`] | a whole session with arbitrary read splits, decisions (accept, refuse, defer), timeouts, TLS outcomes, shutdown and configuration |
//! | [`bdat`] | BDAT chunking through the session against a model of the expected body and replies |
//! | [`command_line`] | [`parse_command`] on raw lines, and structured commands serialized and parsed back |
//! | [`data_decoder`] | [`DataDecoder`] against a naive line-by-line reference, for arbitrary splits |
//! | [`proxy_header`] | [`parse_proxy_header`] on raw input, and built headers parsed back |
//! | [`sasl`] | [`SaslExchange`](smtp_proto::sasl::SaslExchange) of every mechanism fed arbitrary responses and answers, and encoded client messages parsed back |
//! | [`reply_parser`] | [`parse_reply`] on raw input, and [`Reply::write_to`] parsed back |
//! | [`address`] | [`parse_mailbox`] against the RCPT grammar, and xtext round trips |
//! | [`client_session`] | the client against arbitrary server bytes, splits, timeouts and TLS outcomes |
//!
//! ```
//! // What a fuzz target does with one input: no panic means every
//! // invariant held.
//! smtp_fuzz_oracles::command_line(b"\x00MAIL FROM:<a@example.org> SIZE=10\r\n");
//! smtp_fuzz_oracles::data_decoder(b"\x10\x01Subject: x\r\n\r\n..dot\r\n.\r\n");
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;

use smtp_proto::command::{
    BodyType, Command, ForwardPath, MailParams, Mailbox, Notify, ParseError, ParseOptions,
    RcptParams, Ret, ReversePath, encode_xtext,
};
use smtp_proto::config::{Config, ContentPolicy, ViolationPolicy};
use smtp_proto::data::{DataDecoder, DecodeStep, dot_stuff};
use smtp_proto::drive::{Instruction, Output};
use smtp_proto::parse::{decode_xtext, parse_command, parse_mailbox};
use smtp_proto::proxy::{
    MAX_HEADER_LEN, ProxyCommand, ProxyHeader, ProxyParse, Transport, parse_proxy_header,
};
use smtp_proto::reply::{EnhancedCode, Reply, parse_reply};
use smtp_proto::sasl::Mechanism;
use smtp_proto::server::{BodyKind, Decision, Event, PeerInfo, Session, Ticket, TlsInfo};

// ---------------------------------------------------------------------------
// A byte reader (what `arbitrary::Unstructured` does, in a few lines)
// ---------------------------------------------------------------------------

/// Reads structured values off the front of fuzzer bytes; past the end
/// every read returns zero, so any input means something.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for _ in 0..8 {
            v = (v << 8) | u64::from(self.byte());
        }
        v
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            usize::from(self.byte()) % n
        } else {
            usize::from(self.u16()) % n
        }
    }

    /// One element of a non-empty list.
    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[self.below(list.len())]
    }

    /// Up to `n` bytes.
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Control bytes read in a cycle (zero when there are none): the harness's
/// choices, separate from the client's byte stream so that mutations of
/// one do not shift the other.
struct Knobs<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Knobs<'_> {
    fn next(&mut self) -> u8 {
        if self.bytes.is_empty() {
            return 0;
        }
        let b = self.bytes[self.at % self.bytes.len()];
        self.at = self.at.wrapping_add(1);
        b
    }
}

// ---------------------------------------------------------------------------
// Shared reference checks
// ---------------------------------------------------------------------------

/// Line facts of a decoded body: (bare LF, bare CR, a line longer than
/// `max` octets counting its CR LF). A final unterminated line counts as
/// it is (BDAT); a DATA body always ends with CR LF. The reference for
/// `smtp_proto::data::LineChecker`.
pub fn line_facts(body: &[u8], max: usize) -> (bool, bool, bool) {
    let (mut bare_lf, mut bare_cr, mut long) = (false, false, false);
    let mut rest = body;
    loop {
        let (content, len, next) = match memmem::find(rest, b"\r\n") {
            Some(i) => (&rest[..i], i + 2, Some(&rest[i + 2..])),
            None => (rest, rest.len(), None),
        };
        bare_lf |= content.contains(&b'\n');
        bare_cr |= content.contains(&b'\r');
        long |= len > max;
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    (bare_lf, bare_cr, long)
}

/// The complete DATA bodies in a client stream, decoded by the reference
/// decoder: for every `DATA` line (any case, trailing blanks), the body
/// that starts after it, if its `.` CR LF is in the stream.
fn data_bodies(stream: &[u8]) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
    stream
        .windows(4)
        .enumerate()
        .filter(|&(i, w)| w.eq_ignore_ascii_case(b"DATA") && (i == 0 || stream[i - 1] == b'\n'))
        .filter_map(|(i, _)| {
            let mut p = i + 4;
            while matches!(stream.get(p), Some(b' ' | b'\t')) {
                p += 1;
            }
            stream.get(p..p + 2).filter(|&crlf| crlf == b"\r\n")?;
            let r = reference_decode(&stream[p + 2..], usize::MAX);
            r.end.map(|_| (p + 2, r.body))
        })
}

/// Whether `hay` contains `needle` ignoring ASCII case.
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Checks a reply transcript: whole, well-formed replies (three digits, a
/// space or hyphen, CRLF-terminated lines of at most 512 octets, the same
/// code on every line of a reply). Returns the replies.
fn parse_transcript(t: &[u8]) -> Vec<Reply> {
    for line in t.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "reply line without CRLF: {line:?}");
        assert!(line.len() <= 512, "reply line over 512 octets");
        let body = &line[..line.len() - 2];
        assert!(!body.contains(&b'\r'), "bare CR in a reply line");
        assert!(body.len() >= 4, "short reply line: {line:?}");
        assert!(
            body[..3].iter().all(u8::is_ascii_digit),
            "reply code: {line:?}"
        );
        assert!(matches!(body[3], b' ' | b'-'), "reply separator: {line:?}");
    }
    let mut replies = Vec::new();
    let mut pos = 0;
    while pos < t.len() {
        match parse_reply(&t[pos..], usize::MAX) {
            Ok(Some((r, n))) => {
                assert!(n > 0);
                pos += n;
                replies.push(r);
            }
            Ok(None) => panic!("incomplete reply at the end of the transcript"),
            Err(e) => panic!("malformed reply in the transcript: {e}"),
        }
    }
    replies
}

const TAG: &str = "fuzz-decision-";

/// The decision tag in a reply's first line, if any.
fn tag_of(r: &Reply) -> Option<u32> {
    let first = r.text().split('\n').next().unwrap_or("");
    first.strip_prefix(TAG)?.parse().ok()
}

// ---------------------------------------------------------------------------
// server_session
// ---------------------------------------------------------------------------

/// Output beyond `max_pending_output` that one step may add (the longest
/// burst: an EHLO reply, or one reply per LMTP recipient plus 421).
const OUTPUT_SLACK: usize = 4096;

/// Most recipients in the fuzzed configurations.
const FUZZ_MAX_RECIPIENTS: usize = 5;

/// Builds a configuration from 8 bytes; all zero is a permissive default
/// (STARTTLS, AUTH on plaintext, every extension, default limits).
fn session_config(c: [u8; 8]) -> Config {
    let mut config = Config::new("fuzz.example");
    config.lmtp = c[0] & 0x01 != 0;
    config.proxy_protocol = c[0] & 0x02 != 0;
    if config.proxy_protocol {
        // XCLIENT and XFORWARD from any PROXY source (without a header the
        // peer has no address, and both are refused: both paths fuzzed).
        let any: Vec<smtp_proto::config::Cidr> = ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        config.forwarding.xclient_from.clone_from(&any);
        config.forwarding.xforward_from = any;
    }
    config.auth.mechanisms = vec![Mechanism::Plain, Mechanism::Login];
    config.auth.allow_plaintext = c[0] & 0x04 == 0;
    config.require_tls = c[0] & 0x08 != 0;
    config.auth.required = c[0] & 0x10 != 0;
    config.lenient_addresses = c[0] & 0x20 != 0;
    config.violations = if c[0] & 0x40 != 0 {
        ViolationPolicy::Disconnect
    } else {
        ViolationPolicy::Report
    };
    config.require_helo = c[0] & 0x80 == 0;
    let e = &mut config.extensions;
    e.pipelining = c[1] & 0x01 == 0;
    e.chunking = c[1] & 0x02 == 0;
    e.binarymime = c[1] & 0x04 == 0;
    e.smtputf8 = c[1] & 0x08 == 0;
    e.dsn = c[1] & 0x10 == 0;
    e.enhanced_status_codes = c[1] & 0x20 == 0;
    e.starttls = c[1] & 0x40 == 0;
    e.size = c[1] & 0x80 == 0;
    e.requiretls = c[2] & 0x08 != 0;
    e.help = c[2] & 0x10 == 0;
    e.limits = c[2] & 0x20 == 0;
    let l = &mut config.limits;
    l.bare_line_endings = if c[2] & 0x01 != 0 {
        ContentPolicy::Accept
    } else {
        ContentPolicy::Reject
    };
    // Every knob bit is taken: NULs follow the bare line ending policy.
    l.nul_bytes = l.bare_line_endings;
    l.long_lines = if c[2] & 0x02 != 0 {
        ContentPolicy::Accept
    } else {
        ContentPolicy::Reject
    };
    l.max_messages = u32::from(c[2] >> 6);
    l.max_recipients = FUZZ_MAX_RECIPIENTS;
    l.max_command_line = if c[3] == 0 {
        512
    } else {
        16 + usize::from(c[3])
    };
    l.max_text_line = if c[4] == 0 { 1000 } else { usize::from(c[4]) };
    l.max_pending_output = if c[5] == 0 {
        64 * 1024
    } else {
        usize::from(c[5] - 1) * 8
    };
    l.max_message_size = match c[6] {
        0 => 1 << 16,
        255 => 0,
        n => u64::from(n) * 16,
    };
    l.input_buffer = if c[7] == 0 {
        16 * 1024
    } else {
        usize::from(c[7]) * 64
    };
    config
}

/// A decision the harness is sitting on (the application is "slow").
struct Held {
    ticket: Ticket,
    /// LMTP message end: the number of per-recipient answers it needs.
    recipients: Option<usize>,
    rounds: u8,
}

/// What the harness learnt from one event (so the session is free again).
enum Action {
    None,
    Decide {
        ticket: Ticket,
        recipients: Option<usize>,
        message_end: bool,
    },
}

/// Drives one session with the harness's choices and records what it saw.
struct Driver<'a> {
    s: Session,
    knobs: Knobs<'a>,
    stream: &'a [u8],
    pos: usize,
    now: Instant,
    max_out: usize,
    max_text_line: usize,
    bare_policy: ContentPolicy,
    nul_policy: ContentPolicy,
    long_policy: ContentPolicy,
    transcript: Vec<u8>,
    body: Vec<u8>,
    body_kind: Option<BodyKind>,
    delivered: usize,
    held: Option<Held>,
    tls_pending: bool,
    /// The session is under TLS (from the start, or after a handshake).
    tls: bool,
    /// The end of the throttle the session asked for, while the harness
    /// lets it wait.
    throttled: Option<Instant>,
    /// The last time passed to `handle_timeout`.
    last_timeout: Option<Instant>,
    tags: Vec<u32>,
    next_tag: u32,
    /// Never defer (the harness is unblocking the session).
    hurry: bool,
}

impl<'a> Driver<'a> {
    fn new(config: Config, peer: PeerInfo, knobs: &'a [u8], stream: &'a [u8]) -> Self {
        let now = Instant::now();
        let tls = peer.tls.is_some();
        Driver {
            max_out: config.limits.max_pending_output,
            max_text_line: config.limits.max_text_line,
            bare_policy: config.limits.bare_line_endings,
            nul_policy: config.limits.nul_bytes,
            long_policy: config.limits.long_lines,
            s: Session::new(Arc::new(config), peer, now),
            knobs: Knobs {
                bytes: knobs,
                at: 0,
            },
            stream,
            pos: 0,
            now,
            transcript: Vec::new(),
            body: Vec::new(),
            body_kind: None,
            delivered: 0,
            held: None,
            tls_pending: false,
            tls,
            throttled: None,
            last_timeout: None,
            tags: Vec::new(),
            next_tag: 0,
            hurry: false,
        }
    }

    /// Polls every event and acts on it.
    fn drain(&mut self) {
        loop {
            let waiting = self.s.is_waiting();
            let closed = self.s.is_closed();
            let knob = self.knobs.next();
            let ev = match self.s.poll() {
                Output::Event(ev) => ev,
                Output::Instruction(Instruction::StartTls) => {
                    if self.tls_pending {
                        // The handshake the harness already owes.
                        break;
                    }
                    assert!(!self.tls, "StartTls twice (or under TLS)");
                    self.flush();
                    self.tls_pending = true;
                    if self.hurry || knob & 0x30 != 0x30 {
                        self.finish_tls(knob);
                        continue;
                    }
                    break;
                }
                Output::Instruction(Instruction::Throttle(until)) => {
                    assert!(
                        self.last_timeout.is_none_or(|t| until > t),
                        "a throttle outlived a timer call at its end"
                    );
                    self.throttled = Some(until);
                    // While throttled nothing moves: the same instruction
                    // again, and no reply.
                    let out = self.s.transmit().len();
                    assert!(
                        matches!(self.s.poll(), Output::Instruction(Instruction::Throttle(u)) if u == until),
                        "a throttled session moved"
                    );
                    assert_eq!(self.s.transmit().len(), out, "a reply while throttled");
                    if self.hurry || knob & 0x0c != 0x0c {
                        self.end_throttle();
                        continue;
                    }
                    break;
                }
                Output::Instruction(Instruction::AwaitingDecision) => {
                    assert!(
                        self.held.is_some(),
                        "awaiting a decision the harness does not hold"
                    );
                    break;
                }
                Output::Instruction(Instruction::Closed) => {
                    assert!(self.s.is_closed(), "Closed from an open session");
                    break;
                }
                Output::Instruction(_) => {
                    assert!(!self.s.is_closed(), "a closed session not saying Closed");
                    break;
                }
            };
            let notice = matches!(
                ev,
                Event::BodyStart { .. }
                    | Event::MessageAborted(_)
                    | Event::Reset
                    | Event::Violation(_)
                    | Event::Closing(_)
            );
            assert!(
                notice || !waiting,
                "an event other than a notice while a decision is open: {ev:?}"
            );
            assert!(notice || !closed, "a non-notice event after close: {ev:?}");
            let action = match ev {
                Event::BodyStart { kind } => {
                    assert!(self.body_kind.is_none(), "a body started inside a body");
                    self.body_kind = Some(kind);
                    self.body.clear();
                    Action::None
                }
                Event::Body(chunk) => {
                    assert!(self.body_kind.is_some(), "body bytes outside a body");
                    assert!(!chunk.is_empty(), "an empty body chunk");
                    self.body.extend_from_slice(chunk);
                    Action::None
                }
                Event::MessageAborted(_) | Event::Reset => {
                    self.body_kind = None;
                    self.body.clear();
                    Action::None
                }
                Event::Closing(_) => {
                    assert!(self.s.is_closed(), "Closing from an open session");
                    Action::None
                }
                Event::MessageEnd {
                    ticket,
                    size,
                    recipients,
                } => {
                    let lmtp = self.s.config().lmtp;
                    assert!(recipients >= 1, "a message with no recipient");
                    assert_eq!(size, self.body.len() as u64, "MessageEnd size");
                    Action::Decide {
                        ticket,
                        recipients: lmtp.then_some(recipients),
                        message_end: true,
                    }
                }
                other => match other.into_ticket() {
                    Some(ticket) => Action::Decide {
                        ticket,
                        recipients: None,
                        message_end: false,
                    },
                    None => Action::None,
                },
            };
            match action {
                Action::None => {}
                Action::Decide {
                    ticket,
                    recipients,
                    message_end,
                } => {
                    if message_end {
                        self.check_delivery();
                    }
                    if !self.hurry && matches!(knob % 16, 13 | 14) {
                        self.held = Some(Held {
                            ticket,
                            recipients,
                            rounds: (knob >> 4) % 8,
                        });
                    } else {
                        self.answer(ticket, recipients, knob);
                    }
                }
            }
        }
    }

    /// Checks a message at its MessageEnd (the body is complete).
    fn check_delivery(&mut self) {
        let kind = self
            .body_kind
            .take()
            .unwrap_or_else(|| panic!("MessageEnd outside a body"));
        let body = std::mem::take(&mut self.body);
        let fed = &self.stream[..self.pos];
        let binary = self.s.body_type() == BodyType::BinaryMime;
        match kind {
            BodyKind::Data => {
                assert!(!binary, "a BINARYMIME body through DATA");
                assert!(
                    body.is_empty() || body.ends_with(b"\r\n"),
                    "a DATA body not ending with CRLF"
                );
                // Some DATA line in the input is followed by bytes that
                // decode (naively) to this body and end with CRLF.CRLF.
                assert!(
                    data_bodies(fed).any(|(_, decoded)| decoded == body),
                    "a DATA body delivered without its CRLF.CRLF in the input"
                );
            }
            BodyKind::Bdat => {
                assert!(
                    contains_ci(fed, b"LAST"),
                    "a BDAT body delivered without BDAT LAST"
                );
            }
        }
        if !binary {
            let (bare_lf, bare_cr, long) = line_facts(&body, self.max_text_line);
            if self.bare_policy == ContentPolicy::Reject {
                assert!(!bare_lf, "bare LF delivered");
                assert!(!bare_cr, "bare CR delivered");
            }
            if self.long_policy == ContentPolicy::Reject {
                assert!(!long, "over-long line delivered");
            }
            if self.nul_policy == ContentPolicy::Reject {
                assert!(!body.contains(&0), "NUL delivered");
            }
        }
        self.delivered += 1;
    }

    /// A decision from a knob: mostly accept, sometimes a tagged reply.
    fn decision(&mut self, knob: u8) -> Decision {
        let (code, e) = match knob % 16 {
            10 => (250, EnhancedCode::new(2, 0, 0)),
            11 => (550, EnhancedCode::new(5, 7, 1)),
            12 => (451, EnhancedCode::new(4, 3, 0)),
            15 if knob & 0x80 != 0 => (421, EnhancedCode::new(4, 3, 2)),
            _ => return Decision::Accept,
        };
        self.next_tag += 1;
        Decision::Reply(Reply::new(code, e, format!("{TAG}{}", self.next_tag)))
    }

    fn answer(&mut self, ticket: Ticket, recipients: Option<usize>, knob: u8) {
        let open = !self.s.is_closed();
        let result = match recipients {
            Some(n) if knob & 0x40 != 0 => {
                let ds: Vec<Decision> = (0..n)
                    .map(|i| self.decision(knob.wrapping_add(i as u8)))
                    .collect();
                if open {
                    self.tags.extend(ds.iter().filter_map(|d| match d {
                        Decision::Reply(r) => tag_of(r),
                        Decision::Accept => None,
                    }));
                }
                self.s.respond_each(ticket, ds, self.now)
            }
            _ => {
                let d = self.decision(knob);
                if let (true, Decision::Reply(r)) = (open, &d) {
                    let n = recipients.unwrap_or(1).max(1);
                    self.tags
                        .extend(std::iter::repeat_n(tag_of(r), n).flatten());
                }
                self.s.respond(ticket, d, self.now)
            }
        };
        if let Err(e) = result {
            panic!("the session refused its own ticket: {e}");
        }
    }

    fn answer_held(&mut self) {
        if let Some(h) = self.held.take() {
            let knob = self.knobs.next() & !0x0f;
            self.answer(h.ticket, h.recipients, knob);
        }
    }

    fn finish_tls(&mut self, knob: u8) {
        if !self.tls_pending {
            return;
        }
        self.tls_pending = false;
        self.flush();
        if knob & 0x0c == 0x0c {
            self.s.tls_failed(self.now);
            assert!(self.s.is_closed(), "still open after a failed handshake");
            return;
        }
        if let Err(e) = self.s.tls_established(TlsInfo::default(), self.now) {
            assert!(self.s.is_closed(), "handshake refused: {e}");
            return;
        }
        self.tls = true;
        // Plaintext pipelined before the handshake is never executed.
        let out = self.s.transmit().len();
        loop {
            match self.s.poll() {
                Output::Event(ev) => assert!(
                    matches!(ev, Event::Violation(_)),
                    "an event right after the handshake: {ev:?}"
                ),
                Output::Instruction(Instruction::Throttle(until)) => {
                    self.throttled = Some(until);
                    self.end_throttle();
                }
                Output::Instruction(_) => break,
            }
        }
        assert_eq!(
            self.s.transmit().len(),
            out,
            "a reply right after the handshake"
        );
    }

    /// The harness waited out the throttle: time reaches its end.
    fn end_throttle(&mut self) {
        if let Some(until) = self.throttled.take() {
            self.now = self.now.max(until);
            self.last_timeout = Some(self.now);
            self.s.handle_timeout(self.now);
        }
    }

    /// Writes `n` bytes (all when `None`) to the transcript.
    fn transmit(&mut self, n: Option<usize>) {
        let out = self.s.transmit();
        let n = n.unwrap_or(out.len()).min(out.len());
        self.transcript.extend_from_slice(&out[..n]);
        self.s.transmitted(n);
    }

    fn flush(&mut self) {
        self.transmit(None);
        assert!(!self.s.wants_write());
    }

    fn check_output_bound(&self) {
        let pending = self.s.transmit().len();
        assert!(
            pending <= self.max_out + OUTPUT_SLACK,
            "pending output {pending} over the bound {}",
            self.max_out
        );
        if pending > self.max_out {
            assert!(
                !self.s.wants_read(),
                "reading on with output over the bound"
            );
        }
    }

    /// Time passes; sometimes the timer fires, early or late.
    fn time(&mut self, knob: u8) {
        match knob {
            0 => {}
            1..=0xdf => self.now += Duration::from_millis(u64::from(knob)),
            0xe0..=0xec => {
                self.now += Duration::from_secs(u64::from(knob - 0xdf) * 30);
                self.timeout();
            }
            0xed => self.s.shutdown(),
            0xee if !self.tls_pending => {
                assert!(
                    self.s
                        .tls_established(TlsInfo::default(), self.now)
                        .is_err(),
                    "tls_established accepted without StartTls"
                );
            }
            _ => self.timeout(),
        }
    }

    fn timeout(&mut self) {
        let wake = self.s.poll_timeout();
        let deadline = self.s.client_deadline();
        if let Some(d) = deadline {
            assert!(
                wake.is_some_and(|w| w <= d),
                "poll_timeout after the deadline"
            );
        }
        let waiting = self.s.is_waiting();
        let was_closed = self.s.is_closed();
        let out = self.s.transmit().len();
        self.s.handle_timeout(self.now);
        self.last_timeout = Some(self.now);
        // The end of a throttle restarts the client's clock (it was waiting
        // for our replies): a deadline that passed meanwhile moves on.
        let released = self.throttled.is_some_and(|until| self.now >= until);
        if released {
            self.throttled = None;
        }
        match deadline {
            Some(_) if released => {
                assert!(
                    self.s.is_closed() || self.s.client_deadline().is_none_or(|d| d > self.now),
                    "a released throttle left an expired deadline"
                )
            }
            Some(d) if self.now >= d => {
                assert!(
                    self.s.is_closed(),
                    "an expired deadline left the session open"
                )
            }
            _ => {
                assert_eq!(self.s.is_closed(), was_closed, "an early timeout closed");
                assert_eq!(self.s.transmit().len(), out, "an early timeout replied");
            }
        }
        if waiting {
            assert!(wake.is_none(), "a deadline while a decision is open");
        }
    }

    /// Feeds the next client bytes; unblocks the session when it takes none.
    fn feed(&mut self, knob: u8) {
        let want = if knob == 0 { 4096 } else { usize::from(knob) };
        let end = (self.pos + want).min(self.stream.len());
        let mut took = self.s.receive(&self.stream[self.pos..end], self.now);
        let mut tries = 0;
        while took == 0 && !self.s.is_closed() && tries < 4 {
            // The harness holds the session up: let go of everything.
            tries += 1;
            self.hurry = true;
            self.flush();
            self.answer_held();
            self.finish_tls(0);
            self.end_throttle();
            self.drain();
            self.flush();
            self.hurry = false;
            took = self.s.receive(&self.stream[self.pos..end], self.now);
        }
        assert!(
            took > 0 || self.s.is_closed(),
            "the session takes no input and has nothing to do"
        );
        assert!(took <= end - self.pos);
        self.pos += took;
    }

    fn run(&mut self) {
        let rounds = self.stream.len() * 4 + 64;
        for _ in 0..rounds {
            self.drain();
            self.check_output_bound();
            let k = self.knobs.next();
            match k >> 6 {
                3 => {}
                2 => self.transmit(Some(usize::from(k & 0x3f))),
                _ => self.transmit(None),
            }
            if self.s.is_closed() {
                break;
            }
            if let Some(h) = &mut self.held {
                if h.rounds == 0 || self.pos >= self.stream.len() {
                    self.answer_held();
                } else {
                    h.rounds -= 1;
                }
            }
            if self.tls_pending && (self.pos >= self.stream.len() || self.knobs.next() & 1 == 0) {
                let k = self.knobs.next();
                self.finish_tls(k);
            }
            if self.throttled.is_some()
                && (self.pos >= self.stream.len() || self.knobs.next() & 1 == 0)
            {
                self.end_throttle();
            }
            let k = self.knobs.next();
            self.time(k);
            if self.s.is_closed() {
                continue;
            }
            if self.pos < self.stream.len() {
                let k = self.knobs.next();
                self.feed(k);
            } else if self.held.is_none() && !self.tls_pending && self.throttled.is_none() {
                self.drain();
                if self.s.is_waiting() || self.tls_pending || self.throttled.is_some() {
                    continue;
                }
                match self.knobs.next() % 4 {
                    1 => {
                        self.now =
                            self.s.poll_timeout().unwrap_or(self.now) + Duration::from_secs(1);
                        self.timeout();
                    }
                    2 => self.s.shutdown(),
                    _ => {}
                }
                self.s.receive_eof(self.now);
                assert!(self.s.is_closed(), "still open after EOF");
            }
        }
        // Wind down: let go of everything, then the client hangs up.
        self.hurry = true;
        self.answer_held();
        self.finish_tls(0);
        self.end_throttle();
        self.drain();
        self.s.receive_eof(self.now);
        self.drain();
        assert!(self.s.is_closed(), "still open after EOF");
        assert!(matches!(
            self.s.poll(),
            Output::Instruction(Instruction::Closed)
        ));
        self.flush();
    }

    /// The checks on the whole transcript.
    fn finish(&self) -> Vec<Reply> {
        let replies = parse_transcript(&self.transcript);
        let seen: Vec<u32> = replies.iter().filter_map(tag_of).collect();
        assert_eq!(seen, self.tags, "decision replies missing or out of order");
        replies
    }
}

/// Drives a whole session.
///
/// Layout: bytes 0..8 choose the configuration (see the seeds), bytes
/// 8..32 are control bytes read in a cycle (read sizes, decisions and
/// deferrals, partial writes, time steps and timer firings, TLS outcomes,
/// shutdown), the rest is the client's byte stream.
///
/// Invariants: no panic; every reply is well formed and whole; the
/// application's replies come out in the order it gave them; pending
/// output stays within `max_pending_output` plus one step's burst and
/// reading stops above it; no event but notices while a decision is open;
/// a DATA body is only delivered after the client sent it followed by
/// CRLF.CRLF, a BDAT body only after `LAST`; a delivered text body obeys
/// the bare-line-ending, NUL and line-length policies; an early timer call
/// changes nothing and an expired one closes; nothing sent before a TLS
/// handshake is executed after it; a throttled session replies to nothing
/// and no throttle outlives a timer call at its end; a decision is awaited
/// only while the harness holds its ticket; the session never starves with
/// input waiting; EOF always closes.
pub fn server_session(data: &[u8]) {
    let mut c = [0u8; 8];
    let head = data.get(..8).unwrap_or(data);
    c[..head.len()].copy_from_slice(head);
    let knobs = data.get(8..data.len().min(32)).unwrap_or(&[]);
    let stream = data.get(32..).unwrap_or(&[]);
    let peer = PeerInfo {
        tls: (c[2] & 0x04 != 0).then(TlsInfo::default),
        ..PeerInfo::default()
    };
    let mut d = Driver::new(session_config(c), peer, knobs, stream);
    d.run();
    d.finish();
}

// ---------------------------------------------------------------------------
// bdat
// ---------------------------------------------------------------------------

/// BDAT chunking through the session, against a model.
///
/// The input chooses a configuration (LMTP, BINARYMIME, small limits, bare
/// line ending and NUL policies), a list of chunks (payload bytes, LAST on the final
/// one, sometimes a NOOP between chunks), and read splits. The client
/// stream is `EHLO`, `MAIL`, `RCPT`, the chunks, `QUIT`; every decision
/// is accepted.
///
/// Invariants: the body delivered is exactly the concatenation of the
/// payloads, and is delivered only once the last octet of the LAST chunk
/// was fed; it is delivered iff the model says it passes the size and
/// content checks; each non-last chunk is acknowledged with the running
/// octet count; the final verdict has the right code.
pub fn bdat(data: &[u8]) {
    let mut u = Input::new(data);
    let flags = u.byte();
    let lmtp = flags & 1 != 0;
    let binary = flags & 2 != 0;
    let accept_bare = flags & 4 != 0;
    let noop_between = flags & 8 != 0;
    let accept_nul = flags & 64 != 0;
    let max_size = if flags & 16 != 0 {
        u64::from(u.u16() % 2048) + 1
    } else {
        1 << 20
    };
    let max_line = if flags & 32 != 0 {
        usize::from(u.byte()) + 3
    } else {
        1000
    };
    let mut config = Config::new("fuzz.example");
    config.lmtp = lmtp;
    config.limits.max_message_size = max_size;
    config.limits.max_text_line = max_line;
    config.limits.bare_line_endings = if accept_bare {
        ContentPolicy::Accept
    } else {
        ContentPolicy::Reject
    };
    config.limits.nul_bytes = if accept_nul {
        ContentPolicy::Accept
    } else {
        ContentPolicy::Reject
    };
    let hello = if lmtp { "LHLO" } else { "EHLO" };
    let mut stream = format!(
        "{hello} c.example\r\nMAIL FROM:<a@b.example>{}\r\nRCPT TO:<c@d.example>\r\n",
        if binary { " BODY=BINARYMIME" } else { "" }
    )
    .into_bytes();
    let mut body = Vec::new();
    let mut acks = Vec::new();
    let n_chunks = u.below(6) + 1;
    for i in 0..n_chunks {
        let len = u.below(300);
        let payload = u.bytes(len);
        let last = i + 1 == n_chunks;
        stream.extend_from_slice(
            format!(
                "BDAT {}{}\r\n",
                payload.len(),
                if last { " LAST" } else { "" }
            )
            .as_bytes(),
        );
        stream.extend_from_slice(payload);
        body.extend_from_slice(payload);
        if !last {
            acks.push(body.len());
            if noop_between {
                stream.extend_from_slice(b"NOOP\r\n");
            }
        }
    }
    let last_octet = stream.len();
    stream.extend_from_slice(b"QUIT\r\n");
    let splits = u.rest();
    let mut knobs = Knobs {
        bytes: splits,
        at: 0,
    };

    let too_big = body.len() as u64 > max_size;
    let (bare_lf, bare_cr, long) = line_facts(&body, max_line);
    let nul = body.contains(&0);
    let bad_text =
        !binary && ((!accept_bare && (bare_lf || bare_cr)) || (!accept_nul && nul) || long);
    let deliver = !too_big && !bad_text;

    let mut s = Session::new(Arc::new(config), PeerInfo::default(), Instant::now());
    let mut now = Instant::now();
    let mut pos = 0;
    let mut got = Vec::new();
    let mut in_body = false;
    let mut delivered = None;
    let mut transcript = Vec::new();
    loop {
        loop {
            let ev = match s.poll() {
                Output::Event(ev) => ev,
                Output::Instruction(Instruction::Throttle(until)) => {
                    // Wait out the soft error limit's delay.
                    now = now.max(until);
                    s.handle_timeout(now);
                    continue;
                }
                Output::Instruction(_) => break,
            };
            match ev {
                Event::BodyStart { kind } => {
                    assert_eq!(kind, BodyKind::Bdat);
                    assert!(!in_body);
                    in_body = true;
                }
                Event::Body(chunk) => {
                    assert!(in_body, "body bytes outside a body");
                    got.extend_from_slice(chunk);
                }
                Event::MessageEnd {
                    ticket,
                    size,
                    recipients,
                } => {
                    assert!(
                        pos >= last_octet,
                        "BDAT body delivered before its LAST octet"
                    );
                    assert_eq!(size, got.len() as u64);
                    assert_eq!(recipients, 1);
                    assert!(delivered.is_none(), "two messages");
                    delivered = Some(std::mem::take(&mut got));
                    in_body = false;
                    if s.respond(ticket, Decision::Accept, now).is_err() {
                        panic!("the session refused its own ticket");
                    }
                }
                Event::MessageAborted(_) => {
                    in_body = false;
                    got.clear();
                }
                other => {
                    if let Some(t) = other.into_ticket() {
                        if s.respond(t, Decision::Accept, now).is_err() {
                            panic!("the session refused its own ticket");
                        }
                    }
                }
            }
        }
        transcript.extend_from_slice(s.transmit());
        let n = s.transmit().len();
        s.transmitted(n);
        if s.is_closed() || pos >= stream.len() {
            break;
        }
        let k = knobs.next();
        let want = if k == 0 { 4096 } else { usize::from(k) };
        let end = (pos + want).min(stream.len());
        let took = s.receive(&stream[pos..end], now);
        assert!(took > 0, "the session takes no input");
        pos += took;
    }
    assert!(s.is_closed(), "QUIT did not close");
    let replies = parse_transcript(&transcript);
    match &delivered {
        Some(b) => {
            assert!(deliver, "delivered a body the model refuses");
            assert_eq!(b, &body, "BDAT body differs from the chunks");
        }
        None => assert!(!deliver, "the model's body was not delivered"),
    }
    // Greeting, EHLO, MAIL, RCPT, then the chunk acks (while not too big),
    // the NOOPs, the verdict, and 221.
    let codes: Vec<u16> = replies.iter().map(Reply::code).collect();
    assert_eq!(&codes[..4], &[220, 250, 250, 250], "{codes:?}");
    assert_eq!(codes.last(), Some(&221));
    let mut i = 4;
    for &ack in &acks {
        if ack as u64 > max_size {
            break;
        }
        assert_eq!(codes[i], 250);
        assert_eq!(replies[i].text(), format!("{ack} octets received"));
        i += 1;
        if noop_between {
            assert_eq!(codes[i], 250);
            i += 1;
        }
    }
    if !too_big {
        let verdict = codes[codes.len() - 2];
        // Refused content (bare line ending, NUL, long line) is 550.
        let expect = if deliver { 250 } else { 550 };
        assert_eq!(verdict, expect, "{codes:?}");
        assert_eq!(i, codes.len() - 2, "unexpected replies: {codes:?}");
    } else {
        assert!(codes.contains(&552), "too big but no 552: {codes:?}");
    }
}

// ---------------------------------------------------------------------------
// command_line
// ---------------------------------------------------------------------------

/// The command grammar.
///
/// The first byte chooses the [`ParseOptions`]; the rest is parsed as a
/// raw line: no panic; the same result twice; the same result with
/// trailing blanks and with the verb in another case; a stricter option
/// never accepts more (what parses strictly parses the same leniently and
/// with UTF-8 allowed); what parses serializes with [`Command::write_to`]
/// to one line without CR or LF that parses back to the same command.
///
/// Then the same bytes drive a structured command (every verb; paths with
/// dot-strings, quoted strings, UTF-8, address literals, lengths around
/// the RFC 5321 limits; every MAIL and RCPT parameter): serialized and
/// parsed, it must come back equal, or be refused as a bad path exactly
/// when it breaks a length limit.
pub fn command_line(data: &[u8]) {
    let Some((&flags, line)) = data.split_first() else {
        return;
    };
    let opts = ParseOptions {
        utf8_addresses: flags & 1 != 0,
        lenient: flags & 2 != 0,
    };
    check_raw_command(line, opts);
    check_structured_command(&mut Input::new(data));
}

fn check_raw_command(line: &[u8], opts: ParseOptions) {
    let r = parse_command(line, opts);
    assert_eq!(parse_command(line, opts), r, "not deterministic");
    let mut padded = line.to_vec();
    padded.extend_from_slice(b" \t ");
    assert_eq!(parse_command(&padded, opts), r, "trailing blanks matter");
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let mut flipped = line.to_vec();
    for b in &mut flipped[..verb_end] {
        if b.is_ascii_alphabetic() {
            *b ^= 0x20;
        }
    }
    assert_eq!(parse_command(&flipped, opts), r, "verb case matters");
    let Ok(cmd) = r else {
        return;
    };
    for wider in [
        ParseOptions {
            lenient: true,
            ..opts
        },
        ParseOptions {
            utf8_addresses: true,
            ..opts
        },
    ] {
        assert_eq!(
            parse_command(line, wider).as_ref(),
            Ok(&cmd),
            "a wider option changed the result"
        );
    }
    let bytes = cmd.to_bytes();
    let body = bytes
        .strip_suffix(b"\r\n")
        .unwrap_or_else(|| panic!("serialized without CRLF"));
    assert!(
        !body.contains(&b'\r') && !body.contains(&b'\n'),
        "serialized line holds CR or LF"
    );
    assert_eq!(
        parse_command(body, opts).as_ref(),
        Ok(&cmd),
        "serialized command parses differently: {:?}",
        String::from_utf8_lossy(body)
    );
}

const ATEXT: &[u8] = b"abcxyzABCXYZ0189!#$%&'*+-/=?^_`{|}~";
const QTEXT: &[u8] = b" !#$%&()*,.:;<>@[]^_`{|}~azAZ09";
const LDH: &[u8] = b"abcmnxyzAMZ0189";
const UNICODE: &[&str] = &["é", "ü", "ß", "日本", "я", "🙂", "\u{a0}"];

/// A string of `n` characters: ASCII from `ascii`, or (when `utf8`)
/// sometimes a non-ASCII character.
fn gen_chars(u: &mut Input, n: usize, ascii: &[u8], utf8: bool) -> String {
    let mut s = String::new();
    for _ in 0..n {
        let b = u.byte();
        if utf8 && b >= 0xe0 {
            s.push_str(UNICODE[usize::from(b) % UNICODE.len()]);
        } else {
            s.push(char::from(ascii[usize::from(b) % ascii.len()]));
        }
    }
    s
}

/// A string of 1 to `max` characters (see [`gen_chars`]).
fn gen_str(u: &mut Input, max: usize, ascii: &[u8], utf8: bool) -> String {
    let n = u.below(max) + 1;
    gen_chars(u, n, ascii, utf8)
}

/// A string of 0 to `max - 1` characters (see [`gen_chars`]).
fn gen_str0(u: &mut Input, max: usize, ascii: &[u8], utf8: bool) -> String {
    let n = u.below(max);
    gen_chars(u, n, ascii, utf8)
}

/// A length: mostly short, sometimes near a limit.
fn gen_len(u: &mut Input, short: usize, limit: usize) -> usize {
    match u.byte() % 8 {
        0 => limit,
        1 => limit + 1,
        2 => limit.saturating_sub(1).max(1),
        _ => 1 + u.below(short),
    }
}

/// A local part and whether it is within the length limit.
fn gen_local(u: &mut Input, utf8: bool, lenient: bool) -> String {
    match u.byte() % 4 {
        0 => {
            // Quoted string with qtext and quoted pairs.
            let mut s = String::from("\"");
            let n = gen_len(u, 12, 62);
            for _ in 0..n {
                if u.byte() % 6 == 0 {
                    s.push('\\');
                    s.push(char::from(u.pick(b" \"\\azAZ09~")));
                } else {
                    s.push_str(&gen_chars(u, 1, QTEXT, utf8));
                }
            }
            s.push('"');
            s
        }
        1 if lenient => {
            // Dots anywhere, at least one atext.
            let n = u.below(10) + 1;
            let mut s = gen_chars(u, 1, ATEXT, utf8);
            for _ in 0..n {
                if u.bool() {
                    s.insert(0, '.');
                } else {
                    s.push('.');
                }
            }
            s
        }
        _ => {
            let atoms = u.below(4) + 1;
            let total = gen_len(u, 20, 64);
            let each = (total / atoms).max(1);
            let parts: Vec<String> = (0..atoms)
                .map(|_| gen_chars(u, each, ATEXT, utf8))
                .collect();
            parts.join(".")
        }
    }
}

/// A domain: a name or an address literal.
fn gen_domain(u: &mut Input, utf8: bool) -> String {
    match u.byte() % 8 {
        0 => {
            let ip = Ipv4Addr::from(u.u64() as u32);
            format!("[{ip}]")
        }
        1 => {
            let mut o = [0u8; 16];
            for b in &mut o {
                *b = u.byte();
            }
            let tag = if u.bool() { "IPv6" } else { "ipv6" };
            format!("[{tag}:{}]", Ipv6Addr::from(o))
        }
        2 => {
            let tag = gen_str(u, 5, LDH, false);
            let content = gen_str(u, 10, b"!#azAZ09^~:.", false);
            format!("[x{tag}:{content}]")
        }
        _ => {
            let labels = u.below(4) + 1;
            let mut out = Vec::new();
            for _ in 0..labels {
                let n = gen_len(u, 12, 63);
                let mut l = gen_chars(u, n, LDH, utf8);
                if n > 2 && u.byte() % 4 == 0 {
                    // An inner hyphen.
                    let mid = l.char_indices().nth(1).map_or(1, |(i, _)| i);
                    l.insert(mid, '-');
                }
                out.push(l);
            }
            if u.byte() % 8 == 0 {
                // A domain near the 255-octet limit.
                while out.iter().map(|l| l.len() + 1).sum::<usize>() < 250 {
                    out.push("x".repeat(50));
                }
            }
            out.join(".")
        }
    }
}

/// Whether a mailbox is within the RFC 5321 length limits as the parser
/// counts them (octets; the path counts its two brackets).
fn mailbox_fits(local: &str, domain: &str) -> bool {
    let labels_ok = domain.starts_with('[') || domain.split('.').all(|l| l.len() <= 63);
    local.len() <= 64
        && domain.len() <= 255
        && labels_ok
        && local.len() + 1 + domain.len() + 2 <= 256
}

/// Text for VRFY, EXPN and HELP: no control characters, no blank at
/// either end.
fn gen_text(u: &mut Input) -> String {
    let n = u.below(20) + 1;
    let s = gen_chars(u, n, b"abc XYZ 019@.<>:\"!~", true);
    let t = s.trim_matches(' ').to_owned();
    if t.is_empty() { "x".to_owned() } else { t }
}

/// A non-empty xtext value built from arbitrary text.
fn gen_xtext(u: &mut Input, max_plain: usize) -> String {
    let n = u.below(max_plain) + 1;
    let raw: Vec<u8> = (0..n).map(|_| u.byte() % 128).collect();
    encode_xtext(&String::from_utf8_lossy(&raw))
}

/// Owned pieces of a command, which then borrows from them.
struct Owned {
    verb: u8,
    text: String,
    local: String,
    domain: String,
    raw: String,
    envid: String,
    auth: String,
    orcpt: String,
}

fn check_structured_command(u: &mut Input) {
    let opts = ParseOptions {
        utf8_addresses: u.bool(),
        lenient: u.bool(),
    };
    let verb = u.byte() % 16;
    let smtputf8 = u.bool();
    // Non-ASCII paths only where the grammar allows them.
    let utf8_path = match verb {
        3 => smtputf8,
        4 => opts.utf8_addresses,
        _ => false,
    };
    let local = gen_local(u, utf8_path, opts.lenient);
    let domain = gen_domain(u, utf8_path);
    let mut o = Owned {
        verb,
        text: String::new(),
        raw: format!("{local}@{domain}"),
        local,
        domain,
        envid: gen_xtext(u, 33),
        auth: if u.bool() {
            "<>".to_owned()
        } else {
            gen_xtext(u, 40)
        },
        orcpt: String::new(),
    };
    o.orcpt = if opts.utf8_addresses && u.bool() {
        format!("utf-8;{}", gen_str(u, 10, b"azAZ09@.", true))
    } else {
        format!("rfc822;{}", gen_xtext(u, 40))
    };
    o.text = match verb {
        0..=2 => gen_str(u, 30, b"abc.XYZ-019[]:!~\"<>", false),
        10 => gen_str(u, 20, b"ABCXYZ019-_", false),
        _ => gen_text(u),
    };
    let fits = mailbox_fits(&o.local, &o.domain);
    let mailbox = Mailbox {
        raw: &o.raw,
        local_part: &o.local,
        domain: &o.domain,
    };
    let initial: String = gen_str(u, 30, b"azAZ09+/=", false);
    let cmd = match o.verb {
        0 => Command::Helo { domain: &o.text },
        1 => Command::Ehlo { domain: &o.text },
        2 => Command::Lhlo { domain: &o.text },
        3 => {
            let null = u.byte() % 8 == 0;
            Command::Mail {
                from: if null {
                    ReversePath::Null
                } else {
                    ReversePath::Mailbox(mailbox)
                },
                params: MailParams {
                    size: u.bool().then(|| u.u64()),
                    body: match u.byte() % 4 {
                        0 => Some(BodyType::SevenBit),
                        1 => Some(BodyType::EightBitMime),
                        2 => Some(BodyType::BinaryMime),
                        _ => None,
                    },
                    smtputf8,
                    ret: match u.byte() % 3 {
                        0 => Some(Ret::Full),
                        1 => Some(Ret::Hdrs),
                        _ => None,
                    },
                    envid: u.bool().then_some(o.envid.as_str()),
                    auth: u.bool().then_some(o.auth.as_str()),
                    requiretls: u.bool(),
                },
            }
        }
        4 => {
            let postmaster = u.byte() % 8 == 0;
            let flags = u.byte();
            let notify = match flags % 4 {
                0 => None,
                1 => Some(Notify {
                    never: true,
                    ..Notify::default()
                }),
                _ => {
                    let n = Notify {
                        never: false,
                        success: flags & 0x10 != 0,
                        failure: flags & 0x20 != 0,
                        delay: flags & 0x40 != 0,
                    };
                    Some(Notify {
                        success: n.success || !(n.failure || n.delay),
                        ..n
                    })
                }
            };
            Command::Rcpt {
                to: if postmaster {
                    ForwardPath::Postmaster
                } else {
                    ForwardPath::Mailbox(mailbox)
                },
                params: RcptParams {
                    notify,
                    orcpt: u.bool().then_some(o.orcpt.as_str()),
                },
            }
        }
        5 => Command::Data,
        6 => Command::Bdat {
            size: u.u64(),
            last: u.bool(),
        },
        7 => Command::Rset,
        8 => Command::Noop,
        9 => Command::Quit,
        10 => Command::Auth {
            mechanism: &o.text,
            initial: u.bool().then_some(initial.as_str()),
        },
        11 => Command::Vrfy { arg: &o.text },
        12 => Command::Expn { arg: &o.text },
        13 => Command::Help {
            topic: u.bool().then_some(o.text.as_str()),
        },
        14 => Command::Help { topic: None },
        _ => Command::StartTls,
    };
    let has_mailbox = matches!(
        cmd,
        Command::Mail {
            from: ReversePath::Mailbox(_),
            ..
        } | Command::Rcpt {
            to: ForwardPath::Mailbox(_),
            ..
        }
    );
    let bytes = cmd.to_bytes();
    let line = &bytes[..bytes.len() - 2];
    let parsed = parse_command(line, opts);
    if has_mailbox && !fits {
        let bad = if o.verb == 3 {
            ParseError::BadSender
        } else {
            ParseError::BadRecipient
        };
        assert_eq!(
            parsed,
            Err(bad),
            "an over-long path was not refused: {:?}",
            String::from_utf8_lossy(line)
        );
    } else {
        assert_eq!(
            parsed.as_ref(),
            Ok(&cmd),
            "round trip failed for {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

// ---------------------------------------------------------------------------
// data_decoder
// ---------------------------------------------------------------------------

/// What the naive reference makes of a DATA body stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Reference {
    /// The decoded body (dot-unstuffed, CR LF line ends kept).
    pub body: Vec<u8>,
    /// Input offset just past `.` CR LF, if the body ended.
    pub end: Option<usize>,
    /// A line held a bare LF.
    pub bare_lf: bool,
    /// A line held a bare CR.
    pub bare_cr: bool,
    /// A line (CR LF included) was longer than the limit.
    pub long: bool,
}

/// The obviously correct decoder: split the input at CR LF; a line that is
/// exactly `.` ends the body; a line starting with `.` loses that dot;
/// every other line is body plus its CR LF. A final line without CR LF
/// gives what can already be decided: nothing if it is `.` or `.` CR at a
/// line start, otherwise its bytes unstuffed, except a trailing CR.
pub fn reference_decode(input: &[u8], max: usize) -> Reference {
    let mut r = Reference {
        body: Vec::new(),
        end: None,
        bare_lf: false,
        bare_cr: false,
        long: false,
    };
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        match memmem::find(rest, b"\r\n") {
            Some(i) => {
                let line = &rest[..i];
                if line == b"." {
                    r.end = Some(pos + 3);
                    return r;
                }
                let line = line.strip_prefix(b".").unwrap_or(line);
                r.bare_lf |= line.contains(&b'\n');
                r.bare_cr |= line.contains(&b'\r');
                r.long |= line.len() + 2 > max;
                r.body.extend_from_slice(line);
                r.body.extend_from_slice(b"\r\n");
                pos += i + 2;
            }
            None => {
                if rest == b"." || rest == b".\r" {
                    return r;
                }
                let line = rest.strip_prefix(b".").unwrap_or(rest);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if !line.is_empty() {
                    r.bare_lf |= line.contains(&b'\n');
                    r.bare_cr |= line.contains(&b'\r');
                    r.long |= line.len() + 2 > max;
                    r.body.extend_from_slice(line);
                }
                return r;
            }
        }
    }
}

/// Runs the real decoder over `input` cut at `cuts` (chunk lengths, used
/// in a cycle), with a caller buffer as the session keeps one.
fn run_decoder(input: &[u8], max: usize, cuts: &[u8]) -> Reference {
    let mut d = DataDecoder::new(max);
    let mut buf: Vec<u8> = Vec::new();
    let mut body = Vec::new();
    let mut fed = 0;
    let mut consumed_total = 0;
    let mut end = None;
    let mut knobs = Knobs { bytes: cuts, at: 0 };
    'feed: loop {
        loop {
            let before = buf.len();
            match d.decode(&buf) {
                DecodeStep::Chunk {
                    start,
                    end: e,
                    consumed,
                } => {
                    assert!(start < e && e <= consumed && consumed <= buf.len());
                    assert!(start <= 1, "a chunk starts past a stuffed dot");
                    body.extend_from_slice(&buf[start..e]);
                    buf.drain(..consumed);
                    consumed_total += consumed;
                }
                DecodeStep::NeedMore { consumed } => {
                    assert!(consumed <= buf.len());
                    assert!(
                        before < 3 || consumed > 0,
                        "no progress with {before} bytes"
                    );
                    buf.drain(..consumed);
                    consumed_total += consumed;
                    if consumed == 0 {
                        break;
                    }
                }
                DecodeStep::End { consumed } => {
                    assert!(consumed <= buf.len());
                    consumed_total += consumed;
                    end = Some(consumed_total);
                    assert_eq!(d.decode(&buf[consumed..]), DecodeStep::End { consumed: 0 });
                    assert!(d.is_done());
                    break 'feed;
                }
            }
        }
        if fed >= input.len() {
            break;
        }
        let k = knobs.next();
        let n = if k == 0 { input.len() } else { usize::from(k) };
        let to = (fed + n).min(input.len());
        buf.extend_from_slice(&input[fed..to]);
        fed = to;
    }
    assert_eq!(d.body_len(), body.len() as u64, "body_len");
    Reference {
        body,
        end,
        bare_lf: d.saw_bare_lf(),
        bare_cr: d.saw_bare_cr(),
        long: d.saw_long_line(),
    }
}

/// The DATA decoder against a naive reference.
///
/// Byte 0 chooses the maximum line length, byte 1 how many split bytes
/// follow (then those bytes, chunk lengths used in a cycle); the rest is the
/// body stream. For that split and for the whole input at once: the same
/// body, the same end position, the same bare LF / bare CR / long-line
/// verdict as the reference. The decoder also always makes progress on 3
/// bytes, and decodes [`dot_stuff`] of any body back to that body.
pub fn data_decoder(data: &[u8]) {
    let mut u = Input::new(data);
    let max = match u.byte() {
        0 => 1000,
        b => usize::from(b),
    };
    let n_cuts = usize::from(u.byte() % 16);
    let cuts = u.bytes(n_cuts);
    let input = u.rest();
    let expected = reference_decode(input, max);
    for cuts in [cuts, &[][..], &[1][..]] {
        let got = run_decoder(input, max, cuts);
        assert_eq!(
            got, expected,
            "decoder and reference differ (cuts {cuts:?})"
        );
    }
    // dot_stuff is the inverse: any body (completed with CR LF) comes back.
    let mut stuffed = Vec::new();
    dot_stuff(input, &mut stuffed);
    let got = run_decoder(&stuffed, max, &[]);
    let mut want = input.to_vec();
    if !want.is_empty() && !want.ends_with(b"\r\n") {
        want.extend_from_slice(b"\r\n");
    }
    assert_eq!(got.body, want, "dot_stuff does not invert");
    assert_eq!(got.end, Some(stuffed.len()));
}

// ---------------------------------------------------------------------------
// proxy_header
// ---------------------------------------------------------------------------

/// Checks one parse result against the input it came from.
fn check_proxy_parse(input: &[u8]) -> ProxyParse {
    let r = parse_proxy_header(input);
    match &r {
        ProxyParse::Done { header, consumed } => {
            let n = *consumed;
            assert!(n > 0 && n <= input.len(), "consumed {n} of {}", input.len());
            match header.version {
                1 => {
                    assert!(input.starts_with(b"PROXY "));
                    assert!(n <= 107, "v1 header of {n} bytes");
                    assert!(input[..n].ends_with(b"\r\n"));
                    assert_eq!(header.command, ProxyCommand::Proxy);
                }
                2 => {
                    assert!(input.starts_with(b"\r\n\r\n\0\r\nQUIT\n"));
                    assert!((16..=MAX_HEADER_LEN).contains(&n), "v2 header of {n} bytes");
                    let len = usize::from(u16::from_be_bytes([input[14], input[15]]));
                    assert_eq!(n, 16 + len);
                }
                v => panic!("version {v}"),
            }
            let want_v4 = matches!(header.transport, Transport::Tcp4 | Transport::Udp4);
            let want_v6 = matches!(header.transport, Transport::Tcp6 | Transport::Udp6);
            for a in [header.source, header.destination] {
                match a {
                    Some(SocketAddr::V4(_)) => assert!(want_v4),
                    Some(SocketAddr::V6(_)) => assert!(want_v6),
                    None => assert!(!want_v4 && !want_v6 || header.command == ProxyCommand::Local),
                }
            }
            // The header alone parses the same; what follows it is not read.
            assert_eq!(parse_proxy_header(&input[..n]), r);
            let mut longer = input[..n].to_vec();
            longer.extend_from_slice(b"EHLO x\r\n");
            assert_eq!(parse_proxy_header(&longer), r);
        }
        ProxyParse::Incomplete => {
            assert!(
                input.len() < MAX_HEADER_LEN,
                "incomplete at {} bytes",
                input.len()
            );
        }
        ProxyParse::Invalid(_) => {}
    }
    r
}

/// A header built from fields, and its wire form.
fn gen_proxy(u: &mut Input) -> (ProxyHeader, Vec<u8>) {
    let v4 = |u: &mut Input| IpAddr::V4(Ipv4Addr::from(u.u64() as u32));
    let v6 = |u: &mut Input| {
        let mut o = [0u8; 16];
        for b in &mut o {
            *b = u.byte();
        }
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let kind = u.byte() % 8;
    if kind < 3 {
        // Version 1.
        let (transport, src, dst) = match kind {
            0 => (Transport::Tcp4, v4(u), v4(u)),
            1 => (Transport::Tcp6, v6(u), v6(u)),
            _ => {
                let tail = gen_str0(u, 20, b" azAZ09.:", false);
                let tail = if tail.is_empty() || tail.starts_with(' ') {
                    tail
                } else {
                    format!(" {tail}")
                };
                let wire = format!("PROXY UNKNOWN{tail}\r\n");
                let h = ProxyHeader {
                    version: 1,
                    command: ProxyCommand::Proxy,
                    transport: Transport::Unknown,
                    source: None,
                    destination: None,
                };
                return (h, wire.into_bytes());
            }
        };
        let (sp, dp) = (u.u16(), u.u16());
        let proto = if transport == Transport::Tcp4 {
            "TCP4"
        } else {
            "TCP6"
        };
        let wire = format!("PROXY {proto} {src} {dst} {sp} {dp}\r\n");
        let h = ProxyHeader {
            version: 1,
            command: ProxyCommand::Proxy,
            transport,
            source: Some(SocketAddr::new(src, sp)),
            destination: Some(SocketAddr::new(dst, dp)),
        };
        return (h, wire.into_bytes());
    }
    // Version 2.
    let local = u.byte() % 4 == 0;
    let (fam, transport) = u.pick(&[
        (0x00, Transport::Unknown),
        (0x11, Transport::Tcp4),
        (0x12, Transport::Udp4),
        (0x21, Transport::Tcp6),
        (0x22, Transport::Udp6),
        (0x31, Transport::Unix),
        (0x32, Transport::Unix),
    ]);
    let mut payload = Vec::new();
    let (mut source, mut destination) = (None, None);
    match transport {
        Transport::Tcp4 | Transport::Udp4 | Transport::Tcp6 | Transport::Udp6 => {
            let six = matches!(transport, Transport::Tcp6 | Transport::Udp6);
            let (src, dst) = if six { (v6(u), v6(u)) } else { (v4(u), v4(u)) };
            let (sp, dp) = (u.u16(), u.u16());
            for ip in [src, dst] {
                match ip {
                    IpAddr::V4(a) => payload.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => payload.extend_from_slice(&a.octets()),
                }
            }
            payload.extend_from_slice(&sp.to_be_bytes());
            payload.extend_from_slice(&dp.to_be_bytes());
            source = Some(SocketAddr::new(src, sp));
            destination = Some(SocketAddr::new(dst, dp));
        }
        Transport::Unix => payload.extend(u.bytes(216).iter().copied().chain([0; 216]).take(216)),
        Transport::Unknown => {}
    }
    // TLVs.
    for _ in 0..u.below(4) {
        let len = u.below(40);
        payload.push(u.byte());
        payload.extend_from_slice(&(len as u16).to_be_bytes());
        payload.extend(u.bytes(len).iter().copied().chain([0; 40]).take(len));
    }
    let mut wire = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    wire.push(if local { 0x20 } else { 0x21 });
    wire.push(fam);
    wire.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    wire.extend_from_slice(&payload);
    let h = if local {
        ProxyHeader {
            version: 2,
            command: ProxyCommand::Local,
            transport,
            source: None,
            destination: None,
        }
    } else {
        ProxyHeader {
            version: 2,
            command: ProxyCommand::Proxy,
            transport,
            source,
            destination,
        }
    };
    (h, wire)
}

/// PROXY protocol headers, v1 and v2.
///
/// Raw input: no panic; a parsed header has a length no larger than the
/// input and the version's bound, ends where its own framing says, parses
/// the same alone and with bytes after it; its addresses match its
/// transport; a prefix of a complete header is `Incomplete`; once
/// `Invalid`, longer input stays invalid.
///
/// Structured: a header built from arbitrary addresses, ports, families,
/// commands and TLVs, in either version, parses back to the same header,
/// consuming exactly its bytes, and every strict prefix is incomplete.
pub fn proxy_header(data: &[u8]) {
    let r = check_proxy_parse(data);
    if let ProxyParse::Done { consumed, .. } = r {
        let k = data.first().map_or(0, |&b| usize::from(b)) % consumed;
        assert_eq!(parse_proxy_header(&data[..k]), ProxyParse::Incomplete);
    }
    if let ProxyParse::Invalid(e) = r {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\r\n");
        assert!(
            matches!(parse_proxy_header(&longer), ProxyParse::Invalid(_)),
            "{e:?} became valid with more input"
        );
    }
    let mut u = Input::new(data);
    let (header, wire) = gen_proxy(&mut u);
    assert_eq!(
        parse_proxy_header(&wire),
        ProxyParse::Done {
            header,
            consumed: wire.len()
        },
        "built header: {wire:?}"
    );
    for k in 0..wire.len() {
        assert_eq!(
            parse_proxy_header(&wire[..k]),
            ProxyParse::Incomplete,
            "prefix of {k} bytes"
        );
    }
}

// ---------------------------------------------------------------------------
// sasl
// ---------------------------------------------------------------------------

mod sasl_exchange;
pub use sasl_exchange::sasl;

// ---------------------------------------------------------------------------
// reply_parser
// ---------------------------------------------------------------------------

/// `parse_reply`, the client side.
///
/// Raw: byte 0 chooses `max_len`; on the rest no panic; a parsed reply
/// used at most the input and `max_len`, ends at a line end, parses the
/// same from its own bytes and with more input after it, and every strict
/// prefix of it is incomplete; the parsed reply serializes (with enhanced
/// codes) to bytes that parse back to the same reply.
///
/// Structured: a reply with an arbitrary code, enhanced code and
/// multi-line text, written with or without enhanced codes, parses back
/// whole; the wire form is stable (parse then write gives the same bytes);
/// and for replies in the canonical range (code 200-599, enhanced
/// subject and detail ≤ 999, no control characters, and when written
/// without enhanced codes, no text that looks like one) the code, the
/// enhanced code and the text come back equal.
pub fn reply_parser(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let max_len = if m == 0 { 4096 } else { usize::from(m) * 4 };
    if let Ok(Some((r, n))) = parse_reply(rest, max_len) {
        assert!(n > 0 && n <= rest.len() && n <= max_len);
        assert_eq!(rest[n - 1], b'\n');
        assert_eq!(parse_reply(&rest[..n], max_len), Ok(Some((r.clone(), n))));
        let mut longer = rest[..n].to_vec();
        longer.extend_from_slice(b"250 more\r\n");
        assert_eq!(parse_reply(&longer, max_len), Ok(Some((r.clone(), n))));
        let k = usize::from(m) % n;
        assert_eq!(parse_reply(&rest[..k], max_len), Ok(None), "prefix of {k}");
        // Writing then parsing normalizes (a text whose trailing CR hid an
        // enhanced code gives that code up, say); once normalized, stable.
        let reparse = |r: &Reply| {
            let wire = r.to_bytes();
            let (again, used) = parse_reply(&wire, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("a written reply does not parse: {wire:?}"));
            assert_eq!(used, wire.len());
            again
        };
        let normal = reparse(&r);
        assert_eq!(reparse(&normal), normal, "parse after write is not stable");
    }

    // Structured.
    let mut u = Input::new(data);
    let code = match u.byte() % 8 {
        0 => u.u16() % 1000,
        _ => 200 + u.u16() % 400,
    };
    let ecode = match u.byte() % 4 {
        0 => None,
        1 => Some(EnhancedCode::new(u.byte() % 8, u.u16(), u.u16())),
        _ => Some(EnhancedCode::new(
            [2, 4, 5][u.below(3)],
            u.u16() % 1000,
            u.u16() % 1000,
        )),
    };
    let write_enhanced = u.bool();
    let n = u.below(60);
    let text = gen_chars(&mut u, n, b"ab Z0.5\n\n-\r\t\x7f2.0.0 ", true);
    let reply = match ecode {
        Some(e) => Reply::new(code, e, text.clone()),
        None => Reply::plain(code, text.clone()),
    };
    let mut wire = Vec::new();
    reply.write_to(&mut wire, write_enhanced);
    let (parsed, used) = match parse_reply(&wire, wire.len()) {
        Ok(Some(x)) => x,
        other => panic!("written reply does not parse: {other:?} from {wire:?}"),
    };
    assert_eq!(used, wire.len(), "written reply not used whole");
    if wire.len() > 1 {
        assert_eq!(
            parse_reply(&wire, wire.len() - 1),
            Err(smtp_proto::reply::ReplyError::TooLong)
        );
    }
    // Parsing normalizes (an enhanced-looking text becomes the enhanced
    // code, a trailing blank after it goes): from then on the form is stable.
    let mut again = Vec::new();
    parsed.write_to(&mut again, true);
    let (reparsed, _) = parse_reply(&again, again.len())
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("a parsed reply does not re-parse: {again:?}"));
    assert_eq!(reparsed, parsed, "parse after write is not stable");
    assert_eq!(parsed.code(), reply.code());
    let canonical_code = (200..=599).contains(&code);
    let canonical_ecode = ecode.is_none_or(|e| e.subject <= 999 && e.detail <= 999);
    let clean = !text.bytes().any(|b| b < 0x20 && b != b'\n' || b == 0x7f);
    let sent_enhanced = write_enhanced && reply.enhanced().is_some();
    let looks_enhanced = text
        .split(' ')
        .next()
        .and_then(EnhancedCode::parse)
        .is_some();
    if canonical_code && canonical_ecode && clean && (sent_enhanced || !looks_enhanced) {
        let expect_e = if sent_enhanced {
            reply.enhanced()
        } else {
            None
        };
        assert_eq!(parsed.enhanced(), expect_e, "enhanced code from {wire:?}");
        assert_eq!(parsed.text(), text, "text from {wire:?}");
        assert_eq!(again, wire, "the wire form changed");
    }
}

// ---------------------------------------------------------------------------
// address
// ---------------------------------------------------------------------------

/// The mailbox grammar and xtext.
///
/// Byte 0 chooses UTF-8 and lenient mode; the rest (as UTF-8, lossily) is
/// a mailbox candidate and an xtext candidate. No panic. A parsed mailbox
/// covers the whole text, splits it into local part, `@` and domain,
/// respects the length limits and (without UTF-8) is ASCII; it is the
/// same mailbox that `RCPT TO:<...>` and `MAIL FROM:<...>` yield, and a
/// path that `RCPT TO:` yields with no source route is one that
/// `parse_mailbox` accepts. Strict acceptance implies lenient acceptance.
/// xtext: decoding then encoding then decoding is stable, and
/// `decode_xtext(encode_xtext(s)) == s` for any text.
pub fn address(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let utf8 = flags & 1 != 0;
    let lenient = flags & 2 != 0;
    let text = String::from_utf8_lossy(rest);
    let s: &str = &text;
    let m = parse_mailbox(s, utf8, lenient);
    if let Some(m) = m {
        assert_eq!(m.raw, s);
        assert_eq!(format!("{}@{}", m.local_part, m.domain), s);
        assert!(m.local_part.len() <= 64 && m.domain.len() <= 255 && s.len() + 2 <= 256);
        assert!(utf8 || s.is_ascii());
        assert_eq!(m.is_utf8(), !s.is_ascii());
        assert_eq!(m.is_address_literal(), m.domain.starts_with('['));
        if !lenient {
            assert_eq!(parse_mailbox(s, utf8, true), Some(m), "lenient refuses");
        }
        assert_eq!(
            parse_mailbox(s, true, lenient),
            Some(m),
            "UTF-8 mode refuses"
        );
    }
    let opts = ParseOptions {
        utf8_addresses: utf8,
        lenient,
    };
    let rcpt = format!("RCPT TO:<{s}>");
    match parse_command(rcpt.as_bytes(), opts) {
        Ok(Command::Rcpt {
            to: ForwardPath::Mailbox(c),
            params,
        }) => {
            // Otherwise `s` held a source route, or `>` and parameters.
            if c.raw == s {
                assert_eq!(params, RcptParams::default());
                assert_eq!(m, Some(c), "RCPT accepts what parse_mailbox refuses");
            }
        }
        Ok(Command::Rcpt {
            to: ForwardPath::Postmaster,
            params,
        }) => assert!(
            params != RcptParams::default() || s.eq_ignore_ascii_case("postmaster"),
            "Postmaster from {s:?}"
        ),
        Ok(other) => panic!("RCPT parsed as {other:?}"),
        Err(e) => assert!(
            m.is_none(),
            "parse_mailbox accepts what RCPT refuses ({e:?})"
        ),
    }
    if let Some(m) = m {
        let mail = format!("MAIL FROM:<{s}>{}", if utf8 { " SMTPUTF8" } else { "" });
        match parse_command(mail.as_bytes(), opts) {
            Ok(Command::Mail {
                from: ReversePath::Mailbox(c),
                ..
            }) => assert_eq!(c, m),
            other => panic!("MAIL refuses a mailbox: {other:?}"),
        }
    }
    if let Some(plain) = decode_xtext(s) {
        assert!(plain.len() <= s.len());
        let canon = encode_xtext(&plain);
        assert_eq!(decode_xtext(&canon).as_deref(), Some(plain.as_str()));
    }
    assert_eq!(
        decode_xtext(&encode_xtext(s)).as_deref(),
        Some(s),
        "xtext round trip"
    );
}

// ---------------------------------------------------------------------------
// client_session
// ---------------------------------------------------------------------------

/// The client ([`smtp_proto::client::Client`]) against an arbitrary server: the
/// first bytes choose the configuration, the envelope and the harness's
/// actions; the rest is what the "server" says, cut at arbitrary points.
///
/// Checks: no panic; the client never holds more output than its bound
/// (plus one command line and one chunk); no event follows
/// [`Instruction::Closed`]; an error is always followed by `Closed`; a
/// STARTTLS handshake is always accepted when asked for; a message is reported accepted only after
/// the whole body was handed over and ended; every per-recipient event
/// names a recipient of the envelope.
pub fn client_session(data: &[u8]) {
    use smtp_proto::client::{Client, ClientConfig, ClientEvent, Envelope, Recipient, TlsPolicy};
    let mut u = Input::new(data);
    let mut config = ClientConfig::new("fuzz.example");
    let flags = u.byte();
    config.pipelining = flags & 1 != 0;
    config.chunking = flags & 2 != 0;
    config.lmtp = flags & 4 != 0;
    config.tls = match (flags >> 3) & 3 {
        0 => TlsPolicy::None,
        1 => TlsPolicy::Opportunistic,
        _ => TlsPolicy::Required,
    };
    if flags & 32 != 0 {
        config.auth = Some(smtp_proto::client::ClientAuth::new("user", "pass"));
        config.allow_plaintext_auth = flags & 64 != 0;
    }
    config.chunk_size = 1 + u.below(64);
    config.max_pending_output = 64 + u.below(4096);
    config.max_reply_len = 16 + u.below(2048);
    config.max_pipelined = 1 + u.below(8);
    let bound = config.max_pending_output + 2 * 512 + config.chunk_size + 64;
    let recipients = 1 + u.below(4);
    let mut env = Envelope::new(
        Some("a@example.org"),
        (0..recipients).map(|i| format!("r{i}@example.net")),
    );
    env.smtputf8 = u.bool();
    let body_len = u.below(300);
    let body: Vec<u8> = (0..body_len).map(|i| b"ab.\r\n"[i % 5]).collect();
    let open = u.bool();
    let knobs = Knobs {
        bytes: u.bytes(16),
        at: 0,
    };
    let mut knobs = knobs;
    let input = u.rest();
    let now = Instant::now();
    let mut c = Client::new(config, now);
    let mut closed = false;
    let mut errored = false;
    let mut pos = 0usize;
    let mut sent_body = 0usize;
    let mut ended = false;
    let mut started = false;
    let mut t = now;
    for _round in 0..10_000 {
        // Drain events.
        loop {
            let ev = match c.poll() {
                Output::Event(ev) => ev,
                Output::Instruction(Instruction::Closed) => {
                    assert!(c.is_closed(), "Closed from an open client");
                    if closed {
                        break;
                    }
                    // Polled again: still no event after Closed.
                    closed = true;
                    continue;
                }
                Output::Instruction(Instruction::StartTls) => {
                    if knobs.next() & 1 == 0 {
                        let r = c.tls_established(TlsInfo::default(), t);
                        assert_eq!(r, Ok(()), "the handshake it asked for refused");
                    } else {
                        c.tls_failed(t);
                        assert!(c.is_closed(), "still open after a failed handshake");
                    }
                    continue;
                }
                Output::Instruction(_) => {
                    assert!(!c.is_closed(), "a closed client not saying Closed");
                    break;
                }
            };
            assert!(!closed, "event after Closed: {ev:?}");
            match ev {
                ClientEvent::Error(_) => errored = true,
                ClientEvent::Ready { .. } if !started => {
                    started = true;
                    let r = if open {
                        c.begin_mail(
                            &Envelope::new(Some("a@example.org"), Vec::<String>::new()),
                            t,
                        )
                        .and_then(|()| {
                            for i in 0..recipients {
                                c.add_recipient(&Recipient::new(format!("r{i}@example.net")), t)?;
                            }
                            c.close_recipients(t)
                        })
                    } else {
                        c.send_mail(&env, t)
                    };
                    let _ = r;
                }
                ClientEvent::Recipient { index, .. } => assert!(index < recipients),
                ClientEvent::MessageAccepted { recipient, .. } => {
                    assert!(
                        ended && sent_body == body.len(),
                        "accepted before the body ended"
                    );
                    assert!(recipient.is_none_or(|r| r < recipients));
                }
                ClientEvent::MessageRejected { recipient, .. } => {
                    assert!(recipient.is_none_or(|r| r < recipients));
                }
                _ => {}
            }
        }
        if closed {
            break;
        }
        // Hand over body bytes and the end when the client takes them.
        if started && !ended {
            while sent_body < body.len() && c.wants_body() {
                match c.push_body(&body[sent_body..], t) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent_body += n,
                }
            }
            if sent_body == body.len() && c.wants_body() && c.end_body(t).is_ok() {
                ended = true;
            }
        }
        assert!(
            c.transmit().len() <= bound,
            "output {} over {bound}",
            c.transmit().len()
        );
        // The "network": write out a knob-chosen part, feed a knob-chosen piece.
        let k = knobs.next();
        let w = c.transmit().len();
        c.transmitted(if k & 0x80 != 0 { w / 2 } else { w });
        match k & 0x0f {
            0 => {
                t += Duration::from_secs(u64::from(knobs.next()) * 10);
                c.handle_timeout(t);
            }
            1 if k & 0x10 != 0 => {
                let _ = c.quit(t);
            }
            _ => {
                if pos >= input.len() {
                    c.receive_eof(t);
                } else {
                    let n = 1 + usize::from(knobs.next()) % 64;
                    let end = (pos + n).min(input.len());
                    let took = c.receive(&input[pos..end], t);
                    pos += took;
                    if took == 0 && !c.wants_read() {
                        // The client holds unread replies: let it write.
                        let w = c.transmit().len();
                        c.transmitted(w);
                    }
                }
            }
        }
    }
    if errored {
        loop {
            match c.poll() {
                Output::Event(ev) => assert!(!closed, "event after Closed: {ev:?}"),
                Output::Instruction(i) => {
                    closed |= i == Instruction::Closed;
                    break;
                }
            }
        }
        assert!(closed, "an error not followed by Closed");
    }
}
