//! The server session: a pure SMTP/LMTP state machine.
//!
//! A [`Session`] is one connection's protocol state. It owns no socket, reads
//! no clock and starts no thread: the caller moves bytes and time in and out.
//!
//! # The calling contract
//!
//! **Inputs**
//! - [`Session::read_buf`] + [`Session::filled`] (zero-copy), or
//!   [`Session::receive`]: bytes from the client, with the current time.
//! - [`Session::receive_eof`]: the client closed its side.
//! - [`Session::handle_timeout`]: the instant from [`Session::poll_timeout`] passed.
//! - [`Session::tls_established`] / [`Session::tls_failed`]: after [`Event::StartTls`].
//! - [`Session::shutdown`]: the server is stopping.
//!
//! **Outputs** — after every input, drain them until idle:
//! - [`Session::poll_event`] until it returns `None`. Events that need a
//!   decision carry a [`Ticket`]; nothing more is parsed until it is answered
//!   with [`Session::respond`] (or [`Session::respond_each`] for LMTP message
//!   ends). The answer may come much later, from an async task.
//! - [`Session::transmit`] + [`Session::transmitted`]: reply bytes to write,
//!   always in command order (so PIPELINING needs nothing from the caller).
//! - [`Session::poll_timeout`]: when to call [`Session::handle_timeout`].
//! - [`Session::wants_read`], [`Session::is_closed`]: whether to read more,
//!   and whether to close the connection once `transmit()` is empty.
//!
//! Client misbehaviour is answered with an SMTP reply (and sometimes an
//! informational event); `Err` is only for misuse of this API.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use smtp_proto::config::Config;
//! use smtp_proto::server::{Decision, Event, PeerInfo, Session};
//!
//! let mut s = Session::new(Arc::new(Config::new("mx.example")), PeerInfo::default(), Instant::now());
//! let mut body = Vec::new();
//! let mut feed = |s: &mut Session, input: &[u8], body: &mut Vec<u8>| {
//!     s.receive(input, Instant::now());
//!     while let Some(ev) = s.poll_event() {
//!         match ev {
//!             Event::Body(chunk) => body.extend_from_slice(chunk),
//!             ev => if let Some(ticket) = ev.into_ticket() {
//!                 s.respond(ticket, Decision::Accept).unwrap();
//!             },
//!         }
//!     }
//!     let out = String::from_utf8_lossy(s.transmit()).into_owned();
//!     let n = s.transmit().len();
//!     s.transmitted(n);
//!     out
//! };
//! assert!(feed(&mut s, b"", &mut body).starts_with("220 mx.example"));
//! assert!(feed(&mut s, b"EHLO client.example\r\n", &mut body).contains("250-PIPELINING"));
//! let out = feed(&mut s, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n", &mut body);
//! assert_eq!(out, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
//! let out = feed(&mut s, b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n", &mut body);
//! assert_eq!(out, "250 2.0.0 Message accepted for delivery\r\n221 2.0.0 Bye\r\n");
//! assert_eq!(body, b"Subject: hi\r\n\r\n.dot\r\n");
//! assert!(s.is_closed());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::command::{
    BodyType, Command, ForwardPath, MailParams, ParseError, ParseOptions, RcptParams, ReversePath,
};
use crate::config::{Config, ContentPolicy, Extensions, ViolationPolicy};
use crate::data::{DataDecoder, DecodeStep, LineChecker};
use crate::decided::Decided;
use crate::parse::parse_command;
use crate::proxy::{ProxyCommand, ProxyParse, parse_proxy_header};
use crate::reply::{EnhancedCode, Reply};
use crate::sasl::{Credentials, Mechanism, SaslError, SaslExchange, SaslStep};
use crate::trace::{ReceivedHeader, WithProtocol};

/// The longest AUTH response line (RFC 4954 §4: 12288 octets).
const MAX_AUTH_LINE: usize = 12288 + 2;

/// Facts about the TLS layer, for the Received header and the handler.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite name, e.g. `TLS_AES_128_GCM_SHA256`.
    pub cipher: String,
}

/// Who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// The client's address (replaced by the PROXY header's source when one is used).
    pub remote: Option<SocketAddr>,
    /// Our address (replaced by the PROXY header's destination when one is used).
    pub local: Option<SocketAddr>,
    /// Set when the connection is TLS from the start (implicit TLS, RFC 8314).
    pub tls: Option<TlsInfo>,
}

impl PeerInfo {
    /// A peer with the given remote address.
    pub fn new(remote: SocketAddr) -> Self {
        PeerInfo {
            remote: Some(remote),
            ..PeerInfo::default()
        }
    }
}

/// Which greeting command the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeloKind {
    /// `HELO` (plain SMTP).
    Helo,
    /// `EHLO` (ESMTP).
    Ehlo,
    /// `LHLO` (LMTP).
    Lhlo,
}

/// How the body of the current message is being transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `DATA`, dot-stuffed.
    Data,
    /// `BDAT` chunks (RFC 3030).
    Bdat,
}

/// Why a message body was thrown away (nothing of it may be delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// It grew past the size limit (`552 5.3.4`).
    TooBig,
    /// It contained a bare LF or bare CR (`550 5.5.2`).
    BareLineEnding,
    /// A line was longer than the limit (`550 5.6.0`).
    LongLine,
    /// It contained a NUL octet (`550 5.6.0`; see `Limits::nul_bytes`).
    NulByte,
    /// The connection closed before the end of the body.
    Disconnected,
    /// The client stopped sending (`421 4.4.2`).
    Timeout,
    /// The server shut down or aborted the session.
    Shutdown,
    /// A BDAT chunk was refused (e.g. no valid recipients).
    Refused,
}

/// Protocol hygiene violations (reported; see [`crate::config::ViolationPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The client sent bytes before the greeting was sent.
    PreGreeting,
    /// The client sent more commands after one that must end a pipelining
    /// group (EHLO, DATA, NOOP, QUIT, …), or pipelined without PIPELINING.
    Pipelining {
        /// The command after which input was waiting.
        after: &'static str,
    },
    /// Plaintext bytes after STARTTLS were discarded (CVE-2011-0411 class).
    StartTlsInjection,
    /// The PROXY protocol header was missing or invalid.
    InvalidProxyHeader,
}

/// Why the session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent QUIT.
    Quit,
    /// The client closed the connection.
    Eof,
    /// A timeout expired.
    Timeout,
    /// Too many errors.
    TooManyErrors,
    /// A protocol violation under the disconnect policy, or a bad PROXY header.
    Violation,
    /// The connection was refused at connect time with a 4xx reply.
    Rejected,
    /// The server shut down.
    Shutdown,
    /// The TLS handshake failed.
    TlsFailed,
    /// The application aborted the session (e.g. a handler panicked).
    Aborted,
    /// The connection failed or was dropped before the session closed
    /// (a reset, a failed write, a write timeout, an aborted task).
    ConnectionLost,
}

/// A single-use token for an event that needs a decision.
///
/// Hand it back to [`Session::respond`]. It can cross an `.await`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a decision event holds the session until it is answered"]
pub struct Ticket {
    seq: u64,
}

#[cfg(test)]
impl Ticket {
    pub(crate) fn for_test(seq: u64) -> Ticket {
        Ticket { seq }
    }
}

/// The application's answer to a decision event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept with the core's usual reply for that command.
    Accept,
    /// Answer with this reply (a 2xx accepts; 4xx/5xx refuse).
    Reply(Reply),
}

impl From<Reply> for Decision {
    fn from(r: Reply) -> Self {
        Decision::Reply(r)
    }
}

impl Decision {
    fn accepted(&self) -> bool {
        match self {
            Decision::Accept => true,
            Decision::Reply(r) => r.code() < 400,
        }
    }
}

/// Misuse of the session API (never caused by the client).
#[derive(Debug)]
pub struct Misuse {
    /// The ticket, handed back when it is still valid.
    pub ticket: Option<Ticket>,
    /// What was wrong.
    pub kind: MisuseKind,
}

/// What was wrong in a [`Misuse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisuseKind {
    /// The ticket does not belong to the decision the session is waiting for.
    UnknownTicket,
    /// [`Session::respond_each`] got a number of decisions other than the
    /// number of accepted recipients.
    WrongReplyCount,
    /// [`Session::tls_established`] without a preceding [`Event::StartTls`].
    NotStartingTls,
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session API misuse: {:?}", self.kind)
    }
}

impl std::error::Error for Misuse {}

