//! Relaying (feature `relay`): forward mail to an upstream SMTP server with
//! [`smtp_proto::client`], recipient by recipient, and route each recipient to a
//! local store or the relay (Python smtpd's `PureProxy` and
//! `MailmanProxy`, Pike's `*` domain).
//!
//! [`Router`] is a [`Handler`]: put it in front of any local handler. Each
//! session's upstream connection is opened with the session's own
//! [`Dialer`] and driven inside the hooks' futures: on
//! tokio and smol a [`Link`](crate::link::Link) on the server's runtime
//! (no thread and no thread-pool hop per upstream I/O), on `smtp-blocking`
//! a socket on the session's own thread. The upstream [`Client`] keeps the
//! same [drive loop](smtp_proto::drive#the-drive-loop) as the server's
//! sessions.
//!
//! What the client sees is what the upstream said:
//! - each relayed `RCPT` is proxied as it arrives: the upstream's refusal is
//!   the client's refusal, and a recipient the upstream refused is never
//!   covered by a later `250`;
//! - the body goes upstream byte for byte (our `Received:` header
//!   prepended, never `Return-Path:` or `Delivered-To:`), with
//!   `SMTPUTF8`, `BODY=` and the DSN parameters passed on (`ENVID` and
//!   `ORCPT` decoded once and encoded once);
//! - the body **streams**: when it starts, `DATA` goes upstream and the
//!   `354` is awaited ([`Handler::body`] answers [`Body::Stream`]); each
//!   chunk is passed on as it arrives, and a chunk the upstream has not
//!   taken yet holds up our client (backpressure); the upstream's reply to
//!   the end of data is ours (`BDAT` when the upstream offers `CHUNKING`:
//!   chunk replies are read as the body goes, else `DATA`). A relayed session holds at
//!   most the upstream client's output buffer (256 KiB) and one chunk,
//!   whatever the message's size (plus the local copy, when a local
//!   handler of a mixed transaction buffers: see below). A body cut off (disconnect, timeout,
//!   too big, a bad line, RSET) closes the upstream connection in the
//!   middle of its `DATA`, never with the end of data: the upstream drops
//!   the message, and the next transaction opens a new connection;
//! - an unreachable upstream, a `4xx`, a timeout or a lost connection gives
//!   `451 4.4.1`, and then nothing is delivered: local recipients of the
//!   same transaction get no copy either (all or nothing). Once a relayed
//!   recipient was accepted, losing the upstream transaction fails the
//!   rest of it (later `RCPT`s and the body get `451 4.4.1`): a `250`
//!   never covers a recipient that was not handed on. The upstream goes
//!   first; if it accepts and a local delivery then fails, the client is
//!   told to retry the whole message (a duplicate upstream, never a loss).
//!   The local recipients' handler is asked how it takes the body
//!   ([`Handler::body`], with their envelope) before `DATA` goes upstream:
//!   its refusal refuses the whole message; a sink of its own gets every
//!   chunk after the upstream; a buffering one gets the whole message in
//!   [`Handler::message`] after the upstream accepted it (that copy is
//!   the one message-sized buffer a relayed session may hold);
//! - an LMTP upstream ([`Upstream::lmtp`]: a mail store such as Dovecot's
//!   `lmtp`, on TCP or on a Unix socket, `unix:PATH`) answers each RCPT
//!   (an unknown user is refused there, in the store's own words) and
//!   then the body once per recipient it accepted. An LMTP client of ours
//!   gets each recipient's own answer (a full mailbox refuses that
//!   recipient only). An SMTP client gets one reply to the body, so a
//!   transaction that relays holds **one recipient** and no other: later
//!   RCPTs (relayed or local) get `452 4.5.3`, which clients retry in a
//!   new transaction (RFC 5321 §4.5.3.1.10), and the one answer is that
//!   recipient's: a `250` never covers a recipient the store refused, and
//!   a recipient the store took is never asked for again (no duplicate
//!   delivery, not even when a local delivery beside it would fail after
//!   the store took it). Transactions of local recipients only are not
//!   limited;
//! - what the upstream can never take is refused for good: a message that
//!   needs `SMTPUTF8` (`553 5.6.7`), `8BITMIME`/`BINARYMIME` (`554 5.6.3`)
//!   or is over its `SIZE` (`552 5.3.4`).
//!
//! TLS to the upstream is opportunistic by default (STARTTLS whenever it is
//! offered, Postfix's `may`); credentials are sent only inside TLS unless
//! [`Upstream::auth_insecure`] says otherwise.
//!
//! No open relay: a recipient outside the served domains (a `*` serves no
//! domain for this purpose) is relayed only when the client is trusted:
//! authenticated, on a loopback address or a Unix socket, or in an allowed
//! network ([`Router::new`]); the client's address is the PROXY-protocol
//! one when that is on. Others get `550 5.7.1`, and so does sender-specified
//! routing (`%`, `!` or a quoted `@` in the local part) from an untrusted
//! client. `postmaster` is ours only bare or at a served domain.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::dial::{BoxFuture, ClientLink, ClientTls, DialRequest, Dialer};

use crate::handler::{
    Body, BodySink, Envelope, Handler, MailOptions, Message, MessageDecision, Recipient,
    SessionInfo,
};
use crate::store::DomainPolicy;
use smtp_proto::client::{
    self, Client, ClientAuth, ClientConfig, ClientError, ClientEvent, Misuse, TlsPolicy,
};
use smtp_proto::command::{BodyType, ForwardAttr};
use smtp_proto::reply::{EnhancedCode, Reply};
use smtp_proto::sasl::Credentials;
use smtp_proto::server::{AbortReason, CloseReason, Decision, HeloKind};

/// How to secure the connection to the upstream.
#[derive(Clone, Default)]
pub enum UpstreamTls {
    /// No STARTTLS (plaintext). Credentials are then sent only with
    /// [`Upstream::auth_insecure`].
    None,
    /// STARTTLS whenever the upstream offers it (Postfix's `may`), the
    /// certificate not checked; clear text when it is not offered, or
    /// after a failed handshake on a new connection (never with
    /// credentials, unless [`Upstream::auth_insecure`]).
    #[default]
    Opportunistic,
    /// STARTTLS is mandatory, the certificate is not checked (Postfix's
    /// `encrypt` level): no STARTTLS offered or a failed handshake is a
    /// temporary failure, never a clear-text fallback.
    Encrypt,
    /// STARTTLS is mandatory and the certificate must chain to these roots
    /// and name the upstream host.
    Verify(Arc<RootCertStore>),
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamTls::None => "None",
            UpstreamTls::Opportunistic => "Opportunistic",
            UpstreamTls::Encrypt => "Encrypt",
            UpstreamTls::Verify(_) => "Verify",
        })
    }
}

impl UpstreamTls {
    /// Verification against the roots in a PEM file, or the Mozilla roots
    /// (webpki-roots) when `ca` is `None`.
    pub fn verify(ca: Option<&Path>) -> io::Result<UpstreamTls> {
        let mut roots = RootCertStore::empty();
        match ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path).map_err(io::Error::other)? {
                    roots
                        .add(cert.map_err(io::Error::other)?)
                        .map_err(io::Error::other)?;
                }
            }
        }
        if roots.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no CA certificate",
            ));
        }
        Ok(UpstreamTls::Verify(Arc::new(roots)))
    }
}

/// The upstream server and how to talk to it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`, or `unix:PATH` for a Unix-domain socket.
    pub address: String,
    /// The upstream speaks LMTP (RFC 2033: LHLO, one reply per accepted
    /// recipient after the body), as a mail store does (Dovecot's
    /// `lmtp`): see the [module docs](self) for what the client is told.
    pub lmtp: bool,
    /// Our name in EHLO.
    pub hello_name: String,
    /// STARTTLS policy (opportunistic by default).
    pub tls: UpstreamTls,
    /// AUTH PLAIN/LOGIN credentials (sent only under TLS unless
    /// [`Upstream::auth_insecure`]), read at each connection: their owner
    /// may replace them at any time (e.g. a
    /// [`FileReload`](crate::reload::FileReload) of `--relay-auth-file`).
    pub auth: Option<Arc<crate::reload::Swap<ClientAuth>>>,
    /// Send the credentials on a connection without TLS too (the operator
    /// accepts that they cross the network in clear text).
    pub auth_insecure: bool,
    /// Bound on every wait: connecting, each reply, each write.
    pub timeout: Duration,
}

impl Upstream {
    /// `address` (`host:port`) with opportunistic STARTTLS, without AUTH,
    /// with a 5-minute bound per wait.
    pub fn new(address: impl Into<String>, hello_name: impl Into<String>) -> Self {
        Upstream {
            address: address.into(),
            lmtp: false,
            hello_name: hello_name.into(),
            tls: UpstreamTls::Opportunistic,
            auth: None,
            auth_insecure: false,
            timeout: Duration::from_secs(300),
        }
    }

    /// The client's settings; `plain` turns STARTTLS off (the clear-text
    /// retry after a failed opportunistic handshake).
    fn client_config(&self, plain: bool) -> ClientConfig {
        let mut c = ClientConfig::new(self.hello_name.clone());
        c.lmtp = self.lmtp;
        c.tls = match self.tls {
            _ if plain => TlsPolicy::None,
            UpstreamTls::None => TlsPolicy::None,
            UpstreamTls::Opportunistic => TlsPolicy::Opportunistic,
            UpstreamTls::Encrypt | UpstreamTls::Verify(_) => TlsPolicy::Required,
        };
        c.auth = self.auth.as_ref().map(|a| ClientAuth::clone(&a.get()));
        // The client refuses AUTH without TLS unless told otherwise.
        c.allow_plaintext_auth = self.auth_insecure;
        let t = self.timeout;
        c.timeouts.greeting = t;
        c.timeouts.command = t;
        c.timeouts.data_init = t;
        c.timeouts.data_block = t;
        c.timeouts.data_end = t;
        c
    }

    /// The client's STARTTLS settings (the upstream's host as the name).
    fn client_tls(&self) -> Result<Option<ClientTls>, Failure> {
        let Some(config) = self.tls_config() else {
            return Ok(None);
        };
        // A Unix socket's server is this machine.
        let host = if crate::dial::unix_path(&self.address).is_some() {
            "localhost".to_owned()
        } else {
            self.address
                .rsplit_once(':')
                .map_or(self.address.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        };
        let name = ServerName::try_from(host)
            .map_err(|e| Failure::Misuse(format!("bad upstream name: {e}")))?;
        Ok(Some(ClientTls { config, name }))
    }

    fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .ok()?;
        let config = match &self.tls {
            UpstreamTls::None => return None,
            UpstreamTls::Verify(roots) => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
            UpstreamTls::Encrypt | UpstreamTls::Opportunistic => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        Some(Arc::new(config))
    }
}

/// Accepts any certificate (the handshake signatures are still checked):
/// encryption without authentication, for [`UpstreamTls::Encrypt`].
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why the upstream could not be used (the client gets `451 4.4.1`).
#[derive(Debug)]
enum Failure {
    Io(io::Error),
    /// The TLS handshake failed (an opportunistic session retries in clear text).
    Tls(io::Error),
    Protocol(ClientError),
    /// Our request does not fit what the upstream offers (nothing was sent;
    /// the connection is still usable).
    Usage(Misuse),
    Misuse(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Tls(e) => write!(f, "TLS handshake: {e}"),
            Failure::Protocol(e) => write!(f, "{e}"),
            Failure::Usage(e) => write!(f, "{e}"),
            Failure::Misuse(e) => f.write_str(e),
        }
    }
}

