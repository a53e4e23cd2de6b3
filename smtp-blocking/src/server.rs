//! The high level: a [`Server`] builder with listeners, limits and graceful shutdown.

use std::io;
use std::net::{SocketAddr, TcpStream};
#[cfg(unix)]
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use rustls::ServerConfig;
use smtp_proto::reply::Reply;
use smtp_proto::server::PeerInfo;
#[cfg(unix)]
use smtp_server::accept::SocketFile;
use smtp_server::accept::{
    ConnectionLimiter, LAST_WORDS, Listen, PeekRead, Protocol, Proxied, ProxyFront, ServerOptions,
    SessionConfigs, Slot, Stop, implicit_tls_outcome,
};
use smtp_server::activation::Socket as Inherited;
use smtp_server::handler::Handler;

use crate::connection::{Connection, Socket, bound, handshake};
use crate::pool::Pool;
use crate::stop::{StopBus, Waiter};

/// How long a session thread waits for the next connection before it ends.
const IDLE_THREAD_KEEP: Duration = Duration::from_secs(10);

pub use smtp_server::accept::{DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS};

const WAKE: Token = Token(usize::MAX);

/// Builds an SMTP server: listeners, configuration, handler, TLS, limits.
///
/// [`Server::bind`] gives a [`BoundServer`]; its [`ShutdownHandle`] stops it
/// gracefully from any thread. See the [crate docs](crate) for an example.
pub struct Server<H> {
    handler: Arc<H>,
    options: ServerOptions,
}

impl<H> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Server<H> {
    /// A server for `handler`, with [`Config::default`](smtp_proto::config::Config::default) and no listener yet.
    /// (For a [`SyncHandler`](crate::SyncHandler), pass [`SyncAdapter`](crate::SyncAdapter)`(handler)`.)
    pub fn new(handler: H) -> Self {
        Server {
            handler: Arc::new(handler),
            options: ServerOptions::default(),
        }
    }

    /// Replaces the handler.
    pub fn handler<H2: Handler>(self, handler: H2) -> Server<H2> {
        Server {
            handler: Arc::new(handler),
            options: self.options,
        }
    }

    smtp_server::server_builder_methods!();

    /// Binds every listener.
    pub fn bind(self) -> io::Result<BoundServer<H>> {
        let o = self.options;
        o.check()?;
        let limiter = o.limiter();
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        let mut pending = Vec::new();
        for (i, l) in o.listen.iter().enumerate() {
            let protocol = l.protocol();
            let mut listener = match l {
                Listen::Tcp(a) | Listen::Tls(a) => {
                    let tcp = mio::net::TcpListener::bind(*a)?;
                    local_addrs.push(tcp.local_addr()?);
                    Listener::Tcp { tcp, protocol }
                }
                #[cfg(unix)]
                Listen::Unix(p) => {
                    let unix = smtp_server::accept::bind_unix(p, o.unix_mode)?;
                    unix.set_nonblocking(true)?;
                    Listener::Unix {
                        listener: mio::net::UnixListener::from_std(unix),
                        protocol,
                        _file: Some(SocketFile(p.clone())),
                    }
                }
                #[cfg(not(unix))]
                Listen::Unix(_) => return Err(io::ErrorKind::Unsupported.into()),
                Listen::Inherited(inherited) => match inherited.take()? {
                    Inherited::TcpListener(tcp) => {
                        local_addrs.push(tcp.local_addr()?);
                        tcp.set_nonblocking(true)?;
                        let tcp = mio::net::TcpListener::from_std(tcp);
                        Listener::Tcp { tcp, protocol }
                    }
                    Inherited::TcpStream(s) => {
                        s.set_nonblocking(false)?;
                        let remote = s.peer_addr()?;
                        pending.push(Accepted::Tcp(s, remote, protocol));
                        continue;
                    }
                    #[cfg(unix)]
                    Inherited::UnixListener(unix) => {
                        unix.set_nonblocking(true)?;
                        Listener::Unix {
                            listener: mio::net::UnixListener::from_std(unix),
                            protocol,
                            _file: None,
                        }
                    }
                    #[cfg(unix)]
                    Inherited::UnixStream(s) => {
                        s.set_nonblocking(false)?;
                        pending.push(Accepted::Unix(s, protocol));
                        continue;
                    }
                },
            };
            let source: &mut dyn mio::event::Source = match &mut listener {
                Listener::Tcp { tcp, .. } => tcp,
                #[cfg(unix)]
                Listener::Unix { listener: u, .. } => u,
            };
            poll.registry()
                .register(source, Token(i), Interest::READABLE)?;
            listeners.push(listener);
        }
        let handle = ShutdownHandle {
            requested: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(mio::Waker::new(poll.registry(), WAKE)?),
            reload: o.reload.clone(),
        };
        Ok(BoundServer {
            listeners,
            local_addrs,
            pending,
            shared: Arc::new(Shared {
                handler: self.handler,
                configs: o.session_configs(),
                proxy: o.proxy_front(),
                tls: o.tls,
                limiter,
            }),
            bus: Arc::new(StopBus::default()),
            poll,
            handle,
            grace: o.grace_period,
            pool: Pool::new(IDLE_THREAD_KEEP),
        })
    }

