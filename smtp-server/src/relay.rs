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
//! - an unreachable upstream, a `4xx`, a timeout or a lost connection gives
//!   `451 4.4.1`, and then nothing is delivered: local recipients of the
//!   same transaction get no copy either (all or nothing). Once a relayed
//!   recipient was accepted, losing the upstream transaction fails the
//!   rest of it (later `RCPT`s and the body get `451 4.4.1`): a `250`
//!   never covers a recipient that was not handed on. The upstream goes
//!   first; if it accepts and a local delivery then fails, the client is
//!   told to retry the whole message (a duplicate upstream, never a loss);
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

use crate::dial::{ClientLink, ClientTls, DialRequest, Dialer};

use crate::handler::{
    Body, Envelope, Handler, MailOptions, Message, MessageDecision, Recipient, SessionInfo,
};
use crate::store::DomainPolicy;
use smtp_proto::client::{
    self, Client, ClientAuth, ClientConfig, ClientError, ClientEvent, Misuse, TlsPolicy,
};
use smtp_proto::command::BodyType;
use smtp_proto::reply::{EnhancedCode, Reply};
use smtp_proto::sasl::Credentials;
use smtp_proto::server::{CloseReason, Decision, HeloKind};

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
    /// `host:port`.
    pub address: String,
    /// Our name in EHLO.
    pub hello_name: String,
    /// STARTTLS policy (opportunistic by default).
    pub tls: UpstreamTls,
    /// AUTH PLAIN/LOGIN credentials (sent only under TLS unless
    /// [`Upstream::auth_insecure`]).
    pub auth: Option<ClientAuth>,
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
        c.tls = match self.tls {
            _ if plain => TlsPolicy::None,
            UpstreamTls::None => TlsPolicy::None,
            UpstreamTls::Opportunistic => TlsPolicy::Opportunistic,
            UpstreamTls::Encrypt | UpstreamTls::Verify(_) => TlsPolicy::Required,
        };
        c.auth = self.auth.clone();
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
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
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
        match self.link.next_event().await {
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

    /// A new transaction when none is open upstream.
    fn clear(&mut self) {
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

/// Every session's routing state, and when to look for stale ones next.
struct States {
    map: HashMap<String, SessionState>,
    next_sweep: Instant,
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
    local: Option<L>,
    upstream: Option<Arc<Upstream>>,
    networks: Vec<crate::accept::Cidr>,
    sessions: Mutex<States>,
    /// A session state unused this long belongs to a session that is gone
    /// (its `disconnect` never came): it is dropped, its upstream closed.
    stale_after: Duration,
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
            local,
            upstream: upstream.map(Arc::new),
            networks,
            sessions: Mutex::new(States {
                map: HashMap::new(),
                next_sweep: Instant::now(),
            }),
            stale_after,
        }
    }

    /// How long an unused session state is kept before it is taken for
    /// the state of a session that ended without `disconnect` (default:
    /// twice the longer of 5 minutes and the upstream's timeout). Set it
    /// above the server's command and data timeouts.
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.stale_after = d;
        self
    }

    fn sessions(&self) -> MutexGuard<'_, States> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_state(&self, id: &str) -> SessionState {
        self.sessions().map.remove(id).unwrap_or_default()
    }

    /// Puts a session's state back; now and then (every quarter of
    /// `stale_after`, not at every hook) drops the stale ones.
    fn put_state(&self, id: &str, mut state: SessionState) {
        let now = Instant::now();
        state.touched = now;
        let stale: Vec<SessionState> = {
            let mut states = self.sessions();
            states.map.insert(id.to_owned(), state);
            if now < states.next_sweep {
                return;
            }
            states.next_sweep = now + self.stale_after / 4;
            let gone: Vec<String> = states
                .map
                .iter()
                .filter(|(_, s)| now.saturating_duration_since(s.touched) > self.stale_after)
                .map(|(k, _)| k.clone())
                .collect();
            gone.iter().filter_map(|k| states.map.remove(k)).collect()
        };
        for s in stale {
            tracing::warn!("dropping the relay state of a session that ended without disconnect");
            close_state(s);
        }
    }

    /// Whether the client may relay to domains we do not serve.
    fn trusted(&self, session: &SessionInfo) -> bool {
        if session.authenticated.is_some() {
            return true;
        }
        match session.peer.remote.map(|a| a.ip()) {
            // A Unix-domain socket: a local client.
            None => true,
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
        let step = rcpt_upstream(dialer, upstream, &mut state.up, &from, &options, to);
        let decision = Box::pin(step).await;
        self.put_state(&session.id, state);
        decision
    }
}