/// An upstream reply as ours: the upstream may not speak
/// ENHANCEDSTATUSCODES, but we advertise it, so a reply without an
/// enhanced code gets the generic `X.0.0` of its class.
fn with_enhanced(reply: Reply) -> Reply {
    if reply.enhanced().is_some() {
        return reply;
    }
    let class = (reply.code() / 100) as u8;
    Reply::new(
        reply.code(),
        EnhancedCode::new(class, 0, 0),
        reply.text().to_owned(),
    )
}

/// `451 4.4.1`: the upstream is unreachable or failed; nothing was delivered.
fn unavailable() -> Reply {
    Reply::new(
        451,
        EnhancedCode::new(4, 4, 1),
        "Upstream server unavailable, try again later",
    )
}

/// The permanent refusal for a transaction the upstream can never take
/// (it lacks an extension the message needs, or the message is over its
/// SIZE); `None` when the mismatch is ours to retry (`451 4.4.1`).
fn mismatch_reply(e: &Misuse) -> Option<Reply> {
    Some(match e {
        Misuse::Unsupported("SMTPUTF8") => Reply::new(
            553,
            EnhancedCode::new(5, 6, 7),
            "The upstream server does not support SMTPUTF8",
        ),
        Misuse::Unsupported(ext @ ("8BITMIME" | "BINARYMIME")) => Reply::new(
            554,
            EnhancedCode::new(5, 6, 3),
            format!("The upstream server does not support {ext}"),
        ),
        Misuse::Unsupported("REQUIRETLS") => Reply::new(
            550,
            EnhancedCode::new(5, 7, 30),
            "REQUIRETLS support required by the message is not available upstream",
        ),
        Misuse::Unsupported(ext) => Reply::new(
            554,
            EnhancedCode::new(5, 5, 1),
            format!("The upstream server does not support {ext}"),
        ),
        Misuse::TooBig { limit } => Reply::new(
            552,
            EnhancedCode::new(5, 3, 4),
            format!("Message too big for the upstream server (limit {limit})"),
        ),
        Misuse::InvalidAddress(_) => {
            Reply::new(553, EnhancedCode::new(5, 1, 3), "Address cannot be relayed")
        }
        Misuse::InvalidParameter(p) => Reply::new(
            501,
            EnhancedCode::new(5, 5, 4),
            format!("{p} cannot be relayed"),
        ),
        _ => return None,
    })
}

/// A session with the upstream: a [`Client`] on the session's runtime.
struct Conn {
    link: Box<dyn ClientLink>,
}

impl Conn {
    /// Connects and waits until the client is ready for a transaction. An
    /// opportunistic TLS session whose handshake fails is retried once on a
    /// new connection in clear text, when that sends no credentials in clear.
    async fn open(dialer: Dialer, up: &Upstream) -> Result<Conn, Failure> {
        match Conn::open_with(dialer, up, up.client_config(false)).await {
            Err(Failure::Tls(e))
                if matches!(up.tls, UpstreamTls::Opportunistic)
                    && (up.auth.is_none() || up.auth_insecure) =>
            {
                tracing::info!(error = %e, upstream = %up.address,
                    "opportunistic TLS to the upstream failed; retrying in clear text");
                Conn::open_with(dialer, up, up.client_config(true)).await
            }
            other => other,
        }
    }

    async fn open_with(
        dialer: Dialer,
        up: &Upstream,
        config: ClientConfig,
    ) -> Result<Conn, Failure> {
        let request = DialRequest {
            address: up.address.clone(),
            timeout: up.timeout,
            client: config,
            tls: up.client_tls()?,
        };
        let link = dialer.connect(request).await.map_err(Failure::Io)?;
        let mut conn = Conn { link };
        loop {
            match conn.event().await? {
                ClientEvent::Ready { .. } => return Ok(conn),
                // Informational on the way to Ready (AUTH before the first
                // transaction).
                ClientEvent::Authenticated => {}
                other => return Err(Failure::Misuse(format!("unexpected {other:?}"))),
            }
        }
    }

    fn client(&mut self) -> &mut Client {
        self.link.client()
    }

    /// Writes what the client holds.
    async fn flush(&mut self) -> Result<(), Failure> {
        self.link.flush().await.map_err(Failure::Io)
    }

    /// Drives the session until the client has an event; the session's
    /// failure (or its end) is an error.
    async fn event(&mut self) -> Result<ClientEvent, Failure> {
        let next = self.link.next_event().await;
        self.outcome(next).await
    }

    /// [`Conn::event`], or `None` once the client takes more body (BDAT
    /// chunk replies make room without an event).
    async fn until_body(&mut self) -> Result<Option<ClientEvent>, Failure> {
        let next = self.link.until_body().await;
        if matches!(next, Ok(None)) && !self.client().is_closed() {
            return Ok(None);
        }
        self.outcome(next).await.map(Some)
    }

    /// What the link's answer means: an event, or the session's failure
    /// (or its end) as an error.
    async fn outcome(
        &mut self,
        next: io::Result<Option<ClientEvent>>,
    ) -> Result<ClientEvent, Failure> {
        match next {
            Ok(Some(ClientEvent::Error(e))) => {
                // Writes the QUIT the client queued when the protocol is
                // still in step.
                let _ = self.flush().await;
                Err(match e {
                    ClientError::TlsFailed => Failure::Tls(io::Error::other("handshake failed")),
                    e => Failure::Protocol(e),
                })
            }
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => Err(Failure::Protocol(ClientError::UnexpectedEof)),
            Err(e) => Err(Failure::Io(e)),
        }
    }

    /// Ends the session politely where it is still in step (QUIT, its reply
    /// awaited briefly, without holding up the caller); a broken connection
    /// is just closed.
    fn quit(self) {
        self.link.close();
    }
}

/// The upstream side of one session.
#[derive(Default)]
struct UpState {
    /// The upstream session, once a recipient was relayed.
    conn: Option<Conn>,
    /// Whether MAIL went upstream for the current transaction.
    mail_sent: bool,
    /// The upstream refused MAIL (or can never take this transaction):
    /// every relayed recipient gets this.
    mail_refused: Option<Reply>,
    /// Relayed recipients the upstream accepted in this transaction.
    accepted: usize,
    /// The upstream transaction was lost after a relayed recipient was
    /// accepted: the rest of the transaction fails (`451 4.4.1`).
    lost: bool,
    /// When MAIL went upstream (the metrics' upstream time).
    started: Option<Instant>,
}

impl UpState {
    /// A new transaction: an open upstream one is abandoned (RSET).
    async fn reset(&mut self) {
        if self.mail_sent {
            if let Some(mut conn) = self.conn.take() {
                // Nothing to reset when the upstream already ended it.
                let _ = conn.client().reset(Instant::now());
                if conn.flush().await.is_ok() {
                    self.conn = Some(conn);
                }
            }
        }
        self.clear();
    }

    /// The relayed transaction ended with `outcome` (counted, with its
    /// upstream time when MAIL went).
    fn ended(&mut self, outcome: crate::metrics::RelayOutcome) {
        crate::metrics::relay(outcome, self.started.take().map(|t| t.elapsed()));
    }

    /// A new transaction when none is open upstream.
    fn clear(&mut self) {
        self.started = None;
        self.mail_sent = false;
        self.mail_refused = None;
        self.accepted = 0;
        self.lost = false;
    }

    /// The upstream session failed: it is closed (with QUIT where it is
    /// still in step), and if a relayed recipient was already accepted,
    /// the transaction is lost.
    fn fail(&mut self, e: &Failure, up: &Upstream, when: &str) {
        tracing::info!(error = %e, upstream = %up.address, "relay {when} failed");
        if let Some(mut conn) = self.conn.take() {
            if !conn.client().is_closed() && !matches!(e, Failure::Io(_)) {
                conn.quit();
            }
        }
        self.mail_sent = false;
        self.lost |= self.accepted > 0;
    }
}

/// Every session's routing state, and when to look for stale ones next;
/// shared by the [`Router`] and its body sinks ([`RelaySink`]), which
/// hold a session's state while its body streams.
struct States {
    map: HashMap<String, SessionState>,
    next_sweep: Instant,
    /// A state unused this long is dropped ([`Router::stale_after`]).
    stale_after: Duration,
}

/// The shared states, locked (a poisoned lock is still usable: every
/// state is whole between two statements).
fn lock(states: &Mutex<States>) -> MutexGuard<'_, States> {
    states.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts a session's state back; now and then (every quarter of
/// `stale_after`, not at every hook) drops the stale ones.
fn put_state(states: &Mutex<States>, id: &str, mut state: SessionState) {
    let now = Instant::now();
    state.touched = now;
    let stale: Vec<SessionState> = {
        let mut states = lock(states);
        states.map.insert(id.to_owned(), state);
        if now < states.next_sweep {
            return;
        }
        let stale_after = states.stale_after;
        states.next_sweep = now + stale_after / 4;
        let gone: Vec<String> = states
            .map
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.touched) > stale_after)
            .map(|(k, _)| k.clone())
            .collect();
        gone.iter().filter_map(|k| states.map.remove(k)).collect()
    };
    for s in stale {
        tracing::warn!("dropping the relay state of a session that ended without disconnect");
        close_state(s);
    }
}

/// Per-session routing state.
struct SessionState {
    /// The upstream side.
    up: UpState,
    /// The sender and parameters of the current transaction.
    from: String,
    options: MailOptions,
    /// Route of each recipient accepted in this transaction, in order.
    routes: Vec<Route>,
    /// When a hook last used this state (stale states are swept).
    touched: Instant,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            up: UpState::default(),
            from: String::new(),
            options: MailOptions::default(),
            routes: Vec::new(),
            touched: Instant::now(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Local,
    Relay,
}

/// Routes recipients to a local handler or an upstream server, with relay
/// permissions (see the [module docs](self)).
///
/// Local means: a local handler is given **and** the recipient is in a
/// served domain (`postmaster` bare or at a served domain). Everything
/// else is relayed when an upstream is given and the recipient is in a
/// served domain or the client is trusted, else refused with `550 5.7.1`.
/// Without an upstream, `Router` behaves like [`DomainPolicy`].
///
/// The upstream is reached with the session's [`SessionInfo::dialer`]:
/// every adapter's connection sets it. A [`Dispatcher`](crate::handler::Dispatcher)
/// driven by hand needs [`Dispatcher::with_dialer`](crate::handler::Dispatcher::with_dialer)
/// (e.g. `Dialer::of::<R>()` for a kit runtime), or relayed recipients get `451 4.4.1`.
pub struct Router<L> {
    domains: DomainPolicy<()>,
    /// Shared with the body sinks of mixed transactions (their `finish`
    /// outlives the hook that made them).
    local: Option<Arc<L>>,
    upstream: Option<Arc<Upstream>>,
    networks: Vec<crate::accept::Cidr>,
    /// Every session's state, shared with the body sinks. A session state
    /// unused for `stale_after` belongs to a session that is gone (its
    /// `disconnect` never came): it is dropped, its upstream closed.
    sessions: Arc<Mutex<States>>,
}

impl<L> std::fmt::Debug for Router<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("domains", &self.domains.domains)
            .field("local", &self.local.is_some())
            .field("upstream", &self.upstream)
            .field("networks", &self.networks)
            .finish_non_exhaustive()
    }
}

