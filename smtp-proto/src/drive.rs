//! The drive contract: one trait, [`Drive`], implemented by both roles
//! ([`Session`](crate::server::Session) and [`Client`](crate::client::Client)),
//! so one driver (an event loop, a runtime's task, a thread) moves bytes and
//! time for either.
//!
//! # The drive loop
//!
//! Every input takes the current time; nothing in this crate reads a clock.
//!
//! 1. **Feed input**: [`Drive::read_buf`] + [`Drive::filled`] (zero-copy)
//!    or [`Drive::receive`] for bytes from the peer; [`Drive::receive_eof`]
//!    when the peer closed its side; [`Drive::handle_timeout`] when an
//!    instant the machine asked for has passed; [`Drive::tls_established`]
//!    or [`Drive::tls_failed`] after a handshake.
//! 2. **Poll** with [`Drive::poll`] until it returns an [`Instruction`]
//!    instead of an [`Output::Event`]. Handle each event; a server event
//!    that needs a decision carries a [`Ticket`]
//!    that must be answered (`Session::respond(ticket, decision, now)`),
//!    now or from another task later.
//! 3. **Write** what [`Drive::transmit`] holds and report it with
//!    [`Drive::transmitted`] (every instruction wants the output written).
//! 4. **Obey the instruction**:
//!    - [`Instruction::Idle`]: read if `read` says so, and call
//!      [`Drive::handle_timeout`] at `deadline`; then go to 1.
//!    - [`Instruction::AwaitingDecision`]: a ticket is out; nothing moves
//!      until it is answered (the answer is the next input; go to 2).
//!    - [`Instruction::StartTls`]: write everything first, then do the TLS
//!      handshake, reading nothing into the machine; report it (go to 1).
//!    - [`Instruction::Throttle`]: read nothing until `until` (the output
//!      is written as always), then call [`Drive::handle_timeout`] (go to 2).
//!    - [`Instruction::Closed`]: write the last bytes, then close the
//!      connection. The machine is done.
//!
//! Instructions are states, not messages: polling again without new input
//! returns the same one, so no arm of a `match` can lose one.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use smtp_proto::client::{Client, ClientConfig, ClientEvent, TlsPolicy};
//! use smtp_proto::config::Config;
//! use smtp_proto::drive::{Drive, Instruction, Output};
//! use smtp_proto::server::{Decision, Event, PeerInfo, Session};
//!
//! /// Moves every byte one side transmits into the other (a perfect wire).
//! fn pump(from: &mut impl Drive, to: &mut impl Drive, now: Instant) -> bool {
//!     let n = from.transmit().len();
//!     let bytes = from.transmit().to_vec();
//!     from.transmitted(n);
//!     to.receive(&bytes, now);
//!     n > 0
//! }
//!
//! let now = Instant::now();
//! let mut server = Session::new(Arc::new(Config::new("mx.example")), PeerInfo::default(), now);
//! let mut config = ClientConfig::new("client.example");
//! config.tls = TlsPolicy::None; // STARTTLS is required by default; not offered here
//! let mut client = Client::new(config, now);
//! let mut ready = false;
//! loop {
//!     // 2. The server: answer every decision at once.
//!     let server_says = loop {
//!         match server.poll() {
//!             Output::Event(event) => {
//!                 if let Some(ticket) = event.into_ticket() {
//!                     server.respond(ticket, Decision::Accept, now).unwrap();
//!                 }
//!             }
//!             Output::Instruction(i) => break i,
//!         }
//!     };
//!     // 2. The client: note when the session is set up.
//!     let client_says = loop {
//!         match client.poll() {
//!             Output::Event(ClientEvent::Ready { .. }) => ready = true,
//!             Output::Event(_) => {}
//!             Output::Instruction(i) => break i,
//!         }
//!     };
//!     // 3. and 1. Write each side's output into the other.
//!     let moved = pump(&mut server, &mut client, now) | pump(&mut client, &mut server, now);
//!     // 4. Nothing to start TLS for, no decision left open.
//!     assert!(matches!(server_says, Instruction::Idle { read: true, .. }));
//!     assert!(matches!(client_says, Instruction::Idle { .. }));
//!     if !moved {
//!         break;
//!     }
//! }
//! assert!(ready, "greeting and EHLO went through");
//! ```