    /// Binds and serves forever (see [`BoundServer::run`]; use
    /// [`Server::bind`] to get a [`ShutdownHandle`] first).
    pub fn run(self) -> io::Result<()> {
        self.bind()?.run()
    }
}

enum Listener {
    Tcp {
        tcp: mio::net::TcpListener,
        protocol: Protocol,
    },
    #[cfg(unix)]
    /// Its socket file, if we bound it, goes with it (a drop guard).
    Unix {
        listener: mio::net::UnixListener,
        protocol: Protocol,
        _file: Option<SocketFile>,
    },
}

/// An accepted stream, back in blocking mode, with what its listener serves.
enum Accepted {
    Tcp(TcpStream, SocketAddr, Protocol),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream, Protocol),
}

impl Listener {
    fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp { tcp, protocol } => {
                let (s, a) = tcp.accept()?;
                let s = TcpStream::from(s);
                s.set_nonblocking(false)?;
                Ok(Accepted::Tcp(s, a, *protocol))
            }
            #[cfg(unix)]
            Listener::Unix {
                listener: u,
                protocol,
                ..
            } => {
                let s = std::os::unix::net::UnixStream::from(u.accept()?.0);
                s.set_nonblocking(false)?;
                Ok(Accepted::Unix(s, *protocol))
            }
        }
    }
}

struct Shared<H> {
    handler: Arc<H>,
    configs: SessionConfigs,
    tls: Option<Arc<ServerConfig>>,
    limiter: ConnectionLimiter,
    /// The PROXY protocol on TCP listeners, read before the session.
    proxy: Option<ProxyFront>,
}

/// Stops a [`BoundServer`] gracefully, or re-reads its settings, from any
/// thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    reload: smtp_server::reload::Reloader,
}

impl ShutdownHandle {
    /// Re-reads every reloadable setting (the certificates given with
    /// `certificates`, sources given with `on_reload`): handshakes, AUTHs
    /// and upstream connections from now on use the new values (a session
    /// in progress keeps its TLS session; see [`smtp_server::reload`]); a
    /// source that fails keeps its old value and is logged and returned.
    pub fn reload(&self) -> Result<(), Vec<String>> {
        self.reload.reload()
    }

    /// Asks the server to stop accepting, let sessions finish their
    /// transaction ([`smtp_proto::server::Session::shutdown`]) up to the grace
    /// period, then close the rest with `421 4.3.2`. Returns at once;
    /// [`BoundServer::run`] returns when that is done.
    pub fn shutdown(&self) {
        self.requested.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake the accept loop");
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// A server whose listeners are bound; [`BoundServer::run`] serves them on
/// the calling thread, one thread per session.
pub struct BoundServer<H> {
    listeners: Vec<Listener>,
    local_addrs: Vec<SocketAddr>,
    /// Connections handed over already accepted (inetd), served first.
    pending: Vec<Accepted>,
    shared: Arc<Shared<H>>,
    bus: Arc<StopBus>,
    poll: Poll,
    handle: ShutdownHandle,
    grace: Duration,
    pool: Pool,
}

impl<H> std::fmt::Debug for BoundServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> BoundServer<H> {
    /// The TCP addresses bound, in [`Server::listen`]/[`Server::listen_tls`]
    /// order (with the ports the OS picked for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// A handle that stops [`BoundServer::run`] gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Accepts and serves connections until [`ShutdownHandle::shutdown`],
    /// then shuts down gracefully. Returns once every session has ended
    /// (or, for sessions stuck in a hook or a write, [`LAST_WORDS`] after the
    /// grace period: their threads are left to finish on their own). A
    /// server with no listener that was given connected sockets
    /// ([`Listen::Inherited`], inetd) stops by itself once their sessions
    /// have ended.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut backoff = false;
        let until_idle = self.listeners.is_empty() && !self.pending.is_empty();
        for accepted in std::mem::take(&mut self.pending) {
            self.spawn(accepted);
        }
        while !self.handle.requested() {
            if until_idle {
                // Nothing to accept: wait for the sessions (or a shutdown).
                if self.bus.wait_idle(Duration::from_millis(100)) {
                    break;
                }
                continue;
            }
            let wait = backoff.then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            backoff = self.accept_all();
            if backoff {
                // EMFILE and friends: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        tracing::info!(sessions = self.bus.sessions(), "shutting down");
        self.pool.close();
        // Unix listeners remove their socket files as they go.
        self.listeners.clear();
        self.bus.set(Stop::Drain);
        if !self.bus.wait_idle(self.grace) {
            tracing::info!(
                sessions = self.bus.sessions(),
                "grace period over; closing sessions"
            );
            self.bus.set(Stop::Abort);
            if !self.bus.wait_idle(LAST_WORDS) {
                tracing::warn!(sessions = self.bus.sessions(), "sessions left running");
            }
        }
        Ok(())
    }

    /// Accepts from every listener in turn until none has a connection
    /// waiting (mio is edge-triggered); returns whether an accept failed.
    fn accept_all(&self) -> bool {
        loop {
            let mut any = false;
            for l in &self.listeners {
                match l.accept() {
                    Ok(a) => {
                        any = true;
                        self.spawn(a);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => any = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        return true;
                    }
                }
            }
            if !any || self.handle.requested() {
                return false;
            }
        }
    }

    fn spawn(&self, accepted: Accepted) {
        let ip = match &accepted {
            // Behind the PROXY protocol, the header's source counts per
            // address, once read (`ProxyFront::read`), not the balancer.
            Accepted::Tcp(_, a, _) => Some(a.ip()).filter(|_| self.shared.proxy.is_none()),
            #[cfg(unix)]
            Accepted::Unix(..) => None,
        };
        let Some(mut slot) = self.shared.limiter.admit(ip) else {
            tracing::info!(peer = ?ip, "too many connections");
            // A plain or Unix listener gets a 421 (never a silent close); an
            // implicit-TLS one just closes (no clear-text byte).
            match accepted {
                Accepted::Tcp(_, _, Protocol::Submissions) => {}
                Accepted::Tcp(tcp, ..) => too_many(tcp),
                #[cfg(unix)]
                Accepted::Unix(s, _) => too_many(s),
            }
            return;
        };
        let shared = self.shared.clone();
        let waiter = Waiter::new(&self.bus);
        let spawned = self.pool.execute(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve(&shared, accepted, waiter, &mut slot)
            }));
            drop(slot);
            match run {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
                Err(_) => tracing::error!("a session thread panicked; the server goes on"),
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a session thread");
        }
    }
}

/// Answers an over-limit connection with `421 4.7.0` and closes it.
fn too_many(mut s: impl Socket) {
    let _ = s.set_write_timeout(Some(LAST_WORDS));
    let _ = s.write_all(&Reply::TOO_MANY_CONNECTIONS.to_bytes());
    let _ = s.shutdown_write();
}

fn with_tls<S: Socket, H: Handler>(c: Connection<S, H>, shared: &Shared<H>) -> Connection<S, H> {
    match &shared.tls {
        Some(t) => c.with_tls(t.clone()),
        None => c,
    }
}

/// The PROXY header is read off the TCP stream itself ([`PeekRead`]),
/// each wait bounded by what is left until `deadline`; the futures are
/// ready at once (the I/O blocks).
struct Peek<'a> {
    tcp: &'a TcpStream,
    deadline: Instant,
}