impl<L: Handler> Router<L> {
    /// Serves `domains` (none or `*`: any, for local delivery) with `local`
    /// (if any), relays through `upstream` (if any) to served domains for
    /// anyone and to other domains for trusted clients: authenticated
    /// ones, loopback and Unix-socket ones, and those in `networks`.
    pub fn new(
        domains: Vec<String>,
        local: Option<L>,
        upstream: Option<Upstream>,
        networks: Vec<crate::accept::Cidr>,
    ) -> Self {
        // Longer than any session can stay idle with the default timeouts
        // (RFC 5321: 5 minutes per command), and than the upstream's bound.
        let stale_after = upstream
            .as_ref()
            .map_or(Duration::ZERO, |u| u.timeout)
            .max(Duration::from_secs(300))
            * 2;
        Router {
            domains: DomainPolicy::new(domains, ()),
            local: local.map(Arc::new),
            upstream: upstream.map(Arc::new),
            networks,
            sessions: Arc::new(Mutex::new(States {
                map: HashMap::new(),
                next_sweep: Instant::now(),
                stale_after,
            })),
        }
    }

    /// How long an unused session state is kept before it is taken for
    /// the state of a session that ended without `disconnect` (default:
    /// twice the longer of 5 minutes and the upstream's timeout). Set it
    /// above the server's command and data timeouts.
    pub fn stale_after(self, d: Duration) -> Self {
        self.sessions().stale_after = d;
        self
    }

    fn sessions(&self) -> MutexGuard<'_, States> {
        lock(&self.sessions)
    }

    fn take_state(&self, id: &str) -> SessionState {
        self.sessions().map.remove(id).unwrap_or_default()
    }

    /// Puts a session's state back ([`put_state`]).
    fn put_state(&self, id: &str, state: SessionState) {
        put_state(&self.sessions, id, state);
    }

    /// Whether the client may relay to domains we do not serve.
    fn trusted(&self, session: &SessionInfo) -> bool {
        if session.authenticated.is_some() {
            return true;
        }
        match session.peer.remote.map(|a| a.ip()) {
            // A Unix-domain socket: a local client (not one a front
            // proxy could not name).
            None => session.is_unix_client(),
            // `::ffff:127.0.0.1` is loopback too; Cidr maps it itself.
            Some(ip) => {
                ip.to_canonical().is_loopback() || self.networks.iter().any(|n| n.contains(ip))
            }
        }
    }

    /// Where `address` goes, or the refusal.
    fn route(&self, session: &SessionInfo, address: &str) -> Result<Route, Reply> {
        let configured = !self.domains.domains.is_empty();
        if self.local.is_some()
            && self.domains.serves(address)
            && (configured || self.upstream.is_none())
        {
            return Ok(Route::Local);
        }
        if self.upstream.is_none() {
            return Err(Reply::RELAY_DENIED);
        }
        if self.trusted(session) {
            return Ok(Route::Relay);
        }
        // Untrusted: only to a domain we serve by name (never `*`), and
        // without sender-specified routing (Postfix's
        // `allow_untrusted_routing = no`).
        let (local, _) = address.rsplit_once('@').unwrap_or((address, ""));
        let routing = local.contains(['%', '!', '@']);
        if self.domains.serves_by_name(address) && !routing {
            Ok(Route::Relay)
        } else {
            Err(Reply::RELAY_DENIED)
        }
    }

    /// Whether a recipient on `route` must wait for a transaction of its
    /// own: toward an LMTP store an SMTP client gets one reply for the
    /// body, so a transaction that relays holds that one recipient and no
    /// other, relayed or local (the store's answer is then that
    /// recipient's, and a local failure can never make the client send
    /// again what the store took). Those get `452 4.5.3`, which clients
    /// retry in a new transaction (RFC 5321 §4.5.3.1.10).
    fn alone(&self, session: &SessionInfo, envelope: &Envelope, route: Route) -> bool {
        if !self.upstream.as_ref().is_some_and(|u| u.lmtp) || session.lmtp {
            return false;
        }
        match route {
            Route::Relay => !envelope.recipients.is_empty(),
            Route::Local => self.sessions().map.get(&session.id).is_some_and(|s| {
                let n = envelope.recipients.len();
                s.routes.iter().take(n).any(|r| *r == Route::Relay)
            }),
        }
    }

    /// The routes of the transaction's recipients, taken out of `state`:
    /// those its RCPTs recorded or, when the state was lost (swept), routed
    /// again; a relayed recipient then finds no upstream transaction and
    /// the message fails.
    /// [`Handler::body`] with an upstream: relayed recipients get a
    /// [`RelaySink`] (local ones a copy), local-only messages the local
    /// handler's choice.
    async fn relay_body(
        &self,
        upstream: Arc<Upstream>,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Message,
    ) -> Body {
        let mut state = self.take_state(&session.id);
        let routes = self.routes_of(session, envelope, &mut state);
        if !routes.contains(&Route::Relay) {
            // Every recipient is local: the local handler takes the body
            // (and `message` gets it, unless the handler streams it).
            state.routes = routes;
            self.put_state(&session.id, state);
            return match &self.local {
                Some(l) => l.body(session, envelope, message).await,
                None => Body::Discard,
            };
        }
        if let Err(refusal) = check_usable(&upstream, &mut state.up) {
            self.put_state(&session.id, state);
            return Body::Refuse(refusal);
        }
        // The local recipients' handler says first how it takes the body:
        // its refusal refuses the message before anything goes upstream.
        let local_env = local_envelope(envelope, &routes);
        let (copy, local) = match &self.local {
            Some(l) if !local_env.recipients.is_empty() => {
                let copy = match l.body(session, &local_env, message).await {
                    Body::Refuse(refusal) => {
                        self.put_state(&session.id, state);
                        return Body::Refuse(refusal);
                    }
                    Body::Stream(sink) => LocalCopy::Stream(sink),
                    Body::Discard => LocalCopy::Discard,
                    Body::BufferUpTo(cap) => LocalCopy::Buffer {
                        data: Vec::new(),
                        cap,
                    },
                    // Body::Buffer, and any other buffering form.
                    _ => LocalCopy::Buffer {
                        data: Vec::new(),
                        cap: usize::MAX,
                    },
                };
                let part = LocalPart {
                    handler: l.clone(),
                    session: session.clone(),
                    envelope: local_env,
                };
                (copy, Some(part))
            }
            _ => (LocalCopy::None, None),
        };
        // DATA upstream, its 354 awaited, our trace header first (boxed, as
        // the other upstream steps).
        let started = Box::pin(async {
            let conn = state
                .up
                .conn
                .as_mut()
                .ok_or_else(|| Failure::Misuse("no upstream".into()))?;
            match start_data(conn).await? {
                Some(refused) => Ok(Some(refused)),
                None => push_upstream(conn, &message.trace).await,
            }
        })
        .await;
        let refusal = match started {
            Ok(None) => {
                return Body::Stream(Box::new(RelaySink {
                    states: self.sessions.clone(),
                    id: session.id.clone(),
                    relayed: Relayed::new(&upstream, session, &routes),
                    upstream,
                    state: Some(state),
                    routes,
                    in_body: true,
                    local,
                    copy,
                }));
            }
            Ok(Some(refused)) => upstream_verdict(&upstream, &mut state.up, Ok(refused)),
            Err(e) => upstream_verdict(&upstream, &mut state.up, Err(e)),
        };
        copy.abort(AbortReason::Refused);
        self.put_state(&session.id, state);
        Body::Refuse(refusal.err().unwrap_or_else(unavailable))
    }

    fn routes_of(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        state: &mut SessionState,
    ) -> Vec<Route> {
        let routes = std::mem::take(&mut state.routes);
        if routes.len() == envelope.recipients.len() {
            return routes;
        }
        envelope
            .recipients
            .iter()
            .map(|r| self.route(session, &r.address).unwrap_or(Route::Relay))
            .collect()
    }

    /// Proxies one RCPT: connects and sends MAIL first if needed.
    async fn relay_rcpt(&self, session: &SessionInfo, to: &Recipient) -> Decision {
        let Some(upstream) = self.upstream.as_deref() else {
            return Reply::RELAY_DENIED.into();
        };
        let Some(dialer) = session.dialer else {
            tracing::error!("no dialer for this session: the relay cannot connect");
            return Decision::Reply(unavailable());
        };
        let mut state = self.take_state(&session.id);
        let (from, options) = (state.from.clone(), state.options.clone());
        // Boxed (as the other upstream steps): the upstream's state would
        // otherwise sit in every session's task, relayed or not.
        let step = rcpt_upstream(
            dialer,
            upstream,
            &mut state.up,
            (&from, &options, session),
            to,
        );
        let decision = Box::pin(step).await;
        self.put_state(&session.id, state);
        decision
    }
}

/// Closes a state's upstream session (QUIT).
fn close_state(state: SessionState) {
    if let Some(conn) = state.up.conn {
        conn.quit();
    }
}

/// MAIL (once) and this RCPT upstream; the upstream's reply.
async fn rcpt_upstream(
    dialer: Dialer,
    up: &Upstream,
    st: &mut UpState,
    (from, options, session): (&str, &MailOptions, &SessionInfo),
    to: &Recipient,
) -> Decision {
    if st.lost {
        return Decision::Reply(unavailable());
    }
    if let Some(r) = &st.mail_refused {
        return Decision::Reply(r.clone());
    }
    let result = async {
        if st.conn.is_none() {
            st.conn = Some(Conn::open(dialer, up).await?);
            st.mail_sent = false;
        }
        let conn = st
            .conn
            .as_mut()
            .ok_or_else(|| Failure::Misuse("no upstream".into()))?;
        let now = Instant::now();
        if !st.mail_sent {
            conn.client()
                .begin_mail(&up_envelope(from, options, session), now)
                .map_err(Failure::Usage)?;
            st.mail_sent = true;
            st.started = Some(now);
        }
        let index = conn
            .client()
            .add_recipient(&up_recipient(to), now)
            .map_err(Failure::Usage)?;
        loop {
            match conn.event().await? {
                ClientEvent::Recipient { index: i, reply } if i == index => return Ok(reply),
                // MAIL refused: every recipient of this transaction gets its reply.
                ClientEvent::MessageRejected { reply, .. } => {
                    st.mail_refused = Some(with_enhanced(reply.clone()));
                    return Ok(reply);
                }
                _ => {}
            }
        }
    }
    .await;
    match result {
        Ok(reply) if reply.is_positive() => {
            st.accepted += 1;
            Decision::Accept
        }
        // The upstream is closing: ours is a temporary failure, not a 421
        // that would tell our client we are closing.
        Ok(reply) if reply.code() == 421 => {
            st.fail(
                &Failure::Protocol(ClientError::ServiceClosing(reply)),
                up,
                "RCPT",
            );
            Decision::Reply(unavailable())
        }
        Ok(reply) => Decision::Reply(with_enhanced(reply)),
        Err(Failure::Usage(e)) => match mismatch_reply(&e) {
            Some(reply) => {
                // Nothing was sent: the connection stays, and if MAIL could
                // not go, no recipient of this transaction can.
                tracing::info!(error = %e, upstream = %up.address, "relay refused: the upstream cannot take it");
                if !st.mail_sent {
                    st.mail_refused = Some(reply.clone());
                }
                Decision::Reply(reply)
            }
            None => {
                st.fail(&Failure::Usage(e), up, "RCPT");
                Decision::Reply(unavailable())
            }
        },
        Err(e) => {
            st.fail(&e, up, "RCPT");
            Decision::Reply(unavailable())
        }
    }
}