/// What the session has to say. Decision events carry a [`Ticket`].
#[derive(Debug)]
#[must_use]
pub enum Event<'a> {
    /// A client connected (after the PROXY header, if any): accept it
    /// (the greeting is sent) or refuse it (4xx closes; 5xx answers every
    /// later command with `503` until QUIT, RFC 5321 §3.1).
    Connect {
        /// Answer with [`Session::respond`].
        ticket: Ticket,
        /// The peer (the PROXY header's source when enabled).
        peer: &'a PeerInfo,
    },
    /// HELO, EHLO or LHLO.
    Helo {
        /// Answer with [`Session::respond`].
        ticket: Ticket,
        /// Which command.
        kind: HeloKind,
        /// The claimed client name.
        domain: &'a str,
    },
    /// MAIL FROM, already checked against the advertised extensions.
    Mail {
        /// Answer with [`Session::respond`].
        ticket: Ticket,
        /// The reverse path.
        from: ReversePath<'a>,
        /// The parameters.
        params: MailParams<'a>,
    },
    /// RCPT TO, already checked against limits and extensions.
    Rcpt {
        /// Answer with [`Session::respond`].
        ticket: Ticket,
        /// The forward path.
        to: ForwardPath<'a>,
        /// The parameters.
        params: RcptParams<'a>,
    },
    /// VRFY or EXPN. Accepting sends `252 2.5.0`.
    Verify {
        /// Answer with [`Session::respond`].
        ticket: Ticket,
        /// The argument.
        arg: &'a str,
        /// `true` for EXPN.
        expand: bool,
    },
    /// AUTH finished its SASL exchange: check the credentials.
    Auth {
        /// Answer with [`Session::respond`] (accept sends `235 2.7.0`).
        ticket: Ticket,
        /// What the client sent (the password is hidden from `Debug`).
        credentials: Credentials,
    },
    /// A message body starts (after `354`, or with the first BDAT chunk).
    BodyStart {
        /// DATA or BDAT.
        kind: BodyKind,
    },
    /// Body bytes, dot-unstuffed, in order. Valid until the next call.
    Body(&'a [u8]),
    /// The body is complete and passed every check: store it, then answer.
    /// In LMTP answer with [`Session::respond_each`], one decision per
    /// accepted recipient, in order.
    MessageEnd {
        /// Answer with [`Session::respond`] or [`Session::respond_each`].
        ticket: Ticket,
        /// Body size in octets.
        size: u64,
        /// Accepted recipients.
        recipients: usize,
    },
    /// The body seen so far must be discarded; the core has answered.
    MessageAborted(AbortReason),
    /// The transaction (MAIL and RCPTs accepted so far) was reset.
    Reset,
    /// Flush [`Session::transmit`], then start the TLS handshake and report
    /// it with [`Session::tls_established`] or [`Session::tls_failed`].
    StartTls,
    /// A hygiene violation was seen.
    Violation(Violation),
    /// The client is past the soft error limit: wait this long before
    /// sending more replies.
    Throttle(Duration),
    /// The session is closing: write what [`Session::transmit`] holds, then close.
    Closing(CloseReason),
}

impl Event<'_> {
    /// Takes the ticket out of a decision event (`None` for informational events).
    pub fn into_ticket(self) -> Option<Ticket> {
        match self {
            Event::Connect { ticket, .. }
            | Event::Helo { ticket, .. }
            | Event::Mail { ticket, .. }
            | Event::Rcpt { ticket, .. }
            | Event::Verify { ticket, .. }
            | Event::Auth { ticket, .. }
            | Event::MessageEnd { ticket, .. } => Some(ticket),
            _ => None,
        }
    }
}

/// Informational events waiting to be handed out.
#[derive(Debug, Clone, Copy)]
enum Notice {
    BodyStart(BodyKind),
    Aborted(AbortReason),
    Reset,
    StartTls,
    Violation(Violation),
    Throttle(Duration),
    Closing(CloseReason),
}

impl Notice {
    fn into_event<'a>(self) -> Event<'a> {
        match self {
            Notice::BodyStart(kind) => Event::BodyStart { kind },
            Notice::Aborted(r) => Event::MessageAborted(r),
            Notice::Reset => Event::Reset,
            Notice::StartTls => Event::StartTls,
            Notice::Violation(v) => Event::Violation(v),
            Notice::Throttle(d) => Event::Throttle(d),
            Notice::Closing(r) => Event::Closing(r),
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the PROXY protocol header.
    Proxy,
    /// Waiting to hand out the connect decision.
    Connect,
    /// Connection refused with 5xx: only QUIT is served.
    NoService,
    /// Reading command lines.
    Command,
    /// Inside a DATA body.
    Data,
    /// Inside a BDAT chunk; `refuse` is the reply sent after it is consumed.
    Bdat {
        remaining: u64,
        last: bool,
        refuse: Option<Reply>,
    },
    /// A SASL exchange is running.
    Auth(SaslExchange),
    /// `220` to STARTTLS is queued; the caller does the handshake.
    StartTls,
    /// Nothing more is read.
    Closed,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Connect,
    Helo(HeloKind),
    Mail { smtputf8: bool, body: BodyType },
    Rcpt,
    Verify,
    Auth,
    MessageEnd,
}

/// What a decision event will be made of, once the state is updated.
#[derive(Debug)]
enum Emit {
    /// Re-parse the pending command line (it stays in the buffer).
    Command,
    Connect,
    Auth(Credentials),
    MessageEnd,
    Body {
        start: usize,
        end: usize,
    },
}

/// What a step of the parser produced.
#[derive(Debug)]
enum Step {
    /// Nothing more can happen without input, an answer, or output space.
    Idle,
    /// State changed; look again.
    Continue,
    /// Hand this out.
    Emit(Emit),
}

#[derive(Debug, Default)]
struct Transaction {
    mail: bool,
    smtputf8: bool,
    body: BodyType,
    recipients: usize,
    body_kind: Option<BodyKind>,
    body_len: u64,
    too_big: bool,
    /// A NUL octet was seen in the body (only looked for when refused).
    nul: bool,
}

/// One SMTP/LMTP server session. See the [module docs](self) for the contract.
pub struct Session {
    config: Arc<Config>,
    ext: Extensions,
    extra_keywords: Vec<String>,
    peer: PeerInfo,
    phase: Phase,
    // Input: `input[start..end]` is unprocessed.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes after `start` already searched for a line end.
    scan: usize,
    /// Discarding an over-long line until its CRLF.
    poisoned: bool,
    /// While poisoned: the last discarded byte was a CR.
    scan_cr: bool,
    /// The line being scanned follows a bare LF that was already answered:
    /// its rest, up to the CRLF, is dropped without a second answer.
    after_bare_lf: bool,
    /// Bytes at `start` to drop on the next call (the last Body event).
    release: usize,
    /// Length of the command line (with CRLF) waiting for a decision.
    pending_line: usize,
    /// The pending line's command, parsed (see [`Decided`]).
    decided: Option<Decided>,
    // Output.
    out: Vec<u8>,
    out_pos: usize,
    greeting_queued: bool,
    greeting_sent: bool,
    notices: VecDeque<Notice>,
    /// An event [`Session::has_event`] prepared and [`Session::poll_event`] hands out next.
    ready: Option<Emit>,
    pending: Option<(u64, Pending)>,
    seq: u64,
    // Protocol state.
    helo: Option<HeloKind>,
    helo_name: String,
    authenticated: Option<String>,
    /// The user name of an AUTH exchange awaiting its decision.
    auth_user: Option<String>,
    txn: Transaction,
    decoder: DataDecoder,
    checker: LineChecker,
    messages: u32,
    errors: u32,
    junk: u32,
    shutting_down: bool,
    // Time.
    now: Instant,
    deadline: Option<Instant>,
    /// When the last input arrived (for releasing idle buffers).
    last_input: Instant,
    /// The buffers were released since that input (released once per
    /// silence: an adapter's next read wants a small buffer again).
    released: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .field("helo", &self.helo)
            .field("authenticated", &self.authenticated.is_some())
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts a session for a new connection at time `now`.
    ///
    /// Without the PROXY protocol, the first event is [`Event::Connect`].
    pub fn new(config: Arc<Config>, peer: PeerInfo, now: Instant) -> Session {
        let mut ext = config.extensions.clone();
        if peer.tls.is_some() {
            ext.starttls = false;
        }
        let phase = if config.proxy_protocol {
            Phase::Proxy
        } else {
            Phase::Connect
        };
        let deadline = config.proxy_protocol.then(|| now + config.timeouts.command);
        Session {
            decoder: DataDecoder::new(config.limits.max_text_line),
            checker: LineChecker::new(config.limits.max_text_line),
            ext,
            extra_keywords: Vec::new(),
            peer,
            phase,
            input: Vec::new(),
            start: 0,
            end: 0,
            scan: 0,
            poisoned: false,
            scan_cr: false,
            after_bare_lf: false,
            release: 0,
            pending_line: 0,
            decided: None,
            out: Vec::new(),
            out_pos: 0,
            greeting_queued: false,
            greeting_sent: false,
            notices: VecDeque::new(),
            ready: None,
            pending: None,
            seq: 0,
            helo: None,
            helo_name: String::new(),
            authenticated: None,
            auth_user: None,
            txn: Transaction::default(),
            messages: 0,
            errors: 0,
            junk: 0,
            shutting_down: false,
            now,
            deadline,
            last_input: now,
            released: false,
            config,
        }
    }

    // ----- getters -----

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The peer (after the PROXY header, if any).
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The HELO/EHLO/LHLO name, once accepted.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.map(|_| self.helo_name.as_str())
    }

    /// The greeting command used, once accepted.
    pub fn helo_kind(&self) -> Option<HeloKind> {
        self.helo
    }

    /// Whether the connection is under TLS.
    pub fn is_tls(&self) -> bool {
        self.peer.tls.is_some()
    }

    /// The authenticated user name, if AUTH succeeded.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// Whether the current transaction said SMTPUTF8.
    pub fn is_smtputf8(&self) -> bool {
        self.txn.smtputf8
    }

    /// The current transaction's BODY type.
    pub fn body_type(&self) -> BodyType {
        self.txn.body
    }

    /// The extensions this session advertises. Change them (e.g. at the
    /// connect or EHLO decision) to hide a keyword from one client.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.ext
    }