use std::fmt;
use std::time::Instant;

use crate::server::Ticket;

/// Facts about the TLS layer, for the `Received:` header and the handler.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite name, e.g. `TLS_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// The `tls-exporter` channel binding (RFC 9266: 32 bytes exported
    /// with the label `EXPORTER-Channel-Binding` and no context), given
    /// under TLS 1.3 only; SCRAM-SHA-256-PLUS is offered only with it.
    pub channel_binding: Option<Vec<u8>>,
}

/// What [`Drive::poll`] returns: an application event, or what the driver
/// does next.
#[derive(Debug)]
#[must_use]
pub enum Output<E> {
    /// For the application (the server's `Event`, the client's `ClientEvent`).
    Event(E),
    /// For the driver: no event is left until it does this.
    Instruction(Instruction),
}

impl<E> Output<E> {
    /// The event, or `None` for an instruction (`while let Some(e) =
    /// s.poll().event()`). The instruction still holds: poll once more
    /// (it is returned again) and act on it, or the machine may wait for
    /// nothing (a throttle that never ends, a handshake never started).
    #[inline]
    pub fn event(self) -> Option<E> {
        match self {
            Output::Event(e) => Some(e),
            Output::Instruction(_) => None,
        }
    }
}

/// What the driver does once the events are drained. See the
/// [drive loop](self#the-drive-loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Instruction {
    /// Write the output; read if `read`; call [`Drive::handle_timeout`] at
    /// `deadline` (`None`: no deadline).
    Idle {
        /// Whether to read from the peer now (false while the input buffer
        /// is full or replies pile up unwritten: backpressure).
        read: bool,
        /// When to call [`Drive::handle_timeout`].
        deadline: Option<Instant>,
    },
    /// A decision is pending (server): answer its ticket; write the output
    /// meanwhile, read nothing.
    AwaitingDecision,
    /// Write all the output, then do the TLS handshake and report it with
    /// [`Drive::tls_established`] or [`Drive::tls_failed`].
    StartTls,
    /// Write the output, read nothing until this instant, then call
    /// [`Drive::handle_timeout`] (the server's soft error limit).
    Throttle(Instant),
    /// Write the output, then close the connection.
    Closed,
}

/// Misuse of the [`Drive`] machines' API (never caused by the peer); nothing changed.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misuse {
    /// The ticket does not belong to the decision the session is waiting
    /// for (another session's, or one already answered). It is handed back.
    UnknownTicket(Ticket),
    /// `Session::respond_each` got a number of decisions other than the
    /// number of accepted recipients. The ticket is handed back.
    WrongReplyCount(Ticket),
    /// [`Drive::tls_established`] without [`Instruction::StartTls`].
    NotStartingTls,
    /// `Client::send_mail` before `ClientEvent::Ready`, or while a
    /// transaction is in progress.
    NotReady,
    /// `Client::push_body` / `Client::end_body` with no body expected (no
    /// transaction, the body already ended, or the message was refused).
    NoBody,
    /// The machine is closed (or quitting).
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

impl Misuse {
    /// The ticket handed back, if this misuse carried one.
    pub fn into_ticket(self) -> Option<Ticket> {
        match self {
            Misuse::UnknownTicket(t) | Misuse::WrongReplyCount(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misuse::UnknownTicket(_) => f.write_str("ticket not for the pending decision"),
            Misuse::WrongReplyCount(_) => f.write_str("wrong number of per-recipient decisions"),
            Misuse::NotStartingTls => f.write_str("no STARTTLS in progress"),
            Misuse::NotReady => f.write_str("client not ready for a new transaction"),
            Misuse::NoBody => f.write_str("no message body expected now"),
            Misuse::Closed => f.write_str("closed"),
            Misuse::NoRecipients => f.write_str("envelope without recipients"),
            Misuse::InvalidAddress(a) => write!(f, "invalid address {a:?}"),
            Misuse::InvalidParameter(p) => write!(f, "invalid {p} parameter"),
            Misuse::Unsupported(e) => write!(f, "the server does not offer {e}"),
            Misuse::TooBig { limit } => write!(f, "message over the server's limit of {limit}"),
        }
    }
}

impl std::error::Error for Misuse {}

/// One side of an SMTP/LMTP connection as a sans-IO machine: the contract
/// every driver keeps, for either role. See the [drive loop](self#the-drive-loop).
pub trait Drive {
    /// What [`Drive::poll`] hands the application (borrowed from the machine
    /// until the next call).
    type Event<'a>
    where
        Self: 'a;

