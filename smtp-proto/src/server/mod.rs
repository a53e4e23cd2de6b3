//! The server session: a pure SMTP/LMTP state machine.
//!
//! A [`Session`] is one connection's protocol state. It owns no socket, reads
//! no clock and starts no thread: the caller moves bytes and time in and out.
//!
//! # The calling contract
//!
//! [`Session`] implements [`Drive`](crate::drive::Drive), the contract it
//! shares with the client: the [drive loop](crate::drive#the-drive-loop)
//! is written there once. What is particular to the server:
//! - [`Session::poll`] hands out [`Event`]s. Events that need a decision
//!   carry a [`Ticket`]; nothing more is parsed until it is answered with
//!   [`Session::respond`] (or [`Session::respond_each`] for LMTP message
//!   ends), which takes the time of the answer. The answer may come much
//!   later, from an async task; meanwhile the session says
//!   [`Instruction::AwaitingDecision`].
//! - Replies leave in command order, so PIPELINING needs nothing from the caller.
//! - [`Session::shutdown`] and [`Session::abort`] end the session from the
//!   server's side.
//!
//! Client misbehaviour is answered with an SMTP reply (and sometimes an
//! informational event); `Err` is only for misuse of this API.
//!
//! # Theory of operation
//!
//! Rules of this module (each file below keeps to them):
//! 1. Everything that affects the protocol state lives in [`Session`]; the
//!    caller only moves bytes and time.
//! 2. **line → command → outcome → event.** The input buffer (`input.rs`)
//!    frames one complete line (CRLF only: a bare LF is answered, an
//!    over-long line is poisoned to its end and answered once); the
//!    command semantics (`verbs.rs`) turn it into a command and an outcome:
//!    a reply the core gives itself, or an event that needs a decision.
//! 3. **Nothing is parsed while a decision is pending** (`decision.rs`):
//!    the event carries a [`Ticket`], the answer queues the reply, and only
//!    then is the next pipelined line looked at. So replies leave in command
//!    order, and an async handler can answer much later.
//! 4. Replies are written to one bounded output queue (`output.rs`); past
//!    [`crate::config::Limits::max_pending_output`] the session stops
//!    reading instead of buffering more.
//! 5. Bodies (`body.rs`) go out as borrowed, dot-unstuffed chunks; the end
//!    of data is only `CRLF . CRLF`, and the content policies (bare LF/CR,
//!    NUL, long lines, size) are checked as the bytes pass.
//! 6. Time is an input (`time.rs`): deadlines move only when a complete
//!    command arrives, so a client trickling bytes cannot keep a session.
//! 7. AUTH (`auth.rs`) reads SASL responses line by line with its own
//!    line bound; credentials never reach `Debug` output.
//! 8. The state is split by owner: line framing (`Framing`, input.rs),
//!    decision plumbing (`Decisions`, decision.rs), deadlines (`Timing`,
//!    time.rs), counters; the input and output buffers and the clock are
//!    the types the client uses too (`buffers.rs`, tested there).
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
//!     let now = Instant::now();
//!     s.receive(input, now);
//!     while let Some(ev) = s.poll().event() {
//!         match ev {
//!             Event::Body(chunk) => body.extend_from_slice(chunk),
//!             ev => if let Some(ticket) = ev.into_ticket() {
//!                 s.respond(ticket, Decision::Accept, now).unwrap();
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

use crate::buffers::{Clock, InBuf, OutBuf};
use crate::command::{
    BodyType, Command, ForwardAttr, ForwardPath, ForwardValue, MailParams, ParseError, RcptParams,
    ReversePath,
};
use crate::config::{Config, Extensions, ViolationPolicy};
use crate::data::{DataDecoder, LineChecker};
use crate::decided::Decided;
pub use crate::drive::{Instruction, Misuse, Output, TlsInfo};
use crate::parse::parse_command;
use crate::reply::Reply;
use crate::sasl::{Credentials, Mechanism, SaslAnswer, SaslExchange, SaslRequest, SaslStep};
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod auth;
mod body;
mod decision;
mod forward;
mod input;
mod output;
mod time;
mod verbs;