    /// Adds an extra EHLO keyword line (e.g. `"XCLIENT NAME ADDR"`).
    pub fn add_ehlo_keyword(&mut self, keyword: impl Into<String>) {
        let k: String = keyword.into();
        if !k.contains(['\r', '\n']) {
            self.extra_keywords.push(k);
        }
    }

    /// Whether a decision is awaited (nothing is parsed meanwhile).
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the session is over: once [`Session::transmit`] is empty,
    /// close the connection.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the caller should read from the socket now. False while the
    /// input buffer is full, while replies pile up unread (backpressure),
    /// during the STARTTLS handshake, and once closed.
    pub fn wants_read(&self) -> bool {
        !matches!(self.phase, Phase::Closed | Phase::StartTls)
            && !self.output_full()
            && self.end - self.start < self.input_capacity()
    }

    /// Whether there are bytes to write.
    pub fn wants_write(&self) -> bool {
        self.out_pos < self.out.len()
    }

    // ----- input -----

    /// Free space to read into; then call [`Session::filled`]. Empty when the
    /// session does not want input now.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.apply_release();
        let cap = self.input_capacity();
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Lazily sized: command lines fit a small buffer (an idle session
        // holds little memory); a body, or a buffer filled by one long
        // line, gets the full size. A body whose buffer was just released
        // (`release_idle_at`) starts small again: the slow client's next
        // line may be minutes away.
        let body = matches!(self.phase, Phase::Data | Phase::Bdat { .. }) && !self.released;
        let want = if body {
            cap
        } else if self.end == self.input.len() {
            (self.input.len() * 2).clamp(INITIAL_INPUT, cap)
        } else {
            self.input.len().max(INITIAL_INPUT.min(cap))
        };
        if self.input.len() < want {
            self.input.resize(want, 0);
        }
        if !self.wants_read() {
            return &mut [];
        }
        let len = self.input.len();
        &mut self.input[self.end..len]
    }

    /// Reports that `n` bytes were written into [`Session::read_buf`] at `now`.
    pub fn filled(&mut self, n: usize, now: Instant) {
        self.now = now;
        let n = n.min(self.input.len() - self.end);
        if n == 0 {
            return;
        }
        let new = self.end..self.end + n;
        self.end += n;
        self.last_input = now;
        self.released = false;
        self.note_input(new);
    }

    /// Copies bytes into the session; returns how many were taken (fewer
    /// than given when the input buffer is full: offer the rest later).
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> usize {
        let buf = self.read_buf();
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.filled(n, now);
        n
    }

    fn note_input(&mut self, new: std::ops::Range<usize>) {
        match self.phase {
            Phase::StartTls | Phase::Closed => {
                // Plaintext after STARTTLS, or anything after close: discarded.
                if matches!(self.phase, Phase::StartTls) {
                    self.notices
                        .push_back(Notice::Violation(Violation::StartTlsInjection));
                }
                self.end = new.start;
            }
            Phase::Connect | Phase::NoService | Phase::Command | Phase::Auth(_) | Phase::Proxy => {
                if self.greeting_queued && !self.greeting_sent
                    || matches!(self.phase, Phase::Connect) && !self.config.proxy_protocol
                {
                    self.violation(Violation::PreGreeting);
                }
            }
            Phase::Data | Phase::Bdat { .. } => {
                let bytes = &self.input[new];
                if bytes.len() >= 512 || memchr::memchr(b'\n', bytes).is_some() {
                    self.arm(self.config.timeouts.data);
                }
            }
        }
    }

    /// The client closed its side of the connection.
    pub fn receive_eof(&mut self) {
        self.apply_release();
        if self.is_closed() {
            return;
        }
        self.abort_body(AbortReason::Disconnected);
        self.close(CloseReason::Eof);
    }

