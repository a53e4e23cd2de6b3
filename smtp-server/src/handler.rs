//! The application side: an async [`Handler`] trait and the [`Dispatcher`]
//! that feeds a [`Session`]'s events to it.
//!
//! This module is runtime-agnostic (futures only): every adapter runs the
//! same dispatch, so handlers behave the same on tokio, smol, async-std and
//! threads. Unlike [`smtp_proto::server`], it may read the system clock (for the
//! `Received:` header's date).
//!
//! The handler hooks mirror the classic server APIs: Tcl smtpd's
//! `validate_host` ([`Handler::connect`]), `validate_sender`
//! ([`Handler::mail`]), `validate_recipient` ([`Handler::rcpt`]) and
//! `deliver` ([`Handler::message`]); Pike's DATA callback gets the parsed MIME
//! message ([`Message::parsed`]), the sender, the recipients and the raw data.
//!
//! Every hook has a default: accept (AUTH's default refuses, so that a server
//! never accepts any password by accident).
//!
//! ```
//! use std::sync::Arc;
//! use smtp_server::handler::{Envelope, Handler, Message, MessageDecision, Recipient, SessionInfo};
//! use smtp_proto::server::Decision;
//! use smtp_proto::reply::Reply;
//!
//! struct OnlyExampleOrg;
//!
//! impl Handler for OnlyExampleOrg {
//!     async fn rcpt(&self, _s: &SessionInfo, _e: &Envelope, to: &Recipient) -> Decision {
//!         if to.address.to_ascii_lowercase().ends_with("@example.org") {
//!             Decision::Accept
//!         } else {
//!             Reply::RELAY_DENIED.into()
//!         }
//!     }
//!     async fn message(&self, _s: &SessionInfo, env: &Envelope, msg: &Arc<Message>) -> MessageDecision {
//!         let subject = msg.parsed().and_then(|m| m.subject().map(str::to_owned));
//!         let _ = (env.recipients.len(), subject);
//!         Decision::Accept.into()
//!     }
//! }
//! # let _ = Arc::new(OnlyExampleOrg);
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;

use smtp_proto::command::{
    BodyType, ForwardPath, MailParams, Notify, RcptParams, Ret, ReversePath,
};
use smtp_proto::drive::{Instruction, Output};
use smtp_proto::reply::Reply;
use smtp_proto::sasl::{Credentials, Mechanism, OAuthToken, SaslAnswer, SaslRequest, Secret};

use crate::sasl::ScramKeys;
use smtp_proto::server::{
    AbortReason, CloseReason, Decision, Event, Forwarded, HeloKind, PeerInfo, Session, Ticket,
};

use crate::dial::BoxFuture;

/// What a handler knows about the session when a hook runs.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// A server-unique id (for logs and the Received header).
    pub id: String,
    /// The peer (after the PROXY header, if any).
    pub peer: PeerInfo,
    /// The HELO/EHLO/LHLO name, once accepted.
    pub helo: Option<String>,
    /// Whether the connection is under TLS.
    pub tls: bool,
    /// The authenticated user, if any (XCLIENT's `LOGIN` included).
    pub authenticated: Option<String>,
    /// The original client's facts a trusted content filter passed with
    /// XFORWARD for the current transaction (from MAIL on).
    pub forwarded: Option<Forwarded>,
    /// The client is a front proxy allowed XCLIENT that has not sent it
    /// yet: per-client limits (the connection rate) wait for the client
    /// it names.
    pub front_proxy: bool,
    /// The session speaks LMTP: one answer per recipient after the body, so
    /// a store may fail one recipient alone ([`MessageDecision::PerRecipient`]).
    pub lmtp: bool,
    /// How to reach another server on this session's own runtime (the
    /// relay's upstream); set by every adapter's connection, `None` for a
    /// [`Dispatcher`] driven by hand unless [`Dispatcher::with_dialer`] set it.
    pub dialer: Option<crate::dial::Dialer>,
}

impl SessionInfo {
    /// Whether the client came over a Unix-domain socket (a local
    /// process): it has no address, and none was hidden by a front proxy
    /// (an XCLIENT `ADDR=[UNAVAILABLE]` leaves no address either, but
    /// names a remote client).
    pub fn is_unix_client(&self) -> bool {
        self.peer.remote.is_none() && self.peer.proxied_by.is_none()
    }

    fn refresh(&mut self, s: &Session) {
        self.peer.clone_from(s.peer());
        self.lmtp = s.config().lmtp;
        self.tls = s.is_tls();
        self.front_proxy = s.is_front_proxy();
        match (s.helo_name(), &mut self.helo) {
            (Some(n), Some(h)) if h == n => {}
            (n, h) => *h = n.map(str::to_owned),
        }
        match (s.authenticated(), &mut self.authenticated) {
            (Some(n), Some(h)) if h == n => {}
            (n, h) => *h = n.map(str::to_owned),
        }
        match (s.forwarded(), &mut self.forwarded) {
            (None, None) => {}
            (f, h) => *h = f.cloned(),
        }
    }
}

/// [`Handler::auth_token`]'s verdict on a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenDecision {
    /// The token is valid for the user: `235 2.7.0`.
    Accept,
    /// Refused: `status` is the JSON error object sent in a `334` before
    /// the `535 5.7.8` (RFC 7628 §3.2.2), e.g.
    /// `{"status":"invalid_token","schemes":"bearer"}`.
    Refuse {
        /// The JSON error object.
        status: String,
    },
    /// Answer with this reply at once (e.g. `454 4.7.0` when the token
    /// service cannot be reached).
    Reply(Reply),
}

impl TokenDecision {
    /// A refusal with the usual status, `{"status":"invalid_token","schemes":"bearer"}`.
    pub fn invalid() -> Self {
        TokenDecision::Refuse {
            status: r#"{"status":"invalid_token","schemes":"bearer"}"#.to_owned(),
        }
    }
}

/// The MAIL FROM parameters, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailOptions {
    /// `SIZE=`.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: BodyType,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=` (xtext, as sent).
    pub envid: Option<String>,
    /// `AUTH=` (as sent).
    pub auth: Option<String>,
    /// `REQUIRETLS`.
    pub requiretls: bool,
}

impl From<&MailParams<'_>> for MailOptions {
    fn from(p: &MailParams<'_>) -> Self {
        MailOptions {
            size: p.size,
            body: p.body.unwrap_or_default(),
            smtputf8: p.smtputf8,
            ret: p.ret,
            envid: p.envid.map(str::to_owned),
            auth: p.auth.map(str::to_owned),
            requiretls: p.requiretls,
        }
    }
}