/// The longest AUTH response line (RFC 4954 §4: 12288 octets).
const MAX_AUTH_LINE: usize = 12288 + 2;

/// Who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// The client's address (replaced by the PROXY header's source when one is used).
    pub remote: Option<SocketAddr>,
    /// Our address (replaced by the PROXY header's destination when one is used).
    pub local: Option<SocketAddr>,
    /// Set when the connection is TLS from the start (implicit TLS, RFC 8314).
    pub tls: Option<TlsInfo>,
    /// The client's host name as a front proxy reported it (XCLIENT
    /// `NAME`); `None` when not known.
    pub name: Option<String>,
    /// How the client greeted the front proxy (XCLIENT `PROTO`: `SMTP` or
    /// `ESMTP`).
    pub proto: Option<String>,
    /// The front proxy whose XCLIENT replaced `remote` (the address the
    /// connection really came from); `None` without XCLIENT.
    pub proxied_by: Option<SocketAddr>,
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

/// The original client's facts a content filter passed with XFORWARD
/// (Postfix's XFORWARD_README), for the current transaction: recorded until
/// the message ends or the transaction is reset. `None` fields were not
/// sent, or sent as `[UNAVAILABLE]`/`[TEMPUNAVAIL]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarded {
    /// `NAME`: the original client's host name.
    pub name: Option<String>,
    /// `ADDR`: the original client's address.
    pub addr: Option<std::net::IpAddr>,
    /// `PORT`: the original client's port.
    pub port: Option<u16>,
    /// `PROTO`: how the original client greeted (`SMTP`, `ESMTP`).
    pub proto: Option<String>,
    /// `HELO`: the original client's HELO or EHLO argument.
    pub helo: Option<String>,
    /// `IDENT`: the upstream queue id or session id.
    pub ident: Option<String>,
    /// `SOURCE`: `LOCAL` or `REMOTE`.
    pub source: Option<String>,
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
    /// The session's nonce: a ticket from another session is refused.
    session: u64,
    seq: u64,
}

#[cfg(test)]
impl Ticket {
    pub(crate) fn for_test(seq: u64) -> Ticket {
        Ticket { session: 0, seq }
    }
}

/// Session nonces (no two live sessions of a process share one).
static NONCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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
    /// A SASL exchange (CRAM-MD5, SCRAM, XOAUTH2, OAUTHBEARER) needs the
    /// application: a challenge, a user's keys, a proof or a token checked.
    /// Answer with [`Session::respond_sasl`] (a refusing [`Decision`] via
    /// [`Session::respond`] ends the exchange with that reply).
    Sasl {
        /// Answer with [`Session::respond_sasl`].
        ticket: Ticket,
        /// What the mechanism needs (secrets hidden from `Debug`).
        request: SaslRequest,
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
    /// A hygiene violation was seen.
    Violation(Violation),
    /// The session is closing, and why ([`Instruction::Closed`] follows).
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
            | Event::Sasl { ticket, .. }
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
    Violation(Violation),
    Closing(CloseReason),
}