    /// Free space to read into; then call [`Drive::filled`]. Empty when
    /// no input is wanted now.
    fn read_buf(&mut self) -> &mut [u8];

    /// Reports that `n` bytes were written into [`Drive::read_buf`] at `now`.
    fn filled(&mut self, n: usize, now: Instant);

    /// Copies bytes from the peer in; returns how many were taken (fewer
    /// when the machine wants no more now: keep the rest for later).
    fn receive(&mut self, bytes: &[u8], now: Instant) -> usize;

    /// The peer closed its side of the connection.
    fn receive_eof(&mut self, now: Instant);

    /// Time `now` was reached (at or after the deadline of
    /// [`Instruction::Idle`] or the end of [`Instruction::Throttle`]).
    fn handle_timeout(&mut self, now: Instant);

    /// The TLS handshake after [`Instruction::StartTls`] succeeded: the
    /// machine forgets what it learned before (RFC 3207 §4.2).
    fn tls_established(&mut self, info: TlsInfo, now: Instant) -> Result<(), Misuse>;

    /// The TLS handshake failed: the machine closes without another byte in
    /// clear.
    fn tls_failed(&mut self, now: Instant);

    /// Bytes to write to the peer, in order.
    fn transmit(&self) -> &[u8];

    /// Reports that the first `n` bytes of [`Drive::transmit`] were written.
    fn transmitted(&mut self, n: usize);

    /// Whether [`Drive::poll`] would return an [`Output::Event`] now,
    /// without borrowing the machine (it prepares the event). For async
    /// loops that return the event they wait for. Call [`Drive::poll`]
    /// next: until then the machine takes no input.
    fn has_event(&mut self) -> bool;

    /// The next event, or what the driver does next.
    fn poll(&mut self) -> Output<Self::Event<'_>>;

    /// Whether the machine is done: once [`Drive::transmit`] is empty, close.
    fn is_closed(&self) -> bool;
}

/// Implements [`Drive`] for a machine by forwarding to its inherent
/// methods of the same names (where each role documents its own details).
macro_rules! forward_drive {
    ($ty:ty, $event:ty) => {
        impl $crate::drive::Drive for $ty {
            type Event<'a> = $event;
            #[inline]
            fn read_buf(&mut self) -> &mut [u8] {
                <$ty>::read_buf(self)
            }
            #[inline]
            fn filled(&mut self, n: usize, now: ::std::time::Instant) {
                <$ty>::filled(self, n, now)
            }
            #[inline]
            fn receive(&mut self, bytes: &[u8], now: ::std::time::Instant) -> usize {
                <$ty>::receive(self, bytes, now)
            }
            #[inline]
            fn receive_eof(&mut self, now: ::std::time::Instant) {
                <$ty>::receive_eof(self, now)
            }
            #[inline]
            fn handle_timeout(&mut self, now: ::std::time::Instant) {
                <$ty>::handle_timeout(self, now)
            }
            #[inline]
            fn tls_established(
                &mut self,
                info: $crate::drive::TlsInfo,
                now: ::std::time::Instant,
            ) -> Result<(), $crate::drive::Misuse> {
                <$ty>::tls_established(self, info, now)
            }
            #[inline]
            fn tls_failed(&mut self, now: ::std::time::Instant) {
                <$ty>::tls_failed(self, now)
            }
            #[inline]
            fn transmit(&self) -> &[u8] {
                <$ty>::transmit(self)
            }
            #[inline]
            fn transmitted(&mut self, n: usize) {
                <$ty>::transmitted(self, n)
            }
            #[inline]
            fn has_event(&mut self) -> bool {
                <$ty>::has_event(self)
            }
            #[inline]
            fn poll(&mut self) -> $crate::drive::Output<Self::Event<'_>> {
                <$ty>::poll(self)
            }
            #[inline]
            fn is_closed(&self) -> bool {
                <$ty>::is_closed(self)
            }
        }
    };
}
pub(crate) use forward_drive;
