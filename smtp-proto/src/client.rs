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
//! **Inputs** — each carries the current time:
//! - [`Client::read_buf`] + [`Client::filled`] (zero-copy), or
//!   [`Client::receive`]: bytes from the server.
//! - [`Client::receive_eof`]: the server closed its side.
//! - [`Client::handle_timeout`]: the instant from [`Client::poll_timeout`] passed.
//! - [`Client::tls_established`] / [`Client::tls_failed`]: after
//!   [`ClientEvent::StartTls`].
//! - [`Client::send_mail`], [`Client::push_body`], [`Client::end_body`],
//!   [`Client::quit`]: what the application wants sent.
//!
//! **Outputs** — after every input, drain them until idle:
//! - [`Client::poll_event`] until it returns `None`.
//! - [`Client::transmit`] + [`Client::transmitted`]: bytes to write.
//! - [`Client::poll_timeout`]: when to call [`Client::handle_timeout`].
//! - [`Client::wants_read`], [`Client::is_closed`]: whether to read more,
//!   and whether to close the connection once `transmit()` is empty.
//!
//! **A session** goes: [`ClientEvent::Ready`] (after the greeting, EHLO,
//! STARTTLS and AUTH as configured); then any number of transactions,
//! each started with [`Client::send_mail`] once the client
//! [`is_ready`](Client::is_ready), and ended by exactly one
//! [`ClientEvent::MessageAccepted`] or [`ClientEvent::MessageRejected`]
//! (in LMTP one per accepted recipient), unless an error ends the session;
//! then [`Client::quit`] and [`ClientEvent::Closed`].
//!
//! The server misbehaving (an unexpected code, a malformed or overlong
//! reply, a premature close, a timeout, a `421`) is a fatal
//! [`ClientEvent::Error`] followed by [`ClientEvent::Closed`]; a refusal
//! (a `4xx` or `5xx` reply to MAIL, RCPT, DATA or the body) is an ordinary
//! event. Misuse of this API is an `Err(`[`UsageError`]`)` and changes
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
//! # Example
//!
//! The client against this crate's own server, wired together in memory:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use smtp_proto::client::{Client, ClientConfig, ClientEvent, Envelope, TlsPolicy};
//! use smtp_proto::config::Config;
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
//!         while let Some(ev) = server.poll_event() {
//!             match ev {
//!                 Event::Body(chunk) => delivered.extend_from_slice(chunk),
//!                 ev => if let Some(ticket) = ev.into_ticket() {
//!                     server.respond(ticket, Decision::Accept).unwrap();
//!                 },
//!             }
//!         }
//!         let to_client = server.transmit().to_vec();
//!         server.transmitted(to_client.len());
//!         client.receive(&to_client, now);
//!         while let Some(ev) = client.poll_event() {
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
//! assert!(matches!(events[..], [ClientEvent::Closed]));
//! assert!(client.is_closed() && server.is_closed());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::command::{
    BodyType, Command, ForwardPath, MailParams, Notify, RcptParams, Ret, ReversePath, encode_xtext,
};
use crate::data::DotStuffer;
use crate::parse::parse_mailbox;
use crate::reply::{Reply, ReplyError, parse_reply};
use crate::sasl::{Mechanism, Secret, encode_base64, encode_plain};

/// The longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
const MAX_COMMAND_LINE: usize = 512;

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
/// Always fatal: [`ClientEvent::Closed`] follows.
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

/// Misuse of the client API (never caused by the server); nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// [`Client::send_mail`] before [`ClientEvent::Ready`], or while a
    /// transaction is in progress.
    NotReady,
    /// [`Client::push_body`] / [`Client::end_body`] with no body expected
    /// (no transaction, the body already ended, or the message was refused).
    NoBody,
    /// [`Client::tls_established`] without [`ClientEvent::StartTls`].
    NotStartingTls,
    /// The client is closed (or quitting).
    Closed,
    /// The envelope has no recipient.
    NoRecipients,
    /// This address is not a valid mailbox (RFC 5321 §4.1.2, RFC 6531).
    InvalidAddress(String),
    /// A parameter value cannot be sent (e.g. an ENVID over 100 octets).
    InvalidParameter(&'static str),
    /// The envelope needs an extension the server does not offer.
    Unsupported(&'static str),
    /// The message is bigger than the server's SIZE limit.
    TooBig {
        /// The server's limit.
        limit: u64,
    },
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::NotReady => f.write_str("client not ready for a new transaction"),
            UsageError::NoBody => f.write_str("no message body expected now"),
            UsageError::NotStartingTls => f.write_str("no STARTTLS in progress"),
            UsageError::Closed => f.write_str("client closed"),
            UsageError::NoRecipients => f.write_str("envelope without recipients"),
            UsageError::InvalidAddress(a) => write!(f, "invalid address {a:?}"),
            UsageError::InvalidParameter(p) => write!(f, "invalid {p} parameter"),
            UsageError::Unsupported(e) => write!(f, "the server does not offer {e}"),
            UsageError::TooBig { limit } => write!(f, "message over the server's limit of {limit}"),
        }
    }
}