impl Notice {
    fn into_event<'a>(self) -> Event<'a> {
        match self {
            Notice::BodyStart(kind) => Event::BodyStart { kind },
            Notice::Aborted(r) => Event::MessageAborted(r),
            Notice::Reset => Event::Reset,
            Notice::Violation(v) => Event::Violation(v),
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
    Sasl,
    MessageEnd,
}

/// What a decision event will be made of, once the state is updated.
#[derive(Debug)]
enum Emit {
    /// Re-parse the pending command line (it stays in the buffer).
    Command,
    Connect,
    Auth(Credentials),
    Sasl(SaslRequest),
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
    /// XFORWARD facts, sent before MAIL, for this transaction.
    forwarded: Option<Box<Forwarded>>,
}

/// One SMTP/LMTP server session. See the [module docs](self) for the contract.
pub struct Session {
    config: Arc<Config>,
    ext: Extensions,
    extra_keywords: Vec<String>,
    peer: PeerInfo,
    phase: Phase,
    /// Input: `inb.buf[inb.start..inb.end]` is unprocessed.
    inb: InBuf,
    framing: Framing,
    decisions: Decisions,
    /// Replies to send.
    out: OutBuf,
    greeting_queued: bool,
    greeting_sent: bool,
    // Protocol state.
    helo: Option<HeloKind>,
    helo_name: String,
    authenticated: Option<String>,
    /// The user name of an AUTH exchange awaiting its decision.
    auth_user: Option<String>,
    txn: Transaction,
    decoder: DataDecoder,
    checker: LineChecker,
    counts: Counts,
    shutting_down: bool,
    timing: Timing,
}

/// Line framing over the input buffer (`input.rs`).
#[derive(Debug, Default)]
struct Framing {
    /// Bytes after `inb.start` already searched for a line end.
    scan: usize,
    /// Discarding an over-long line until its CRLF.
    poisoned: bool,
    /// While poisoned: the last discarded byte was a CR.
    scan_cr: bool,
    /// The line being scanned follows a bare LF that was already answered:
    /// its rest, up to the CRLF, is dropped without a second answer.
    after_bare_lf: bool,
    /// Bytes at `inb.start` to drop on the next call (the last Body event).
    release: usize,
}

/// Decision plumbing: events out, tickets in (`decision.rs`).
#[derive(Debug)]
struct Decisions {
    notices: VecDeque<Notice>,
    /// An event [`Session::has_event`] prepared and [`Session::poll`] hands out next.
    ready: Option<Emit>,
    /// The ticket's number and what it decides.
    pending: Option<(u64, Pending)>,
    seq: u64,
    /// This session's ticket nonce.
    nonce: u64,
    /// Length of the command line (with CRLF) waiting for a decision.
    pending_line: usize,
    /// The pending line's command, parsed (see [`Decided`]).
    decided: Option<Decided>,
}

/// Deadlines (`time.rs`): time is an input.
#[derive(Debug)]
struct Timing {
    clock: Clock,
    /// When the client's time is up.
    deadline: Option<Instant>,
    /// When the last input arrived (for releasing idle buffers).
    last_input: Instant,
    /// The buffers were released since that input (released once per
    /// silence: an adapter's next read wants a small buffer again).
    released: bool,
    /// Past the soft error limit: no more replies until then.
    throttle_until: Option<Instant>,
}

/// What the session counted.
#[derive(Debug, Default)]
struct Counts {
    messages: u32,
    errors: u32,
    junk: u32,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .field("helo", &self.helo)
            .field("authenticated", &self.authenticated.is_some())
            .field("pending", &self.decisions.pending)
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
            inb: InBuf::default(),
            framing: Framing::default(),
            decisions: Decisions {
                notices: VecDeque::new(),
                ready: None,
                pending: None,
                seq: 0,
                nonce: NONCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                pending_line: 0,
                decided: None,
            },
            out: OutBuf::default(),
            greeting_queued: false,
            greeting_sent: false,
            helo: None,
            helo_name: String::new(),
            authenticated: None,
            auth_user: None,
            txn: Transaction::default(),
            counts: Counts::default(),
            shutting_down: false,
            timing: Timing {
                clock: Clock::new(now),
                deadline,
                last_input: now,
                released: false,
                throttle_until: None,
            },
            config,
        }
    }

    // ----- getters -----

