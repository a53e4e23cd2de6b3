//! The client session: a pure SMTP/LMTP client state machine.
//!
//! A [`Client`] is the other side of [`crate::server::Session`]: it reads
//! the greeting, says EHLO (or HELO, or LHLO), upgrades with STARTTLS,
//! authenticates, and sends messages with MAIL, RCPT and DATA or BDAT,
//! pipelined when the server allows it. It owns no socket, reads no clock
//! and starts no thread: the caller moves bytes and time in and out.
//!
//! # The calling contract
//!
//! [`Client`] implements [`Drive`](crate::drive::Drive), the contract it
//! shares with the server session: the
//! [drive loop](crate::drive#the-drive-loop) is written there once. What
//! is particular to the client: [`Client::send_mail`],
//! [`Client::push_body`], [`Client::end_body`] and [`Client::quit`] are
//! what the application wants sent, and [`Client::poll`] hands out
//! [`ClientEvent`]s.
//!
//! **A session** goes: [`ClientEvent::Ready`] (after the greeting, EHLO,
//! STARTTLS and AUTH as configured); then any number of transactions,
//! each started with [`Client::send_mail`] once the client
//! [`is_ready`](Client::is_ready), and ended by exactly one
//! [`ClientEvent::MessageAccepted`] or [`ClientEvent::MessageRejected`]
//! (in LMTP one per accepted recipient), unless an error ends the session;
//! then [`Client::quit`] and [`Instruction::Closed`].
//!
//! The server misbehaving (an unexpected code, a malformed or overlong
//! reply, a premature close, a timeout, a `421`) is a fatal
//! [`ClientEvent::Error`] followed by [`Instruction::Closed`]; a refusal
//! (a `4xx` or `5xx` reply to MAIL, RCPT, DATA or the body) is an ordinary
//! event. Misuse of this API is an `Err(`[`Misuse`]`)` and changes
//! nothing.
//!
//! # Protocol choices
//!
//! - EHLO, and HELO when EHLO is answered `500` or `502` (never in LMTP).
//! - STARTTLS per [`TlsPolicy`]: with [`TlsPolicy::Required`] a server that
//!   does not offer it or refuses it ends the session (QUIT is sent, never
//!   mail). Bytes the server sends after its `220` and before the handshake
//!   are an error (they could be injected in clear text).
//! - AUTH PLAIN (with an initial response when the line fits in 512 octets)
//!   or LOGIN, in the configured order; never on a clear-text connection
//!   unless [`ClientConfig::allow_plaintext_auth`] is set.
//! - MAIL parameters only when advertised: `SIZE`, `BODY`, `SMTPUTF8`,
//!   `REQUIRETLS`, and the DSN ones (`RET`, `ENVID`, `NOTIFY`, `ORCPT`,
//!   silently left out without DSN). An envelope that needs an extension
//!   the server lacks (SMTPUTF8, 8BITMIME, BINARYMIME, REQUIRETLS) is
//!   refused by [`Client::send_mail`] before anything is sent.
//! - With PIPELINING, MAIL, every RCPT and DATA leave in one flight (RFC
//!   2920); the body waits for the `354`. Without it, one command at a
//!   time. If every recipient is refused no body is sent: a pipelined DATA
//!   answered `354` gets an empty body (`.`), and a DATA not yet sent is
//!   not sent.
//! - BDAT (RFC 3030) when CHUNKING is offered (and
//!   [`ClientConfig::chunking`] is on), and always for BINARYMIME; chunks of
//!   [`ClientConfig::chunk_size`] octets, pipelined when allowed. The BDAT
//!   chunks start after the RCPT replies.
//! - RSET after a transaction that failed with the server's transaction
//!   still open.
//!
//! # Theory of operation
//!
//! The caller's requests (`transaction.rs`) are checked against what the
//! server offered and become queued commands; the output side
//! (`output.rs`) flushes them within the pipelining window and bounds what
//! waits unwritten. Each reply (`replies.rs`) is matched against the oldest
//! command still awaiting one, in order, and moves the session on or ends
//! it; what the caller must know comes out of [`Client::poll`].
//!
//! # Example
//!
//! The client against this crate's own server, wired together in memory:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use smtp_proto::client::{Client, ClientConfig, ClientEvent, Envelope, TlsPolicy};
//! use smtp_proto::config::Config;
//! use smtp_proto::drive::{Instruction, Output};
//! use smtp_proto::server::{Decision, Event, PeerInfo, Session};
//!
//! let now = Instant::now();
//! let mut server = Session::new(Arc::new(Config::new("mx.example")), PeerInfo::default(), now);
//! let mut config = ClientConfig::new("client.example");
//! config.tls = TlsPolicy::None; // STARTTLS is required by default
//! let mut client = Client::new(config, now);
//! let mut delivered = Vec::new();
//!
//! // Moves bytes both ways and answers the server's decisions until idle;
//! // returns the client's events.
//! let mut pump = |client: &mut Client, server: &mut Session, delivered: &mut Vec<u8>| {
//!     let mut events = Vec::new();
//!     loop {
//!         while let Some(ev) = server.poll().event() {
//!             match ev {
//!                 Event::Body(chunk) => delivered.extend_from_slice(chunk),
//!                 ev => if let Some(ticket) = ev.into_ticket() {
//!                     server.respond(ticket, Decision::Accept, now).unwrap();
//!                 },
//!             }
//!         }
//!         let to_client = server.transmit().to_vec();
//!         server.transmitted(to_client.len());
//!         client.receive(&to_client, now);
//!         while let Some(ev) = client.poll().event() {
//!             events.push(ev);
//!         }
//!         let to_server = client.transmit().to_vec();
//!         client.transmitted(to_server.len());
//!         server.receive(&to_server, now);
//!         if to_client.is_empty() && to_server.is_empty() {
//!             return events;
//!         }
//!     }
//! };
//!
//! let events = pump(&mut client, &mut server, &mut delivered);
//! let Some(ClientEvent::Ready { extensions }) = events.last() else { panic!("{events:?}") };
//! assert!(extensions.pipelining);
//!
//! let envelope = Envelope::new(Some("alice@example.org"), ["bob@example.net"]);
//! client.send_mail(&envelope, now).unwrap();
//! client.push_body(b"Subject: hi\r\n\r\n.leading dot\r\n", now).unwrap();
//! client.end_body(now).unwrap();
//! let events = pump(&mut client, &mut server, &mut delivered);
//! assert!(matches!(events[0], ClientEvent::Recipient { index: 0, ref reply } if reply.code() == 250));
//! assert_eq!(events[1], ClientEvent::SendBody); // BDAT: after the RCPT replies
//! assert!(matches!(events[2], ClientEvent::MessageAccepted { recipient: None, .. }));
//! assert_eq!(delivered, b"Subject: hi\r\n\r\n.leading dot\r\n");
//!
//! client.quit(now).unwrap();
//! let events = pump(&mut client, &mut server, &mut delivered);
//! assert!(events.is_empty());
//! assert!(matches!(client.poll(), Output::Instruction(Instruction::Closed)));
//! assert!(client.is_closed() && server.is_closed());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::buffers::{Clock, InBuf, OutBuf};
use crate::command::{
    BodyType, Command, ForwardAttr, ForwardAttrs, ForwardPath, MailParams, Notify, RcptParams, Ret,
    ReversePath, encode_xtext,
};
use crate::data::DotStuffer;
pub use crate::drive::{Instruction, Misuse, Output, TlsInfo};
use crate::parse::parse_mailbox;
use crate::reply::{Reply, ReplyError, parse_reply};
use crate::sasl::{Mechanism, Secret, encode_base64, encode_plain};