impl std::error::Error for UsageError {}

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
    /// Write everything [`Client::transmit`] holds, then do the TLS
    /// handshake and report it with [`Client::tls_established`] or
    /// [`Client::tls_failed`]. Read nothing into the client meanwhile.
    StartTls,
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
    /// The session failed; [`ClientEvent::Closed`] follows. A transaction
    /// in progress ends here, with no further event.
    Error(ClientError),
    /// The session is over: write what [`Client::transmit`] holds, then
    /// close the connection.
    Closed,
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
            Expect::Quit => true,
        }
    }

    /// Whether nothing may be pipelined after this command (RFC 2920 §3.1).
    fn is_sync(self) -> bool {
        !matches!(
            self,
            Expect::Mail | Expect::Rcpt(_) | Expect::Chunk | Expect::Rset
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
    tls_declined: bool,
    authenticated: bool,
    auth_responses: VecDeque<Secret<String>>,
    // Input.
    input: Vec<u8>,
    end: usize,
    // Output.
    out: Vec<u8>,
    out_pos: usize,
    queue: VecDeque<Outgoing>,
    inflight: VecDeque<Expect>,
    events: VecDeque<ClientEvent>,
    txn: Option<Transaction>,
    // Time.
    now: Instant,
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
            tls_declined: false,
            authenticated: false,
            auth_responses: VecDeque::new(),
            input: Vec::new(),
            end: 0,
            out: Vec::new(),
            out_pos: 0,
            queue: VecDeque::new(),
            inflight,
            events: VecDeque::new(),
            txn: None,
            now,
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
        !matches!(self.phase, Phase::Closed | Phase::Handshake) && self.end < self.input_capacity()
    }

    /// Whether there are bytes to write.
    pub fn wants_write(&self) -> bool {
        self.out_pos < self.out.len()
    }

    // ----- input -----

    /// Free space to read into; then call [`Client::filled`]. Empty when
    /// the client does not want input now.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if !self.wants_read() {
            return &mut [];
        }
        let cap = self.input_capacity();
        if self.input.len() < cap {
            self.input.resize(cap, 0);
        }
        self.input.get_mut(self.end..cap).unwrap_or_default()
    }

    /// Reports that `n` bytes were written into [`Client::read_buf`] at `now`.
    pub fn filled(&mut self, n: usize, now: Instant) {
        self.set_time(now);
        let n = n.min(self.input.len().saturating_sub(self.end));
        if n == 0 || self.is_closed() {
            return;
        }
        if self.phase == Phase::Handshake {
            self.fail(ClientError::TlsInjection, false);
            return;
        }
        self.end += n;
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
    pub fn receive_eof(&mut self) {
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

    /// The TLS handshake after [`ClientEvent::StartTls`] succeeded: the
    /// client forgets what the server advertised and says EHLO again
    /// (RFC 3207 §4.2).
    pub fn tls_established(&mut self, now: Instant) -> Result<(), UsageError> {
        if self.phase != Phase::Handshake {
            return Err(UsageError::NotStartingTls);
        }
        self.set_time(now);
        self.tls = true;
        self.ext = None;
        self.end = 0;
        self.send_hello(self.first_hello());
        Ok(())
    }

    /// The TLS handshake failed: the session is over (nothing more may be
    /// sent on this connection).
    pub fn tls_failed(&mut self) {
        if !self.is_closed() {
            self.fail(ClientError::TlsFailed, false);
        }
    }

    // ----- commands -----

    /// Starts a mail transaction: MAIL, one RCPT per recipient, then DATA
    /// or BDAT once the body comes ([`Client::push_body`],
    /// [`Client::end_body`]). Checked against what the server offers before
    /// anything is sent.
    pub fn send_mail(&mut self, envelope: &Envelope, now: Instant) -> Result<(), UsageError> {
        if self.is_closed() || self.phase == Phase::Quitting {
            return Err(UsageError::Closed);
        }
        if !self.is_ready() {
            return Err(UsageError::NotReady);
        }
        if envelope.recipients.is_empty() {
            return Err(UsageError::NoRecipients);
        }
        self.start_txn(envelope, false, now)
    }

    /// Starts a transaction whose recipients are added one by one
    /// ([`Client::add_recipient`], e.g. as a proxy receives them), then
    /// closed with [`Client::close_recipients`] before the body, or
    /// abandoned with [`Client::reset`]. Sends MAIL (and the envelope's
    /// recipients, if any). A refused MAIL is reported as
    /// [`ClientEvent::MessageRejected`] once its reply is in.
    pub fn begin_mail(&mut self, envelope: &Envelope, now: Instant) -> Result<(), UsageError> {
        if self.is_closed() || self.phase == Phase::Quitting {
            return Err(UsageError::Closed);
        }
        if !self.is_ready() {
            return Err(UsageError::NotReady);
        }
        self.start_txn(envelope, true, now)
    }

    /// Adds a recipient to a transaction begun with [`Client::begin_mail`];
    /// returns its index (in [`ClientEvent::Recipient`]). A non-ASCII
    /// address needs SMTPUTF8 in the envelope.
    pub fn add_recipient(
        &mut self,
        recipient: &Recipient,
        now: Instant,
    ) -> Result<usize, UsageError> {
        let ext = self.ext.clone().unwrap_or_default();
        let Some(txn) = self.txn.as_mut().filter(|t| t.open && t.failed.is_none()) else {
            return Err(UsageError::NotReady);
        };
        if !recipient.address.is_ascii() && !txn.utf8 {
            return Err(UsageError::Unsupported("SMTPUTF8"));
        }
        let line = rcpt_line(recipient, &ext)?;
        let index = txn.recipients;
        txn.recipients += 1;
        self.set_time(now);
        self.queue_command(line, Expect::Rcpt(index));
        self.flush_queue();
        Ok(index)
    }

    /// Ends the recipients of a transaction begun with
    /// [`Client::begin_mail`]: the body follows (DATA is sent, or BDAT
    /// chunks once the recipients are answered). With no recipient
    /// accepted, the transaction fails as with [`Client::send_mail`].
    pub fn close_recipients(&mut self, now: Instant) -> Result<(), UsageError> {
        let Some(txn) = self.txn.as_mut().filter(|t| t.open) else {
            return Err(UsageError::NotReady);
        };
        if txn.recipients == 0 && txn.failed.is_none() {
            return Err(UsageError::NoRecipients);
        }
        txn.open = false;
        let bdat = txn.bdat;
        let answered = txn.rcpt_replies >= txn.recipients;
        self.set_time(now);
        if !bdat {
            self.queue_command(b"DATA\r\n".to_vec(), Expect::Data);
        }
        if answered {
            self.recipients_answered();
        }
        self.flush_queue();
        self.check_txn_done();
        Ok(())
    }

    /// Abandons a transaction begun with [`Client::begin_mail`] before its
    /// body (RSET). Only once every reply awaited for it is in.
    pub fn reset(&mut self, now: Instant) -> Result<(), UsageError> {
        if self.inflight.iter().any(|e| e.in_txn()) {
            return Err(UsageError::NotReady);
        }
        let Some(txn) = self.txn.take_if(|t| t.open || t.failed.is_some()) else {
            return Err(UsageError::NotReady);
        };
        self.set_time(now);
        self.drop_queued_txn();
        if txn.needs_rset || !txn.mail_refused {
            self.queue_command(b"RSET\r\n".to_vec(), Expect::Rset);
            self.flush_queue();
        }
        Ok(())
    }

    /// Queues MAIL, the envelope's RCPTs and (unless `open` or BDAT) DATA.
    fn start_txn(
        &mut self,
        envelope: &Envelope,
        open: bool,
        now: Instant,
    ) -> Result<(), UsageError> {
        let ext = self.ext.clone().unwrap_or_default();
        let lines = build_transaction(envelope, &ext, self.tls)?;
        self.set_time(now);
        let bdat = lines.bdat || (ext.chunking && self.config.chunking);
        self.queue_command(lines.mail, Expect::Mail);
        let recipients = lines.rcpts.len();
        for (i, line) in lines.rcpts.into_iter().enumerate() {
            self.queue_command(line, Expect::Rcpt(i));
        }
        if !bdat && !open {
            self.queue_command(b"DATA\r\n".to_vec(), Expect::Data);
        }
        self.txn = Some(Transaction {
            recipients,
            bdat,
            accepted: Vec::new(),
            rcpt_replies: 0,
            mail_refused: false,
            last_refusal: None,
            failed: None,
            needs_rset: false,
            body: BodyState::Pending,
            ended: false,
            buf: Vec::new(),
            stuffer: DotStuffer::new(),
            end_replies: 0,
            open,
            utf8: lines.utf8,
        });
        self.body_progress = now;
        self.flush_queue();
        Ok(())
    }

    /// Offers body bytes (the message as it should arrive: the client
    /// dot-stuffs for DATA). Returns how many were taken: fewer than given
    /// when the client holds [`ClientConfig::max_pending_output`] bytes
    /// (write [`Client::transmit`] out, then offer the rest). Bytes pushed
    /// before the server is ready for the body are buffered.
    ///
    /// With DATA, a body that does not end with CRLF gets one added.
    pub fn push_body(&mut self, bytes: &[u8], now: Instant) -> Result<usize, UsageError> {
        if self.is_closed() {
            return Err(UsageError::Closed);
        }
        let budget = self.budget();
        if !self.wants_body_now() {
            return Err(UsageError::NoBody);
        }
        let n = bytes.len().min(budget);
        let bytes = bytes.get(..n).unwrap_or_default();
        if n == 0 {
            return Ok(0);
        }
        self.body_progress = now;
        self.set_time(now);
        let Some(txn) = self.txn.as_mut() else {
            return Err(UsageError::NoBody);
        };
        if txn.body == BodyState::Open && !txn.bdat {
            txn.stuffer.feed(bytes, &mut self.out);
        } else {
            txn.buf.extend_from_slice(bytes);
            if txn.body == BodyState::Open {
                self.cut_chunks();
            }
        }
        Ok(n)
    }

    /// Ends the body: the end of data (`.`) or the last BDAT chunk is sent
    /// once everything before it is.
    pub fn end_body(&mut self, now: Instant) -> Result<(), UsageError> {
        if self.is_closed() {
            return Err(UsageError::Closed);
        }
        if !self.wants_body_now() {
            return Err(UsageError::NoBody);
        }
        self.set_time(now);
        self.body_progress = now;
        let Some(txn) = self.txn.as_mut() else {
            return Err(UsageError::NoBody);
        };
        txn.ended = true;
        if txn.body == BodyState::Open {
            self.finish_body();
        }
        Ok(())
    }

    /// Ends the session: QUIT once the replies awaited have come. During a
    /// transaction, an AUTH exchange or STARTTLS there is no clean way out:
    /// the client closes at once (the server discards an unfinished
    /// message, but one whose body was complete may have been delivered).
    pub fn quit(&mut self, now: Instant) -> Result<(), UsageError> {
        match self.phase {
            Phase::Closed => return Err(UsageError::Closed),
            Phase::Quitting => return Ok(()),
            _ => {}
        }
        self.set_time(now);
        let stuck = matches!(self.phase, Phase::StartTls | Phase::Handshake | Phase::Auth);
        if self.txn.is_some() || stuck {
            self.out.clear();
            self.out_pos = 0;
            self.close();
            return Ok(());
        }
        self.phase = Phase::Quitting;
        self.queue.clear();
        self.queue_command(b"QUIT\r\n".to_vec(), Expect::Quit);
        self.flush_queue();
        Ok(())
    }

    /// Tells the client the current time without other input.
    pub fn set_time(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    // ----- output -----

    /// The next event, or `None` when there is none. Call it until `None`
    /// after every input.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Bytes to send to the server.
    pub fn transmit(&self) -> &[u8] {
        self.out.get(self.out_pos..).unwrap_or_default()
    }

    /// Reports that `n` bytes of [`Client::transmit`] were written.
    pub fn transmitted(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
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

    /// Room left for body bytes.
    fn budget(&self) -> usize {
        let queued: usize = self.queue.iter().map(|c| c.bytes.len()).sum();
        let buffered = self.txn.as_ref().map_or(0, |t| t.buf.len());
        let used = (self.out.len() - self.out_pos) + queued + buffered;
        self.config.max_pending_output.saturating_sub(used)
    }

    fn chunk_size(&self) -> usize {
        self.config
            .chunk_size
            .clamp(1, (self.config.max_pending_output / 2).max(1))
    }

    fn queue_command(&mut self, bytes: Vec<u8>, expect: Expect) {
        self.queue.push_back(Outgoing {
            bytes,
            expect,
            replies: 1,
            wait_idle: false,
        });
    }

    /// Writes queued commands as far as pipelining (or lock-step) allows.
    fn flush_queue(&mut self) {
        while let Some(front) = self.queue.front() {
            if self.is_closed() || self.phase == Phase::Handshake {
                return;
            }
            // Nothing may interleave with a DATA body (nothing is queued
            // then anyway; this keeps it so).
            if self
                .txn
                .as_ref()
                .is_some_and(|t| !t.bdat && t.body == BodyState::Open)
            {
                return;
            }
            let idle = self.inflight.is_empty();
            let may_pipeline = self.pipelining()
                && !front.wait_idle
                && self.inflight.len() < self.config.max_pipelined
                && self.inflight.back().is_some_and(|e| !e.is_sync());
            if !idle && !may_pipeline {
                return;
            }
            let Some(cmd) = self.queue.pop_front() else {
                return;
            };
            if idle {
                self.wait_since = self.now;
            }
            self.out.extend_from_slice(&cmd.bytes);
            for _ in 0..cmd.replies.max(1) {
                self.inflight.push_back(cmd.expect);
            }
        }
    }

    /// Drops the transaction's commands that are not written yet.
    fn drop_queued_txn(&mut self) {
        self.queue.retain(|c| !c.expect.in_txn());
    }

    fn process_input(&mut self) {
        let mut pos = 0;
        while !self.is_closed() && self.phase != Phase::Handshake {
            let input = self.input.get(pos..self.end).unwrap_or_default();
            match parse_reply(input, self.config.max_reply_len) {
                Ok(Some((reply, used))) => {
                    pos += used;
                    self.on_reply(reply);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(ClientError::MalformedReply(e), false);
                    return;
                }
            }
        }
        if self.is_closed() {
            return;
        }
        if self.phase == Phase::Handshake {
            if pos < self.end {
                self.fail(ClientError::TlsInjection, false);
                return;
            }
            self.events.push_back(ClientEvent::StartTls);
        }
        self.input.copy_within(pos..self.end, 0);
        self.end -= pos;
        self.flush_queue();
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(expect) = self.inflight.pop_front() else {
            let err = if reply.code() == 421 {
                ClientError::ServiceClosing(reply)
            } else {
                ClientError::UnexpectedReply(reply)
            };
            self.fail(err, false);
            return;
        };
        self.wait_since = self.now;
        if expect == Expect::Quit {
            // Whatever the answer, the session is over.
            self.close();
            return;
        }
        if reply.code() == 421 {
            self.fail(ClientError::ServiceClosing(reply), false);
            return;
        }
        if self.phase == Phase::Quitting {
            // Replies to what was in flight before QUIT: nothing follows
            // them, but they must still make sense.
            if !expect.plausible(reply.code()) {
                self.fail(ClientError::UnexpectedReply(reply), false);
            }
            return;
        }
        match expect {
            Expect::Greeting => self.on_greeting(reply),
            Expect::Hello(kind) => self.on_hello(kind, reply),
            Expect::StartTls => self.on_starttls(reply),
            Expect::Auth => self.on_auth(reply),
            Expect::Mail => self.on_mail(reply),
            Expect::Rcpt(i) => self.on_rcpt(i, reply),
            Expect::Data => self.on_data(reply),
            Expect::Chunk => self.on_chunk(reply),
            Expect::End => self.on_end(reply),
            Expect::Rset => {
                if reply.code() != 250 {
                    self.refuse_session(reply);
                }
            }
            Expect::Quit => {}
        }
        self.check_txn_done();
    }

    fn on_greeting(&mut self, reply: Reply) {
        match reply.code() {
            220 => self.send_hello(self.first_hello()),
            _ => self.refuse_session(reply),
        }
    }

    fn first_hello(&self) -> Hello {
        if self.lmtp() {
            Hello::Lhlo
        } else {
            Hello::Ehlo
        }
    }

    fn send_hello(&mut self, kind: Hello) {
        self.phase = Phase::Hello;
        let domain = self.hello_name.as_str();
        let cmd = match kind {
            Hello::Ehlo => Command::Ehlo { domain },
            Hello::Helo => Command::Helo { domain },
            Hello::Lhlo => Command::Lhlo { domain },
        };
        let bytes = cmd.to_bytes();
        self.queue_command(bytes, Expect::Hello(kind));
        self.flush_queue();
    }

    fn on_hello(&mut self, kind: Hello, reply: Reply) {
        match (kind, reply.code()) {
            (Hello::Ehlo | Hello::Lhlo, 250) => {
                self.ext = Some(ServerExtensions::parse(&reply));
                self.after_hello();
            }
            (Hello::Helo, 250) => {
                self.ext = Some(ServerExtensions {
                    name: ServerExtensions::parse(&reply).name,
                    ..ServerExtensions::default()
                });
                self.after_hello();
            }
            (Hello::Ehlo, 500 | 502) => self.send_hello(Hello::Helo),
            (_, c) if c >= 400 => self.refuse_session(reply),
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    /// After EHLO/HELO: STARTTLS, then AUTH, then ready.
    fn after_hello(&mut self) {
        let ext = self.ext.clone().unwrap_or_default();
        if !self.tls && !self.tls_declined && self.config.tls != TlsPolicy::None {
            if ext.starttls {
                self.phase = Phase::StartTls;
                self.queue_command(b"STARTTLS\r\n".to_vec(), Expect::StartTls);
                self.flush_queue();
                return;
            }
            if self.config.tls == TlsPolicy::Required {
                self.fail(ClientError::TlsUnavailable, true);
                return;
            }
        }
        if let Some(auth) = self.config.auth.as_ref().filter(|_| !self.authenticated) {
            if !self.tls && !self.config.allow_plaintext_auth {
                self.fail(ClientError::AuthNeedsTls, true);
                return;
            }
            let Some(mech) = auth
                .mechanisms
                .iter()
                .copied()
                .find(|m| ext.offers_auth(*m))
            else {
                self.fail(ClientError::AuthUnavailable, true);
                return;
            };
            let (line, responses) = auth_exchange(auth, mech);
            self.auth_responses = responses;
            self.phase = Phase::Auth;
            self.queue_command(line, Expect::Auth);
            self.flush_queue();
            return;
        }
        self.become_ready();
    }

    fn become_ready(&mut self) {
        self.phase = Phase::Ready;
        let extensions = self.ext.clone().unwrap_or_default();
        self.events.push_back(ClientEvent::Ready { extensions });
    }

    fn on_starttls(&mut self, reply: Reply) {
        match reply.code() {
            // The event is reported once no byte follows the reply.
            220 => self.phase = Phase::Handshake,
            c if c >= 400 => {
                if self.config.tls == TlsPolicy::Required {
                    self.fail(ClientError::TlsRefused(reply), true);
                } else {
                    self.tls_declined = true;
                    self.after_hello();
                }
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    fn on_auth(&mut self, reply: Reply) {
        match reply.code() {
            235 => {
                self.authenticated = true;
                self.auth_responses.clear();
                self.events.push_back(ClientEvent::Authenticated);
                self.become_ready();
            }
            334 => match self.auth_responses.pop_front() {
                Some(r) => {
                    self.wait_since = self.now;
                    self.out.extend_from_slice(r.expose().as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                    self.inflight.push_back(Expect::Auth);
                }
                None => self.fail(ClientError::UnexpectedReply(reply), false),
            },
            c if c >= 400 => {
                self.auth_responses.clear();
                self.fail(ClientError::AuthFailed(reply), true);
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    fn on_mail(&mut self, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        match reply.code() {
            250 => txn.needs_rset = true,
            c if c >= 400 => {
                txn.mail_refused = true;
                txn.failed = Some(reply);
                txn.body = BodyState::Dead;
                txn.buf = Vec::new();
                self.drop_queued_txn();
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    fn on_rcpt(&mut self, index: usize, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        let code = reply.code();
        if txn.mail_refused {
            // Replies to RCPTs pipelined after a refused MAIL can only be refusals.
            if code < 400 {
                self.fail(ClientError::UnexpectedReply(reply), false);
            }
            return;
        }
        txn.rcpt_replies += 1;
        match code {
            250 | 251 => txn.accepted.push(index),
            c if c >= 400 => txn.last_refusal = Some(reply.clone()),
            _ => return self.fail(ClientError::UnexpectedReply(reply), false),
        }
        self.events
            .push_back(ClientEvent::Recipient { index, reply });
        if txn.rcpt_replies < txn.recipients || txn.open {
            return;
        }
        self.recipients_answered();
    }

    /// Every recipient is answered and no more come: fail without any
    /// accepted, or open the BDAT body.
    fn recipients_answered(&mut self) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        if txn.failed.is_some() {
            return;
        }
        if txn.accepted.is_empty() {
            txn.failed = txn.last_refusal.clone();
            txn.body = BodyState::Dead;
            txn.buf = Vec::new();
            self.drop_queued_txn();
        } else if txn.bdat {
            self.open_body();
        }
    }

    fn on_data(&mut self, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        match reply.code() {
            354 if txn.failed.is_some() => {
                // No valid recipient, but DATA was pipelined: an empty body
                // ends it (RFC 2920 §3.1).
                self.wait_since = self.now;
                self.out.extend_from_slice(b".\r\n");
                self.inflight.push_back(Expect::End);
            }
            354 => self.open_body(),
            c if c >= 400 => {
                if txn.failed.is_none() {
                    txn.failed = Some(reply);
                    txn.body = BodyState::Dead;
                    txn.buf = Vec::new();
                }
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    fn on_chunk(&mut self, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        let code = reply.code();
        if txn.failed.is_some() {
            // Chunks pipelined after a refused one: their replies change nothing.
            return;
        }
        match code {
            250 => {}
            c if c >= 400 => {
                txn.failed = Some(reply);
                txn.body = BodyState::Dead;
                txn.buf = Vec::new();
                self.drop_queued_txn();
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    fn on_end(&mut self, reply: Reply) {
        let lmtp = self.lmtp();
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        let code = reply.code();
        if txn.failed.is_some() {
            // An empty or cut-off body after a failure: it must not be accepted.
            if code < 400 {
                self.fail(ClientError::UnexpectedReply(reply), false);
            }
            return;
        }
        let recipient = if lmtp {
            txn.accepted.get(txn.end_replies).copied()
        } else {
            None
        };
        txn.end_replies += 1;
        let event = match code {
            250 => ClientEvent::MessageAccepted { recipient, reply },
            c if c >= 400 => ClientEvent::MessageRejected { recipient, reply },
            _ => return self.fail(ClientError::UnexpectedReply(reply), false),
        };
        self.events.push_back(event);
        let expected = if lmtp { txn.accepted.len().max(1) } else { 1 };
        if txn.end_replies >= expected {
            // The end of the body ends the transaction, accepted or not.
            self.txn = None;
        }
    }

    /// Reports a failed transaction once none of its replies is awaited.
    fn check_txn_done(&mut self) {
        if self.inflight.iter().any(|e| e.in_txn()) || self.is_closed() {
            return;
        }
        let Some(txn) = self.txn.as_ref() else {
            return;
        };
        let Some(reply) = txn.failed.clone() else {
            return;
        };
        let rset = txn.needs_rset;
        self.txn = None;
        self.events.push_back(ClientEvent::MessageRejected {
            recipient: None,
            reply,
        });
        if rset && self.phase != Phase::Quitting {
            self.queue_command(b"RSET\r\n".to_vec(), Expect::Rset);
            self.flush_queue();
        }
    }

    /// The server is ready for the body.
    fn open_body(&mut self) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        txn.body = BodyState::Open;
        self.events.push_back(ClientEvent::SendBody);
        if !txn.bdat {
            let buf = std::mem::take(&mut txn.buf);
            txn.stuffer.feed(&buf, &mut self.out);
        }
        if txn.ended {
            self.finish_body();
        } else if txn.bdat {
            self.cut_chunks();
        }
    }

    /// Sends the end of the body (the body is open and ended).
    fn finish_body(&mut self) {
        let lmtp = self.lmtp();
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        txn.body = BodyState::Ended;
        let replies = if lmtp { txn.accepted.len().max(1) } else { 1 };
        if txn.bdat {
            self.cut_chunks();
            let Some(txn) = self.txn.as_mut() else {
                return;
            };
            let chunk = std::mem::take(&mut txn.buf);
            let mut bytes = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
            bytes.extend_from_slice(&chunk);
            // In LMTP the number of replies to BDAT LAST depends on the
            // transaction still standing: send it once all else is answered.
            self.queue.push_back(Outgoing {
                bytes,
                expect: Expect::End,
                replies,
                wait_idle: lmtp,
            });
            self.flush_queue();
        } else {
            txn.stuffer.finish(&mut self.out);
            if self.inflight.is_empty() {
                self.wait_since = self.now;
            }
            for _ in 0..replies {
                self.inflight.push_back(Expect::End);
            }
        }
    }

    /// Queues the full BDAT chunks of the buffered body.
    fn cut_chunks(&mut self) {
        let size = self.chunk_size();
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        while txn.buf.len() >= size {
            let rest = txn.buf.split_off(size);
            let chunk = std::mem::replace(&mut txn.buf, rest);
            let mut bytes = format!("BDAT {}\r\n", chunk.len()).into_bytes();
            bytes.extend_from_slice(&chunk);
            self.queue.push_back(Outgoing {
                bytes,
                expect: Expect::Chunk,
                replies: 1,
                wait_idle: false,
            });
        }
        self.flush_queue();
    }

    /// The server refused the session (greeting, EHLO, RSET): QUIT.
    fn refuse_session(&mut self, reply: Reply) {
        self.fail(ClientError::Rejected(reply), true);
    }

    /// Reports a fatal error; with `quit`, QUIT is sent first (the
    /// protocol is still in step), else the client closes at once.
    fn fail(&mut self, err: ClientError, quit: bool) {
        if self.is_closed() {
            return;
        }
        self.events.push_back(ClientEvent::Error(err));
        self.txn = None;
        self.queue.clear();
        self.auth_responses.clear();
        if quit && self.phase != Phase::Quitting {
            self.phase = Phase::Quitting;
            self.inflight.clear();
            self.queue_command(b"QUIT\r\n".to_vec(), Expect::Quit);
            self.flush_queue();
        } else {
            self.close();
        }
    }

    fn close(&mut self) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Closed;
        self.inflight.clear();
        self.queue.clear();
        self.txn = None;
        self.end = 0;
        self.input = Vec::new();
        self.events.push_back(ClientEvent::Closed);
    }
}

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
) -> Result<TransactionLines, UsageError> {
    fn mailbox(a: &str) -> Result<crate::command::Mailbox<'_>, UsageError> {
        parse_mailbox(a, true, false).ok_or_else(|| UsageError::InvalidAddress(a.into()))
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
        return Err(UsageError::Unsupported("SMTPUTF8"));
    }
    let body = env.body;
    match body {
        Some(BodyType::EightBitMime) if !ext.eightbitmime => {
            return Err(UsageError::Unsupported("8BITMIME"));
        }
        Some(BodyType::BinaryMime) if !(ext.binarymime && ext.chunking) => {
            return Err(UsageError::Unsupported("BINARYMIME"));
        }
        _ => {}
    }
    if env.requiretls && !(ext.requiretls && tls) {
        return Err(UsageError::Unsupported("REQUIRETLS"));
    }
    if let (Some(size), Some(limit)) = (env.size, ext.size) {
        if limit > 0 && size > limit {
            return Err(UsageError::TooBig { limit });
        }
    }
    let envid = match env.envid.as_deref() {
        Some(e) if ext.dsn => {
            let x = encode_xtext(e);
            if x.is_empty() || x.len() > 100 {
                return Err(UsageError::InvalidParameter("ENVID"));
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
        return Err(UsageError::InvalidParameter("MAIL line too long"));
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
fn rcpt_line(r: &Recipient, ext: &ServerExtensions) -> Result<Vec<u8>, UsageError> {
    let path = if r.address.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(
            parse_mailbox(&r.address, true, false)
                .ok_or_else(|| UsageError::InvalidAddress(r.address.clone()))?,
        )
    };
    if r.orcpt.as_deref().is_some_and(|o| o.contains(['\r', '\n'])) {
        return Err(UsageError::InvalidParameter("ORCPT"));
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
        return Err(UsageError::InvalidParameter("ORCPT"));
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
            Some(UsageError::Unsupported("SMTPUTF8"))
        );
        let env = Envelope::new(Some("a@@b"), ["c@d"]);
        assert!(matches!(
            build_transaction(&env, &ext, false),
            Err(UsageError::InvalidAddress(_))
        ));
        // No recipients is for `begin_mail` (send_mail refuses it itself).
        let env = Envelope::new(None, Vec::<String>::new());
        assert!(build_transaction(&env, &ext, false).is_ok_and(|l| l.rcpts.is_empty()));
        let mut env = Envelope::new(None, ["postmaster"]);
        env.body = Some(BodyType::BinaryMime);
        assert_eq!(
            build_transaction(&env, &ext, false).err(),
            Some(UsageError::Unsupported("BINARYMIME"))
        );
    }
}