    /// Reports that time `now` was reached (at or after [`Session::poll_timeout`]).
    /// An expired deadline answers `421 4.4.2` and closes.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.pending.is_some() || self.is_closed() {
            return;
        }
        if self.release_idle_at().is_some_and(|at| now >= at) {
            self.apply_release();
            self.input = Vec::new();
            self.out = Vec::new();
            self.out_pos = 0;
            self.released = true;
        }
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        self.apply_release();
        if matches!(self.phase, Phase::Proxy | Phase::StartTls) {
            // No clear-text reply: before the PROXY header, or mid-handshake.
            self.close(CloseReason::Timeout);
            return;
        }
        self.abort_body(AbortReason::Timeout);
        self.queue(&Reply::TIMEOUT);
        self.close(CloseReason::Timeout);
    }

    /// Tells the session the current time without other input. Call it
    /// before answering a decision that took a while (an async handler):
    /// the client's next deadline counts from the answer, not from the
    /// command. [`crate::handler::Dispatcher`] does this.
    pub fn set_time(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// When [`Session::handle_timeout`] must be called; `None` while a
    /// decision is pending or the session is closed.
    ///
    /// Besides the client's deadline, this is the soft deadline after which
    /// an idle session frees its buffers (`Timeouts::release_idle`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending.is_some() || self.is_closed() {
            return None;
        }
        match (self.deadline, self.release_idle_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes the session's input and output buffers hold (their capacity):
    /// small while commands flow, up to `Limits::input_buffer` during a
    /// body. An idle session releases both (`Timeouts::release_idle`); an
    /// adapter waiting to read then takes back only a small input buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.input.capacity() + self.out.capacity()
    }

    /// When the session gives up on the client (`421 4.4.2` and close) if
    /// nothing arrives: the hard part of [`Session::poll_timeout`]. `None`
    /// while a decision is pending or the session is closed.
    pub fn client_deadline(&self) -> Option<Instant> {
        if self.pending.is_some() || self.is_closed() {
            return None;
        }
        self.deadline
    }

    /// When the buffers of an idle session are due to be freed: once per
    /// silence, while they hold memory, every input byte is consumed (and
    /// no event holds a piece of it) and all output is written.
    fn release_idle_at(&self) -> Option<Instant> {
        let holds = self.input.capacity() > 0 || self.out.capacity() > 0;
        let idle =
            self.start + self.release >= self.end && self.ready.is_none() && !self.wants_write();
        if self.released || !holds || !idle {
            return None;
        }
        // Too far to represent: never.
        self.last_input
            .checked_add(self.config.timeouts.release_idle)
    }

    /// The TLS handshake after [`Event::StartTls`] succeeded: the session
    /// forgets everything learned before (RFC 3207 §4.2) and expects EHLO.
    pub fn tls_established(&mut self, info: TlsInfo) -> Result<(), Misuse> {
        if !matches!(self.phase, Phase::StartTls) {
            return Err(Misuse {
                ticket: None,
                kind: MisuseKind::NotStartingTls,
            });
        }
        self.peer.tls = Some(info);
        self.ext.starttls = false;
        self.helo = None;
        self.helo_name.clear();
        self.authenticated = None;
        self.txn = Transaction::default();
        self.start = self.end;
        self.scan = 0;
        self.phase = Phase::Command;
        self.arm(self.config.timeouts.command);
        Ok(())
    }

    /// The TLS handshake failed: the session closes without a reply (the
    /// stream is no longer plaintext SMTP).
    pub fn tls_failed(&mut self) {
        self.out.clear();
        self.out_pos = 0;
        self.close(CloseReason::TlsFailed);
    }

    /// Starts a graceful shutdown: between transactions the session answers
    /// `421 4.3.2` at once and closes; inside one, after the message's reply.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        self.check_shutdown();
    }

    /// Closes a shutting-down session once no transaction is open.
    fn check_shutdown(&mut self) {
        let idle = matches!(
            self.phase,
            Phase::Command
                | Phase::Auth(_)
                | Phase::NoService
                | Phase::StartTls
                | Phase::Connect
                | Phase::Proxy
        );
        if self.shutting_down
            && idle
            && !self.txn.mail
            && self.pending.is_none()
            && !self.is_closed()
        {
            self.abort(Reply::SHUTTING_DOWN, CloseReason::Shutdown);
        }
    }

    /// Ends the session now with `reply` (e.g. `421 4.3.0` after a handler
    /// panic, or at the end of a shutdown grace period). A body in progress is
    /// aborted; a pending decision is dropped.
    pub fn abort(&mut self, reply: Reply, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.apply_release();
        self.pending = None;
        self.abort_body(AbortReason::Shutdown);
        if !matches!(self.phase, Phase::Proxy | Phase::StartTls) {
            self.queue(&reply);
        }
        self.close(reason);
    }

    // ----- output -----

    /// Bytes to send to the client.
    pub fn transmit(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// Reports that `n` bytes of [`Session::transmit`] were written.
    pub fn transmitted(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.greeting_queued {
                self.greeting_sent = true;
            }
        }
    }

    fn output_full(&self) -> bool {
        self.out.len() - self.out_pos > self.config.limits.max_pending_output
    }

    /// The `Received:` header for the current message (RFC 5321 §4.4), with
    /// the `with` protocol from the session state (RFC 3848, RFC 6531).
    /// `timestamp` is Unix seconds; the core has no clock.
    pub fn received_header(
        &self,
        id: Option<&str>,
        for_recipient: Option<&str>,
        timestamp: i64,
        utc_offset_minutes: i16,
    ) -> Vec<u8> {
        let tls = self.peer.tls.as_ref().map(|t| crate::trace::TlsInfo {
            version: &t.version,
            cipher: &t.cipher,
        });
        let header = ReceivedHeader {
            helo: self.helo_name(),
            peer_ip: self.peer.remote.map(|a| a.ip()),
            peer_name: None,
            by: &self.config.hostname,
            protocol: WithProtocol::new(
                self.config.lmtp,
                !matches!(self.helo, Some(HeloKind::Helo) | None),
                self.peer.tls.is_some(),
                self.authenticated.is_some(),
                self.txn.smtputf8,
            ),
            id,
            for_recipient,
            tls,
            timestamp,
            utc_offset_minutes,
        };
        header.to_vec()
    }

    // ----- events and decisions -----

    /// The next event, or `None` when the session needs input, an answer,
    /// or output space. Call it until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        if let Some(e) = self.ready.take() {
            return Some(self.materialize(e));
        }
        self.apply_release();
        self.check_shutdown();
        let emit = loop {
            if let Some(n) = self.notices.pop_front() {
                return Some(n.into_event());
            }
            if self.pending.is_some() || self.is_closed() || self.output_full() {
                return None;
            }
            match self.step() {
                Step::Idle => {
                    if let Some(n) = self.notices.pop_front() {
                        return Some(n.into_event());
                    }
                    return None;
                }
                Step::Continue => {
                    self.check_shutdown();
                    continue;
                }
                Step::Emit(e) => break e,
            }
        };
        Some(self.materialize(emit))
    }

    /// Whether [`Session::poll_event`] would return an event now, without
    /// borrowing the session: prepares the event, which the next
    /// `poll_event` hands out. For loops that do I/O until an event is
    /// ready and then return it (a borrow checker-friendly `poll_event`).
    pub fn has_event(&mut self) -> bool {
        if self.ready.is_some() || !self.notices.is_empty() {
            return true;
        }
        self.apply_release();
        self.check_shutdown();
        loop {
            if !self.notices.is_empty() {
                return true;
            }
            if self.pending.is_some() || self.is_closed() || self.output_full() {
                return false;
            }
            match self.step() {
                Step::Idle => return !self.notices.is_empty(),
                Step::Continue => self.check_shutdown(),
                Step::Emit(e) => {
                    self.ready = Some(e);
                    return true;
                }
            }
        }
    }

    fn new_ticket(&mut self, what: Pending) -> Ticket {
        self.seq += 1;
        self.pending = Some((self.seq, what));
        Ticket { seq: self.seq }
    }

    fn materialize(&mut self, emit: Emit) -> Event<'_> {
        match emit {
            Emit::Body { start, end } => Event::Body(&self.input[start..end]),
            Emit::Connect => {
                let ticket = Ticket { seq: self.seq };
                Event::Connect {
                    ticket,
                    peer: &self.peer,
                }
            }
            Emit::Auth(credentials) => Event::Auth {
                ticket: Ticket { seq: self.seq },
                credentials,
            },
            Emit::MessageEnd => Event::MessageEnd {
                ticket: Ticket { seq: self.seq },
                size: self.txn.body_len,
                recipients: self.txn.recipients,
            },
            Emit::Command => {
                let seq = self.seq;
                let end = (self.start + self.pending_line).saturating_sub(2);
                let line = self.input.get(self.start..end).unwrap_or(&[]);
                // Parsed when it was checked; parsed again only if the
                // offsets do not fit (they always should).
                if let Some(event) = self.decided.and_then(|d| d.event(line, Ticket { seq })) {
                    return event;
                }
                let ticket = Ticket { seq };
                let opts = ParseOptions {
                    utf8_addresses: self.txn.smtputf8,
                    lenient: self.config.lenient_addresses,
                };
                match parse_command(line, opts) {
                    Ok(cmd) => command_event(cmd, ticket),
                    // The line parsed to a decided command moments ago.
                    Err(_) => unreachable_command(ticket),
                }
            }
        }
    }

    /// Answers the decision event that carried `ticket`.
    pub fn respond(&mut self, ticket: Ticket, decision: impl Into<Decision>) -> Result<(), Misuse> {
        let decision = decision.into();
        let what = self.take_pending(ticket)?;
        // In LMTP one decision for a message stands for every recipient.
        let n = match what {
            Pending::MessageEnd if self.config.lmtp => self.txn.recipients.max(1),
            _ => 1,
        };
        self.apply_decision(what, std::iter::repeat_n(decision, n));
        Ok(())
    }

    /// Answers an LMTP [`Event::MessageEnd`] with one decision per accepted
    /// recipient, in RCPT order (RFC 2033 §4.2). Any other decision (and an
    /// SMTP message end) takes exactly one.
    pub fn respond_each(
        &mut self,
        ticket: Ticket,
        decisions: impl IntoIterator<Item = Decision>,
    ) -> Result<(), Misuse> {
        let decisions: Vec<Decision> = decisions.into_iter().collect();
        let expected = match self.pending {
            Some((seq, _)) if seq != ticket.seq => {
                return Err(Misuse {
                    ticket: Some(ticket),
                    kind: MisuseKind::UnknownTicket,
                });
            }
            Some((_, Pending::MessageEnd)) if self.config.lmtp => self.txn.recipients,
            _ => 1,
        };
        if decisions.len() != expected {
            return Err(Misuse {
                ticket: Some(ticket),
                kind: MisuseKind::WrongReplyCount,
            });
        }
        let what = self.take_pending(ticket)?;
        self.apply_decision(what, decisions.into_iter());
        Ok(())
    }

    fn take_pending(&mut self, ticket: Ticket) -> Result<Pending, Misuse> {
        match self.pending {
            Some((seq, what)) if seq == ticket.seq => {
                self.pending = None;
                Ok(what)
            }
            _ => Err(Misuse {
                ticket: Some(ticket),
                kind: MisuseKind::UnknownTicket,
            }),
        }
    }

    fn apply_decision(&mut self, what: Pending, mut decisions: impl Iterator<Item = Decision>) {
        if self.is_closed() {
            return;
        }
        // The client's clock restarts once we answered.
        self.arm(self.config.timeouts.command);
        let decision = decisions.next().unwrap_or(Decision::Accept);
        let accepted = decision.accepted();
        let closes = matches!(&decision, Decision::Reply(r) if r.code() == 421);
        let line = std::mem::take(&mut self.pending_line);
        self.decided = None;
        match what {
            Pending::Connect => {
                let greeting = Reply::plain(
                    220,
                    format!("{} {}", self.config.hostname, greeting_text(&self.config)),
                );
                match decision {
                    Decision::Accept => self.queue_greeting(&greeting),
                    Decision::Reply(r) if r.code() < 400 => self.queue_greeting(&r),
                    Decision::Reply(r) => {
                        self.queue(&r);
                        if r.is_transient() {
                            self.close(CloseReason::Rejected);
                        } else {
                            self.phase = Phase::NoService;
                        }
                    }
                }
            }
            Pending::Helo(kind) => {
                if accepted {
                    let name = self.input.get(self.start..self.start + line).unwrap_or(&[]);
                    let name = helo_argument(name);
                    self.helo_name.clear();
                    self.helo_name.push_str(name);
                    self.reset_transaction();
                    self.helo = Some(kind);
                }
                match decision {
                    Decision::Accept if kind == HeloKind::Helo => {
                        let r = Reply::plain(250, self.config.hostname.clone());
                        self.queue(&r);
                    }
                    Decision::Accept => {
                        let r = self.ehlo_reply(None);
                        self.queue(&r);
                    }
                    Decision::Reply(r) if r.code() < 400 && kind != HeloKind::Helo => {
                        let r = self.ehlo_reply(Some(r.text()));
                        self.queue(&r);
                    }
                    Decision::Reply(r) if r.code() < 400 => self.queue(&r),
                    Decision::Reply(r) => self.queue_counted(&r),
                }
            }
            Pending::Mail { smtputf8, body } => {
                if accepted {
                    self.txn = Transaction {
                        mail: true,
                        smtputf8,
                        body,
                        ..Transaction::default()
                    };
                }
                self.queue_decision(decision, &Reply::SENDER_OK);
            }
            Pending::Rcpt => {
                if accepted {
                    self.txn.recipients += 1;
                }
                self.queue_decision(decision, &Reply::RECIPIENT_OK);
            }
            Pending::Verify => self.queue_decision(decision, &Reply::CANNOT_VRFY),
            Pending::Auth => {
                let user = self.auth_user.take();
                if accepted {
                    self.authenticated = user;
                }
                self.queue_decision(decision, &Reply::AUTH_OK);
            }
            Pending::MessageEnd => {
                let reply = |d: Decision| match d {
                    Decision::Accept => Reply::MESSAGE_ACCEPTED,
                    Decision::Reply(r) => r,
                };
                self.queue(&reply(decision));
                for d in decisions {
                    self.queue(&reply(d));
                }
                self.messages += 1;
                self.txn = Transaction::default();
                self.phase = Phase::Command;
            }
        }
        self.consume(line);
        self.scan = 0;
        if closes {
            // RFC 5321 §3.8: after a 421 the server closes the channel.
            self.close(CloseReason::Rejected);
        }
    }

    fn queue_decision(&mut self, decision: Decision, default: &Reply) {
        match decision {
            Decision::Accept => self.queue(default),
            Decision::Reply(r) if r.code() < 400 => self.queue(&r),
            Decision::Reply(r) => self.queue_counted(&r),
        }
    }

    // ----- the parser -----

    fn step(&mut self) -> Step {
        match self.phase {
            Phase::Proxy => self.step_proxy(),
            Phase::Connect => {
                let _t = self.new_ticket(Pending::Connect);
                Step::Emit(Emit::Connect)
            }
            Phase::Data => self.step_data(),
            Phase::Bdat { .. } => self.step_bdat(),
            Phase::StartTls | Phase::Closed => Step::Idle,
            Phase::Command | Phase::NoService | Phase::Auth(_) => self.step_line(),
        }
    }

    fn step_proxy(&mut self) -> Step {
        match parse_proxy_header(&self.input[self.start..self.end]) {
            ProxyParse::Incomplete => Step::Idle,
            ProxyParse::Invalid(_) => {
                self.notices
                    .push_back(Notice::Violation(Violation::InvalidProxyHeader));
                self.close(CloseReason::Violation);
                Step::Continue
            }
            ProxyParse::Done { header, consumed } => {
                self.consume(consumed);
                if header.command == ProxyCommand::Proxy {
                    if let Some(src) = header.source {
                        self.peer.remote = Some(src);
                    }
                    if let Some(dst) = header.destination {
                        self.peer.local = Some(dst);
                    }
                }
                self.phase = Phase::Connect;
                Step::Continue
            }
        }
    }

    /// Finds the next line: every LF ends one, but only a line ended by
    /// CRLF (with no other CR in it) is a command. A line ended by a bare LF
    /// is answered at once (a netcat user is not left waiting), and what
    /// follows it up to the next CRLF is dropped without a second answer:
    /// a bare LF never starts a command (DESIGN rule 1), and a CRLF client
    /// with a stray LF in a line still gets one answer per line. Over-long
    /// lines are poisoned (dropped as they arrive, then answered once).
    /// `None` while no line end is buffered.
    fn next_line(&mut self, max: usize) -> Option<Line> {
        let buf = &self.input[self.start..self.end];
        let from = self.scan.min(buf.len());
        let Some(i) = memchr::memchr(b'\n', &buf[from..]) else {
            self.scan = buf.len();
            if self.poisoned || buf.len() > max {
                self.poison(buf.len());
            }
            return None;
        };
        let lf = from + i;
        let len = lf + 1;
        let crlf = lf > 0 && buf[lf - 1] == b'\r' || lf == 0 && self.poisoned && self.scan_cr;
        let too_long = std::mem::take(&mut self.poisoned) || len > max;
        let bare_cr = crlf && !too_long && memchr::memchr(b'\r', &buf[..len - 2]).is_some();
        let after_bare = std::mem::replace(&mut self.after_bare_lf, !crlf);
        self.scan_cr = false;
        self.scan = 0;
        let line = if !crlf {
            Line::Refused(if too_long {
                Reply::LINE_TOO_LONG
            } else {
                Reply::BARE_LF_COMMAND
            })
        } else if after_bare {
            Line::Dropped
        } else if too_long {
            Line::Refused(Reply::LINE_TOO_LONG)
        } else if bare_cr {
            Line::Refused(Reply::BARE_LF_COMMAND)
        } else {
            // The caller consumes this line (now or after its decision).
            return Some(Line::Complete(len));
        };
        self.consume(len);
        Some(line)
    }

    /// The longest line allowed for the line being read: AUTH responses
    /// have their own limit (RFC 4954 §4); MAIL and RCPT lines may be longer
    /// by what the advertised extensions' parameters add (RFC 5321
    /// §4.5.3.1.4, RFC 1869 §4.1.2).
    fn line_limit(&self) -> usize {
        if let Phase::Auth(_) = self.phase {
            return MAX_AUTH_LINE;
        }
        let base = self.config.limits.max_command_line;
        if self.poisoned {
            return base;
        }
        let end = self.end.min(self.start + 4);
        let verb = self.input.get(self.start..end).unwrap_or(&[]);
        if verb.eq_ignore_ascii_case(b"MAIL") {
            base + self.mail_param_room()
        } else if verb.eq_ignore_ascii_case(b"RCPT") {
            base + self.rcpt_param_room()
        } else {
            base
        }
    }

    /// Octets the advertised MAIL parameters may add to a MAIL line.
    fn mail_param_room(&self) -> usize {
        let e = &self.ext;
        let mut n = 0;
        if e.size {
            n += ROOM_SIZE;
        }
        if e.eightbitmime || e.binarymime && e.chunking {
            n += ROOM_BODY;
        }
        if e.smtputf8 {
            n += ROOM_SMTPUTF8;
        }
        if e.dsn {
            n += ROOM_RET + ROOM_ENVID;
        }
        if self.auth_offered() {
            n += ROOM_AUTH;
        }
        if e.requiretls && self.is_tls() {
            n += ROOM_REQUIRETLS;
        }
        n
    }

    /// Octets the advertised RCPT parameters may add to a RCPT line.
    fn rcpt_param_room(&self) -> usize {
        if self.ext.dsn {
            ROOM_NOTIFY + ROOM_ORCPT
        } else {
            0
        }
    }

    /// Drops the first `upto` bytes of an over-long line (remembering
    /// whether the last one was a CR that a following LF would complete).
    fn poison(&mut self, upto: usize) {
        self.poisoned = true;
        let upto = upto.min(self.end - self.start);
        if upto > 0 {
            self.scan_cr = self.input[self.start + upto - 1] == b'\r';
        }
        self.start += upto;
        self.scan = 0;
    }

    fn step_line(&mut self) -> Step {
        let max = self.line_limit();
        let len = match self.next_line(max) {
            None => return Step::Idle,
            Some(Line::Dropped) => {
                self.arm(self.config.timeouts.command);
                return Step::Continue;
            }
            Some(Line::Refused(reply)) => {
                self.arm(self.config.timeouts.command);
                let reply = if let Phase::Auth(_) = self.phase {
                    // The refused line ends the SASL exchange.
                    self.phase = Phase::Command;
                    if reply == Reply::LINE_TOO_LONG {
                        Reply::AUTH_LINE_TOO_LONG
                    } else {
                        reply
                    }
                } else {
                    reply
                };
                self.queue_counted(&reply);
                return Step::Continue;
            }
            Some(Line::Complete(len)) => len,
        };
        self.arm(self.config.timeouts.command);
        if let Phase::Auth(_) = self.phase {
            return self.step_auth_line(len);
        }
        if let Phase::NoService = self.phase {
            let is_quit =
                self.input[self.start..self.start + len - 2].eq_ignore_ascii_case(b"QUIT");
            self.consume(len);
            if is_quit {
                self.queue(&Reply::BYE);
                self.close(CloseReason::Quit);
            } else {
                self.queue_counted(&Reply::NO_SERVICE);
            }
            return Step::Continue;
        }
        self.step_command(len)
    }

    fn step_command(&mut self, len: usize) -> Step {
        let opts = ParseOptions {
            utf8_addresses: self.txn.smtputf8,
            lenient: self.config.lenient_addresses,
        };
        let line = &self.input[self.start..self.start + len - 2];
        let more_input = self.end > self.start + len;
        let (cmd, verb, sync_point, decided) = match parse_command(line, opts) {
            Ok(cmd) => (
                Cmd::from(&cmd),
                cmd.verb(),
                is_sync_point(&cmd),
                Decided::of(&cmd, line),
            ),
            Err(e) => {
                self.consume(len);
                self.queue_counted(&parse_error_reply(e));
                return Step::Continue;
            }
        };
        // Pipelining hygiene (RFC 2920 §3.1): some commands must end a group,
        // and nothing may be pipelined at all without PIPELINING. STARTTLS
        // (its tail is discarded), QUIT and BDAT (its octets follow) are exempt.
        let may_pipeline = self.ext.pipelining && self.helo != Some(HeloKind::Helo);
        let exempt = matches!(cmd, Cmd::StartTls | Cmd::Quit | Cmd::Bdat { .. });
        if more_input && (sync_point || !may_pipeline) && !exempt {
            self.violation(Violation::Pipelining { after: verb });
            if self.is_closed() {
                return Step::Continue;
            }
        }
        let junk = matches!(cmd, Cmd::Rset | Cmd::Noop | Cmd::Verify | Cmd::Help);
        let outcome = self.command(cmd, more_input);
        // Junk is counted after the command's own reply is queued.
        let mut junk =
            junk || matches!(&outcome, Outcome::Reply(r) if *r == Reply::TOO_MANY_RECIPIENTS);
        if junk && matches!(outcome, Outcome::Decide(_)) {
            // A decision holds the line: count first, and ask nothing of a
            // session that this closes.
            junk = false;
            self.count_junk();
            if self.is_closed() {
                return Step::Continue;
            }
        }
        let step = match outcome {
            Outcome::Decide(what) => {
                self.pending_line = len;
                self.decided = decided;
                let _t = self.new_ticket(what);
                Step::Emit(Emit::Command)
            }
            Outcome::Reply(r) => {
                self.consume(len);
                self.queue(&r);
                Step::Continue
            }
            Outcome::Error(r) => {
                self.consume(len);
                self.queue_counted(&r);
                Step::Continue
            }
            Outcome::Done => {
                self.consume(len);
                if matches!(self.phase, Phase::StartTls) {
                    // Plaintext pipelined after STARTTLS is discarded, never
                    // executed after the handshake (CVE-2011-0411 class).
                    self.start = self.end;
                }
                Step::Continue
            }
            Outcome::Emit(e) => {
                self.consume(len);
                Step::Emit(e)
            }
        };
        if junk && !self.is_closed() {
            self.count_junk();
        }
        step
    }

    /// Applies one parsed command to the state.
    fn command(&mut self, cmd: Cmd, more_input: bool) -> Outcome {
        let lmtp = self.config.lmtp;
        let need_helo = if lmtp {
            Reply::NEED_LHLO
        } else {
            Reply::NEED_HELO
        };
        match cmd {
            Cmd::Helo(HeloKind::Helo | HeloKind::Ehlo) if lmtp => Outcome::Error(Reply::USE_LHLO),
            Cmd::Helo(HeloKind::Lhlo) if !lmtp => Outcome::Error(Reply::UNKNOWN_COMMAND),
            Cmd::Helo(kind) => Outcome::Decide(Pending::Helo(kind)),
            Cmd::Mail(params) => {
                if self.helo.is_none() && (self.config.require_helo || lmtp) {
                    return Outcome::Error(need_helo);
                }
                if self.config.require_tls && !self.is_tls() {
                    return Outcome::Error(Reply::TLS_REQUIRED);
                }
                if self.config.auth.required && self.authenticated.is_none() {
                    return Outcome::Error(Reply::AUTH_REQUIRED);
                }
                if self.txn.mail {
                    return Outcome::Error(Reply::NESTED_MAIL);
                }
                let max_messages = self.config.limits.max_messages;
                if max_messages > 0 && self.messages >= max_messages {
                    self.queue(&Reply::new(
                        421,
                        EnhancedCode::new(4, 7, 0),
                        "Too many messages in this session, closing connection",
                    ));
                    self.close(CloseReason::TooManyErrors);
                    return Outcome::Done;
                }
                if let Some(r) = self.check_mail_params(&params) {
                    return Outcome::Error(r);
                }
                Outcome::Decide(Pending::Mail {
                    smtputf8: params.smtputf8,
                    body: params.body.unwrap_or_default(),
                })
            }
            Cmd::Rcpt { dsn } => {
                if !self.txn.mail {
                    return Outcome::Error(Reply::NEED_MAIL);
                }
                if dsn && !self.ext.dsn {
                    return Outcome::Error(Reply::UNKNOWN_PARAMETER);
                }
                if self.txn.recipients >= self.config.limits.max_recipients {
                    return Outcome::Reply(Reply::TOO_MANY_RECIPIENTS);
                }
                Outcome::Decide(Pending::Rcpt)
            }
            Cmd::Data => {
                if let Some(r) = self.check_body_start(BodyKind::Data) {
                    return Outcome::Error(r);
                }
                if self.txn.body == BodyType::BinaryMime {
                    return Outcome::Error(Reply::BINARYMIME_NEEDS_BDAT);
                }
                self.txn.body_kind = Some(BodyKind::Data);
                self.decoder.reset();
                self.phase = Phase::Data;
                self.arm(self.config.timeouts.data);
                self.notices.push_back(Notice::BodyStart(BodyKind::Data));
                Outcome::Reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"))
            }
            Cmd::Bdat { size, last } => {
                let refuse = if !self.ext.chunking {
                    Some(Reply::NOT_IMPLEMENTED)
                } else {
                    self.check_body_start(BodyKind::Bdat)
                };
                if refuse.is_none() && self.txn.body_kind.is_none() {
                    self.txn.body_kind = Some(BodyKind::Bdat);
                    self.checker.reset();
                    self.notices.push_back(Notice::BodyStart(BodyKind::Bdat));
                }
                self.phase = Phase::Bdat {
                    remaining: size,
                    last,
                    refuse,
                };
                self.arm(self.config.timeouts.data);
                Outcome::Done
            }
            Cmd::Rset => {
                self.reset_transaction();
                Outcome::Reply(Reply::RESET_OK)
            }
            Cmd::Noop => Outcome::Reply(Reply::OK),
            Cmd::Quit => {
                self.abort_body(AbortReason::Disconnected);
                let r = Reply::new(221, EnhancedCode::new(2, 0, 0), "Bye");
                self.queue(&r);
                self.close(CloseReason::Quit);
                Outcome::Done
            }
            Cmd::Verify if self.config.require_tls && !self.is_tls() => {
                Outcome::Error(Reply::TLS_REQUIRED)
            }
            Cmd::Verify => Outcome::Decide(Pending::Verify),
            Cmd::Help => {
                if self.ext.help {
                    Outcome::Reply(Reply::HELP)
                } else {
                    Outcome::Error(Reply::NOT_IMPLEMENTED)
                }
            }
            Cmd::StartTls => {
                if self.is_tls() {
                    return Outcome::Error(Reply::TLS_ALREADY_ACTIVE);
                }
                if !self.ext.starttls {
                    return Outcome::Error(Reply::NOT_IMPLEMENTED);
                }
                self.queue(&Reply::READY_TLS);
                if more_input {
                    self.notices
                        .push_back(Notice::Violation(Violation::StartTlsInjection));
                }
                self.reset_transaction();
                // The handshake must finish within the command timeout.
                self.phase = Phase::StartTls;
                self.notices.push_back(Notice::StartTls);
                Outcome::Done
            }
            Cmd::Auth(start) => self.start_auth(start),
        }
    }

    fn check_mail_params(&self, p: &MailSummary) -> Option<Reply> {
        let e = &self.ext;
        let unknown = (p.size.is_some() && !e.size)
            || (p.body == Some(BodyType::EightBitMime) && !e.eightbitmime)
            || (p.body == Some(BodyType::BinaryMime) && !(e.binarymime && e.chunking))
            || (p.smtputf8 && !e.smtputf8)
            || (p.dsn && !e.dsn)
            || (p.auth && !self.auth_offered())
            || (p.requiretls && !(e.requiretls && self.is_tls()));
        if unknown {
            return Some(Reply::UNKNOWN_PARAMETER);
        }
        let max = self.config.limits.max_message_size;
        if max > 0 && p.size.is_some_and(|s| s > max) {
            return Some(Reply::MESSAGE_TOO_BIG);
        }
        None
    }

    fn check_body_start(&self, kind: BodyKind) -> Option<Reply> {
        if !self.txn.mail {
            return Some(Reply::NEED_MAIL);
        }
        if self.txn.recipients == 0 {
            return Some(if self.config.lmtp {
                Reply::NEED_RCPT
            } else {
                Reply::NO_VALID_RECIPIENTS
            });
        }
        match (self.txn.body_kind, kind) {
            (Some(BodyKind::Bdat), BodyKind::Data) => Some(Reply::MIXED_DATA_BDAT),
            _ => None,
        }
    }

    fn auth_offered(&self) -> bool {
        !self.config.auth.mechanisms.is_empty()
            && (self.is_tls() || self.config.auth.allow_plaintext)
    }

    fn start_auth(&mut self, start: Option<(Mechanism, SaslExchange, SaslStep)>) -> Outcome {
        if self.config.require_tls && !self.is_tls() {
            return Outcome::Error(Reply::TLS_REQUIRED);
        }
        if self.config.auth.mechanisms.is_empty() {
            return Outcome::Error(Reply::NOT_IMPLEMENTED);
        }
        if !self.auth_offered() {
            return Outcome::Error(Reply::AUTH_NEEDS_TLS);
        }
        if self.helo.is_none() {
            return Outcome::Error(if self.config.lmtp {
                Reply::NEED_LHLO
            } else {
                Reply::NEED_HELO
            });
        }
        if self.authenticated.is_some() {
            return Outcome::Error(Reply::ALREADY_AUTHENTICATED);
        }
        if self.txn.mail {
            return Outcome::Error(Reply::AUTH_IN_TRANSACTION);
        }
        let Some((_, exchange, step)) =
            start.filter(|(m, _, _)| self.config.auth.mechanisms.contains(m))
        else {
            return Outcome::Error(Reply::AUTH_MECHANISM_UNKNOWN);
        };
        self.phase = Phase::Auth(exchange);
        self.sasl_outcome(step)
    }

    fn step_auth_line(&mut self, len: usize) -> Step {
        let line = &self.input[self.start..self.start + len - 2];
        let step = match (&mut self.phase, std::str::from_utf8(line)) {
            (Phase::Auth(ex), Ok(text)) => ex.step(text),
            (_, _) => SaslStep::Failed(SaslError::Base64),
        };
        self.consume(len);
        match self.sasl_outcome(step) {
            Outcome::Emit(e) => Step::Emit(e),
            Outcome::Reply(r) => {
                self.queue(&r);
                Step::Continue
            }
            Outcome::Error(r) => {
                self.queue_counted(&r);
                Step::Continue
            }
            Outcome::Done | Outcome::Decide(_) => Step::Continue,
        }
    }

    fn sasl_outcome(&mut self, step: SaslStep) -> Outcome {
        match step {
            SaslStep::Challenge(text) => Outcome::Reply(Reply::plain(334, text)),
            SaslStep::Done(credentials) => {
                self.phase = Phase::Command;
                self.auth_user = Some(credentials.username.clone());
                let _t = self.new_ticket(Pending::Auth);
                Outcome::Emit(Emit::Auth(credentials))
            }
            SaslStep::Cancelled => {
                self.phase = Phase::Command;
                Outcome::Error(Reply::AUTH_CANCELLED)
            }
            SaslStep::Failed(e) => {
                self.phase = Phase::Command;
                Outcome::Error(match e {
                    SaslError::Base64 => Reply::AUTH_BAD_BASE64,
                    _ => Reply::AUTH_MALFORMED,
                })
            }
        }
    }

    fn step_data(&mut self) -> Step {
        let buf = &self.input[self.start..self.end];
        match self.decoder.decode(buf) {
            DecodeStep::NeedMore { consumed } => {
                self.consume(consumed);
                if consumed == 0 {
                    Step::Idle
                } else {
                    Step::Continue
                }
            }
            DecodeStep::Chunk {
                start,
                end,
                consumed,
            } => {
                if self.looks_for_nul() && memchr::memchr(0, &buf[start..end]).is_some() {
                    self.txn.nul = true;
                }
                let len = (end - start) as u64;
                self.txn.body_len += len;
                let max = self.config.limits.max_message_size;
                if max > 0 && self.txn.body_len > max {
                    self.txn.too_big = true;
                }
                if self.body_doomed() || end == start {
                    self.consume(consumed);
                    return if consumed == 0 {
                        Step::Idle
                    } else {
                        Step::Continue
                    };
                }
                let abs = self.start;
                self.release = consumed;
                Step::Emit(Emit::Body {
                    start: abs + start,
                    end: abs + end,
                })
            }
            DecodeStep::End { consumed } => {
                self.consume(consumed);
                self.arm(self.config.timeouts.command);
                let bare = self.decoder.saw_bare_lf() || self.decoder.saw_bare_cr();
                let reason = self.content_refusal(bare, self.decoder.saw_long_line());
                self.finish_body(reason)
            }
        }
    }

    /// Whether body chunks are searched for NUL octets: a text body under
    /// the refusing policy, not already refused.
    fn looks_for_nul(&self) -> bool {
        self.config.limits.nul_bytes == ContentPolicy::Reject
            && !self.txn.nul
            && self.txn.body != BodyType::BinaryMime
    }

    /// Why a complete body must be refused, if it must (size, then the
    /// line-ending, NUL and line-length policies; BINARYMIME is exempt from
    /// those three).
    fn content_refusal(&self, bare: bool, long_line: bool) -> Option<AbortReason> {
        let limits = &self.config.limits;
        let text = self.txn.body != BodyType::BinaryMime;
        if self.txn.too_big {
            Some(AbortReason::TooBig)
        } else if text && bare && limits.bare_line_endings == ContentPolicy::Reject {
            Some(AbortReason::BareLineEnding)
        } else if text && self.txn.nul && limits.nul_bytes == ContentPolicy::Reject {
            Some(AbortReason::NulByte)
        } else if text && long_line && limits.long_lines == ContentPolicy::Reject {
            Some(AbortReason::LongLine)
        } else {
            None
        }
    }

    /// Whether the body seen so far is already refused (then it is not
    /// handed out any more, only read to its end).
    fn body_doomed(&self) -> bool {
        let bare = self.decoder.saw_bare_lf() || self.decoder.saw_bare_cr();
        self.content_refusal(bare, false).is_some()
    }

    fn finish_body(&mut self, reason: Option<AbortReason>) -> Step {
        match reason {
            Some(reason) => {
                self.phase = Phase::Command;
                self.notices.push_back(Notice::Aborted(reason));
                let reply = match reason {
                    AbortReason::TooBig => Reply::MESSAGE_TOO_BIG,
                    AbortReason::BareLineEnding => Reply::BARE_LF_DATA,
                    AbortReason::NulByte => Reply::NUL_DATA,
                    _ => Reply::DATA_LINE_TOO_LONG,
                };
                self.queue_message_refusal(&reply);
                Step::Continue
            }
            None => {
                let _t = self.new_ticket(Pending::MessageEnd);
                Step::Emit(Emit::MessageEnd)
            }
        }
    }

    fn step_bdat(&mut self) -> Step {
        let Phase::Bdat {
            remaining,
            last,
            ref refuse,
        } = self.phase
        else {
            return Step::Idle;
        };
        let refused = refuse.is_some();
        if remaining == 0 {
            let refuse = match std::mem::replace(&mut self.phase, Phase::Command) {
                Phase::Bdat { refuse, .. } => refuse,
                _ => None,
            };
            self.arm(self.config.timeouts.command);
            if let Some(r) = refuse {
                if self.txn.body_kind == Some(BodyKind::Bdat) {
                    self.notices
                        .push_back(Notice::Aborted(AbortReason::Refused));
                    self.txn = Transaction::default();
                }
                self.queue_counted(&r);
                return Step::Continue;
            }
            if self.txn.too_big {
                self.notices.push_back(Notice::Aborted(AbortReason::TooBig));
                if last {
                    self.queue_message_refusal(&Reply::MESSAGE_TOO_BIG);
                } else {
                    self.txn = Transaction::default();
                    self.queue_counted(&Reply::MESSAGE_TOO_BIG);
                }
                return Step::Continue;
            }
            if !last {
                let r = Reply::new(
                    250,
                    EnhancedCode::new(2, 0, 0),
                    format!("{} octets received", self.txn.body_len),
                );
                self.queue(&r);
                return Step::Continue;
            }
            self.checker.finish();
            let bare = self.checker.saw_bare_lf() || self.checker.saw_bare_cr();
            let reason = self.content_refusal(bare, self.checker.saw_long_line());
            return self.finish_body(reason);
        }
        let avail = (self.end - self.start) as u64;
        if avail == 0 {
            return Step::Idle;
        }
        let n = avail.min(remaining) as usize;
        if let Phase::Bdat { remaining, .. } = &mut self.phase {
            *remaining -= n as u64;
        }
        let range = self.start..self.start + n;
        if refused {
            self.consume(n);
            return Step::Continue;
        }
        self.txn.body_len += n as u64;
        let max = self.config.limits.max_message_size;
        if max > 0 && self.txn.body_len > max {
            self.txn.too_big = true;
        }
        if self.txn.too_big {
            self.consume(n);
            return Step::Continue;
        }
        if self.looks_for_nul() && memchr::memchr(0, &self.input[range.clone()]).is_some() {
            self.txn.nul = true;
        }
        self.checker.feed(&self.input[range.clone()]);
        self.release = n;
        Step::Emit(Emit::Body {
            start: range.start,
            end: range.end,
        })
    }

    // ----- helpers -----

    /// The input buffer's size: never smaller than a maximal line.
    fn input_capacity(&self) -> usize {
        let l = &self.config.limits;
        l.input_buffer
            .max(MIN_INPUT)
            .max(l.max_command_line + MAX_PARAM_ROOM + 2)
    }

    /// Marks `n` input bytes as processed (nothing once closed: closing
    /// already dropped the whole buffer).
    fn consume(&mut self, n: usize) {
        if !self.is_closed() {
            self.start = (self.start + n).min(self.end);
        }
    }

    fn apply_release(&mut self) {
        if self.release > 0 {
            self.start += self.release;
            self.release = 0;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn arm(&mut self, d: Duration) {
        self.arm_from(self.now, d);
    }

    fn arm_from(&mut self, now: Instant, d: Duration) {
        self.deadline = now.checked_add(d);
    }

    fn queue(&mut self, reply: &Reply) {
        // RFC 2034: enhanced codes go to clients that saw them advertised
        // (not to HELO clients).
        let enhanced = self.ext.enhanced_status_codes && self.helo != Some(HeloKind::Helo);
        reply.write_to(&mut self.out, enhanced);
    }

    fn queue_greeting(&mut self, reply: &Reply) {
        self.queue(reply);
        self.greeting_queued = true;
        self.phase = Phase::Command;
        self.arm(self.config.timeouts.command);
        if self.end > self.start {
            self.violation(Violation::PreGreeting);
        }
    }

    /// Queues an error reply and counts it against the error limits.
    fn queue_counted(&mut self, reply: &Reply) {
        self.queue(reply);
        self.count_error();
    }

    /// Refuses a complete message: in LMTP one reply per accepted recipient
    /// (RFC 2033 §4.2); the transaction is over.
    fn queue_message_refusal(&mut self, reply: &Reply) {
        let n = if self.config.lmtp {
            self.txn.recipients.max(1)
        } else {
            1
        };
        self.txn = Transaction::default();
        for _ in 1..n {
            self.queue(reply);
        }
        self.queue_counted(reply);
    }

    fn count_error(&mut self) {
        self.errors += 1;
        let limits = &self.config.limits;
        if self.errors >= limits.hard_error_limit {
            self.queue(&Reply::TOO_MANY_ERRORS);
            self.close(CloseReason::TooManyErrors);
        } else if self.errors > limits.soft_error_limit {
            self.notices.push_back(Notice::Throttle(limits.error_delay));
        }
    }

    fn count_junk(&mut self) {
        self.junk += 1;
        if self.junk > self.config.limits.junk_command_limit {
            self.count_error();
        }
    }

    fn violation(&mut self, v: Violation) {
        self.notices.push_back(Notice::Violation(v));
        if self.config.violations == ViolationPolicy::Disconnect && !self.is_closed() {
            self.abort_body(AbortReason::Shutdown);
            self.queue(&Reply::PROTOCOL_VIOLATION);
            self.close(CloseReason::Violation);
        }
    }

    fn reset_transaction(&mut self) {
        if self.txn.mail {
            self.notices.push_back(Notice::Reset);
        }
        self.txn = Transaction::default();
    }

    fn abort_body(&mut self, reason: AbortReason) {
        // A complete body awaiting its decision was not cut off.
        if self.txn.body_kind.is_some() && !matches!(self.pending, Some((_, Pending::MessageEnd))) {
            self.notices.push_back(Notice::Aborted(reason));
            self.txn = Transaction::default();
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.is_closed() {
            self.phase = Phase::Closed;
            self.deadline = None;
            self.start = 0;
            self.end = 0;
            self.scan = 0;
            self.release = 0;
            self.poisoned = false;
            self.pending_line = 0;
            self.decided = None;
            self.notices.push_back(Notice::Closing(reason));
        }
    }

    fn ehlo_reply(&self, first: Option<&str>) -> Reply {
        use std::fmt::Write;
        let e = &self.ext;
        let mut t = String::with_capacity(256);
        match first {
            Some(f) => t.push_str(f),
            None => t.push_str(&self.config.hostname),
        }
        let max = self.config.limits.max_message_size;
        let mut kw = |s: &str| {
            t.push('\n');
            t.push_str(s);
        };
        if e.pipelining {
            kw("PIPELINING");
        }
        if e.size {
            if max > 0 {
                kw(&format!("SIZE {max}"));
            } else {
                kw("SIZE");
            }
        }
        if e.eightbitmime {
            kw("8BITMIME");
        }
        if e.enhanced_status_codes {
            kw("ENHANCEDSTATUSCODES");
        }
        if e.smtputf8 {
            kw("SMTPUTF8");
        }
        if e.chunking {
            kw("CHUNKING");
            if e.binarymime {
                kw("BINARYMIME");
            }
        }
        if e.dsn {
            kw("DSN");
        }
        if e.requiretls && self.is_tls() {
            kw("REQUIRETLS");
        }
        if e.limits {
            kw(&format!(
                "LIMITS RCPTMAX={}",
                self.config.limits.max_recipients
            ));
        }
        if e.starttls && !self.is_tls() {
            kw("STARTTLS");
        }
        if self.auth_offered() && self.authenticated.is_none() {
            let mut line = String::from("AUTH");
            for m in &self.config.auth.mechanisms {
                let _ = write!(line, " {}", m.name());
            }
            kw(&line);
        }
        if e.help {
            kw("HELP");
        }
        for k in &self.extra_keywords {
            kw(k);
        }
        Reply::plain(250, t)
    }
}

/// The smallest input buffer: a PROXY v2 header or an AUTH line must fit.
const MIN_INPUT: usize = MAX_AUTH_LINE + 64;

// What each extension's parameter may add to a MAIL or RCPT line
// (RFC 1869 §4.1.2), leading space included.
/// ` SIZE=` and 20 digits (RFC 1870 §3: 26).
const ROOM_SIZE: usize = 26;
/// ` BODY=BINARYMIME` (RFC 6152, RFC 3030).
const ROOM_BODY: usize = 16;
/// ` SMTPUTF8` (RFC 6531 §3.4: 10).
const ROOM_SMTPUTF8: usize = 10;
/// ` RET=HDRS` (RFC 3461 §4.3).
const ROOM_RET: usize = 9;
/// ` ENVID=` and 100 octets (RFC 3461 §4.4).
const ROOM_ENVID: usize = 107;
/// ` AUTH=` value (RFC 4954 §5: 500).
const ROOM_AUTH: usize = 500;
/// ` REQUIRETLS` (RFC 8689).
const ROOM_REQUIRETLS: usize = 11;
/// ` NOTIFY=SUCCESS,FAILURE,DELAY` (RFC 3461 §4.1).
const ROOM_NOTIFY: usize = 29;
/// ` ORCPT=` and 500 octets (RFC 3461 §4.2).
const ROOM_ORCPT: usize = 507;
/// The most any MAIL or RCPT line may add.
const MAX_PARAM_ROOM: usize =
    ROOM_SIZE + ROOM_BODY + ROOM_SMTPUTF8 + ROOM_RET + ROOM_ENVID + ROOM_AUTH + ROOM_REQUIRETLS;

/// What [`Session::next_line`] found.
#[derive(Debug)]
enum Line {
    /// A command line of this many octets, CRLF included (not consumed).
    Complete(usize),
    /// A refused line (consumed): answer this.
    Refused(Reply),
    /// The rest of a line answered at its bare LF (consumed): no answer.
    Dropped,
}

/// The greeting text after the host name: in LMTP a leading `ESMTP` word
/// says `LMTP` instead.
fn greeting_text(config: &Config) -> std::borrow::Cow<'_, str> {
    let g = config.greeting.as_str();
    match g.strip_prefix("ESMTP") {
        Some(rest) if config.lmtp && (rest.is_empty() || rest.starts_with(' ')) => {
            format!("LMTP{rest}").into()
        }
        _ => g.into(),
    }
}

/// The input buffer's first size, until a body or a long line needs more.
const INITIAL_INPUT: usize = 1024;

/// What the state machine needs of a parsed command (owned, so the
/// input buffer is free again).
#[derive(Debug)]
enum Cmd {
    Helo(HeloKind),
    Mail(MailSummary),
    Rcpt { dsn: bool },
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    Verify,
    Help,
    StartTls,
    Auth(Option<(Mechanism, SaslExchange, SaslStep)>),
}

#[derive(Debug)]
struct MailSummary {
    size: Option<u64>,
    body: Option<BodyType>,
    smtputf8: bool,
    dsn: bool,
    auth: bool,
    requiretls: bool,
}

impl From<&Command<'_>> for Cmd {
    fn from(c: &Command<'_>) -> Self {
        match *c {
            Command::Helo { .. } => Cmd::Helo(HeloKind::Helo),
            Command::Ehlo { .. } => Cmd::Helo(HeloKind::Ehlo),
            Command::Lhlo { .. } => Cmd::Helo(HeloKind::Lhlo),
            Command::Mail { ref params, .. } => Cmd::Mail(MailSummary {
                size: params.size,
                body: params.body,
                smtputf8: params.smtputf8,
                dsn: params.ret.is_some() || params.envid.is_some(),
                auth: params.auth.is_some(),
                requiretls: params.requiretls,
            }),
            Command::Rcpt { ref params, .. } => Cmd::Rcpt {
                dsn: params.notify.is_some() || params.orcpt.is_some(),
            },
            Command::Data => Cmd::Data,
            Command::Bdat { size, last } => Cmd::Bdat { size, last },
            Command::Rset => Cmd::Rset,
            Command::Noop => Cmd::Noop,
            Command::Quit => Cmd::Quit,
            Command::Vrfy { .. } | Command::Expn { .. } => Cmd::Verify,
            Command::Help { .. } => Cmd::Help,
            Command::StartTls => Cmd::StartTls,
            Command::Auth { mechanism, initial } => {
                Cmd::Auth(Mechanism::from_name(mechanism).map(|m| {
                    let (ex, step) = SaslExchange::start(m, initial);
                    (m, ex, step)
                }))
            }
        }
    }
}