/// The longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
const MAX_COMMAND_LINE: usize = 512;

mod output;
mod replies;
mod transaction;

/// When to upgrade the connection with STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Never send STARTTLS.
    None,
    /// Send STARTTLS when offered; go on in clear text when it is not
    /// offered or is refused.
    Opportunistic,
    /// Send STARTTLS; a server that does not offer it, or refuses it, ends
    /// the session with [`ClientError::TlsUnavailable`] or
    /// [`ClientError::TlsRefused`] (never a clear-text fallback).
    #[default]
    Required,
}

/// Credentials for AUTH (RFC 4954).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The authentication identity.
    pub username: String,
    /// The password (hidden from `Debug`).
    pub password: Secret<String>,
    /// An authorization identity to act as (PLAIN only).
    pub authzid: Option<String>,
    /// Mechanisms to use, in order of preference; the first one the server
    /// offers is used.
    pub mechanisms: Vec<Mechanism>,
}

impl ClientAuth {
    /// Credentials for PLAIN, else LOGIN.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        ClientAuth {
            username: username.into(),
            password: Secret::new(password.into()),
            authzid: None,
            mechanisms: vec![Mechanism::Plain, Mechanism::Login],
        }
    }
}

/// Client timeouts: how long to wait for each reply (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTimeouts {
    /// The `220` greeting (RFC: 5 minutes).
    pub greeting: Duration,
    /// Replies to EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET and QUIT (RFC: 5 minutes).
    pub command: Duration,
    /// The reply to DATA (RFC: 2 minutes).
    pub data_init: Duration,
    /// A data block: a BDAT chunk's reply, or body bytes waiting to be
    /// written during DATA (RFC: 3 minutes).
    pub data_block: Duration,
    /// The reply after the end of the body (RFC: 10 minutes).
    pub data_end: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// Everything a [`Client`] needs to know that does not change per message.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Our name in EHLO/HELO/LHLO: a domain or an address literal. Octets
    /// outside printable ASCII are replaced by `-`; an empty name becomes
    /// `localhost`.
    pub hello_name: String,
    /// LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the body.
    pub lmtp: bool,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// The connection is TLS from the start (implicit TLS, RFC 8314):
    /// STARTTLS is never sent and [`TlsPolicy::Required`] is satisfied.
    pub implicit_tls: bool,
    /// Credentials; `None` means no AUTH.
    pub auth: Option<ClientAuth>,
    /// Send credentials over a connection without TLS (off by default).
    pub allow_plaintext_auth: bool,
    /// Pipeline commands when the server offers PIPELINING.
    pub pipelining: bool,
    /// Use BDAT when the server offers CHUNKING (BINARYMIME always does).
    pub chunking: bool,
    /// Body octets per BDAT chunk.
    pub chunk_size: usize,
    /// Most commands awaiting their replies at once when pipelining (a
    /// window, so that thousands of recipients cannot fill both
    /// directions' buffers at once).
    pub max_pipelined: usize,
    /// The longest reply accepted, in octets (all lines of a multi-line
    /// reply together); a longer one is [`ClientError::MalformedReply`].
    pub max_reply_len: usize,
    /// Bytes the client holds for sending (unsent output, queued commands
    /// and buffered body) beyond which [`Client::push_body`] takes no more.
    pub max_pending_output: usize,
    /// Timeouts.
    pub timeouts: ClientTimeouts,
}