/// One accepted recipient, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as sent (`Postmaster` for the bare `<Postmaster>`).
    pub address: String,
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=` as sent.
    pub orcpt: Option<String>,
}

/// The transaction's envelope: sender and accepted recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path; empty for the null sender `<>`.
    pub from: String,
    /// MAIL parameters.
    pub options: MailOptions,
    /// Accepted recipients, in order.
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    /// The recipient addresses (Python smtpd's `rcpttos`).
    pub fn recipient_addresses(&self) -> impl Iterator<Item = &str> {
        self.recipients.iter().map(|r| r.address.as_str())
    }
}

/// Text of a reverse path (`""` for `<>`).
pub fn reverse_path_text(p: &ReversePath<'_>) -> String {
    match p {
        ReversePath::Null => String::new(),
        ReversePath::Mailbox(m) => m.raw.to_owned(),
    }
}

/// Text of a forward path (`Postmaster` for the bare form).
pub fn forward_path_text(p: &ForwardPath<'_>) -> String {
    match p {
        ForwardPath::Postmaster => "Postmaster".to_owned(),
        ForwardPath::Mailbox(m) => m.raw.to_owned(),
    }
}

/// A received message: the raw bytes, the trace header, and a parsed view.
#[derive(Debug, Default)]
pub struct Message {
    /// The message's id: the session id, a dash, and the message's number
    /// in the session (the id in our `Received:` header and the log line).
    /// Empty for a handler that wants no trace header
    /// ([`Handler::wants_trace`]) while the per-message log line is off.
    pub id: String,
    /// The message exactly as received (dot-unstuffed, CRLF line ends).
    pub data: Vec<u8>,
    /// The `Received:` header this server adds (prepend it when storing or
    /// relaying); empty if the handler said it does not want it
    /// ([`Handler::wants_trace`]).
    pub trace: Vec<u8>,
    /// Where it went, as recorded by the handlers that took it.
    deliveries: std::sync::Mutex<Vec<String>>,
}

impl Clone for Message {
    fn clone(&self) -> Self {
        Message {
            id: self.id.clone(),
            data: self.data.clone(),
            trace: self.trace.clone(),
            deliveries: std::sync::Mutex::new(self.deliveries()),
        }
    }
}

impl Message {
    /// A message with these bytes and this trace header (and no id).
    pub fn new(data: Vec<u8>, trace: Vec<u8>) -> Self {
        Message {
            id: String::new(),
            data,
            trace,
            deliveries: std::sync::Mutex::default(),
        }
    }

    /// Records where (part of) the message went: a Maildir file, an mbox,
    /// an upstream server and its reply. The dispatcher's one log line per
    /// message (`info`, target `smtp::message`) lists what was recorded, so
    /// an operator can follow a message from its envelope to its file.
    pub fn record_delivery(&self, place: impl Into<String>) {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(place.into());
    }

    /// What [`Message::record_delivery`] recorded, in order.
    pub fn deliveries(&self) -> Vec<String> {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The MIME structure, parsed by mail-parser; `None` if it is not a message at all.
    pub fn parsed(&self) -> Option<mail_parser::Message<'_>> {
        mail_parser::MessageParser::default().parse(&self.data)
    }
}

/// What the dispatcher does with a message's body ([`Handler::body`]).
///
/// Memory: [`Body::Buffer`] and [`Body::BufferUpTo`] hold the whole message
/// in memory per session (up to the session's size limit, or the cap)
/// until [`Handler::message`] returns: with the defaults (35 MiB messages,
/// 1024 connections) that can be tens of GiB. [`Body::Discard`] and
/// [`Body::Stream`] hold none of it (a chunk at a time).
pub enum Body {
    /// Keep the whole message and call [`Handler::message`] with it (the
    /// default: the whole-message form, for parsed MIME or Python smtpd's
    /// `process_message` style). Costs the message's size in memory.
    Buffer,
    /// [`Body::Buffer`], capped: a message longer than this many bytes is
    /// refused with `552 5.3.4` (the rest of it is read and dropped), so
    /// a handler that wants whole messages bounds what each session holds
    /// below the server's SIZE limit.
    BufferUpTo(usize),
    /// Keep none of it: [`Handler::message`] gets an empty `data` (the id
    /// and trace are still there). For sinks and counters.
    Discard,
    /// Write it as it arrives into this sink; at the end the sink, not
    /// [`Handler::message`], decides.
    Stream(Box<dyn BodySink>),
    /// Refuse the message: the body is read and dropped, and this reply
    /// answers its end.
    Refuse(Reply),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Buffer => f.write_str("Buffer"),
            Body::BufferUpTo(n) => f.debug_tuple("BufferUpTo").field(n).finish(),
            Body::Discard => f.write_str("Discard"),
            Body::Stream(_) => f.write_str("Stream"),
            Body::Refuse(r) => f.debug_tuple("Refuse").field(r).finish(),
        }
    }
}

/// Where a streamed body goes as it arrives ([`Body::Stream`]).
///
/// The session reads nothing more from the client while a
/// [`BodySink::write`] is pending: a slow disk or upstream slows the
/// client instead of filling memory. Dropping a sink without
/// [`BodySink::finish`] must count as [`BodySink::abort`].
pub trait BodySink: Send {
    /// The next chunk, dot-unstuffed, in order (the trace header is not
    /// part of it: write [`Message::trace`] first). An `Err` refuses the
    /// message: the sink is aborted, the rest of the body is dropped, and
    /// the reply answers its end.
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), Reply>>;

    /// The body is complete and passed every check: make it durable, then
    /// decide (per recipient in LMTP). `message` has the id and the trace
    /// (its `data` is empty: the body went to the sink); record where it
    /// went with [`Message::record_delivery`].
    fn finish(self: Box<Self>, message: Arc<Message>) -> BoxFuture<'static, MessageDecision>;

    /// The body was cut off (too big, a bad line ending, a disconnect, a
    /// timeout, a shutdown) or refused: nothing of it may be delivered;
    /// remove what was written.
    fn abort(self: Box<Self>, reason: AbortReason);
}

/// The answer to a message: one decision for all, or one per recipient
/// (LMTP; in SMTP one refusal refuses the message for everyone, since
/// SMTP cannot answer per recipient after the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageDecision {
    /// The same answer for every recipient.
    All(Decision),
    /// One answer per accepted recipient, in order.
    PerRecipient(Vec<Decision>),
}

impl From<Decision> for MessageDecision {
    fn from(d: Decision) -> Self {
        MessageDecision::All(d)
    }
}

impl From<Reply> for MessageDecision {
    fn from(r: Reply) -> Self {
        MessageDecision::All(Decision::Reply(r))
    }
}

/// The application's hooks. Every method has a default (accept; AUTH refuses).
///
/// Methods are `async`; the futures must be `Send` so adapters can run
/// sessions on multi-threaded runtimes. A panic in a hook ends that session
/// with `421 4.3.0`, never the server.
pub trait Handler: Send + Sync + 'static {
    /// A client connected (Tcl smtpd's `validate_host`).
    fn connect(&self, session: &SessionInfo) -> impl Future<Output = Decision> + Send {
        let _ = session;
        async { Decision::Accept }
    }

    /// HELO, EHLO or LHLO.
    fn helo(
        &self,
        session: &SessionInfo,
        kind: HeloKind,
        name: &str,
    ) -> impl Future<Output = Decision> + Send {
        let _ = (session, kind, name);
        async { Decision::Accept }
    }

    /// MAIL FROM (Tcl smtpd's `validate_sender`); `from` is empty for `<>`.
    fn mail(
        &self,
        session: &SessionInfo,
        from: &str,
        options: &MailOptions,
    ) -> impl Future<Output = Decision> + Send {
        let _ = (session, from, options);
        async { Decision::Accept }
    }

    /// RCPT TO (Tcl smtpd's `validate_recipient`); `envelope` holds the
    /// sender and the recipients accepted so far; `to.address` is the address.
    fn rcpt(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        to: &Recipient,
    ) -> impl Future<Output = Decision> + Send {
        let _ = (session, envelope, to);
        async { Decision::Accept }
    }

    /// VRFY/EXPN. The default answers `252 2.5.0`.
    fn verify(
        &self,
        session: &SessionInfo,
        arg: &str,
        expand: bool,
    ) -> impl Future<Output = Decision> + Send {
        let _ = (session, arg, expand);
        async { Decision::Accept }
    }

    /// AUTH credentials. The default refuses (`535 5.7.8`).
    fn auth(
        &self,
        session: &SessionInfo,
        credentials: &Credentials,
    ) -> impl Future<Output = Decision> + Send {
        let _ = (session, credentials);
        async { Decision::Reply(Reply::AUTH_FAILED) }
    }

    /// The SCRAM-SHA-256 keys of `username`, for SCRAM-SHA-256 and
    /// SCRAM-SHA-256-PLUS: the salted keys only, never the password. `None`
    /// for an unknown user; the exchange then goes on with decoy keys and
    /// fails at its end, so a client cannot tell who exists. The default
    /// knows no one.
    fn scram_keys(
        &self,
        session: &SessionInfo,
        username: &str,
    ) -> impl Future<Output = Option<ScramKeys>> + Send {
        let _ = (session, username);
        async { None }
    }

    /// The password of `username` in clear, for CRAM-MD5 (its digest is
    /// keyed with it). The default knows no one.
    fn password(
        &self,
        session: &SessionInfo,
        username: &str,
    ) -> impl Future<Output = Option<Secret<String>>> + Send {
        let _ = (session, username);
        async { None }
    }

    /// An OAuth 2.0 bearer token (XOAUTH2, OAUTHBEARER, RFC 7628): accept
    /// it, or refuse it with the JSON status the client is sent. The
    /// default refuses every token.
    fn auth_token(
        &self,
        session: &SessionInfo,
        token: &OAuthToken,
    ) -> impl Future<Output = TokenDecision> + Send {
        let _ = (session, token);
        async { TokenDecision::invalid() }
    }

    /// A message's body starts: how to take it ([`Body`]). `message` holds
    /// the id and the trace header (`data` is empty). The default,
    /// [`Body::Buffer`], keeps the whole message for [`Handler::message`].
    fn body(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Message,
    ) -> impl Future<Output = Body> + Send {
        let _ = (session, envelope, message);
        async { Body::Buffer }
    }

    /// A complete message (Tcl smtpd's `deliver`, Python smtpd's
    /// `process_message`). Store it durably before accepting: a 250 means
    /// the message is safe. It is shared (`Arc`) so a handler can move it to
    /// a blocking thread or a queue without copying the body.
    fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> impl Future<Output = MessageDecision> + Send {
        let _ = (session, envelope, message);
        async { MessageDecision::All(Decision::Accept) }
    }

    /// The session ended (for cleanup and metrics).
    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        let _ = (session, reason);
    }

    /// Whether [`Message::trace`] is wanted. A handler that discards or
    /// only counts messages returns `false`, and the `Received:` header,
    /// a few percent of a small message's CPU, is never built (the trace
    /// is then empty). Wrappers forward it.
    fn wants_trace(&self) -> bool {
        true
    }
}

/// The do-nothing handler: every hook keeps its default (accept, refuse
/// AUTH, accept and drop messages). For connections whose events the
/// caller answers itself (the adapters' `next_event` level).
impl Handler for () {
    fn wants_trace(&self) -> bool {
        false
    }
}

/// The async hooks a [`Layer`] forwards, listed once: `$mac!` gets each
/// hook's name, parameters and output.
macro_rules! hooks {
    ($mac:ident) => {
        $mac! {
            connect(session: &SessionInfo) -> Decision;
            helo(session: &SessionInfo, kind: HeloKind, name: &str) -> Decision;
            mail(session: &SessionInfo, from: &str, options: &MailOptions) -> Decision;
            rcpt(session: &SessionInfo, envelope: &Envelope, to: &Recipient) -> Decision;
            verify(session: &SessionInfo, arg: &str, expand: bool) -> Decision;
            auth(session: &SessionInfo, credentials: &Credentials) -> Decision;
            scram_keys(session: &SessionInfo, username: &str) -> Option<ScramKeys>;
            password(session: &SessionInfo, username: &str) -> Option<Secret<String>>;
            auth_token(session: &SessionInfo, token: &OAuthToken) -> TokenDecision;
            body(session: &SessionInfo, envelope: &Envelope, message: &Message) -> Body;
            message(session: &SessionInfo, envelope: &Envelope, message: &Arc<Message>)
                -> MessageDecision;
        }
    };
}

/// [`Layer`]'s default hooks: the inner handler's.
macro_rules! layer_defaults {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {$(
        #[doc = concat!("[`Handler::", stringify!($name), "`]; forwards to the inner handler unless overridden.")]
        fn $name(&self, $($arg: $ty),*) -> impl Future<Output = $out> + Send {
            self.inner().$name($($arg),*)
        }
    )*};
}

/// Every layer's `Handler` hooks: the layer's.
macro_rules! layer_forwards {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {$(
        fn $name(&self, $($arg: $ty),*) -> impl Future<Output = $out> + Send {
            Layer::$name(self, $($arg),*)
        }
    )*};
}

/// A handler that wraps another one (a policy, a router, a logger): every
/// hook forwards to [`Layer::inner`] unless the layer overrides it, so a
/// wrapper states only the hooks it changes. Implement `Layer`, not
/// [`Handler`]: every `Layer` is a `Handler`.
///
/// ```
/// use smtp_server::handler::{Envelope, Handler, Layer, Recipient, SessionInfo};
/// use smtp_proto::reply::Reply;
/// use smtp_proto::server::Decision;
///
/// /// Refuses recipients with a `+` tag; everything else is the inner handler's.
/// struct NoTags<H>(H);
///
/// impl<H: Handler> Layer for NoTags<H> {
///     type Inner = H;
///     fn inner(&self) -> &H {
///         &self.0
///     }
///     async fn rcpt(&self, s: &SessionInfo, e: &Envelope, to: &Recipient) -> Decision {
///         if to.address.contains('+') {
///             return Reply::NO_SUCH_USER.into();
///         }
///         self.0.rcpt(s, e, to).await
///     }
/// }
///
/// fn serve(_: impl Handler) {}
/// serve(NoTags(smtp_server::store::SinkHandler));
/// ```
pub trait Layer: Send + Sync + 'static {
    /// The wrapped handler.
    type Inner: Handler;

    /// The wrapped handler, which gets every hook not overridden.
    fn inner(&self) -> &Self::Inner;

    /// [`Handler::wants_trace`]; forwards to the inner handler unless overridden.
    fn wants_trace(&self) -> bool {
        self.inner().wants_trace()
    }

    hooks!(layer_defaults);

    /// [`Handler::disconnect`]; forwards to the inner handler unless overridden.
    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        self.inner().disconnect(session, reason);
    }
}