/// The upstream's address, for logs.
fn upstream_name(up: &Option<Arc<Upstream>>) -> &str {
    up.as_deref().map_or("", |u| u.address.as_str())
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
    from: &str,
    options: &MailOptions,
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
                .begin_mail(&up_envelope(from, options), now)
                .map_err(Failure::Usage)?;
            st.mail_sent = true;
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
/// (`ENVID` decoded from xtext: the client encodes it once).
fn up_envelope(from: &str, o: &MailOptions) -> client::Envelope {
    let mut e = client::Envelope::new((!from.is_empty()).then_some(from), Vec::<String>::new());
    e.size = o.size;
    e.body = (o.body != BodyType::SevenBit).then_some(o.body);
    e.smtputf8 = o.smtputf8;
    e.ret = o.ret;
    e.envid = o.envid.as_deref().and_then(smtp_proto::parse::decode_xtext);
    e.requiretls = o.requiretls;
    e
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

/// Sends the body upstream; the upstream's final reply, or why it failed.
async fn data_upstream(conn: &mut Conn, message: &Message) -> Result<Reply, Failure> {
    conn.client()
        .close_recipients(Instant::now())
        .map_err(|e| Failure::Misuse(e.to_string()))?;
    let mut parts = [message.trace.as_slice(), message.data.as_slice()];
    loop {
        for part in &mut parts {
            while !part.is_empty() && conn.client().wants_body() {
                let n = conn
                    .client()
                    .push_body(part, Instant::now())
                    .map_err(|e| Failure::Misuse(e.to_string()))?;
                if n == 0 {
                    break;
                }
                *part = part.get(n..).unwrap_or_default();
            }
        }
        if parts.iter().all(|p| p.is_empty()) {
            break;
        }
        conn.flush().await?;
        if !conn.client().wants_body() {
            // Waiting for the 354 (or refused): one event moves it on.
            if let ClientEvent::MessageRejected { reply, .. } = conn.event().await? {
                return Ok(reply);
            }
        }
    }
    conn.client()
        .end_body(Instant::now())
        .map_err(|e| Failure::Misuse(e.to_string()))?;
    loop {
        match conn.event().await? {
            ClientEvent::MessageAccepted { reply, .. }
            | ClientEvent::MessageRejected { reply, .. } => {
                return Ok(reply);
            }
            _ => {}
        }
    }
}

/// The body of a transaction whose relayed recipients were accepted: the
/// upstream's acceptance when it went upstream, else our reply.
async fn message_upstream(
    up: &Upstream,
    st: &mut UpState,
    message: &Message,
) -> Result<Reply, Reply> {
    if st.lost || !st.mail_sent || st.accepted == 0 {
        st.fail(
            &Failure::Misuse("upstream transaction lost".into()),
            up,
            "DATA",
        );
        return Err(unavailable());
    }
    let Some(conn) = st.conn.as_mut() else {
        return Err(unavailable());
    };
    let result = data_upstream(conn, message).await;
    st.mail_sent = false;
    st.accepted = 0;
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

impl<L: Handler> Handler for Router<L> {
    fn wants_trace(&self) -> bool {
        // A relayed message carries our Received: header upstream.
        self.upstream.is_some() || self.local.as_ref().is_some_and(L::wants_trace)
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
        match &self.local {
            // Relayed bodies are sent upstream whole for now.
            Some(l) if self.upstream.is_none() => l.body(session, envelope, message).await,
            _ => Body::Buffer,
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
        let Some(upstream) = self.upstream.as_deref() else {
            // Every accepted recipient is local.
            return match &self.local {
                Some(l) => l.message(session, envelope, message).await,
                None => MessageDecision::All(Decision::Accept),
            };
        };
        let mut state = self.take_state(&session.id);
        let mut routes = std::mem::take(&mut state.routes);
        if routes.len() != envelope.recipients.len() {
            // The state was lost (swept): route again; a relayed recipient
            // then finds no upstream transaction and the message fails.
            routes = envelope
                .recipients
                .iter()
                .map(|r| self.route(session, &r.address).unwrap_or(Route::Relay))
                .collect();
        }
        let relayed = routes.contains(&Route::Relay);
        if relayed {
            let verdict = Box::pin(message_upstream(upstream, &mut state.up, message)).await;
            self.put_state(&session.id, state);
            match verdict {
                Ok(reply) => message.record_delivery(format!(
                    "relay:{} ({} {}{})",
                    upstream_name(&self.upstream),
                    reply.code(),
                    reply
                        .enhanced()
                        .map(|e| format!("{e} "))
                        .unwrap_or_default(),
                    reply.text().lines().next().unwrap_or("")
                )),
                Err(reply) => return MessageDecision::All(Decision::Reply(reply)),
            }
        } else {
            self.put_state(&session.id, state);
        }
        let local: Vec<Recipient> = envelope
            .recipients
            .iter()
            .zip(routes.iter())
            .filter(|(_, r)| **r == Route::Local)
            .map(|(rcpt, _)| rcpt.clone())
            .collect();
        if local.is_empty() {
            return MessageDecision::All(Decision::Accept);
        }
        let Some(l) = &self.local else {
            return MessageDecision::All(Decision::Accept);
        };
        let local_env = Envelope {
            from: envelope.from.clone(),
            options: envelope.options.clone(),
            recipients: local,
        };
        let local_decision = l.message(session, &local_env, message).await;
        if !relayed {
            return local_decision;
        }
        // Merge per recipient: relayed ones got the upstream's acceptance.
        let mut local_each = match local_decision {
            MessageDecision::All(d) => vec![d; local_env.recipients.len()],
            MessageDecision::PerRecipient(v) => v,
        }
        .into_iter();
        MessageDecision::PerRecipient(
            routes
                .iter()
                .map(|r| match r {
                    Route::Relay => Decision::Accept,
                    Route::Local => local_each.next().unwrap_or(Decision::Accept),
                })
                .collect(),
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
        // A Unix-socket client is local.
        assert!(ok(&SessionInfo::default(), "a@victim.example"));
    }
}