impl ClientConfig {
    /// Defaults: SMTP, STARTTLS required, no AUTH, pipelining (at most 100
    /// commands in flight) and chunking when offered, 64 KiB chunks, 16 KiB
    /// replies, 256 KiB pending output, RFC timeouts.
    pub fn new(hello_name: impl Into<String>) -> Self {
        ClientConfig {
            hello_name: hello_name.into(),
            lmtp: false,
            tls: TlsPolicy::Required,
            implicit_tls: false,
            auth: None,
            allow_plaintext_auth: false,
            pipelining: true,
            chunking: true,
            chunk_size: 64 * 1024,
            max_pipelined: 100,
            max_reply_len: 16 * 1024,
            max_pending_output: 256 * 1024,
            timeouts: ClientTimeouts::default(),
        }
    }
}

/// What the server's EHLO (or LHLO) reply advertised.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerExtensions {
    /// The first word of the reply: the server's name.
    pub name: String,
    /// Whether the server answered EHLO/LHLO (false after a HELO fallback,
    /// and then every extension is off).
    pub esmtp: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(0)` when no limit was given.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// BINARYMIME (RFC 3030).
    pub binarymime: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// AUTH mechanisms (RFC 4954), upper-cased.
    pub auth: Vec<String>,
    /// Every other keyword line, as sent.
    pub other: Vec<String>,
}

impl ServerExtensions {
    /// Parses the text of a `250` reply to EHLO or LHLO.
    pub fn parse(reply: &Reply) -> Self {
        let mut lines = reply.text().split('\n');
        let mut ext = ServerExtensions {
            name: lines
                .next()
                .and_then(|l| l.split_ascii_whitespace().next())
                .unwrap_or("")
                .to_owned(),
            esmtp: true,
            ..ServerExtensions::default()
        };
        for line in lines {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            // The pre-RFC form `AUTH=PLAIN LOGIN` is still seen.
            let (keyword, first) = match keyword.split_once('=') {
                Some((k, v)) if k.eq_ignore_ascii_case("AUTH") => (k, Some(v)),
                _ => (keyword, None),
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eightbitmime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "CHUNKING" => ext.chunking = true,
                "BINARYMIME" => ext.binarymime = true,
                "DSN" => ext.dsn = true,
                "STARTTLS" => ext.starttls = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "REQUIRETLS" => ext.requiretls = true,
                "AUTH" => {
                    for m in first.into_iter().chain(words) {
                        let m = m.to_ascii_uppercase();
                        if !m.is_empty() && !ext.auth.contains(&m) {
                            ext.auth.push(m);
                        }
                    }
                }
                _ => ext.other.push(line.to_owned()),
            }
        }
        ext
    }

    /// The attributes the server's `XFORWARD` keyword lists (Postfix's
    /// XFORWARD_README); empty when it does not offer XFORWARD.
    pub fn xforward(&self) -> Vec<ForwardAttr> {
        self.other
            .iter()
            .filter_map(|line| {
                let mut words = line.split_ascii_whitespace();
                let kw = words.next()?;
                kw.eq_ignore_ascii_case("XFORWARD")
                    .then(|| words.filter_map(ForwardAttr::from_name).collect::<Vec<_>>())
            })
            .next()
            .unwrap_or_default()
    }

    /// Whether the server offers this AUTH mechanism.
    pub fn offers_auth(&self, mechanism: Mechanism) -> bool {
        self.auth.iter().any(|m| m == mechanism.name())
    }
}

/// One recipient of an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// `local@domain` (no angle brackets; UTF-8 allowed, then SMTPUTF8 is
    /// needed), or `Postmaster`.
    pub address: String,
    /// `NOTIFY=` (sent only when the server offers DSN).
    pub notify: Option<Notify>,
    /// The original recipient for `ORCPT=` as plain text (sent only with
    /// DSN, as `rfc822;` xtext, or `utf-8;` for a non-ASCII address).
    pub orcpt: Option<String>,
}

impl Recipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Self {
        Recipient {
            address: address.into(),
            notify: None,
            orcpt: None,
        }
    }
}

/// A message's envelope: the sender, the recipients and MAIL parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Envelope {
    /// The reverse path `local@domain`; `None` is the null path `<>`.
    pub from: Option<String>,
    /// The recipients, in order (their index is the one in the events).
    pub recipients: Vec<Recipient>,
    /// The message size, for `SIZE=` (sent only when the server offers
    /// SIZE; a message over the server's limit is refused before sending).
    pub size: Option<u64>,
    /// `BODY=` (8BITMIME and BINARYMIME need the server's support).
    pub body: Option<BodyType>,
    /// Ask for SMTPUTF8 even if every address is ASCII (e.g. for UTF-8 headers).
    pub smtputf8: bool,
    /// `RET=` (sent only with DSN).
    pub ret: Option<Ret>,
    /// `ENVID=` as plain text (xtext-encoded by the client, at most 100
    /// octets encoded; sent only with DSN).
    pub envid: Option<String>,
    /// `REQUIRETLS` (RFC 8689): needs the server's support.
    pub requiretls: bool,
    /// The original client's facts, sent with XFORWARD (Postfix) before
    /// MAIL when the server offers it: only the attributes it lists, `None`
    /// as `[UNAVAILABLE]`, split over several commands so that no line
    /// passes 512 octets. Without the server's offer nothing is sent; a
    /// refused XFORWARD does not fail the transaction (the facts are advice).
    pub xforward: Vec<(ForwardAttr, Option<String>)>,
}

impl Envelope {
    /// An envelope from `from` (`None` for `<>`) to `recipients`, without parameters.
    pub fn new<I, S>(from: Option<&str>, recipients: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Envelope {
            from: from.map(str::to_owned),
            recipients: recipients
                .into_iter()
                .map(|r| Recipient::new(r.into()))
                .collect(),
            ..Envelope::default()
        }
    }
}

/// The server misbehaved, refused the session, or the connection failed.
/// Always fatal: [`Instruction::Closed`] follows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// A reply could not be parsed, or was longer than
    /// [`ClientConfig::max_reply_len`].
    MalformedReply(ReplyError),
    /// A reply whose code makes no sense for the command it answers (e.g. a
    /// `250` to DATA, a `354` to MAIL, an acceptance after MAIL was
    /// refused), or a reply when none was awaited.
    UnexpectedReply(Reply),
    /// The server is closing the connection (`421`, RFC 5321 §3.8).
    ServiceClosing(Reply),
    /// The greeting, EHLO/HELO/LHLO or RSET was refused.
    Rejected(Reply),
    /// TLS is required and the server does not offer STARTTLS.
    TlsUnavailable,
    /// TLS is required and the server refused STARTTLS.
    TlsRefused(Reply),
    /// The server sent bytes after its `220` to STARTTLS, before the
    /// handshake (they could have been injected by an attacker).
    TlsInjection,
    /// The caller reported a failed TLS handshake.
    TlsFailed,
    /// Credentials are configured but the server offers none of the mechanisms.
    AuthUnavailable,
    /// Credentials are configured but the connection is not under TLS (see
    /// [`ClientConfig::allow_plaintext_auth`]).
    AuthNeedsTls,
    /// The server refused the credentials.
    AuthFailed(Reply),
    /// A reply did not come in time.
    Timeout,
    /// The server closed the connection before the session was over.
    UnexpectedEof,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::MalformedReply(e) => write!(f, "malformed reply: {e}"),
            ClientError::UnexpectedReply(r) => write!(f, "unexpected reply: {}", r.code()),
            ClientError::ServiceClosing(r) => write!(f, "server closing: {}", r.code()),
            ClientError::Rejected(r) => write!(f, "session rejected: {}", r.code()),
            ClientError::TlsUnavailable => f.write_str("TLS required but STARTTLS not offered"),
            ClientError::TlsRefused(r) => write!(f, "STARTTLS refused: {}", r.code()),
            ClientError::TlsInjection => f.write_str("data after the STARTTLS reply"),
            ClientError::TlsFailed => f.write_str("TLS handshake failed"),
            ClientError::AuthUnavailable => f.write_str("no usable AUTH mechanism offered"),
            ClientError::AuthNeedsTls => f.write_str("refusing to send credentials without TLS"),
            ClientError::AuthFailed(r) => write!(f, "authentication failed: {}", r.code()),
            ClientError::Timeout => f.write_str("timeout waiting for the server"),
            ClientError::UnexpectedEof => f.write_str("connection closed by the server"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What the client has to say.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The session is set up (greeting, EHLO, STARTTLS, AUTH as
    /// configured): [`Client::send_mail`] may be called.
    Ready {
        /// What the server advertised (after TLS, if any).
        extensions: ServerExtensions,
    },
    /// AUTH succeeded.
    Authenticated,
    /// The server is ready for the body ([`Client::push_body`] may also be
    /// called before; the client buffers a bounded amount).
    SendBody,
    /// The reply to one recipient's RCPT (accepted when positive). Not
    /// reported when MAIL was refused.
    Recipient {
        /// The recipient's index in [`Envelope::recipients`].
        index: usize,
        /// The server's reply.
        reply: Reply,
    },
    /// The message was accepted: for every accepted recipient (`None`), or
    /// in LMTP for this one.
    MessageAccepted {
        /// LMTP: the recipient's index in [`Envelope::recipients`].
        recipient: Option<usize>,
        /// The server's reply.
        reply: Reply,
    },
    /// The message was refused: for every recipient not already refused
    /// (`None`), or in LMTP for this one. With `None`, `reply` is the reply
    /// to MAIL if MAIL was refused, else the last recipient's refusal if
    /// every recipient was refused, else the refusal of DATA, a BDAT chunk
    /// or the body.
    MessageRejected {
        /// LMTP: the recipient's index in [`Envelope::recipients`].
        recipient: Option<usize>,
        /// The server's reply.
        reply: Reply,
    },
    /// The session failed; [`Instruction::Closed`] follows. A transaction
    /// in progress ends here, with no further event.
    Error(ClientError),
}

/// Which greeting command was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hello {
    Ehlo,
    Helo,
    Lhlo,
}

/// What an awaited reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Hello(Hello),
    StartTls,
    Auth,
    Mail,
    Rcpt(usize),
    Data,
    /// A BDAT chunk that is not the last.
    Chunk,
    /// The end of the body (`.` or BDAT LAST); in LMTP, one per accepted
    /// recipient, in order.
    End,
    Rset,
    Quit,
    /// XFORWARD: advice, whatever the answer.
    Xforward,
}

impl Expect {
    /// Whether the reply belongs to the mail transaction.
    fn in_txn(self) -> bool {
        matches!(
            self,
            Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::Chunk | Expect::End
        )
    }

    /// Whether `code` is a possible answer (the positive codes each command
    /// takes; a refusal where one is possible).
    fn plausible(self, code: u16) -> bool {
        match self {
            Expect::Greeting | Expect::StartTls => code == 220 || code >= 400,
            Expect::Hello(_) | Expect::Mail | Expect::Chunk | Expect::End => {
                code == 250 || code >= 400
            }
            Expect::Rset => code == 250,
            Expect::Auth => matches!(code, 235 | 334) || code >= 400,
            Expect::Rcpt(_) => matches!(code, 250 | 251) || code >= 400,
            Expect::Data => code == 354 || code >= 400,
            Expect::Quit | Expect::Xforward => true,
        }
    }

    /// Whether nothing may be pipelined after this command (RFC 2920 §3.1).
    fn is_sync(self) -> bool {
        !matches!(
            self,
            Expect::Mail | Expect::Rcpt(_) | Expect::Chunk | Expect::Rset | Expect::Xforward
        )
    }
}

/// A command waiting to be written.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    expect: Expect,
    /// How many replies it gets (LMTP end of body: one per recipient).
    replies: usize,
    /// Wait until no reply is awaited before writing it.
    wait_idle: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Hello,
    StartTls,
    Handshake,
    Auth,
    Ready,
    Quitting,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Waiting for the `354` (or the RCPT replies, for BDAT): pushes are buffered.
    Pending,
    /// Being sent.
    Open,
    /// [`Client::end_body`] was called and the end is queued or sent.
    Ended,
    /// The transaction failed: no body is taken.
    Dead,
}

#[derive(Debug)]
struct Transaction {
    recipients: usize,
    bdat: bool,
    accepted: Vec<usize>,
    rcpt_replies: usize,
    /// MAIL was refused with this reply.
    mail_refused: bool,
    last_refusal: Option<Reply>,
    /// Why the transaction failed (reported once no reply is awaited).
    failed: Option<Reply>,
    /// The server may hold an open transaction that needs RSET.
    needs_rset: bool,
    body: BodyState,
    ended: bool,
    buf: Vec<u8>,
    stuffer: DotStuffer,
    /// End-of-body replies received (LMTP).
    end_replies: usize,
    /// Recipients may still be added ([`Client::begin_mail`]); the
    /// transaction is not judged until [`Client::close_recipients`].
    open: bool,
    /// The server's extensions and our TLS state when MAIL was built (for
    /// recipients added later).
    utf8: bool,
}

/// One SMTP/LMTP client session. See the [module docs](self) for the contract.
pub struct Client {
    config: ClientConfig,
    hello_name: String,
    phase: Phase,
    ext: Option<ServerExtensions>,
    tls: bool,
    tls_info: Option<TlsInfo>,
    tls_declined: bool,
    authenticated: bool,
    auth_responses: VecDeque<Secret<String>>,
    // Input.
    inb: InBuf,
    // Output.
    out: OutBuf,
    queue: VecDeque<Outgoing>,
    inflight: VecDeque<Expect>,
    events: VecDeque<ClientEvent>,
    txn: Option<Transaction>,
    // Time.
    clock: Clock,
    wait_since: Instant,
    body_progress: Instant,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("phase", &self.phase)
            .field("tls", &self.tls)
            .field("authenticated", &self.authenticated)
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts a session on a new connection at time `now`: the client waits
    /// for the greeting.
    pub fn new(config: ClientConfig, now: Instant) -> Client {
        let mut hello_name: String = config
            .hello_name
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '-' })
            .collect();
        if hello_name.is_empty() {
            hello_name = "localhost".into();
        }
        let mut inflight = VecDeque::new();
        inflight.push_back(Expect::Greeting);
        Client {
            hello_name,
            phase: Phase::Greeting,
            ext: None,
            tls: config.implicit_tls,
            tls_info: None,
            tls_declined: false,
            authenticated: false,
            auth_responses: VecDeque::new(),
            inb: InBuf::default(),
            out: OutBuf::default(),
            queue: VecDeque::new(),
            inflight,
            events: VecDeque::new(),
            txn: None,
            clock: Clock::new(now),
            wait_since: now,
            body_progress: now,
            config,
        }
    }

    // ----- getters -----

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// What the server advertised in its latest EHLO/LHLO reply.
    pub fn extensions(&self) -> Option<&ServerExtensions> {
        self.ext.as_ref()
    }

    /// Whether the connection is under TLS (implicit, or after STARTTLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether AUTH succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether [`Client::send_mail`] may be called now.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready && self.txn.is_none()
    }

    /// Whether [`Client::push_body`] would take bytes now.
    pub fn wants_body(&self) -> bool {
        self.wants_body_now() && self.budget() > 0
    }

    /// Whether a body is expected (pending or open, not ended).
    fn wants_body_now(&self) -> bool {
        !self.is_closed()
            && self
                .txn
                .as_ref()
                .is_some_and(|t| !t.ended && matches!(t.body, BodyState::Pending | BodyState::Open))
    }

    /// Whether the session is over: once [`Client::transmit`] is empty,
    /// close the connection.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the caller should read from the connection now (not during
    /// the TLS handshake, not once closed).
    pub fn wants_read(&self) -> bool {
        !matches!(self.phase, Phase::Closed | Phase::Handshake)
            && self.inb.len() < self.input_capacity()
    }

    /// Whether there are bytes to write.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    // ----- input -----

    /// Free space to read into; then call [`Client::filled`]. Empty when
    /// the client does not want input now.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if !self.wants_read() {
            return &mut [];
        }
        self.inb.grow_to(self.input_capacity());
        self.inb.spare()
    }

    /// Reports that `n` bytes were written into [`Client::read_buf`] at `now`.
    pub fn filled(&mut self, n: usize, now: Instant) {
        self.set_time(now);
        let n = n.min(self.inb.spare().len());
        if n == 0 || self.is_closed() {
            return;
        }
        if self.phase == Phase::Handshake {
            self.fail(ClientError::TlsInjection, false);
            return;
        }
        self.inb.filled(n);
        self.process_input();
    }

    /// Copies bytes from the server into the client; returns how many were
    /// taken (all of them unless the client closed or awaits a TLS handshake).
    pub fn receive(&mut self, mut bytes: &[u8], now: Instant) -> usize {
        let mut taken = 0;
        if self.phase == Phase::Handshake && !bytes.is_empty() {
            self.set_time(now);
            self.fail(ClientError::TlsInjection, false);
            return 0;
        }
        while !bytes.is_empty() {
            let buf = self.read_buf();
            let n = bytes.len().min(buf.len());
            if n == 0 {
                break;
            }
            buf[..n].copy_from_slice(&bytes[..n]);
            self.filled(n, now);
            taken += n;
            bytes = &bytes[n..];
        }
        taken
    }

    /// The server closed its side of the connection. Once QUIT is sent this
    /// is the normal end; otherwise it is [`ClientError::UnexpectedEof`].
    pub fn receive_eof(&mut self, now: Instant) {
        self.set_time(now);
        if self.is_closed() {
            return;
        }
        let only_quit = self.inflight.iter().all(|e| *e == Expect::Quit);
        if self.phase == Phase::Quitting && only_quit && self.queue.is_empty() {
            // QUIT is sent: we were leaving anyway (and many servers close
            // without waiting for it after an error).
            self.close();
        } else {
            self.fail(ClientError::UnexpectedEof, false);
        }
    }

    /// Reports that time `now` was reached (at or after
    /// [`Client::poll_timeout`]): an expired wait is [`ClientError::Timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_time(now);
        if let Some(deadline) = self.poll_timeout() {
            if now >= deadline {
                self.fail(ClientError::Timeout, false);
            }
        }
    }

    /// When [`Client::handle_timeout`] must be called: a reply is awaited,
    /// or body bytes wait to be written. `None` when idle, during the TLS
    /// handshake (the caller times that) and once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.config.timeouts;
        if matches!(self.phase, Phase::Closed | Phase::Handshake) {
            return None;
        }
        if let Some(front) = self.inflight.front() {
            let d = match front {
                Expect::Greeting => t.greeting,
                Expect::Data => t.data_init,
                Expect::Chunk => t.data_block,
                Expect::End => t.data_end,
                _ => t.command,
            };
            return self.wait_since.checked_add(d);
        }
        let body_open = self
            .txn
            .as_ref()
            .is_some_and(|x| x.body == BodyState::Open && !x.bdat);
        if body_open && self.wants_write() {
            return self.body_progress.checked_add(t.data_block);
        }
        None
    }

    /// The TLS handshake after [`Instruction::StartTls`] succeeded: the
    /// client forgets what the server advertised and says EHLO again
    /// (RFC 3207 §4.2).
    pub fn tls_established(&mut self, info: TlsInfo, now: Instant) -> Result<(), Misuse> {
        if self.phase != Phase::Handshake {
            return Err(Misuse::NotStartingTls);
        }
        self.set_time(now);
        self.tls = true;
        self.tls_info = Some(info);
        self.ext = None;
        self.inb.clear();
        self.send_hello(self.first_hello());
        Ok(())
    }

    /// The TLS handshake failed: the session is over (nothing more may be
    /// sent on this connection).
    pub fn tls_failed(&mut self, now: Instant) {
        self.set_time(now);
        if !self.is_closed() {
            self.fail(ClientError::TlsFailed, false);
        }
    }

    fn set_time(&mut self, now: Instant) {
        self.clock.advance(now);
    }

    // ----- output -----

    /// The next event, or what the driver does next (the
    /// [drive loop](crate::drive#the-drive-loop)). Call it until it returns
    /// an [`Instruction`] after every input.
    pub fn poll(&mut self) -> Output<ClientEvent> {
        if let Some(e) = self.events.pop_front() {
            return Output::Event(e);
        }
        Output::Instruction(match self.phase {
            Phase::Closed => Instruction::Closed,
            Phase::Handshake => Instruction::StartTls,
            _ => Instruction::Idle {
                read: self.wants_read(),
                deadline: self.poll_timeout(),
            },
        })
    }

    /// Whether [`Client::poll`] would return an event now.
    #[inline]
    pub fn has_event(&mut self) -> bool {
        !self.events.is_empty()
    }

    /// The TLS layer's facts, once a STARTTLS handshake was reported.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls_info.as_ref()
    }

    // ----- internals -----

    fn input_capacity(&self) -> usize {
        self.config.max_reply_len.max(512).saturating_add(1)
    }

    fn pipelining(&self) -> bool {
        self.config.pipelining && self.ext.as_ref().is_some_and(|e| e.pipelining)
    }

    fn lmtp(&self) -> bool {
        self.config.lmtp
    }
}