impl<L: Layer> Handler for L {
    fn wants_trace(&self) -> bool {
        Layer::wants_trace(self)
    }

    hooks!(layer_forwards);

    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        Layer::disconnect(self, session, reason);
    }
}

/// The body buffer a dispatcher keeps between messages, at most: enough
/// for most small messages without reallocating, never a large message's
/// worth (idle sessions would hold it until they close).
const KEEP_BODY_CAPACITY: usize = 64 * 1024;

/// Feeds a session's events to a [`Handler`] and answers its decisions.
#[derive(Debug)]
pub struct Dispatcher<H> {
    handler: Arc<H>,
    info: SessionInfo,
    envelope: Envelope,
    body: Vec<u8>,
    /// Where the current body goes, and its message (id, trace) once started.
    target: Body,
    message: Option<Message>,
    /// Messages that reached their end in this session (for the
    /// per-message `Received:` id).
    messages: u64,
    closed: bool,
    /// The keys of the SCRAM exchange running (real or decoy).
    scram: Option<ScramKeys>,
    /// [`Handler::disconnect`], kept so that `Drop` (which cannot require
    /// `H: Handler`) can call it.
    end: fn(&H, &SessionInfo, CloseReason),
    /// Whether the SCRAM exchange running is SCRAM-SHA-256-PLUS (for the
    /// metrics' mechanism label).
    scram_plus: bool,
    /// The session's place in `smtp_sessions_open` (left when dropped).
    _open: crate::metrics::OpenSession,
}