    /// The configuration.
    #[inline]
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The peer (after the PROXY header, if any).
    #[inline]
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The HELO/EHLO/LHLO name, once accepted.
    #[inline]
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.map(|_| self.helo_name.as_str())
    }

    /// The greeting command used, once accepted.
    #[inline]
    pub fn helo_kind(&self) -> Option<HeloKind> {
        self.helo
    }

    /// Whether the connection is under TLS.
    #[inline]
    pub fn is_tls(&self) -> bool {
        self.peer.tls.is_some()
    }

    /// The authenticated user name, if AUTH succeeded.
    #[inline]
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The original client's facts XFORWARD passed for the current
    /// transaction (kept from before MAIL until the transaction ends).
    #[inline]
    pub fn forwarded(&self) -> Option<&Forwarded> {
        self.txn.forwarded.as_deref()
    }

    /// Whether the current transaction said SMTPUTF8.
    #[inline]
    pub fn is_smtputf8(&self) -> bool {
        self.txn.smtputf8
    }

    /// The current transaction's BODY type.
    #[inline]
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
    #[inline]
    pub fn is_waiting(&self) -> bool {
        self.decisions.pending.is_some()
    }

    /// Whether the session is over: once [`Session::transmit`] is empty,
    /// close the connection.
    #[inline]
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the caller should read from the socket now. False while the
    /// input buffer is full, while replies pile up unread (backpressure),
    /// while throttled, while an event staged by [`Session::has_event`]
    /// waits for [`Session::poll`], during the STARTTLS handshake, and once
    /// closed.
    #[inline]
    pub fn wants_read(&self) -> bool {
        !matches!(self.phase, Phase::Closed | Phase::StartTls)
            && self.timing.throttle_until.is_none()
            && self.decisions.ready.is_none()
            && !self.output_full()
            && self.inb.len() < self.input_capacity()
    }

    /// Whether there are bytes to write.
    #[inline]
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// The TLS handshake after [`Instruction::StartTls`] succeeded: the session
    /// forgets everything learned before (RFC 3207 §4.2) and expects EHLO.
    pub fn tls_established(&mut self, info: TlsInfo, now: Instant) -> Result<(), Misuse> {
        if !matches!(self.phase, Phase::StartTls) {
            return Err(Misuse::NotStartingTls);
        }
        self.timing.clock.advance(now);
        self.peer.tls = Some(info);
        self.ext.starttls = false;
        self.helo = None;
        self.helo_name.clear();
        self.authenticated = None;
        self.txn = Transaction::default();
        self.inb.start = self.inb.end;
        self.framing.scan = 0;
        self.phase = Phase::Command;
        self.arm(self.config.timeouts.command);
        Ok(())
    }

    /// The TLS handshake failed: the session closes without a reply (the
    /// stream is no longer plaintext SMTP).
    pub fn tls_failed(&mut self, now: Instant) {
        self.timing.clock.advance(now);
        self.out.clear();
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
            && self.decisions.pending.is_none()
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
        self.decisions.pending = None;
        self.abort_body(AbortReason::Shutdown);
        if !matches!(self.phase, Phase::Proxy | Phase::StartTls) {
            self.queue(&reply);
        }
        self.close(reason);
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.is_closed() {
            self.phase = Phase::Closed;
            self.timing.deadline = None;
            self.inb.clear();
            self.framing.scan = 0;
            self.framing.release = 0;
            self.framing.poisoned = false;
            self.decisions.pending_line = 0;
            self.decisions.decided = None;
            self.timing.throttle_until = None;
            self.decisions.notices.push_back(Notice::Closing(reason));
        }
    }
}

crate::drive::forward_drive!(Session, Event<'a>);

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
/// The most any MAIL or RCPT line may add (MAIL's parameters; RCPT's add
/// less, which the assertion below keeps true).
const MAX_PARAM_ROOM: usize =
    ROOM_SIZE + ROOM_BODY + ROOM_SMTPUTF8 + ROOM_RET + ROOM_ENVID + ROOM_AUTH + ROOM_REQUIRETLS;
const _: () = assert!(ROOM_NOTIFY + ROOM_ORCPT <= MAX_PARAM_ROOM);

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
    Auth(Option<(Mechanism, Option<String>)>),
    Xclient(Vec<(ForwardAttr, ForwardValue)>),
    Xforward(Vec<(ForwardAttr, ForwardValue)>),
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
                Cmd::Auth(Mechanism::from_name(mechanism).map(|m| (m, initial.map(str::to_owned))))
            }
            Command::Xclient { attrs } => Cmd::Xclient(attrs.iter().collect()),
            Command::Xforward { attrs } => Cmd::Xforward(attrs.iter().collect()),
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
            | Command::Xclient { .. }
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