impl Peek<'_> {
    fn bounded<T>(&self, io: impl FnOnce(&TcpStream) -> io::Result<T>) -> io::Result<T> {
        if Instant::now() >= self.deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        bound(self.tcp, self.deadline, true)?;
        io(self.tcp)
    }
}

impl PeekRead for Peek<'_> {
    fn peek(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send {
        std::future::ready(self.bounded(|t| t.peek(buf)))
    }

    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send {
        std::future::ready(self.bounded(|mut t| io::Read::read(&mut t, buf)))
    }
}

fn serve<H: Handler>(
    shared: &Shared<H>,
    accepted: Accepted,
    waiter: Waiter,
    slot: &mut Slot,
) -> io::Result<()> {
    let handler = shared.handler.clone();
    let (tcp, remote, protocol) = match accepted {
        Accepted::Tcp(tcp, remote, protocol) => (tcp, remote, protocol),
        #[cfg(unix)]
        Accepted::Unix(s, protocol) => {
            let config = shared.configs.get(protocol, true).clone();
            let c = Connection::new(s, PeerInfo::default(), config, handler);
            return with_tls(c, shared).with_stop(waiter).run();
        }
    };
    let tls = protocol == Protocol::Submissions;
    let _ = tcp.set_nodelay(true);
    let mut peer = PeerInfo {
        remote: Some(remote),
        local: tcp.local_addr().ok(),
        ..PeerInfo::default()
    };
    if let Some(front) = &shared.proxy {
        let deadline = Instant::now() + front.timeout();
        let mut peek = Peek {
            tcp: &tcp,
            deadline,
        };
        let timer = std::future::pending();
        match futures_executor::block_on(front.read(&mut peek, peer, slot, timer)) {
            Proxied::Peer(p) => peer = *p,
            Proxied::Close => return Ok(()),
            Proxied::TooMany => {
                if !tls {
                    too_many(tcp);
                }
                return Ok(());
            }
        }
    }
    if !tls {
        let c = Connection::new(
            tcp,
            peer,
            shared.configs.get(protocol, false).clone(),
            handler,
        );
        return with_tls(c, shared).with_stop(waiter).run();
    }
    let Some(config) = &shared.tls else {
        return Ok(());
    };
    // Implicit TLS: the handshake first; garbage or a timeout closes silently.
    let done = handshake(config.clone(), tcp, shared.configs.tls.timeouts.command);
    let Some((stream, info)) = implicit_tls_outcome(Some(done), remote) else {
        return Ok(());
    };
    smtp_server::metrics::tls_handshake(Some(&info.version));
    let peer = PeerInfo {
        tls: Some(info),
        ..peer
    };
    Connection::tls(stream, peer, shared.configs.tls.clone(), handler)
        .with_stop(waiter)
        .run()
}