/// The one cleanup path (issue 12 item 11): however a session ends (QUIT,
/// timeout, reset, a failed read or write, a TLS failure, shutdown, a
/// panic, a dropped task), the handler sees [`Handler::disconnect`] exactly
/// once. Without a [`Event::Closing`] first, the reason is
/// [`CloseReason::ConnectionLost`].
impl<H> Drop for Dispatcher<H> {
    fn drop(&mut self) {
        self.abort_body(AbortReason::Disconnected);
        self.end_once(CloseReason::ConnectionLost);
    }
}

impl<H> Dispatcher<H> {
    /// Ends the current body's target: a sink is aborted (nothing of the
    /// body is delivered); the next body starts from the buffer.
    fn abort_body(&mut self, reason: AbortReason) {
        if let Body::Stream(sink) = std::mem::replace(&mut self.target, Body::Buffer) {
            sink.abort(reason);
        }
        self.message = None;
    }

    /// Calls [`Handler::disconnect`] unless it was called already.
    fn end_once(&mut self, reason: CloseReason) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let (end, h, info) = (self.end, &*self.handler, &self.info);
        if std::panic::catch_unwind(AssertUnwindSafe(|| end(h, info, reason))).is_err() {
            tracing::error!("handler panicked in disconnect");
        }
    }
}

impl<H: Handler> Dispatcher<H> {
    /// A dispatcher for one session; `id` names the session in logs and headers.
    pub fn new(handler: Arc<H>, id: impl Into<String>) -> Self {
        Dispatcher {
            handler,
            info: SessionInfo {
                id: id.into(),
                ..SessionInfo::default()
            },
            envelope: Envelope::default(),
            body: Vec::new(),
            target: Body::Buffer,
            message: None,
            messages: 0,
            closed: false,
            scram: None,
            end: |h, info, reason| h.disconnect(info, reason),
            scram_plus: false,
            _open: crate::metrics::OpenSession::new(),
        }
    }

    /// A new session for `peer` and its dispatcher, as every adapter's
    /// connection starts one: named by
    /// [`SessionIds::global`](crate::accept::SessionIds::global), its hooks
    /// reaching other servers with `dialer`.
    pub fn start(
        config: Arc<smtp_proto::config::Config>,
        peer: PeerInfo,
        handler: Arc<H>,
        dialer: crate::dial::Dialer,
    ) -> (Session, Dispatcher<H>)
    where
        H: Handler,
    {
        let id = crate::accept::SessionIds::global().next_id();
        let session = Session::new(config, peer, std::time::Instant::now());
        (session, Dispatcher::new(handler, id).with_dialer(dialer))
    }

    /// Gives the handlers a way to reach other servers on the session's
    /// runtime ([`SessionInfo::dialer`]).
    pub fn with_dialer(mut self, dialer: crate::dial::Dialer) -> Self {
        self.info.dialer = Some(dialer);
        self
    }