/// Commands after which a client must wait for the reply (RFC 2920 §3.1).
fn is_sync_point(c: &Command<'_>) -> bool {
    matches!(
        c,
        Command::Helo { .. }
            | Command::Ehlo { .. }
            | Command::Lhlo { .. }
            | Command::Data
            | Command::Vrfy { .. }
            | Command::Expn { .. }
            | Command::Noop
            | Command::Quit
            | Command::Help { .. }
            | Command::StartTls
            | Command::Auth { initial: None, .. }
    )
}

/// What a command does.
#[derive(Debug)]
enum Outcome {
    /// Ask the application.
    Decide(Pending),
    /// Queue this reply.
    Reply(Reply),
    /// Queue this reply and count an error.
    Error(Reply),
    /// The state was updated and any reply queued.
    Done,
    /// Hand out this event (the line is consumed).
    Emit(Emit),
}

fn parse_error_reply(e: ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => Reply::UNKNOWN_COMMAND,
        ParseError::Syntax => Reply::SYNTAX_ERROR,
        ParseError::BadSender => Reply::BAD_SENDER,
        ParseError::BadRecipient => Reply::BAD_RECIPIENT,
        ParseError::UnknownParameter => Reply::UNKNOWN_PARAMETER,
        ParseError::BadParameterValue => Reply::BAD_PARAMETER,
        ParseError::Utf8NotPermitted => Reply::UTF8_NOT_PERMITTED,
    }
}