crate::drive::forward_drive!(Client, ClientEvent);

/// The command lines of a transaction.
struct TransactionLines {
    mail: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
    /// BDAT is required (BINARYMIME).
    bdat: bool,
    /// MAIL said SMTPUTF8.
    utf8: bool,
}

/// Checks an envelope against what the server offers and builds its lines.
fn build_transaction(
    env: &Envelope,
    ext: &ServerExtensions,
    tls: bool,
) -> Result<TransactionLines, Misuse> {
    fn mailbox(a: &str) -> Result<crate::command::Mailbox<'_>, Misuse> {
        parse_mailbox(a, true, false).ok_or_else(|| Misuse::InvalidAddress(a.into()))
    }
    let from = match env.from.as_deref() {
        None => ReversePath::Null,
        Some(a) => ReversePath::Mailbox(mailbox(a)?),
    };
    let mut utf8 = env.smtputf8 || env.from.as_deref().is_some_and(|a| !a.is_ascii());
    for r in &env.recipients {
        utf8 |= !r.address.is_ascii();
        utf8 |= r.orcpt.as_deref().is_some_and(|o| !o.is_ascii()) && ext.dsn;
    }
    if utf8 && !ext.smtputf8 {
        return Err(Misuse::Unsupported("SMTPUTF8"));
    }
    let body = env.body;
    match body {
        Some(BodyType::EightBitMime) if !ext.eightbitmime => {
            return Err(Misuse::Unsupported("8BITMIME"));
        }
        Some(BodyType::BinaryMime) if !(ext.binarymime && ext.chunking) => {
            return Err(Misuse::Unsupported("BINARYMIME"));
        }
        _ => {}
    }
    if env.requiretls && !(ext.requiretls && tls) {
        return Err(Misuse::Unsupported("REQUIRETLS"));
    }
    if let (Some(size), Some(limit)) = (env.size, ext.size) {
        if limit > 0 && size > limit {
            return Err(Misuse::TooBig { limit });
        }
    }
    let envid = match env.envid.as_deref() {
        Some(e) if ext.dsn => {
            let x = encode_xtext(e);
            if x.is_empty() || x.len() > 100 {
                return Err(Misuse::InvalidParameter("ENVID"));
            }
            Some(x)
        }
        _ => None,
    };
    let params = MailParams {
        size: env.size.filter(|_| ext.size.is_some()),
        body: body.filter(|b| match b {
            BodyType::SevenBit | BodyType::EightBitMime => ext.eightbitmime,
            BodyType::BinaryMime => true,
        }),
        smtputf8: utf8,
        ret: env.ret.filter(|_| ext.dsn),
        envid: envid.as_deref(),
        auth: None,
        requiretls: env.requiretls,
    };
    let mail = Command::Mail { from, params }.to_bytes();
    if mail.len() > MAX_COMMAND_LINE {
        return Err(Misuse::InvalidParameter("MAIL line too long"));
    }
    let rcpts = env
        .recipients
        .iter()
        .map(|r| rcpt_line(r, ext))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TransactionLines {
        mail,
        rcpts,
        bdat: body == Some(BodyType::BinaryMime),
        utf8,
    })
}