    /// The session information as last seen.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Processes events until the session has an [`Instruction`] for the
    /// driver, and returns it (never [`Instruction::AwaitingDecision`]:
    /// every decision is answered here). Runs the handler's hooks; a
    /// panicking hook aborts the session with `421 4.3.0`.
    pub async fn drive(&mut self, s: &mut Session) -> Instruction {
        loop {
            let event = match s.poll() {
                Output::Event(e) => e,
                Output::Instruction(i) => return i,
            };
            match event {
                Event::Connect { ticket, .. } => {
                    self.info.refresh(s);
                    let d = guarded(self.handler.connect(&self.info)).await;
                    self.answer(s, ticket, d);
                    // A client with failed AUTH attempts lately waits here
                    // too: a new connection does not reset the delay.
                    AuthFailures::hold(s);
                }
                Event::Helo {
                    ticket,
                    kind,
                    domain,
                } => {
                    let domain = domain.to_owned();
                    self.info.refresh(s);
                    let d = guarded(self.handler.helo(&self.info, kind, &domain)).await;
                    self.answer(s, ticket, d);
                }
                Event::Mail {
                    ticket,
                    from,
                    params,
                } => {
                    let from = reverse_path_text(&from);
                    let options = MailOptions::from(&params);
                    self.info.refresh(s);
                    let d = guarded(self.handler.mail(&self.info, &from, &options)).await;
                    if matches!(&d, Some(d) if is_accept(d)) {
                        self.envelope = Envelope {
                            from,
                            options,
                            recipients: Vec::new(),
                        };
                    }
                    self.answer(s, ticket, d);
                }
                Event::Rcpt { ticket, to, params } => {
                    // Nothing `SessionInfo` holds changes inside a
                    // transaction (HELO, STARTTLS and AUTH end or refuse
                    // it): the refresh at MAIL stands until its end.
                    let rcpt = recipient(&to, &params);
                    let d = guarded(self.handler.rcpt(&self.info, &self.envelope, &rcpt)).await;
                    let accepted = matches!(&d, Some(d) if is_accept(d));
                    crate::metrics::recipient(accepted);
                    if accepted {
                        self.envelope.recipients.push(rcpt);
                    }
                    self.answer(s, ticket, d);
                }
                Event::Verify {
                    ticket,
                    arg,
                    expand,
                } => {
                    let arg = arg.to_owned();
                    self.info.refresh(s);
                    let d = guarded(self.handler.verify(&self.info, &arg, expand)).await;
                    self.answer(s, ticket, d);
                }
                Event::Auth {
                    ticket,
                    credentials,
                } => {
                    self.info.refresh(s);
                    let d = if AuthFailures::too_many(s) {
                        Some(Reply::AUTH_TEMPORARY.into())
                    } else {
                        guarded(self.handler.auth(&self.info, &credentials)).await
                    };
                    let failed = matches!(&d, Some(Decision::Reply(r)) if r.code() == 535);
                    let accepted = matches!(&d, Some(d) if is_accept(d));
                    crate::metrics::auth(credentials.mechanism, accepted);
                    self.answer(s, ticket, d);
                    if failed {
                        AuthFailures::failed(s);
                    }
                }
                Event::Sasl { ticket, request } => {
                    let mechanism = self.sasl_mechanism(&request);
                    self.info.refresh(s);
                    let answer = if AuthFailures::too_many(s) {
                        SaslAnswer::Decision(Reply::AUTH_TEMPORARY.into())
                    } else {
                        self.sasl(s, request).await
                    };
                    let failed = matches!(&answer, SaslAnswer::Decision(Decision::Reply(r)) if r.code() == 535)
                        || matches!(answer, SaslAnswer::TokenRefused { .. });
                    match &answer {
                        SaslAnswer::Decision(d) => crate::metrics::auth(mechanism, is_accept(d)),
                        SaslAnswer::ScramVerified { .. } => crate::metrics::auth(mechanism, true),
                        SaslAnswer::TokenRefused { .. } => crate::metrics::auth(mechanism, false),
                        // A step of the exchange, not its result.
                        _ => {}
                    }
                    if let Err(e) = s.respond_sasl(ticket, answer, std::time::Instant::now()) {
                        tracing::error!(error = %e, "SASL answer refused");
                        s.abort(Reply::INTERNAL_ERROR, CloseReason::Aborted);
                    }
                    if failed {
                        AuthFailures::failed(s);
                    }
                }
                Event::BodyStart { .. } => {
                    self.recycle_body();
                    self.abort_body(AbortReason::Refused);
                    let message = self.new_message(s);
                    let body = guarded(self.handler.body(&self.info, &self.envelope, &message));
                    self.target = body.await.unwrap_or(Body::Refuse(Reply::INTERNAL_ERROR));
                    self.message = Some(message);
                }
                Event::Body(chunk) => match &mut self.target {
                    Body::Buffer => self.body.extend_from_slice(chunk),
                    Body::BufferUpTo(cap) => {
                        if self.body.len().saturating_add(chunk.len()) > *cap {
                            self.target = Body::Refuse(Reply::MESSAGE_TOO_BIG);
                            self.body = Vec::new();
                        } else {
                            self.body.extend_from_slice(chunk);
                        }
                    }
                    Body::Stream(sink) => {
                        let written = AssertUnwindSafe(sink.write(chunk)).catch_unwind().await;
                        if let Err(refusal) = written.unwrap_or(Err(Reply::INTERNAL_ERROR)) {
                            self.abort_body(AbortReason::Refused);
                            self.target = Body::Refuse(refusal);
                        }
                    }
                    Body::Discard | Body::Refuse(_) => {}
                },
                Event::MessageEnd { ticket, size, .. } => {
                    let mut message = match self.message.take() {
                        Some(m) => m,
                        None => self.new_message(s),
                    };
                    let target = std::mem::replace(&mut self.target, Body::Buffer);
                    if matches!(target, Body::Buffer | Body::BufferUpTo(_)) {
                        message.data = std::mem::take(&mut self.body);
                    }
                    let message = Arc::new(message);
                    let envelope = std::mem::take(&mut self.envelope);
                    let d = match target {
                        Body::Buffer | Body::BufferUpTo(_) | Body::Discard => {
                            guarded(self.handler.message(&self.info, &envelope, &message)).await
                        }
                        Body::Stream(sink) => guarded(sink.finish(message.clone())).await,
                        Body::Refuse(r) => Some(MessageDecision::All(Decision::Reply(r))),
                    };
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    let logged =
                        log_enabled().then(|| (message.id.clone(), size, message.deliveries()));
                    // Reuse a small body buffer when the handler kept no
                    // reference; a large one is freed now, not when the
                    // session ends.
                    if let Ok(m) = Arc::try_unwrap(message) {
                        self.body = m.data;
                    }
                    self.recycle_body();
                    match d {
                        None => {
                            crate::metrics::message_end(size as u64, None);
                            if let Some((id, size, _)) = &logged {
                                let refusal = [Decision::Reply(Reply::INTERNAL_ERROR)];
                                log_message(&self.info, id, &envelope, *size, &refusal, &[]);
                            }
                            s.abort(Reply::INTERNAL_ERROR, CloseReason::Aborted);
                        }
                        Some(d) => {
                            let n = envelope.recipients.len().max(1);
                            let decisions = per_recipient(d, n, s.config().lmtp);
                            crate::metrics::message_end(size as u64, Some(&decisions));
                            if let Some((id, size, stored)) = &logged {
                                log_message(&self.info, id, &envelope, *size, &decisions, stored);
                            }
                            let now = std::time::Instant::now();
                            if let Err(e) = s.respond_each(ticket, decisions, now) {
                                tracing::error!(error = %e, "message decision refused");
                                s.abort(Reply::INTERNAL_ERROR, CloseReason::Aborted);
                            }
                        }
                    }
                }
                Event::MessageAborted(reason) => {
                    crate::metrics::message_aborted(reason);
                    if log_enabled() {
                        log_aborted(&self.info, &self.envelope, self.body.len(), reason);
                    }
                    self.abort_body(reason);
                    self.recycle_body();
                    self.envelope = Envelope::default();
                }
                Event::Reset => {
                    self.abort_body(AbortReason::Refused);
                    self.recycle_body();
                    self.envelope = Envelope::default();
                }
                Event::Violation(v) => tracing::info!(violation = ?v, "protocol violation"),
                Event::Closing(reason) => {
                    tracing::debug!(?reason, "session closing");
                    self.abort_body(AbortReason::Disconnected);
                    if !self.closed {
                        self.info.refresh(s);
                        self.end_once(reason);
                    }
                }
            }
        }
    }

