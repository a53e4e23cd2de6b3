//! Relaying (feature `relay`): forward mail to an upstream SMTP server with
//! [`crate::client`], recipient by recipient, and route each recipient to a
//! local store or the relay (Python smtpd's `PureProxy` and
//! `MailmanProxy`, Pike's `*` domain).
//!
//! [`Router`] is a [`Handler`]: put it in front of any local handler. The
//! upstream session runs on the `blocking` thread pool over `std::net` (and
//! rustls for STARTTLS), so the relay works unchanged on every adapter.
//!
//! What the client sees is what the upstream said:
//! - each relayed `RCPT` is proxied as it arrives: the upstream's refusal is
//!   the client's refusal, and a recipient the upstream refused is never
//!   covered by a later `250`;
//! - the body goes upstream byte for byte (our `Received:` header
//!   prepended, never `Return-Path:` or `Delivered-To:`), with
//!   `SMTPUTF8`, `BODY=` and the DSN parameters passed on;
//! - an unreachable upstream, a `4xx`, a timeout or a lost connection gives
//!   `451 4.4.1`, and then nothing is delivered: local recipients of the
//!   same transaction get no copy either (all or nothing). The upstream
//!   goes first; if it accepts and a local delivery then fails, the client
//!   is told to retry the whole message (a duplicate upstream, never a
//!   loss).
//!
//! No open relay: a recipient outside the served domains is relayed only
//! when no domain is configured at all (relay everything), the session
//! authenticated, or the client's address (the PROXY-protocol one when
//! that is on) is in an allowed network; otherwise `550 5.7.1`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, RootCertStore, StreamOwned};

use crate::client::{
    Client, ClientAuth, ClientConfig, ClientError, ClientEvent, Envelope as UpEnvelope,
    Recipient as UpRecipient, TlsPolicy,
};
use crate::command::BodyType;
use crate::handler::{
    Envelope, Handler, MailOptions, Message, MessageDecision, Recipient, SessionInfo,
};
use crate::reply::{EnhancedCode, Reply};
use crate::sasl::Credentials;
use crate::server::{CloseReason, Decision, HeloKind};
use crate::store::DomainPolicy;

/// How to secure the connection to the upstream.
#[derive(Clone, Default)]
pub enum UpstreamTls {
    /// No STARTTLS (plaintext).
    #[default]
    None,
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
    /// STARTTLS policy.
    pub tls: UpstreamTls,
    /// AUTH PLAIN/LOGIN credentials (sent only under TLS).
    pub auth: Option<ClientAuth>,
    /// Bound on every wait: connecting, each reply, each write.
    pub timeout: Duration,
}

impl Upstream {
    /// `address` (`host:port`) in plaintext, without AUTH, with a 5-minute bound per wait.
    pub fn new(address: impl Into<String>, hello_name: impl Into<String>) -> Self {
        Upstream {
            address: address.into(),
            hello_name: hello_name.into(),
            tls: UpstreamTls::None,
            auth: None,
            timeout: Duration::from_secs(300),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.hello_name.clone());
        c.tls = match self.tls {
            UpstreamTls::None => TlsPolicy::None,
            _ => TlsPolicy::Required,
        };
        c.auth = self.auth.clone();
        // The client refuses AUTH without TLS unless told otherwise; with
        // `UpstreamTls::None` and credentials, the operator chose plaintext.
        c.allow_plaintext_auth = matches!(self.tls, UpstreamTls::None);
        let t = self.timeout;
        c.timeouts.greeting = t;
        c.timeouts.command = t;
        c.timeouts.data_init = t;
        c.timeouts.data_block = t;
        c.timeouts.data_end = t;
        c
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
            UpstreamTls::Encrypt => builder
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
    Protocol(ClientError),
    Misuse(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Protocol(e) => write!(f, "{e}"),
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

enum Io {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => &s.sock,
        }
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(s) => s.flush(),
        }
    }
}

/// A blocking session with the upstream: a socket driving a [`Client`].
struct Conn {
    io: Option<Io>,
    client: Client,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    host: String,
}