/// The upstream envelope for our transaction's sender and parameters
/// (`ENVID` decoded from xtext: the client encodes it once), with the
/// client's facts for XFORWARD (sent if the upstream offers it).
fn up_envelope(from: &str, o: &MailOptions, session: &SessionInfo) -> client::Envelope {
    let mut e = client::Envelope::new((!from.is_empty()).then_some(from), Vec::<String>::new());
    e.size = o.size;
    e.body = (o.body != BodyType::SevenBit).then_some(o.body);
    e.smtputf8 = o.smtputf8;
    e.ret = o.ret;
    e.envid = o.envid.as_deref().and_then(smtp_proto::parse::decode_xtext);
    e.requiretls = o.requiretls;
    e.xforward = xforward_facts(session);
    e
}

/// What XFORWARD tells the upstream (a content filter, say) about the
/// message's origin: the facts our own client passed with XFORWARD when
/// it did (so a chain of filters keeps the first client), else our client:
/// its name, address and port, HELO, this session's id as `IDENT`, and
/// `SOURCE=LOCAL` for a client without an address (a Unix socket).
fn xforward_facts(s: &SessionInfo) -> Vec<(ForwardAttr, Option<String>)> {
    let addr = |ip: Option<std::net::IpAddr>| {
        ip.map(|ip| match ip.to_canonical() {
            std::net::IpAddr::V6(v6) => format!("IPV6:{v6}"),
            v4 => v4.to_string(),
        })
    };
    if let Some(f) = &s.forwarded {
        return vec![
            (ForwardAttr::Name, f.name.clone()),
            (ForwardAttr::Addr, addr(f.addr)),
            (ForwardAttr::Port, f.port.map(|p| p.to_string())),
            (ForwardAttr::Proto, f.proto.clone()),
            (ForwardAttr::Helo, f.helo.clone()),
            (
                ForwardAttr::Ident,
                f.ident.clone().or_else(|| Some(s.id.clone())),
            ),
            (ForwardAttr::Source, f.source.clone()),
        ];
    }
    let remote = s.peer.remote;
    let source = if remote.is_some() { "REMOTE" } else { "LOCAL" };
    vec![
        (ForwardAttr::Name, s.peer.name.clone()),
        (ForwardAttr::Addr, addr(remote.map(|a| a.ip()))),
        (ForwardAttr::Port, remote.map(|a| a.port().to_string())),
        (ForwardAttr::Proto, s.peer.proto.clone()),
        (ForwardAttr::Helo, s.helo.clone()),
        (ForwardAttr::Ident, Some(s.id.clone())),
        (ForwardAttr::Source, Some(source.to_owned())),
    ]
}

/// The upstream recipient: `ORCPT` as the client wants it, the original
/// address (decoded from `rfc822;` xtext or `utf-8;` unitext); another
/// address type cannot be passed on by our client and is left out.
fn up_recipient(to: &Recipient) -> client::Recipient {
    let orcpt = to.orcpt.as_deref().and_then(|o| {
        let (kind, value) = o.split_once(';')?;
        let decoded = if kind.eq_ignore_ascii_case("rfc822") {
            smtp_proto::parse::decode_xtext(value)
        } else if kind.eq_ignore_ascii_case("utf-8") {
            decode_unitext(value)
        } else {
            None
        };
        if decoded.is_none() {
            tracing::debug!(orcpt = o, "ORCPT not passed upstream");
        }
        decoded
    });
    client::Recipient {
        address: to.address.clone(),
        notify: to.notify,
        orcpt,
    }
}

/// RFC 6533 unitext: UTF-8 with `\x{HEX}` escapes.
fn decode_unitext(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\\x{") {
        out.push_str(rest.get(..i)?);
        let tail = rest.get(i + 3..)?;
        let end = tail.find('}')?;
        let code = u32::from_str_radix(tail.get(..end)?, 16).ok()?;
        out.push(char::from_u32(code)?);
        rest = tail.get(end + 1..)?;
    }
    out.push_str(rest);
    Some(out)
}

/// `Misuse` of the client by us, as a failure.
fn misuse(e: Misuse) -> Failure {
    Failure::Misuse(e.to_string())
}

/// Ends the recipients and asks for the body (`DATA`; with BDAT the body
/// opens at once): `None` once the upstream is ready for it, or its refusal.
async fn start_data(conn: &mut Conn) -> Result<Option<Reply>, Failure> {
    conn.client()
        .close_recipients(Instant::now())
        .map_err(misuse)?;
    conn.flush().await?;
    loop {
        match conn.event().await? {
            ClientEvent::SendBody => return Ok(None),
            ClientEvent::MessageRejected { reply, .. } => return Ok(Some(reply)),
            _ => {}
        }
    }
}

/// Hands `bytes` to the upstream client (which dot-stuffs them), writing
/// out whenever it holds all it may ([`ClientConfig::max_pending_output`]):
/// what is held stays bounded whatever the body's size. `Some(reply)`
/// when the upstream refused the message meanwhile (a BDAT chunk).
async fn push_upstream(conn: &mut Conn, mut bytes: &[u8]) -> Result<Option<Reply>, Failure> {
    while !bytes.is_empty() {
        if conn.client().wants_body() {
            let n = conn
                .client()
                .push_body(bytes, Instant::now())
                .map_err(misuse)?;
            bytes = bytes.get(n..).unwrap_or_default();
            if bytes.is_empty() || conn.client().wants_body() {
                continue;
            }
        }
        conn.flush().await?;
        if !conn.client().wants_body() {
            // Nothing left to write and still no room: BDAT chunks await
            // their replies (room comes back without an event), or the
            // transaction (or session) ended: an event says why.
            if let Some(ClientEvent::MessageRejected { reply, .. }) = conn.until_body().await? {
                return Ok(Some(reply));
            }
        }
    }
    Ok(None)
}

/// The upstream's answer to a transaction's body.
enum Ended {
    /// One reply for the whole transaction (an SMTP upstream's answer to
    /// the body, or DATA or a chunk refused), or why there is none.
    Whole(Result<Reply, Failure>),
    /// An LMTP upstream's answers to the body, one per recipient it
    /// accepted, in order; a failure after some of them keeps those.
    Each(Vec<Reply>, Option<Failure>),
}

/// Ends the body and awaits the upstream's reply to it, or from an LMTP
/// upstream its `recipients` replies.
async fn end_data(conn: &mut Conn, lmtp: bool, recipients: usize) -> Ended {
    if let Err(e) = conn.client().end_body(Instant::now()) {
        return Ended::Whole(Err(misuse(e)));
    }
    let expected = if lmtp { recipients.max(1) } else { 1 };
    let mut replies = Vec::with_capacity(expected);
    while replies.len() < expected {
        match conn.event().await {
            Ok(
                ClientEvent::MessageAccepted { reply, .. }
                | ClientEvent::MessageRejected { reply, .. },
            ) => replies.push(reply),
            Ok(_) => {}
            Err(e) if lmtp => return Ended::Each(replies, Some(e)),
            Err(e) => return Ended::Whole(Err(e)),
        }
    }
    if lmtp {
        return Ended::Each(replies, None);
    }
    match replies.pop() {
        Some(reply) => Ended::Whole(Ok(reply)),
        None => Ended::Whole(Err(Failure::Misuse("no reply to the body".into()))),
    }
}

/// Sends a whole message upstream; the upstream's answer
/// ([`end_data`]'s), or its refusal of DATA or of a chunk.
async fn data_upstream(conn: &mut Conn, message: &Message, lmtp: bool, recipients: usize) -> Ended {
    match start_data(conn).await {
        Ok(None) => {}
        Ok(Some(refused)) => return Ended::Whole(Ok(refused)),
        Err(e) => return Ended::Whole(Err(e)),
    }
    for part in [message.trace.as_slice(), message.data.as_slice()] {
        match push_upstream(conn, part).await {
            Ok(None) => {}
            Ok(Some(refused)) => return Ended::Whole(Ok(refused)),
            Err(e) => return Ended::Whole(Err(e)),
        }
    }
    end_data(conn, lmtp, recipients).await
}

/// Whether the upstream transaction can take the body: not lost, MAIL
/// sent, a relayed recipient accepted; else it fails (`451 4.4.1`).
fn check_usable(up: &Upstream, st: &mut UpState) -> Result<(), Reply> {
    if st.lost || !st.mail_sent || st.accepted == 0 || st.conn.is_none() {
        st.ended(crate::metrics::RelayOutcome::Failed);
        st.fail(
            &Failure::Misuse("upstream transaction lost".into()),
            up,
            "DATA",
        );
        return Err(unavailable());
    }
    Ok(())
}

/// The upstream's answer to the body (or to DATA) as ours, the upstream
/// transaction then over: its acceptance, a `5xx` kept (with an enhanced
/// code), anything else `451 4.4.1` (a `421` or a failure also ends the
/// upstream session).
fn upstream_verdict(
    up: &Upstream,
    st: &mut UpState,
    result: Result<Reply, Failure>,
) -> Result<Reply, Reply> {
    use crate::metrics::RelayOutcome;
    st.mail_sent = false;
    st.accepted = 0;
    st.ended(match &result {
        Ok(reply) if reply.is_positive() => RelayOutcome::Delivered,
        Ok(reply) if reply.code() >= 500 => RelayOutcome::Refused,
        Ok(_) => RelayOutcome::Deferred,
        Err(_) => RelayOutcome::Failed,
    });
    match result {
        Ok(reply) if reply.is_positive() => Ok(reply),
        Ok(reply) if reply.code() >= 500 => Err(with_enhanced(reply)),
        Ok(reply) => {
            tracing::info!(code = reply.code(), upstream = %up.address, "upstream deferred the message");
            if reply.code() == 421 {
                st.fail(
                    &Failure::Protocol(ClientError::ServiceClosing(reply)),
                    up,
                    "DATA",
                );
            }
            Err(unavailable())
        }
        Err(e) => {
            st.fail(&e, up, "DATA");
            Err(unavailable())
        }
    }
}

/// The body of a transaction whose relayed recipients were accepted, sent
/// whole: the relayed recipients' decisions ([`relayed_decisions`]).
async fn message_upstream(
    up: &Upstream,
    st: &mut UpState,
    message: &Message,
    relayed: Relayed,
) -> Result<Vec<Decision>, Reply> {
    check_usable(up, st)?;
    let recipients = st.accepted;
    let Some(conn) = st.conn.as_mut() else {
        return Err(unavailable());
    };
    let ended = data_upstream(conn, message, up.lmtp, recipients).await;
    relayed_decisions(up, st, ended, relayed, message)
}

/// A transaction's relayed recipients, as the answer to its body sees them.
#[derive(Debug, Clone, Copy)]
struct Relayed {
    /// How many.
    count: usize,
    /// Each gets its own answer: the upstream and our client both speak
    /// LMTP.
    each: bool,
}

impl Relayed {
    fn new(up: &Upstream, session: &SessionInfo, routes: &[Route]) -> Self {
        Relayed {
            count: routes.iter().filter(|r| **r == Route::Relay).count(),
            each: up.lmtp && session.lmtp,
        }
    }
}