    /// The message whose body starts now: its per-session id and trace
    /// header (the time of receipt is the body's start).
    fn new_message(&mut self, s: &Session) -> Message {
        let (ts, _) = unix_now();
        let only = match self.envelope.recipients.as_slice() {
            [one] => Some(one.address.as_str()),
            _ => None,
        };
        self.messages += 1;
        let wants_trace = self.handler.wants_trace();
        // Per message: the session id and the message's number (not built
        // for a sink whose log line is off: it is the largest cost of a
        // message there after the parsing).
        let id = if wants_trace || log_enabled() {
            format!("{}-{}", self.info.id, self.messages)
        } else {
            String::new()
        };
        let trace = if wants_trace {
            s.received_header(Some(&id), only, ts, 0)
        } else {
            Vec::new()
        };
        let mut message = Message::new(Vec::new(), trace);
        message.id = id;
        message
    }

    /// Empties the body buffer, keeping its allocation only if it is small
    /// (`KEEP_BODY_CAPACITY`): no session holds a message's worth of
    /// memory once the message is answered.
    fn recycle_body(&mut self) {
        if self.body.capacity() > KEEP_BODY_CAPACITY {
            self.body = Vec::new();
        } else {
            self.body.clear();
        }
    }

    /// The mechanism of a SASL request (remembering whether a SCRAM
    /// exchange is the `-PLUS` one, which its final request does not say).
    fn sasl_mechanism(&mut self, request: &SaslRequest) -> Mechanism {
        match request {
            SaslRequest::CramMd5Challenge | SaslRequest::CramMd5 { .. } => Mechanism::CramMd5,
            SaslRequest::ScramFirst { plus, .. } => {
                self.scram_plus = *plus;
                if *plus {
                    Mechanism::ScramSha256Plus
                } else {
                    Mechanism::ScramSha256
                }
            }
            SaslRequest::ScramFinal { .. } if self.scram_plus => Mechanism::ScramSha256Plus,
            SaslRequest::ScramFinal { .. } => Mechanism::ScramSha256,
            SaslRequest::Token(t) => t.mechanism,
        }
    }

    /// What a SASL mechanism asked for: a challenge, the user's keys, a
    /// proof or a token checked (the crypto is [`crate::sasl`]'s, the
    /// secrets the handler's).
    async fn sasl(&mut self, s: &Session, request: SaslRequest) -> SaslAnswer
    where
        H: Handler,
    {
        let failed = || SaslAnswer::Decision(Reply::AUTH_FAILED.into());
        let internal = || SaslAnswer::Decision(Reply::AUTH_TEMPORARY.into());
        let id = &self.info.id;
        match request {
            SaslRequest::CramMd5Challenge => {
                SaslAnswer::Challenge(crate::sasl::cram_md5_challenge(&s.config().hostname))
            }
            SaslRequest::CramMd5 {
                username,
                challenge,
                digest,
            } => match guarded(self.handler.password(&self.info, &username)).await {
                None => internal(),
                Some(Some(p)) if crate::sasl::cram_md5_verify(p.expose(), &challenge, &digest) => {
                    tracing::info!(session = %id, user = %username, "authenticated (CRAM-MD5)");
                    SaslAnswer::Decision(Decision::Accept)
                }
                Some(_) => {
                    tracing::info!(session = %id, user = %username, "authentication failed (CRAM-MD5)");
                    failed()
                }
            },
            SaslRequest::ScramFirst {
                username, authzid, ..
            } => {
                if authzid
                    .as_deref()
                    .is_some_and(|z| !z.is_empty() && z != username)
                {
                    return failed();
                }
                let Some(keys) = guarded(self.handler.scram_keys(&self.info, &username)).await
                else {
                    return internal();
                };
                let keys = keys.unwrap_or_else(|| crate::sasl::decoy_keys(&username));
                let answer = SaslAnswer::ScramFirst {
                    server_nonce: crate::sasl::random_nonce(),
                    salt: keys.salt.clone(),
                    iterations: keys.iterations,
                };
                self.scram = Some(keys);
                answer
            }
            SaslRequest::ScramFinal {
                username,
                auth_message,
                proof,
                ..
            } => match self
                .scram
                .take()
                .and_then(|k| k.verify(auth_message.as_bytes(), &proof))
            {
                Some(signature) => {
                    tracing::info!(session = %id, user = %username, "authenticated (SCRAM-SHA-256)");
                    SaslAnswer::ScramVerified {
                        server_signature: signature.to_vec(),
                    }
                }
                None => {
                    tracing::info!(session = %id, user = %username, "authentication failed (SCRAM-SHA-256)");
                    failed()
                }
            },
            SaslRequest::Token(token) => {
                match guarded(self.handler.auth_token(&self.info, &token)).await {
                    Some(TokenDecision::Accept) => SaslAnswer::Decision(Decision::Accept),
                    Some(TokenDecision::Refuse { status }) => SaslAnswer::TokenRefused {
                        status,
                        reply: None,
                    },
                    Some(TokenDecision::Reply(r)) => SaslAnswer::Decision(r.into()),
                    None => internal(),
                }
            }
        }
    }