impl Conn {
    /// Connects and waits until the client is ready for a transaction.
    fn open(up: &Upstream) -> Result<Conn, Failure> {
        let addrs = up.address.to_socket_addrs().map_err(Failure::Io)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, up.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(Failure::Io(last))?;
        let _ = tcp.set_nodelay(true);
        tcp.set_write_timeout(Some(up.timeout))
            .map_err(Failure::Io)?;
        let host = up
            .address
            .rsplit_once(':')
            .map_or(up.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut conn = Conn {
            io: Some(Io::Plain(tcp)),
            client: Client::new(up.client_config(), Instant::now()),
            timeout: up.timeout,
            tls: up.tls_config(),
            host,
        };
        match conn.event()? {
            ClientEvent::Ready { .. } => Ok(conn),
            other => Err(Failure::Misuse(format!("unexpected {other:?}"))),
        }
    }

    fn io(&mut self) -> Result<&mut Io, Failure> {
        self.io
            .as_mut()
            .ok_or_else(|| Failure::Misuse("connection gone".into()))
    }

    /// Writes what the client holds.
    fn flush(&mut self) -> Result<(), Failure> {
        while self.client.wants_write() {
            let out = self.client.transmit().to_vec();
            let io = self.io()?;
            let n = io.write(&out).map_err(Failure::Io)?;
            if n == 0 {
                return Err(Failure::Io(io::ErrorKind::WriteZero.into()));
            }
            self.client.transmitted(n);
        }
        self.io()?.flush().map_err(Failure::Io)
    }

    /// Drives the session until the client has an event (TLS handshakes
    /// done here); errors are reported as [`Failure::Protocol`].
    fn event(&mut self) -> Result<ClientEvent, Failure> {
        loop {
            if let Some(ev) = self.client.poll_event() {
                match ev {
                    ClientEvent::StartTls => {
                        self.flush()?;
                        self.start_tls()?;
                        continue;
                    }
                    ClientEvent::Error(e) => {
                        let _ = self.flush();
                        return Err(Failure::Protocol(e));
                    }
                    ev => return Ok(ev),
                }
            }
            self.flush()?;
            if self.client.is_closed() {
                return Ok(ClientEvent::Closed);
            }
            let now = Instant::now();
            let wait = self
                .client
                .poll_timeout()
                .map_or(self.timeout, |t| t.saturating_duration_since(now))
                .max(Duration::from_millis(1));
            let mut buf = [0u8; 16 * 1024];
            let io = self.io()?;
            io.tcp().set_read_timeout(Some(wait)).map_err(Failure::Io)?;
            match io.read(&mut buf) {
                Ok(0) => self.client.receive_eof(),
                Ok(n) => {
                    let mut rest = buf.get(..n).unwrap_or_default();
                    while !rest.is_empty() {
                        let k = self.client.receive(rest, Instant::now());
                        if k == 0 {
                            return Err(Failure::Misuse("upstream input not taken".into()));
                        }
                        rest = rest.get(k..).unwrap_or_default();
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.client.handle_timeout(Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    fn start_tls(&mut self) -> Result<(), Failure> {
        let Some(config) = self.tls.clone() else {
            self.client.tls_failed();
            return Ok(());
        };
        let Some(Io::Plain(mut tcp)) = self.io.take() else {
            return Err(Failure::Misuse("STARTTLS twice".into()));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| Failure::Misuse(format!("bad upstream name: {e}")))?;
        let mut tls = ClientConnection::new(config, name)
            .map_err(|e| Failure::Misuse(format!("TLS setup: {e}")))?;
        tcp.set_read_timeout(Some(self.timeout))
            .map_err(Failure::Io)?;
        let deadline = Instant::now() + self.timeout;
        while tls.is_handshaking() {
            if Instant::now() >= deadline {
                self.client.tls_failed();
                return Err(Failure::Io(io::ErrorKind::TimedOut.into()));
            }
            if let Err(e) = tls.complete_io(&mut tcp) {
                tracing::info!(error = %e, "upstream TLS handshake failed");
                self.client.tls_failed();
                return Err(Failure::Io(e));
            }
        }
        self.io = Some(Io::Tls(Box::new(StreamOwned::new(tls, tcp))));
        self.client
            .tls_established(Instant::now())
            .map_err(|e| Failure::Misuse(e.to_string()))
    }

    /// Ends the session politely (best effort).
    fn quit(mut self) {
        if self.client.quit(Instant::now()).is_ok() {
            let _ = self.event();
        }
    }
}

/// Per-session routing state.
#[derive(Default)]
struct SessionState {
    /// The upstream session, once a recipient was relayed.
    upstream: Option<Box<Conn>>,
    /// Whether MAIL went upstream for the current transaction.
    mail_sent: bool,
    /// The upstream refused MAIL: every relayed recipient gets this.
    mail_refused: Option<Reply>,
    /// The sender and parameters of the current transaction.
    from: String,
    options: MailOptions,
    /// Route of each recipient accepted in this transaction, in order.
    routes: Vec<Route>,
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
/// served domain (`postmaster` always is). Everything else is relayed when
/// an upstream is given and relaying is allowed, else refused with `550
/// 5.7.1`. Without an upstream, `Router` behaves like [`DomainPolicy`].
pub struct Router<L> {
    domains: DomainPolicy<()>,
    local: Option<L>,
    upstream: Option<Arc<Upstream>>,
    networks: Vec<ipnet::IpNet>,
    sessions: Mutex<HashMap<String, SessionState>>,
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
    /// Serves `domains` (none or `*`: any) with `local` (if any), relays
    /// through `upstream` (if any) for clients in `networks` (and
    /// authenticated ones).
    pub fn new(
        domains: Vec<String>,
        local: Option<L>,
        upstream: Option<Upstream>,
        networks: Vec<ipnet::IpNet>,
    ) -> Self {
        Router {
            domains: DomainPolicy::new(domains, ()),
            local,
            upstream: upstream.map(Arc::new),
            networks,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, SessionState>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_state(&self, id: &str) -> SessionState {
        self.sessions().remove(id).unwrap_or_default()
    }

    fn put_state(&self, id: &str, state: SessionState) {
        self.sessions().insert(id.to_owned(), state);
    }

    /// Where `address` goes, or the refusal.
    fn route(&self, session: &SessionInfo, address: &str) -> Result<Route, Reply> {
        let configured = !self.domains.domains.is_empty();
        let served = self.domains.serves(address);
        if self.local.is_some() && served && (configured || self.upstream.is_none()) {
            return Ok(Route::Local);
        }
        if self.upstream.is_none() {
            return Err(Reply::RELAY_DENIED);
        }
        let in_network = session
            .peer
            .remote
            .map(|a| a.ip())
            .is_some_and(|ip: IpAddr| self.networks.iter().any(|n| n.contains(&ip)));
        if !configured || served || session.authenticated.is_some() || in_network {
            Ok(Route::Relay)
        } else {
            Err(Reply::RELAY_DENIED)
        }
    }

    /// Proxies one RCPT: connects and sends MAIL first if needed.
    async fn relay_rcpt(&self, id: &str, to: &Recipient) -> Decision {
        let Some(up) = self.upstream.clone() else {
            return Reply::RELAY_DENIED.into();
        };
        let mut state = self.take_state(id);
        let to = to.clone();
        let (state, decision) = blocking::unblock(move || {
            let d = rcpt_upstream(&up, &mut state, &to);
            (state, d)
        })
        .await;
        self.put_state(id, state);
        decision
    }
}

/// Blocking: MAIL (once) and this RCPT upstream; the upstream's reply.
fn rcpt_upstream(up: &Upstream, state: &mut SessionState, to: &Recipient) -> Decision {
    if let Some(r) = &state.mail_refused {
        return Decision::Reply(r.clone());
    }
    let result = (|| -> Result<Reply, Failure> {
        if state.upstream.is_none() {
            state.upstream = Some(Box::new(Conn::open(up)?));
            state.mail_sent = false;
        }
        let conn = state
            .upstream
            .as_mut()
            .ok_or_else(|| Failure::Misuse("no upstream".into()))?;
        let now = Instant::now();
        if !state.mail_sent {
            conn.client
                .begin_mail(&up_envelope(&state.from, &state.options), now)
                .map_err(|e| Failure::Misuse(e.to_string()))?;
            state.mail_sent = true;
        }
        let index = conn
            .client
            .add_recipient(
                &UpRecipient {
                    address: to.address.clone(),
                    notify: to.notify,
                    orcpt: to.orcpt.clone(),
                },
                now,
            )
            .map_err(|e| Failure::Misuse(e.to_string()))?;
        loop {
            match conn.event()? {
                ClientEvent::Recipient { index: i, reply } if i == index => return Ok(reply),
                // MAIL refused: every recipient of this transaction gets its reply.
                ClientEvent::MessageRejected { reply, .. } => {
                    state.mail_refused = Some(with_enhanced(reply.clone()));
                    return Ok(reply);
                }
                ClientEvent::Closed => {
                    return Err(Failure::Protocol(ClientError::UnexpectedEof));
                }
                _ => {}
            }
        }
    })();
    match result {
        Ok(reply) if reply.is_positive() => Decision::Accept,
        Ok(reply) => Decision::Reply(with_enhanced(reply)),
        Err(e) => {
            tracing::info!(error = %e, upstream = %up.address, "relay RCPT failed");
            if let Some(c) = state.upstream.take() {
                drop(c);
            }
            Decision::Reply(unavailable())
        }
    }
}

/// The upstream envelope for our transaction's sender and parameters.
fn up_envelope(from: &str, o: &MailOptions) -> UpEnvelope {
    let mut e = UpEnvelope::new((!from.is_empty()).then_some(from), Vec::<String>::new());
    e.size = o.size;
    e.body = (o.body != BodyType::SevenBit).then_some(o.body);
    e.smtputf8 = o.smtputf8;
    e.ret = o.ret;
    e.envid = o.envid.clone();
    e.requiretls = o.requiretls;
    e
}

/// Blocking: sends the body upstream; the upstream's final reply, or why it failed.
fn data_upstream(conn: &mut Conn, message: &Message) -> Result<Reply, Failure> {
    let now = Instant::now();
    conn.client
        .close_recipients(now)
        .map_err(|e| Failure::Misuse(e.to_string()))?;
    let mut parts = [message.trace.as_slice(), message.data.as_slice()];
    loop {
        for part in &mut parts {
            while !part.is_empty() && conn.client.wants_body() {
                let n = conn
                    .client
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
        conn.flush()?;
        if !conn.client.wants_body() {
            // Waiting for the 354 (or refused): one event moves it on.
            match conn.event()? {
                ClientEvent::MessageRejected { reply, .. } => return Ok(reply),
                ClientEvent::Closed => return Err(Failure::Protocol(ClientError::UnexpectedEof)),
                _ => {}
            }
        }
    }
    conn.client
        .end_body(Instant::now())
        .map_err(|e| Failure::Misuse(e.to_string()))?;
    loop {
        match conn.event()? {
            ClientEvent::MessageAccepted { reply, .. }
            | ClientEvent::MessageRejected { reply, .. } => {
                return Ok(reply);
            }
            ClientEvent::Closed => return Err(Failure::Protocol(ClientError::UnexpectedEof)),
            _ => {}
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
        // A new transaction: an open upstream one is abandoned (RSET).
        let mut state = self.take_state(&session.id);
        if state.mail_sent {
            if let Some(mut conn) = state.upstream.take() {
                state.upstream = blocking::unblock(move || {
                    // Nothing to reset when the upstream already ended it.
                    let _ = conn.client.reset(Instant::now());
                    conn.flush().ok()?;
                    Some(conn)
                })
                .await;
            }
        }
        state.mail_sent = false;
        state.mail_refused = None;
        state.from = from.to_owned();
        state.options = options.clone();
        state.routes.clear();
        self.put_state(&session.id, state);
        Decision::Accept
    }

    async fn rcpt(&self, session: &SessionInfo, envelope: &Envelope, to: &Recipient) -> Decision {
        let decision = match self.route(session, &to.address) {
            Err(reply) => return reply.into(),
            Ok(Route::Local) => match &self.local {
                Some(l) => l.rcpt(session, envelope, to).await,
                None => Reply::RELAY_DENIED.into(),
            },
            Ok(Route::Relay) => self.relay_rcpt(&session.id, to).await,
        };
        if matches!(decision, Decision::Accept) && self.upstream.is_some() {
            let route = self.route(session, &to.address).unwrap_or(Route::Local);
            let mut sessions = self.sessions();
            let state = sessions.entry(session.id.clone()).or_default();
            state.routes.truncate(envelope.recipients.len());
            state.routes.push(route);
        }
        decision
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
        if self.upstream.is_none() {
            // Every accepted recipient is local.
            return match &self.local {
                Some(l) => l.message(session, envelope, message).await,
                None => MessageDecision::All(Decision::Accept),
            };
        }
        let mut state = self.take_state(&session.id);
        let routes = std::mem::take(&mut state.routes);
        let relayed = routes.contains(&Route::Relay);
        if relayed {
            let msg = message.clone();
            let conn = state.upstream.take();
            let (conn, result) = blocking::unblock(move || match conn {
                Some(mut c) => {
                    let r = data_upstream(&mut c, &msg);
                    (r.is_ok().then_some(c), r)
                }
                None => (None, Err(Failure::Misuse("no upstream session".into()))),
            })
            .await;
            state.upstream = conn;
            state.mail_sent = false;
            match result {
                Ok(reply) if reply.is_positive() => {}
                Ok(reply) if reply.code() >= 500 => {
                    self.put_state(&session.id, state);
                    return MessageDecision::All(Decision::Reply(with_enhanced(reply)));
                }
                Ok(reply) => {
                    tracing::info!(code = reply.code(), "upstream deferred the message");
                    self.put_state(&session.id, state);
                    return MessageDecision::All(Decision::Reply(unavailable()));
                }
                Err(e) => {
                    tracing::info!(error = %e, "relaying the message failed");
                    self.put_state(&session.id, state);
                    return MessageDecision::All(Decision::Reply(unavailable()));
                }
            }
        }
        self.put_state(&session.id, state);
        let local: Vec<Recipient> = envelope
            .recipients
            .iter()
            .zip(routes.iter().chain(std::iter::repeat(&Route::Local)))
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
        let state = self.take_state(&session.id);
        if let Some(conn) = state.upstream {
            blocking::unblock(move || conn.quit()).detach();
        }
    }
}