/// What the relayed recipients are told once the upstream answered the
/// body: one decision each, in order; `Err` refuses the whole message
/// (nothing is delivered locally either). An SMTP upstream's acceptance
/// covers every relayed recipient. An LMTP upstream's answers go to their
/// recipients one by one when our client speaks LMTP too (the store's own
/// replies, but `421`: that closes the upstream, not us); for an SMTP
/// client that one recipient's ([`rcpt_upstream`]) answer is the message's.
fn relayed_decisions(
    up: &Upstream,
    st: &mut UpState,
    ended: Ended,
    relayed: Relayed,
    message: &Message,
) -> Result<Vec<Decision>, Reply> {
    let result = match ended {
        Ended::Each(replies, failure) if relayed.each => {
            return Ok(each_decision(
                up,
                st,
                replies,
                failure,
                relayed.count,
                message,
            ));
        }
        Ended::Whole(result) => result,
        Ended::Each(replies, failure) => replies
            .into_iter()
            .next()
            .ok_or_else(|| failure.unwrap_or_else(|| Failure::Misuse("no reply".into()))),
    };
    let reply = upstream_verdict(up, st, result)?;
    message.record_delivery(relayed_line(up, &reply));
    Ok(vec![Decision::Accept; relayed.count])
}

/// An LMTP upstream's answers passed on to an LMTP client, recipient by
/// recipient; a recipient left without one (the upstream was lost) gets
/// `451 4.4.1`.
fn each_decision(
    up: &Upstream,
    st: &mut UpState,
    replies: Vec<Reply>,
    failure: Option<Failure>,
    count: usize,
    message: &Message,
) -> Vec<Decision> {
    use crate::metrics::RelayOutcome;
    st.mail_sent = false;
    st.accepted = 0;
    st.ended(if replies.iter().any(Reply::is_positive) {
        RelayOutcome::Delivered
    } else if failure.is_some() || replies.len() < count {
        RelayOutcome::Failed
    } else if replies.iter().all(|r| r.code() >= 500) {
        RelayOutcome::Refused
    } else {
        RelayOutcome::Deferred
    });
    let mut closing = failure;
    let mut replies = replies.into_iter();
    let decisions = (0..count)
        .map(|_| match replies.next() {
            Some(r) if r.code() == 421 => {
                closing.get_or_insert(Failure::Protocol(ClientError::ServiceClosing(r)));
                Decision::Reply(unavailable())
            }
            Some(r) => {
                if r.is_positive() {
                    message.record_delivery(relayed_line(up, &r));
                }
                Decision::Reply(with_enhanced(r))
            }
            None => Decision::Reply(unavailable()),
        })
        .collect();
    if let Some(e) = closing {
        st.fail(&e, up, "DATA");
    }
    decisions
}

/// The delivery line of a message the upstream accepted.
fn relayed_line(up: &Upstream, reply: &Reply) -> String {
    format!(
        "relay:{} ({} {}{})",
        up.address,
        reply.code(),
        reply
            .enhanced()
            .map(|e| format!("{e} "))
            .unwrap_or_default(),
        reply.text().lines().next().unwrap_or("")
    )
}

/// The local recipients of a transaction (their routes say `Local`), with
/// its sender and parameters.
fn local_envelope(envelope: &Envelope, routes: &[Route]) -> Envelope {
    Envelope {
        from: envelope.from.clone(),
        options: envelope.options.clone(),
        recipients: envelope
            .recipients
            .iter()
            .zip(routes.iter())
            .filter(|(_, r)| **r == Route::Local)
            .map(|(rcpt, _)| rcpt.clone())
            .collect(),
    }
}

/// A mixed transaction's decisions per recipient: relayed ones got
/// `relayed` ([`relayed_decisions`]), local ones the local handler's
/// decision.
fn merge(
    routes: &[Route],
    relayed: Vec<Decision>,
    local: MessageDecision,
    locals: usize,
) -> MessageDecision {
    let mut local_each = match local {
        MessageDecision::All(d) => vec![d; locals],
        MessageDecision::PerRecipient(v) => v,
    }
    .into_iter();
    let mut relayed = relayed.into_iter();
    MessageDecision::PerRecipient(
        routes
            .iter()
            .map(|r| match r {
                Route::Relay => relayed
                    .next()
                    .unwrap_or_else(|| Decision::Reply(unavailable())),
                Route::Local => local_each.next().unwrap_or(Decision::Accept),
            })
            .collect(),
    )
}

/// The decision of a transaction whose every recipient was relayed.
fn relayed_only(decisions: Vec<Decision>) -> MessageDecision {
    if decisions.iter().all(|d| matches!(d, Decision::Accept)) {
        MessageDecision::All(Decision::Accept)
    } else {
        MessageDecision::PerRecipient(decisions)
    }
}

/// How a mixed transaction's local recipients take the body streaming
/// upstream (their handler's [`Handler::body`]).
enum LocalCopy {
    /// No local recipient.
    None,
    /// [`Body::Discard`]: [`Handler::message`] gets no data.
    Discard,
    /// [`Body::Stream`]: every chunk after the upstream got it.
    Stream(Box<dyn BodySink>),
    /// [`Body::Buffer`] (`cap` unbounded) or [`Body::BufferUpTo`]: kept
    /// for [`Handler::message`].
    Buffer { data: Vec<u8>, cap: usize },
}

impl LocalCopy {
    /// Nothing of the body is delivered locally: a sink is aborted.
    fn abort(self, reason: AbortReason) {
        if let LocalCopy::Stream(sink) = self {
            sink.abort(reason);
        }
    }
}

/// The local side of a mixed transaction: its handler, the session and the
/// local recipients' envelope (owned: [`BodySink::finish`] is `'static`).
struct LocalPart<L> {
    handler: Arc<L>,
    session: SessionInfo,
    envelope: Envelope,
}

/// A relayed body streaming upstream ([`Body::Stream`] from
/// [`Router`]'s [`Handler::body`]): `DATA` was accepted, and the sink holds
/// the session's state, its upstream connection inside, until the body
/// ends; then the state goes back to the router's map, the connection in
/// it for the next transaction (or gone, when the body was cut off).
struct RelaySink<L: Handler> {
    states: Arc<Mutex<States>>,
    id: String,
    upstream: Arc<Upstream>,
    /// The session's state, taken out of `states` (`None` once put back).
    state: Option<SessionState>,
    /// Each recipient's route, in order.
    routes: Vec<Route>,
    /// The relayed recipients.
    relayed: Relayed,
    /// The upstream is inside the body: cutting it off closes the
    /// connection (an upstream that refused the message is done with it).
    in_body: bool,
    local: Option<LocalPart<L>>,
    copy: LocalCopy,
}

impl<L: Handler> RelaySink<L> {
    /// The body is cut off, refused or dropped: the upstream connection
    /// closes in the middle of its body (never with the end of data, so
    /// the upstream drops the message), the local copy is dropped, and the
    /// state goes back without a connection or a transaction.
    fn cancel(&mut self, reason: AbortReason) {
        std::mem::replace(&mut self.copy, LocalCopy::None).abort(reason);
        let Some(mut state) = self.state.take() else {
            return;
        };
        if std::mem::take(&mut self.in_body) {
            if let Some(conn) = state.up.conn.take() {
                tracing::info!(?reason, upstream = %self.upstream.address,
                    "relayed body cut off: closing the upstream connection inside DATA");
                // Closes at once (no QUIT, no end of data) during a transaction.
                conn.quit();
            }
        }
        state.up.clear();
        put_state(&self.states, &self.id, state);
    }

    /// Passes a chunk upstream, then to the local copy.
    async fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), Reply> {
        let Some(state) = self.state.as_mut() else {
            return Err(unavailable());
        };
        let up = &*self.upstream;
        let Some(conn) = state.up.conn.as_mut() else {
            return Err(unavailable());
        };
        // Written out before the next chunk is read: a slow upstream slows
        // our client, and a slow client never leaves bytes waiting here.
        let pushed = match push_upstream(conn, chunk).await {
            Ok(None) => conn.flush().await.map(|()| None),
            other => other,
        };
        match pushed {
            Ok(None) => {}
            Ok(Some(refused)) => {
                self.in_body = false;
                let verdict = upstream_verdict(up, &mut state.up, Ok(refused));
                return Err(verdict.err().unwrap_or_else(unavailable));
            }
            Err(e) => {
                self.in_body = false;
                state.up.ended(crate::metrics::RelayOutcome::Failed);
                state.up.fail(&e, up, "DATA");
                return Err(unavailable());
            }
        }
        match &mut self.copy {
            LocalCopy::Stream(sink) => sink.write(chunk).await,
            LocalCopy::Buffer { data, cap } => {
                if data.len().saturating_add(chunk.len()) > *cap {
                    *data = Vec::new();
                    return Err(Reply::MESSAGE_TOO_BIG);
                }
                data.extend_from_slice(chunk);
                Ok(())
            }
            LocalCopy::None | LocalCopy::Discard => Ok(()),
        }
    }

    /// The end of the body: the upstream's verdict first, then the local copy.
    async fn finish_message(mut self: Box<Self>, message: Arc<Message>) -> MessageDecision {
        let copy = std::mem::replace(&mut self.copy, LocalCopy::None);
        let Some(mut state) = self.state.take() else {
            copy.abort(AbortReason::Refused);
            return Decision::Reply(unavailable()).into();
        };
        self.in_body = false;
        let up = self.upstream.clone();
        let recipients = state.up.accepted;
        let ended = match state.up.conn.as_mut() {
            Some(conn) => end_data(conn, up.lmtp, recipients).await,
            None => Ended::Whole(Err(Failure::Misuse("upstream transaction lost".into()))),
        };
        let relayed = relayed_decisions(&up, &mut state.up, ended, self.relayed, &message);
        // The connection goes back for the session's next transaction.
        put_state(&self.states, &self.id, state);
        let relayed = match relayed {
            Ok(decisions) => decisions,
            Err(refusal) => {
                // Nothing is delivered when the upstream did not take it.
                copy.abort(AbortReason::Refused);
                return Decision::Reply(refusal).into();
            }
        };
        let Some(local) = self.local.take() else {
            copy.abort(AbortReason::Refused);
            return relayed_only(relayed);
        };
        let LocalPart {
            handler,
            session,
            envelope,
        } = local;
        let decision = match copy {
            LocalCopy::None => return relayed_only(relayed),
            LocalCopy::Stream(sink) => sink.finish(message.clone()).await,
            LocalCopy::Discard => handler.message(&session, &envelope, &message).await,
            LocalCopy::Buffer { data, .. } => {
                let mut whole = Message::new(data, message.trace.clone());
                whole.id.clone_from(&message.id);
                let whole = Arc::new(whole);
                let d = handler.message(&session, &envelope, &whole).await;
                for place in whole.deliveries() {
                    message.record_delivery(place);
                }
                d
            }
        };
        merge(&self.routes, relayed, decision, envelope.recipients.len())
    }
}

impl<L: Handler> BodySink for RelaySink<L> {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), Reply>> {
        Box::pin(self.write_chunk(chunk))
    }

    fn finish(self: Box<Self>, message: Arc<Message>) -> BoxFuture<'static, MessageDecision> {
        Box::pin(self.finish_message(message))
    }

    fn abort(mut self: Box<Self>, reason: AbortReason) {
        self.cancel(reason);
    }
}

/// A sink dropped without `finish` or `abort` (its session's task gone)
/// counts as aborted.
impl<L: Handler> Drop for RelaySink<L> {
    fn drop(&mut self) {
        self.cancel(AbortReason::Disconnected);
    }
}

impl<L: Handler> Handler for Router<L> {
    fn wants_trace(&self) -> bool {
        // A relayed message carries our Received: header upstream.
        self.upstream.is_some() || self.local.as_deref().is_some_and(L::wants_trace)
    }

    async fn connect(&self, session: &SessionInfo) -> Decision {
        match &self.local {
            Some(l) => l.connect(session).await,
            None => Decision::Accept,
        }
    }

    async fn helo(&self, session: &SessionInfo, kind: HeloKind, name: &str) -> Decision {
        match &self.local {
            Some(l) => l.helo(session, kind, name).await,
            None => Decision::Accept,
        }
    }