    fn answer(&mut self, s: &mut Session, ticket: Ticket, d: Option<Decision>) {
        match d {
            Some(d) => {
                if let Err(e) = s.respond(ticket, d, std::time::Instant::now()) {
                    tracing::error!(error = %e, "decision refused");
                    s.abort(Reply::INTERNAL_ERROR, CloseReason::Aborted);
                }
            }
            None => s.abort(Reply::INTERNAL_ERROR, CloseReason::Aborted),
        }
    }
}

/// Failed AUTH attempts per client address across the sessions of the
/// process ([`smtp_proto::config::AuthPolicy::max_failures`]): counted in
/// one bounded [`RateTable`](crate::rate::RateTable) per process, so a
/// password guesser is slowed down however it spreads its attempts over
/// connections.
#[derive(Debug)]
pub struct AuthFailures;

/// The longest delay a failed AUTH puts on a client.
const MAX_AUTH_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

impl AuthFailures {
    fn table() -> &'static crate::rate::RateTable {
        static TABLE: std::sync::OnceLock<crate::rate::RateTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(crate::rate::RateTable::default)
    }

    /// The session's client, when failures are counted for it.
    fn client(s: &Session) -> Option<std::net::IpAddr> {
        let on = s.config().auth.max_failures > 0 && !s.config().auth.mechanisms.is_empty();
        s.peer().remote.filter(|_| on).map(|a| a.ip())
    }

    /// Failed attempts of the session's client in the last minute.
    pub fn recent(s: &Session) -> u32 {
        Self::client(s).map_or(0, |ip| {
            Self::table().recent_at(
                ip,
                crate::rate::RateKind::AuthFailure,
                std::time::Instant::now(),
            )
        })
    }

    /// Whether the session's client is past the limit: its AUTH gets
    /// `454 4.7.0` unchecked.
    pub fn too_many(s: &Session) -> bool {
        let max = s.config().auth.max_failures;
        max > 0 && Self::recent(s) >= max
    }

    /// Counts a failed attempt and holds the session's next command.
    pub fn failed(s: &mut Session) {
        if let Some(ip) = Self::client(s) {
            let now = std::time::Instant::now();
            Self::table().record_at(ip, crate::rate::RateKind::AuthFailure, now);
            tracing::info!(client = %ip, "failed AUTH counted");
        }
        Self::hold(s);
    }

    /// Holds the session's next command for the delay its client's recent
    /// failures earn: the error delay, doubled per failure after the first,
    /// at most 30 seconds; none without failures.
    fn hold(s: &mut Session) {
        let n = Self::recent(s);
        if n == 0 {
            return;
        }
        let base = s.config().limits.error_delay;
        let delay = base
            .checked_mul(1 << (n - 1).min(16))
            .map_or(MAX_AUTH_DELAY, |d| d.min(MAX_AUTH_DELAY));
        s.delay(delay);
    }
}

fn is_accept(d: &Decision) -> bool {
    match d {
        Decision::Accept => true,
        Decision::Reply(r) => r.code() < 400,
    }
}

fn recipient(to: &ForwardPath<'_>, params: &RcptParams<'_>) -> Recipient {
    Recipient {
        address: forward_path_text(to),
        notify: params.notify,
        orcpt: params.orcpt.map(str::to_owned),
    }
}

/// The target of the one log line per message.
const MESSAGE_LOG: &str = "smtp::message";

/// Whether the per-message line is logged (nothing is formatted otherwise).
fn log_enabled() -> bool {
    tracing::enabled!(target: MESSAGE_LOG, tracing::Level::INFO)
}

/// `code x.y.z` of a decision (an acceptance is the session's `250 2.0.0`).
fn outcome(d: &Decision) -> String {
    match d {
        Decision::Accept => "250 2.0.0".to_owned(),
        Decision::Reply(r) => match r.enhanced() {
            Some(e) => format!("{} {e}", r.code()),
            None => r.code().to_string(),
        },
    }
}

/// The client's address for the log (`unix` for a Unix-domain socket).
fn client(info: &SessionInfo) -> String {
    info.peer
        .remote
        .map_or_else(|| "unix".to_owned(), |a| a.to_string())
}

/// The one `info` line per answered message, Postfix-style: who sent what
/// to whom, each recipient's result, and where it went.
fn log_message(
    info: &SessionInfo,
    id: &str,
    envelope: &Envelope,
    size: usize,
    decisions: &[Decision],
    stored: &[String],
) {
    // SMTP has one answer for all recipients; LMTP one each.
    let each = |i: usize| decisions.get(i).or(decisions.first());
    let recipients: Vec<String> = envelope
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let result = each(i).map_or_else(|| "-".to_owned(), outcome);
            format!("<{}> {result}", r.address)
        })
        .collect();
    let accepted = decisions.iter().filter(|d| is_accept(d)).count();
    let verdict = match accepted {
        0 => "message refused",
        n if n == decisions.len() => "message accepted",
        _ => "message partly accepted",
    };
    tracing::info!(
        target: MESSAGE_LOG,
        session = %info.id,
        id = %id,
        client = %client(info),
        from = %format_args!("<{}>", envelope.from),
        size,
        recipients = %recipients.join(", "),
        stored = %stored.join(", "),
        "{verdict}"
    );
}