/// One RCPT line, with DSN parameters when the server offers DSN.
fn rcpt_line(r: &Recipient, ext: &ServerExtensions) -> Result<Vec<u8>, Misuse> {
    let path = if r.address.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(
            parse_mailbox(&r.address, true, false)
                .ok_or_else(|| Misuse::InvalidAddress(r.address.clone()))?,
        )
    };
    if r.orcpt.as_deref().is_some_and(|o| o.contains(['\r', '\n'])) {
        return Err(Misuse::InvalidParameter("ORCPT"));
    }
    let orcpt = match &r.orcpt {
        Some(o) if ext.dsn => Some(encode_orcpt(o)),
        _ => None,
    };
    let params = RcptParams {
        notify: r.notify.filter(|_| ext.dsn),
        orcpt: orcpt.as_deref(),
    };
    let line = Command::Rcpt { to: path, params }.to_bytes();
    if line.len() > MAX_COMMAND_LINE || orcpt.as_ref().is_some_and(|o| o.len() > 500) {
        return Err(Misuse::InvalidParameter("ORCPT"));
    }
    Ok(line)
}

/// `ORCPT=` value: `rfc822;` xtext for ASCII addresses; `utf-8;` with the
/// address as it is but `\x{..}` escapes for what xtext forbids (RFC 6533).
fn encode_orcpt(addr: &str) -> String {
    if addr.is_ascii() {
        return format!("rfc822;{}", encode_xtext(addr));
    }
    let mut s = String::from("utf-8;");
    for c in addr.chars() {
        if c.is_ascii() && (!c.is_ascii_graphic() || matches!(c, '+' | '=' | '\\')) {
            s.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        } else {
            s.push(c);
        }
    }
    s
}