    async fn mail(&self, session: &SessionInfo, from: &str, options: &MailOptions) -> Decision {
        if let Some(l) = &self.local {
            let d = l.mail(session, from, options).await;
            if !matches!(d, Decision::Accept) {
                return d;
            }
        }
        if self.upstream.is_none() {
            // Local delivery only: no per-session state to keep.
            return Decision::Accept;
        }
        let mut state = self.take_state(&session.id);
        if state.up.mail_sent {
            Box::pin(state.up.reset()).await;
        } else {
            state.up.clear();
        }
        state.from = from.to_owned();
        state.options = options.clone();
        state.routes.clear();
        self.put_state(&session.id, state);
        Decision::Accept
    }

    async fn rcpt(&self, session: &SessionInfo, envelope: &Envelope, to: &Recipient) -> Decision {
        let route = match self.route(session, &to.address) {
            Err(reply) => return reply.into(),
            Ok(route) => route,
        };
        if self.alone(session, envelope, route) {
            return Reply::TOO_MANY_RECIPIENTS.into();
        }
        let decision = match route {
            Route::Local => match &self.local {
                Some(l) => l.rcpt(session, envelope, to).await,
                None => Reply::RELAY_DENIED.into(),
            },
            Route::Relay => self.relay_rcpt(session, to).await,
        };
        if matches!(decision, Decision::Accept) && self.upstream.is_some() {
            let mut states = self.sessions();
            let state = states.map.entry(session.id.clone()).or_default();
            state.routes.truncate(envelope.recipients.len());
            state.routes.push(route);
        }
        decision
    }

    async fn body(&self, session: &SessionInfo, envelope: &Envelope, message: &Message) -> Body {
        match (&self.upstream, &self.local) {
            (Some(upstream), _) => {
                // Boxed: the relay's future stays out of every local-only body's.
                Box::pin(self.relay_body(upstream.clone(), session, envelope, message)).await
            }
            (None, Some(l)) => l.body(session, envelope, message).await,
            (None, None) => Body::Buffer,
        }
    }

    async fn verify(&self, session: &SessionInfo, arg: &str, expand: bool) -> Decision {
        match &self.local {
            Some(l) => l.verify(session, arg, expand).await,
            None => Decision::Accept,
        }
    }

    async fn auth(&self, session: &SessionInfo, credentials: &Credentials) -> Decision {
        match &self.local {
            Some(l) => l.auth(session, credentials).await,
            None => Reply::AUTH_FAILED.into(),
        }
    }