/// The argument of a HELO/EHLO/LHLO line (with CRLF).
fn helo_argument(line: &[u8]) -> &str {
    let text = std::str::from_utf8(line).unwrap_or("");
    let text = text.trim_end_matches(['\r', '\n']);
    text.get(4..).unwrap_or("").trim()
}

/// The decision event for a decided command (HELO/EHLO/LHLO, MAIL, RCPT,
/// VRFY, EXPN) parsed from the pending line.
pub(crate) fn command_event(cmd: Command<'_>, ticket: Ticket) -> Event<'_> {
    match cmd {
        Command::Helo { domain } => Event::Helo {
            ticket,
            kind: HeloKind::Helo,
            domain,
        },
        Command::Ehlo { domain } => Event::Helo {
            ticket,
            kind: HeloKind::Ehlo,
            domain,
        },
        Command::Lhlo { domain } => Event::Helo {
            ticket,
            kind: HeloKind::Lhlo,
            domain,
        },
        Command::Mail { from, params } => Event::Mail {
            ticket,
            from,
            params,
        },
        Command::Rcpt { to, params } => Event::Rcpt { ticket, to, params },
        Command::Vrfy { arg } => Event::Verify {
            ticket,
            arg,
            expand: false,
        },
        Command::Expn { arg } => Event::Verify {
            ticket,
            arg,
            expand: true,
        },
        _ => unreachable_command(ticket),
    }
}

#[cold]
fn unreachable_command(ticket: Ticket) -> Event<'static> {
    // Only reachable if parse_command were not deterministic.
    Event::Verify {
        ticket,
        arg: "",
        expand: false,
    }
}