/// The `info` line for a body the session refused or lost (too big, bare
/// LF, NUL, long line, disconnect, timeout, shutdown).
fn log_aborted(
    info: &SessionInfo,
    envelope: &Envelope,
    size: usize,
    reason: smtp_proto::server::AbortReason,
) {
    let recipients: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| format!("<{}>", r.address))
        .collect();
    tracing::info!(
        target: MESSAGE_LOG,
        session = %info.id,
        client = %client(info),
        from = %format_args!("<{}>", envelope.from),
        size,
        recipients = %recipients.join(", "),
        ?reason,
        "message refused"
    );
}

/// Turns a message decision into the decisions the session expects.
fn per_recipient(d: MessageDecision, n: usize, lmtp: bool) -> Vec<Decision> {
    match (d, lmtp) {
        (MessageDecision::All(d), true) => vec![d; n],
        (MessageDecision::All(d), false) => vec![d],
        (MessageDecision::PerRecipient(mut v), true) => {
            let fill = v
                .last()
                .cloned()
                .unwrap_or(Decision::Reply(Reply::TEMPORARY_FAILURE));
            v.resize(n, fill);
            v
        }
        (MessageDecision::PerRecipient(v), false) => {
            // SMTP has one reply per message: any refusal refuses it.
            let refusal = v.iter().find(|d| !is_accept(d)).cloned();
            vec![
                refusal
                    .or_else(|| v.into_iter().next())
                    .unwrap_or(Decision::Accept),
            ]
        }
    }
}

/// Runs a hook future, turning a panic into `None`.
async fn guarded<T>(fut: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::error!("handler panicked; closing the session with 421");
            None
        }
    }
}

/// Seconds since the Unix epoch, and the UTC offset (always 0: no time zone database).
fn unix_now() -> (i64, i16) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (secs, 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use smtp_proto::config::Config;
    use std::time::Instant;

    /// Feeds `input` through a dispatcher over the do-nothing handler;
    /// returns the dispatcher for inspection and the replies.
    fn run(input: &[u8]) -> (Dispatcher<()>, String) {
        let mut s = Session::new(
            Arc::new(Config::new("mx.example")),
            PeerInfo::default(),
            Instant::now(),
        );
        let mut d = Dispatcher::new(Arc::new(()), "t");
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            futures_executor::block_on(d.drive(&mut s));
            out.extend_from_slice(s.transmit());
            let n = s.transmit().len();
            s.transmitted(n);
            if rest.is_empty() {
                break;
            }
            let n = s.receive(rest, Instant::now());
            rest = &rest[n..];
        }
        (d, String::from_utf8(out).unwrap())
    }

    fn big_message(body_len: usize, end: &[u8]) -> Vec<u8> {
        let mut input =
            b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n".to_vec();
        let line = [b'x'; 78];
        while input.len() < body_len {
            input.extend_from_slice(&line);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(end);
        input
    }

    /// Failed AUTH counts per client across sessions: past
    /// `max_failures` a right password gets `454 4.7.0` unchecked, and
    /// each failure holds the next command (a throttle).
    #[test]
    fn failed_auth_is_counted_across_sessions() {
        use smtp_proto::sasl::{Mechanism, encode_plain};
        let mut config = Config::new("mx.example");
        config.auth.mechanisms = vec![Mechanism::Plain];
        config.auth.allow_plaintext = true;
        config.auth.max_failures = 2;
        config.limits.error_delay = std::time::Duration::from_millis(1);
        let config = Arc::new(config);
        let users =
            crate::store::PasswordAuth::new([("bob".to_owned(), "right".to_owned())].into(), ());
        let handler = Arc::new(users);
        // A client address no other test uses: the table is process-wide.
        let peer = PeerInfo::new("203.0.113.77:1000".parse().unwrap());
        let session = |input: String| {
            let mut s = Session::new(config.clone(), peer.clone(), Instant::now());
            let mut d = Dispatcher::new(handler.clone(), "t");
            let mut out = Vec::new();
            let mut rest = input.as_bytes();
            let mut throttled = false;
            loop {
                let i = futures_executor::block_on(d.drive(&mut s));
                out.extend_from_slice(s.transmit());
                let n = s.transmit().len();
                s.transmitted(n);
                if let Instruction::Throttle(until) = i {
                    throttled = true;
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    s.handle_timeout(Instant::now());
                    continue;
                }
                if rest.is_empty() {
                    break;
                }
                let n = s.receive(rest, Instant::now());
                rest = &rest[n..];
            }
            (String::from_utf8(out).unwrap(), throttled)
        };
        let auth = |pass: &str| {
            format!(
                "EHLO c\r\nAUTH PLAIN {}\r\n",
                encode_plain(None, "bob", pass)
            )
        };
        let (out, throttled) = session(auth("wrong"));
        assert!(
            out.ends_with("535 5.7.8 Authentication credentials invalid\r\n"),
            "{out}"
        );
        assert!(throttled, "the failure holds the next command");
        let (_, throttled) = session("EHLO c\r\n".to_owned());
        assert!(throttled, "a new session of the client waits too");
        let (out, _) = session(auth("wrong"));
        assert!(
            out.ends_with("535 5.7.8 Authentication credentials invalid\r\n"),
            "{out}"
        );
        let (out, _) = session(auth("right"));
        assert!(
            out.ends_with("454 4.7.0 Temporary authentication failure\r\n"),
            "{out}"
        );
    }

    /// Issue 12, item 12: an idle session holds no message-sized buffer
    /// once the message is answered (delivered, refused or aborted).
    #[test]
    fn no_message_sized_buffer_after_the_answer() {
        let (d, out) = run(&big_message(4 << 20, b".\r\n"));
        assert!(
            out.ends_with("250 2.0.0 Message accepted for delivery\r\n"),
            "{out}"
        );
        assert!(
            d.body.capacity() <= KEEP_BODY_CAPACITY,
            "{}",
            d.body.capacity()
        );
        // Refused after the body (bare LF): the buffer goes too.
        let (d, out) = run(&big_message(4 << 20, b"bare\n\r\n.\r\n"));
        assert!(
            out.ends_with(
                "550 5.5.2 Message rejected: bare LF or CR received; lines must end with CRLF\r\n"
            ),
            "{out}"
        );
        assert!(
            d.body.capacity() <= KEEP_BODY_CAPACITY,
            "{}",
            d.body.capacity()
        );
        // RSET after a big message keeps nothing either.
        let mut input = big_message(2 << 20, b".\r\n");
        input.extend_from_slice(b"RSET\r\n");
        let (d, _) = run(&input);
        assert!(
            d.body.capacity() <= KEEP_BODY_CAPACITY,
            "{}",
            d.body.capacity()
        );
    }
}