    async fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> MessageDecision {
        // Reached when no sink took the body: every recipient is local, or
        // the message came whole (a caller driving the hooks itself).
        let Some(upstream) = self.upstream.as_deref() else {
            // Every accepted recipient is local.
            return match &self.local {
                Some(l) => l.message(session, envelope, message).await,
                None => MessageDecision::All(Decision::Accept),
            };
        };
        let mut state = self.take_state(&session.id);
        let routes = self.routes_of(session, envelope, &mut state);
        let relayed = Relayed::new(upstream, session, &routes);
        let mut decisions = Vec::new();
        if relayed.count > 0 {
            let verdict = message_upstream(upstream, &mut state.up, message, relayed);
            let verdict = Box::pin(verdict).await;
            self.put_state(&session.id, state);
            match verdict {
                Ok(d) => decisions = d,
                Err(reply) => return MessageDecision::All(Decision::Reply(reply)),
            }
        } else {
            self.put_state(&session.id, state);
        }
        let local_env = local_envelope(envelope, &routes);
        let local = match &self.local {
            Some(l) if !local_env.recipients.is_empty() => l,
            _ if relayed.count > 0 => return relayed_only(decisions),
            _ => return MessageDecision::All(Decision::Accept),
        };
        let local_decision = local.message(session, &local_env, message).await;
        if relayed.count == 0 {
            return local_decision;
        }
        merge(
            &routes,
            decisions,
            local_decision,
            local_env.recipients.len(),
        )
    }

    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        if let Some(l) = &self.local {
            l.disconnect(session, reason);
        }
        if self.upstream.is_none() {
            return;
        }
        close_state(self.take_state(&session.id));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn session(id: &str) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            ..SessionInfo::default()
        }
    }

    /// Issue 12 item 11: the router does not rely on `disconnect` alone; a
    /// state nobody touched for `stale_after` is dropped by the next hook.
    #[test]
    fn stale_session_states_are_swept() {
        let up = Upstream::new("127.0.0.1:9", "relay.test");
        let router = Router::new(Vec::new(), None::<()>, Some(up), Vec::new())
            .stale_after(Duration::from_millis(50));
        let from = MailOptions::default();
        futures_executor::block_on(router.mail(&session("gone"), "a@x", &from));
        assert_eq!(router.sessions().map.len(), 1);
        std::thread::sleep(Duration::from_millis(100));
        futures_executor::block_on(router.mail(&session("live"), "a@x", &from));
        let ids: Vec<String> = router.sessions().map.keys().cloned().collect();
        assert_eq!(ids, ["live"]);
        router.disconnect(&session("live"), CloseReason::Quit);
        assert!(router.sessions().map.is_empty());
    }

    /// Issue 12 items 3, 4 and 8: who may relay where.
    #[test]
    fn relay_permission() {
        let up = Upstream::new("127.0.0.1:9", "relay.test");
        let router = Router::new(
            vec!["example.org".into()],
            None::<()>,
            Some(up),
            vec!["192.0.2.0/24".parse().unwrap()],
        );
        let from = |ip: &str| SessionInfo {
            peer: smtp_proto::server::PeerInfo {
                remote: Some(format!("{ip}:4000").parse().unwrap()),
                ..Default::default()
            },
            ..SessionInfo::default()
        };
        let stranger = from("198.51.100.1");
        let ok = |s: &SessionInfo, a: &str| router.route(s, a).is_ok();
        assert!(ok(&stranger, "a@example.org"));
        assert!(ok(&stranger, "Postmaster"));
        assert!(ok(&stranger, "postmaster@EXAMPLE.org"));
        assert!(!ok(&stranger, "postmaster@victim.example"));
        assert!(!ok(&stranger, "a@victim.example"));
        assert!(!ok(&stranger, "a%victim.example@example.org"));
        assert!(!ok(&stranger, "victim.example!a@example.org"));
        assert!(!ok(&stranger, "\"a@victim.example\"@example.org"));
        for trusted in [from("127.0.0.1"), from("[::1]"), from("192.0.2.5")] {
            assert!(ok(&trusted, "a@victim.example"));
            assert!(ok(&trusted, "a%b@example.org"));
        }
        let mut authed = from("198.51.100.1");
        authed.authenticated = Some("u".into());
        assert!(ok(&authed, "a@victim.example"));
        // A Unix-socket client is local; a client a front proxy named
        // without an address (XCLIENT ADDR=[UNAVAILABLE]) is not.
        assert!(ok(&SessionInfo::default(), "a@victim.example"));
        let mut unnamed = SessionInfo::default();
        unnamed.peer.proxied_by = Some("192.0.2.1:40000".parse().unwrap());
        assert!(!ok(&unnamed, "a@victim.example"));
    }

    // ----- streaming bodies (issue 14, item 3) -----

    use crate::dial::{Connecting, Dial};
    use futures_executor::block_on;
    use smtp_proto::client::{Instruction, Output};

    /// An in-memory upstream: plain SMTP without extensions, `DATA` and
    /// the end of data answered as set.
    #[derive(Default)]
    struct FakeUp {
        /// Replies not yet read by the client.
        out: Vec<u8>,
        line: Vec<u8>,
        /// Inside DATA: the body so far (after a virtual CRLF).
        body: Option<Vec<u8>>,
        /// Bodies ended with the end of data.
        ended: Vec<Vec<u8>>,
        /// Commands received.
        commands: Vec<String>,
        connections: usize,
        closed: usize,
        data_reply: Option<&'static str>,
        end_reply: Option<&'static str>,
        /// Offers CHUNKING; inside a BDAT chunk: the bytes still to come
        /// and whether it is the last.
        chunking: bool,
        bdat: Option<(usize, bool)>,
        /// An LMTP store: these replies to the end of data (one per
        /// accepted recipient), and RCPTs to `unknown@…` refused.
        lmtp_end: Vec<&'static str>,
    }

    impl FakeUp {
        fn input(&mut self, bytes: &[u8]) {
            for &b in bytes {
                if let Some((left, last)) = &mut self.bdat {
                    self.body.get_or_insert_with(|| b"\r\n".to_vec()).push(b);
                    *left -= 1;
                    if *left == 0 {
                        let last = *last;
                        self.bdat = None;
                        let reply = if last {
                            let mut body = self.body.take().unwrap_or_default();
                            self.ended.push(body.split_off(2));
                            self.end_reply.unwrap_or("250 2.0.0 queued")
                        } else {
                            "250 2.0.0 chunk"
                        };
                        self.out
                            .extend_from_slice(format!("{reply}\r\n").as_bytes());
                    }
                    continue;
                }
                if let Some(body) = self.body.as_mut().filter(|_| !self.chunking) {
                    body.push(b);
                    if body.ends_with(b"\r\n.\r\n") {
                        let mut body = self.body.take().unwrap_or_default();
                        body.truncate(body.len() - 3);
                        self.ended.push(body.split_off(2));
                        let reply = self.end_reply.unwrap_or("250 2.0.0 queued");
                        let replies = match self.lmtp_end.as_slice() {
                            [] => vec![reply],
                            each => each.to_vec(),
                        };
                        for reply in replies {
                            self.out
                                .extend_from_slice(format!("{reply}\r\n").as_bytes());
                        }
                    }
                    continue;
                }
                self.line.push(b);
                if !self.line.ends_with(b"\r\n") {
                    continue;
                }
                let cmd = String::from_utf8_lossy(&self.line).trim_end().to_owned();
                self.line.clear();
                let verb = cmd.get(..4).unwrap_or("").to_ascii_uppercase();
                self.commands.push(cmd.clone());
                let reply = match verb.as_str() {
                    "EHLO" if self.chunking => "250-fake.test\r\n250 CHUNKING",
                    "BDAT" => {
                        let mut words = self.commands.last().unwrap().split(' ').skip(1);
                        let n: usize = words.next().unwrap().parse().unwrap();
                        let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                        assert!(n > 0, "the client sends no empty chunks here");
                        self.bdat = Some((n, last));
                        continue;
                    }
                    "EHLO" | "LHLO" => "250 fake.test",
                    "RCPT" if cmd.contains("<unknown@") => "550 5.1.1 User doesn't exist",
                    "QUIT" => "221 2.0.0 bye",
                    "DATA" => {
                        let reply = self.data_reply.unwrap_or("354 go ahead");
                        if reply.starts_with("354") {
                            self.body = Some(b"\r\n".to_vec());
                        }
                        reply
                    }
                    _ => "250 2.0.0 ok",
                };
                self.out
                    .extend_from_slice(format!("{reply}\r\n").as_bytes());
            }
        }

        /// The body inside DATA now, if any.
        fn partial(&self) -> Option<&[u8]> {
            self.body.as_deref().map(|b| &b[2..])
        }
    }

    type Fake = Arc<Mutex<FakeUp>>;

    static FAKES: Mutex<Vec<(String, Fake)>> = Mutex::new(Vec::new());

    /// A new in-memory upstream and its settings.
    fn fake(name: &str) -> (Upstream, Fake) {
        let up: Fake = Arc::default();
        let address = format!("{name}.fake:25");
        let mut fakes = FAKES.lock().unwrap();
        assert!(
            fakes.iter().all(|(a, _)| *a != address),
            "one fake per name"
        );
        fakes.push((address.clone(), up.clone()));
        (Upstream::new(address, "relay.test"), up)
    }

    struct FakeDial;
    static FAKE_DIAL: FakeDial = FakeDial;

    impl Dial for FakeDial {
        fn connect(&'static self, req: DialRequest) -> Connecting {
            Box::pin(async move {
                let fakes = FAKES.lock().unwrap();
                let (_, up) = fakes.iter().find(|(a, _)| *a == req.address).unwrap();
                let mut u = up.lock().unwrap();
                u.connections += 1;
                u.out = b"220 fake.test ESMTP\r\n".to_vec();
                u.line.clear();
                u.body = None;
                let client = Client::new(req.client, Instant::now());
                Ok(Box::new(FakeLink {
                    client,
                    up: up.clone(),
                }) as Box<dyn ClientLink>)
            })
        }
    }

    struct FakeLink {
        client: Client,
        up: Fake,
    }

    impl FakeLink {
        /// Writes what the client holds into the upstream.
        fn write_out(&mut self) {
            let bytes = self.client.transmit().to_vec();
            self.client.transmitted(bytes.len());
            self.up.lock().unwrap().input(&bytes);
        }

        /// Writes, then reads the upstream's replies; whether anything moved.
        fn pump(&mut self) -> bool {
            let wrote = !self.client.transmit().is_empty();
            self.write_out();
            let replies = std::mem::take(&mut self.up.lock().unwrap().out);
            self.client.receive(&replies, Instant::now());
            wrote || !replies.is_empty()
        }
    }

    impl ClientLink for FakeLink {
        fn client(&mut self) -> &mut Client {
            &mut self.client
        }

        fn next_event(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>> {
            Box::pin(async move {
                loop {
                    if self.client.has_event() {
                        return Ok(self.client.poll().event());
                    }
                    if let Output::Instruction(Instruction::Closed) = self.client.poll() {
                        self.write_out();
                        return Ok(None);
                    }
                    if !self.pump() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
            })
        }

        fn until_body(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>> {
            Box::pin(async move {
                while !self.client.wants_body() && !self.client.has_event() {
                    if !self.pump() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                if self.client.has_event() {
                    return Ok(self.client.poll().event());
                }
                Ok(None)
            })
        }

        fn flush(&mut self) -> BoxFuture<'_, io::Result<()>> {
            self.write_out();
            Box::pin(std::future::ready(Ok(())))
        }

        fn close(mut self: Box<Self>) {
            let _ = self.client.quit(Instant::now());
            self.write_out();
        }
    }

    impl Drop for FakeLink {
        fn drop(&mut self) {
            self.up.lock().unwrap().closed += 1;
        }
    }

    /// How the test's local handler takes bodies.
    #[derive(Clone, Copy)]
    enum Mode {
        Buffer,
        UpTo(usize),
        Discard,
        Refuse,
        Stream,
    }

    /// What the local handler saw.
    #[derive(Default)]
    struct Seen {
        /// `message` calls: the data and the recipients.
        messages: Vec<(Vec<u8>, Vec<String>)>,
        streamed: Vec<u8>,
        finished: bool,
        aborted: Option<AbortReason>,
    }

    struct Local {
        mode: Mode,
        seen: Arc<Mutex<Seen>>,
    }

    struct LocalSink(Arc<Mutex<Seen>>);

    impl BodySink for LocalSink {
        fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), Reply>> {
            self.0.lock().unwrap().streamed.extend_from_slice(chunk);
            Box::pin(std::future::ready(Ok(())))
        }

        fn finish(self: Box<Self>, message: Arc<Message>) -> BoxFuture<'static, MessageDecision> {
            self.0.lock().unwrap().finished = true;
            message.record_delivery("local:stream");
            Box::pin(std::future::ready(Decision::Accept.into()))
        }

        fn abort(self: Box<Self>, reason: AbortReason) {
            self.0.lock().unwrap().aborted = Some(reason);
        }
    }

    impl Handler for Local {
        async fn body(&self, _: &SessionInfo, _: &Envelope, _: &Message) -> Body {
            match self.mode {
                Mode::Buffer => Body::Buffer,
                Mode::UpTo(n) => Body::BufferUpTo(n),
                Mode::Discard => Body::Discard,
                Mode::Refuse => Body::Refuse(Reply::TEMPORARY_FAILURE),
                Mode::Stream => Body::Stream(Box::new(LocalSink(self.seen.clone()))),
            }
        }

        async fn message(
            &self,
            _: &SessionInfo,
            envelope: &Envelope,
            message: &Arc<Message>,
        ) -> MessageDecision {
            let rcpts = envelope.recipient_addresses().map(str::to_owned).collect();
            let mut seen = self.seen.lock().unwrap();
            seen.messages.push((message.data.clone(), rcpts));
            message.record_delivery("local:whole");
            Decision::Accept.into()
        }
    }

    /// A router with a local handler for `local.example` and an in-memory
    /// upstream for everything else.
    fn mixed(name: &str, mode: Mode) -> (Router<Local>, Fake, Arc<Mutex<Seen>>) {
        let (up, fake) = fake(name);
        mixed_over(up, fake, mode)
    }

    /// [`mixed`] over an upstream of the caller's.
    fn mixed_over(up: Upstream, fake: Fake, mode: Mode) -> (Router<Local>, Fake, Arc<Mutex<Seen>>) {
        let seen = Arc::<Mutex<Seen>>::default();
        let local = Local {
            mode,
            seen: seen.clone(),
        };
        let router = Router::new(
            vec!["local.example".into()],
            Some(local),
            Some(up),
            Vec::new(),
        );
        (router, fake, seen)
    }

    /// A session (a Unix-socket client: trusted) that dials the fakes.
    fn dialing(id: &str) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            dialer: Some(Dialer::new(&FAKE_DIAL)),
            ..SessionInfo::default()
        }
    }

    /// MAIL and the RCPTs (each accepted); the envelope.
    fn transaction<L: Handler>(router: &Router<L>, s: &SessionInfo, rcpts: &[&str]) -> Envelope {
        let options = MailOptions::default();
        assert_eq!(
            block_on(router.mail(s, "a@x.example", &options)),
            Decision::Accept
        );
        let mut env = Envelope {
            from: "a@x.example".into(),
            options,
            recipients: Vec::new(),
        };
        for r in rcpts {
            let to = Recipient {
                address: (*r).into(),
                notify: None,
                orcpt: None,
            };
            assert_eq!(block_on(router.rcpt(s, &env, &to)), Decision::Accept, "{r}");
            env.recipients.push(to);
        }
        env
    }

    fn message(id: &str) -> Message {
        let mut m = Message::new(Vec::new(), b"Received: by relay.test\r\n".to_vec());
        m.id = id.into();
        m
    }

    fn stream(body: Body) -> Box<dyn BodySink> {
        match body {
            Body::Stream(sink) => sink,
            other => panic!("not a stream: {other:?}"),
        }
    }

    /// The body goes upstream as it comes (DATA at its start, each chunk
    /// written before the next is asked for), the upstream's acceptance is
    /// recorded, and the connection serves the next transaction.
    #[test]
    fn relayed_body_streams_and_the_connection_is_reused() {
        let (up, fake) = fake("relayed");
        let router = Router::new(Vec::new(), None::<()>, Some(up), Vec::new());
        let s = dialing("s1");
        for n in 1..=2 {
            let env = transaction(&router, &s, &["you@remote.example"]);
            let msg = message(&format!("s1-{n}"));
            let mut sink = stream(block_on(router.body(&s, &env, &msg)));
            assert!(
                fake.lock().unwrap().partial().is_some(),
                "DATA at the body's start"
            );
            block_on(sink.write(b"Subject: x\r\n\r\n")).unwrap();
            block_on(sink.write(b".dot\r\nmore\r\n")).unwrap();
            assert_eq!(
                fake.lock().unwrap().partial().unwrap(),
                b"Received: by relay.test\r\nSubject: x\r\n\r\n..dot\r\nmore\r\n",
                "each chunk went upstream at once (dot-stuffed)"
            );
            let msg = Arc::new(msg);
            let d = block_on(sink.finish(msg.clone()));
            assert_eq!(d, MessageDecision::All(Decision::Accept));
            assert_eq!(
                msg.deliveries(),
                ["relay:relayed.fake:25 (250 2.0.0 queued)"]
            );
        }
        let f = fake.lock().unwrap();
        assert_eq!(f.ended.len(), 2);
        assert_eq!(f.connections, 1, "{:?}", f.commands);
        assert_eq!(f.closed, 0);
    }

    /// With CHUNKING upstream the body goes as BDAT chunks whose replies
    /// are read as it goes: a body many times the client's buffer passes.
    #[test]
    fn a_large_body_streams_as_bdat_chunks() {
        let (up, fake) = fake("bdat");
        fake.lock().unwrap().chunking = true;
        let router = Router::new(Vec::new(), None::<()>, Some(up), Vec::new());
        let s = dialing("b1");
        let env = transaction(&router, &s, &["you@remote.example"]);
        let msg = message("b1-1");
        let mut sink = stream(block_on(router.body(&s, &env, &msg)));
        let line = [b'b'; 998];
        let mut want = b"Received: by relay.test\r\n".to_vec();
        for _ in 0..4000 {
            block_on(sink.write(&line)).unwrap();
            block_on(sink.write(b"\r\n")).unwrap();
            want.extend_from_slice(&line);
            want.extend_from_slice(b"\r\n");
        }
        let d = block_on(sink.finish(Arc::new(msg)));
        assert_eq!(d, MessageDecision::All(Decision::Accept));
        let f = fake.lock().unwrap();
        assert!(f.commands.iter().filter(|c| c.starts_with("BDAT")).count() > 10);
        assert_eq!(f.ended.len(), 1);
        assert!(f.ended[0] == want, "the body whole, not dot-stuffed");
    }

    /// A body cut off (aborted or dropped) closes the upstream connection
    /// inside DATA, never with the end of data; the next transaction opens
    /// a new connection.
    #[test]
    fn a_cut_off_body_is_never_ended_upstream() {
        let (up, fake) = fake("cut");
        let router = Router::new(Vec::new(), None::<()>, Some(up), Vec::new());
        let s = dialing("c1");
        for (n, drop_it) in [(1, false), (2, true)] {
            let env = transaction(&router, &s, &["you@remote.example"]);
            let msg = message(&format!("c1-{n}"));
            let mut sink = stream(block_on(router.body(&s, &env, &msg)));
            block_on(sink.write(b"Subject: cut\r\n\r\npart\r\n")).unwrap();
            if drop_it {
                drop(sink);
            } else {
                sink.abort(AbortReason::Disconnected);
            }
            let f = fake.lock().unwrap();
            assert_eq!(f.closed, n, "the upstream connection closed");
            assert!(f.ended.is_empty(), "no end of data upstream");
            assert!(!f.commands.iter().any(|c| c == "QUIT"), "{:?}", f.commands);
        }
        let env = transaction(&router, &s, &["you@remote.example"]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("c1-3"))));
        block_on(sink.write(b"Subject: ok\r\n\r\nwhole\r\n")).unwrap();
        let d = block_on(sink.finish(Arc::new(message("c1-3"))));
        assert_eq!(d, MessageDecision::All(Decision::Accept));
        let f = fake.lock().unwrap();
        assert_eq!(f.connections, 3);
        assert_eq!(f.ended.len(), 1);
    }

    /// Mixed transactions: the upstream first, then the local copy in
    /// whatever form the local handler wants; decisions per recipient.
    #[test]
    fn mixed_transaction_local_copy_forms() {
        let chunks: [&[u8]; 2] = [b"Subject: m\r\n\r\n", b"both\r\n"];
        for (name, mode) in [
            ("buffer", Mode::Buffer),
            ("upto", Mode::UpTo(1024)),
            ("discard", Mode::Discard),
            ("stream", Mode::Stream),
        ] {
            let (router, fake, seen) = mixed(name, mode);
            let s = dialing(name);
            let env = transaction(
                &router,
                &s,
                &[
                    "me@local.example",
                    "you@remote.example",
                    "her@local.example",
                ],
            );
            let msg = message("m-1");
            let mut sink = stream(block_on(router.body(&s, &env, &msg)));
            for c in chunks {
                block_on(sink.write(c)).unwrap();
            }
            let msg = Arc::new(msg);
            let d = block_on(sink.finish(msg.clone()));
            assert_eq!(
                d,
                MessageDecision::PerRecipient(vec![Decision::Accept; 3]),
                "{name}"
            );
            let f = fake.lock().unwrap();
            assert_eq!(
                f.ended,
                [b"Received: by relay.test\r\nSubject: m\r\n\r\nboth\r\n".to_vec()],
                "{name}"
            );
            let seen = seen.lock().unwrap();
            let locals = vec![
                "me@local.example".to_owned(),
                "her@local.example".to_owned(),
            ];
            match mode {
                Mode::Buffer | Mode::UpTo(_) => {
                    assert_eq!(
                        seen.messages,
                        [(b"Subject: m\r\n\r\nboth\r\n".to_vec(), locals)],
                        "{name}"
                    );
                    assert_eq!(msg.deliveries()[1], "local:whole");
                }
                Mode::Discard => assert_eq!(seen.messages, [(Vec::new(), locals)]),
                Mode::Stream => {
                    assert_eq!(seen.streamed, b"Subject: m\r\n\r\nboth\r\n");
                    assert!(seen.finished && seen.aborted.is_none());
                    assert_eq!(msg.deliveries()[1], "local:stream");
                }
                Mode::Refuse => unreachable!(),
            }
            assert!(msg.deliveries()[0].starts_with("relay:"), "{name}");
        }
    }

    /// The local handler's refusal refuses the message before DATA goes
    /// upstream; its cap refuses it (`552 5.3.4`) and cuts the upstream
    /// body off.
    #[test]
    fn mixed_transaction_local_refusal_and_cap() {
        let (router, fake, _) = mixed("refuse", Mode::Refuse);
        let s = dialing("r1");
        let env = transaction(&router, &s, &["me@local.example", "you@remote.example"]);
        match block_on(router.body(&s, &env, &message("r1-1"))) {
            Body::Refuse(r) => assert_eq!(r, Reply::TEMPORARY_FAILURE),
            other => panic!("{other:?}"),
        }
        assert!(!fake.lock().unwrap().commands.iter().any(|c| c == "DATA"));
        // The next transaction resets the upstream one.
        let _ = transaction(&router, &s, &["you@remote.example"]);
        assert!(fake.lock().unwrap().commands.iter().any(|c| c == "RSET"));

        let (router, fake, seen) = mixed("cap", Mode::UpTo(10));
        let s = dialing("k1");
        let env = transaction(&router, &s, &["me@local.example", "you@remote.example"]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("k1-1"))));
        block_on(sink.write(b"S: 1\r\n")).unwrap();
        let refusal = block_on(sink.write(b"more than ten octets\r\n")).unwrap_err();
        assert_eq!(refusal, Reply::MESSAGE_TOO_BIG);
        sink.abort(AbortReason::Refused);
        let f = fake.lock().unwrap();
        assert!(f.ended.is_empty() && f.closed == 1);
        assert!(seen.lock().unwrap().messages.is_empty());
    }

    /// The upstream's refusal of DATA or of the body is the client's, and
    /// then nothing is delivered locally.
    #[test]
    fn upstream_refusals_deliver_nothing_locally() {
        let (router, fake, seen) = mixed("nodata", Mode::Stream);
        fake.lock().unwrap().data_reply = Some("554 no thanks");
        let s = dialing("n1");
        let env = transaction(&router, &s, &["me@local.example", "you@remote.example"]);
        match block_on(router.body(&s, &env, &message("n1-1"))) {
            Body::Refuse(r) => {
                assert_eq!(
                    (r.code(), r.enhanced()),
                    (554, Some(EnhancedCode::new(5, 0, 0)))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.lock().unwrap().aborted, Some(AbortReason::Refused));

        let (router, fake, seen) = mixed("noend", Mode::Stream);
        fake.lock().unwrap().end_reply = Some("550 5.7.1 spam");
        let s = dialing("e1");
        let env = transaction(&router, &s, &["me@local.example", "you@remote.example"]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("e1-1"))));
        block_on(sink.write(b"Subject: s\r\n\r\nspam\r\n")).unwrap();
        let d = block_on(sink.finish(Arc::new(message("e1-1"))));
        match d {
            MessageDecision::All(Decision::Reply(r)) => assert_eq!(r.code(), 550),
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap();
        assert!(!seen.finished && seen.aborted == Some(AbortReason::Refused));
        // Deferred: 451 4.4.1, the connection kept for the next one.
        fake.lock().unwrap().end_reply = Some("452 4.3.1 full");
        let env = transaction(&router, &s, &["you@remote.example"]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("e1-2"))));
        block_on(sink.write(b"x\r\n")).unwrap();
        let d = block_on(sink.finish(Arc::new(message("e1-2"))));
        assert_eq!(d, MessageDecision::All(Decision::Reply(unavailable())));
        assert_eq!(fake.lock().unwrap().connections, 1);
    }

    /// Issue 17: an LMTP store behind an LMTP front: each recipient gets
    /// the store's own answer to the body, one left without an answer
    /// (the store was lost) `451 4.4.1`.
    #[test]
    fn an_lmtp_store_answers_each_recipient_of_an_lmtp_client() {
        let (mut up, fake) = fake("lmtp-each");
        up.lmtp = true;
        fake.lock().unwrap().lmtp_end = vec![
            "250 2.0.0 <a@remote.example> Saved",
            "552 5.2.2 <b@remote.example> Quota exceeded",
        ];
        let router = Router::new(Vec::new(), None::<()>, Some(up), Vec::new());
        let s = SessionInfo {
            lmtp: true,
            ..dialing("l1")
        };
        let env = transaction(&router, &s, &["a@remote.example", "b@remote.example"]);
        let msg = message("l1-1");
        let mut sink = stream(block_on(router.body(&s, &env, &msg)));
        block_on(sink.write(b"Subject: q\r\n\r\nbig\r\n")).unwrap();
        let msg = Arc::new(msg);
        let d = block_on(sink.finish(msg.clone()));
        let text = |d: &Decision| match d {
            Decision::Reply(r) => r.to_string(),
            Decision::Accept => "accept".into(),
        };
        match &d {
            MessageDecision::PerRecipient(v) => assert_eq!(
                v.iter().map(text).collect::<Vec<_>>(),
                [
                    "250 2.0.0 <a@remote.example> Saved\r\n",
                    "552 5.2.2 <b@remote.example> Quota exceeded\r\n"
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            msg.deliveries(),
            ["relay:lmtp-each.fake:25 (250 2.0.0 <a@remote.example> Saved)"]
        );
        assert!(
            fake.lock()
                .unwrap()
                .commands
                .iter()
                .any(|c| c.starts_with("LHLO")),
            "LHLO, not EHLO"
        );

        // One answer for two recipients: the store is gone after it.
        fake.lock().unwrap().lmtp_end = vec!["250 2.0.0 <a@remote.example> Saved"];
        let env = transaction(&router, &s, &["a@remote.example", "b@remote.example"]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("l1-2"))));
        block_on(sink.write(b"x\r\n")).unwrap();
        match block_on(sink.finish(Arc::new(message("l1-2")))) {
            MessageDecision::PerRecipient(v) => {
                assert!(matches!(&v[0], Decision::Reply(r) if r.code() == 250));
                assert_eq!(v[1], Decision::Reply(unavailable()));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Issue 17: behind an SMTP front, a transaction toward an LMTP store
    /// relays one recipient and holds no other (`452 4.5.3` for the next,
    /// relayed or local; a refused one does not count); the store's answer
    /// is the message's. Local recipients go in transactions of their own.
    #[test]
    fn an_smtp_client_relays_one_recipient_per_transaction_to_an_lmtp_store() {
        let (mut up, fake) = fake("lmtp-one");
        up.lmtp = true;
        fake.lock().unwrap().lmtp_end = vec!["552 5.2.2 <b@remote.example> Quota exceeded"];
        let (router, fake, seen) = mixed_over(up, fake, Mode::Stream);
        let s = dialing("o1");
        // RCPTs with the reply code each wants (250: accepted).
        let envelope = |rcpts: &[(&str, u16)]| {
            let options = MailOptions::default();
            let d = block_on(router.mail(&s, "a@x.example", &options));
            assert_eq!(d, Decision::Accept);
            let mut env = Envelope {
                from: "a@x.example".into(),
                options,
                recipients: Vec::new(),
            };
            for &(to, want) in rcpts {
                let rcpt = Recipient {
                    address: to.into(),
                    notify: None,
                    orcpt: None,
                };
                match block_on(router.rcpt(&s, &env, &rcpt)) {
                    Decision::Accept if want == 250 => env.recipients.push(rcpt),
                    Decision::Reply(r) if want == 452 => {
                        assert_eq!(r, Reply::TOO_MANY_RECIPIENTS, "{to}")
                    }
                    Decision::Reply(r) => assert_eq!(r.code(), want, "{to}"),
                    d => panic!("{to}: {d:?}"),
                }
            }
            env
        };
        let env = envelope(&[
            ("unknown@remote.example", 550),
            ("b@remote.example", 250),
            ("c@remote.example", 452),
            ("me@local.example", 452),
        ]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("o1-1"))));
        block_on(sink.write(b"Subject: q\r\n\r\nbig\r\n")).unwrap();
        match block_on(sink.finish(Arc::new(message("o1-1")))) {
            MessageDecision::All(Decision::Reply(r)) => {
                assert_eq!(
                    (r.code(), r.enhanced()),
                    (552, Some(EnhancedCode::new(5, 2, 2)))
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.lock().unwrap().aborted, None, "no local part");
        // Local first: a relayed recipient waits too; the local copy alone.
        let env = envelope(&[("me@local.example", 250), ("c@remote.example", 452)]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("o1-2"))));
        block_on(sink.write(b"x\r\n")).unwrap();
        let d = block_on(sink.finish(Arc::new(message("o1-2"))));
        assert_eq!(d, MessageDecision::All(Decision::Accept));
        assert!(seen.lock().unwrap().finished);
        // The next transaction relays again (its one recipient).
        fake.lock().unwrap().lmtp_end = vec!["250 2.0.0 <c@remote.example> Saved"];
        let env = transaction(&router, &s, &["c@remote.example"]);
        let mut sink = stream(block_on(router.body(&s, &env, &message("o1-3"))));
        block_on(sink.write(b"x\r\n")).unwrap();
        let d = block_on(sink.finish(Arc::new(message("o1-3"))));
        assert_eq!(d, MessageDecision::All(Decision::Accept));
    }
}