/// The AUTH command line and the responses to the `334` challenges.
fn auth_exchange(auth: &ClientAuth, mech: Mechanism) -> (Vec<u8>, VecDeque<Secret<String>>) {
    let mut responses = VecDeque::new();
    let line = match mech {
        Mechanism::Plain => {
            let ir = encode_plain(
                auth.authzid.as_deref(),
                &auth.username,
                auth.password.expose(),
            );
            let line = format!("AUTH PLAIN {ir}\r\n");
            if line.len() <= MAX_COMMAND_LINE {
                line
            } else {
                // RFC 4954 §4: no initial response that would make the line too long.
                responses.push_back(Secret::new(ir));
                "AUTH PLAIN\r\n".to_owned()
            }
        }
        Mechanism::Login => {
            responses.push_back(Secret::new(encode_base64(auth.username.as_bytes())));
            responses.push_back(Secret::new(encode_base64(
                auth.password.expose().as_bytes(),
            )));
            "AUTH LOGIN\r\n".to_owned()
        }
        // TODO(client): CRAM-MD5 and SCRAM need the application's HMAC, the
        // OAuth mechanisms a token; until then the first 334 fails the exchange.
        Mechanism::CramMd5
        | Mechanism::ScramSha256
        | Mechanism::ScramSha256Plus
        | Mechanism::XOAuth2
        | Mechanism::OAuthBearer => format!("AUTH {}\r\n", mech.name()),
    };
    (line.into_bytes(), responses)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn extensions_are_parsed() {
        let r = Reply::plain(
            250,
            "mx.example hello\nPIPELINING\nSIZE 1000\n8BITMIME\nsmtputf8\nCHUNKING\nBINARYMIME\nDSN\nSTARTTLS\nENHANCEDSTATUSCODES\nREQUIRETLS\nAUTH PLAIN login\nAUTH=CRAM-MD5\nXFOO bar",
        );
        let e = ServerExtensions::parse(&r);
        assert_eq!(e.name, "mx.example");
        assert!(e.pipelining && e.eightbitmime && e.smtputf8 && e.chunking && e.binarymime);
        assert!(e.dsn && e.starttls && e.enhanced_status_codes && e.requiretls && e.esmtp);
        assert_eq!(e.size, Some(1000));
        assert_eq!(e.auth, ["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert_eq!(e.other, ["XFOO bar"]);
        assert!(e.offers_auth(Mechanism::Login));
        let e = ServerExtensions::parse(&Reply::plain(250, "mx\nSIZE"));
        assert_eq!(e.size, Some(0));
    }

    #[test]
    fn orcpt_encoding() {
        assert_eq!(encode_orcpt("a+b@c"), "rfc822;a+2Bb@c");
        assert_eq!(encode_orcpt("jö+rg@c"), "utf-8;jö\\x{2B}rg@c");
    }

    #[test]
    fn envelope_checks() {
        let ext = ServerExtensions {
            esmtp: true,
            ..ServerExtensions::default()
        };
        let env = Envelope::new(Some("a@b"), ["jörg@c"]);
        assert_eq!(
            build_transaction(&env, &ext, false).err(),
            Some(Misuse::Unsupported("SMTPUTF8"))
        );
        let env = Envelope::new(Some("a@@b"), ["c@d"]);
        assert!(matches!(
            build_transaction(&env, &ext, false),
            Err(Misuse::InvalidAddress(_))
        ));
        // No recipients is for `begin_mail` (send_mail refuses it itself).
        let env = Envelope::new(None, Vec::<String>::new());
        assert!(build_transaction(&env, &ext, false).is_ok_and(|l| l.rcpts.is_empty()));
        let mut env = Envelope::new(None, ["postmaster"]);
        env.body = Some(BodyType::BinaryMime);
        assert_eq!(
            build_transaction(&env, &ext, false).err(),
            Some(Misuse::Unsupported("BINARYMIME"))
        );
    }
}
