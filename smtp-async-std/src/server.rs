//! The high level: a [`Server`] builder with listeners, limits and graceful shutdown.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::{Async, Timer};
use async_net::TcpStream;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_lite::{FutureExt, future};
use futures_rustls::TlsAcceptor;
use smtp_proto::config::Config;
use smtp_proto::reply::Reply;
use smtp_proto::server::PeerInfo;
use smtp_server::accept::{
    ConnectionLimiter, LAST_WORDS, Listen, PeekRead, Proxied, ProxyFront, ServerOptions, Slot,
    Stop, implicit_tls_outcome, tls_info,
};
use smtp_server::handler::Handler;

use crate::connection::Connection;
use crate::rt::{Control, Live, Spawner, timeout};

pub use smtp_server::accept::{DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS};

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Builds an SMTP server: listeners, configuration, handler, TLS, limits, shutdown.
///
/// See the [crate docs](crate) for an example.
pub struct Server<H> {
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: Option<Signal>,
    spawner: Spawner,
}

impl<H> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Server<H> {
    /// A server for `handler`, with [`Config::default`] and no listener yet.
    pub fn new(handler: H) -> Self {
        Server {
            handler: Arc::new(handler),
            options: ServerOptions::default(),
            shutdown: None,
            spawner: Spawner::default(),
        }
    }

    /// Replaces the handler.
    pub fn handler<H2: Handler>(self, handler: H2) -> Server<H2> {
        Server {
            handler: Arc::new(handler),
            options: self.options,
            shutdown: self.shutdown,
            spawner: self.spawner,
        }
    }

    smtp_server::server_builder_methods!();

    /// When `signal` completes, the server stops accepting, asks every
    /// session to finish ([`smtp_proto::server::Session::shutdown`]), waits up to the grace
    /// period, then closes the rest with `421 4.3.2`.
    pub fn shutdown_signal(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Runs sessions on `executor` instead of smol's global one (whose
    /// thread count is the `SMOL_THREADS` environment variable, default 1).
    #[cfg(feature = "smol")]
    pub fn executor(mut self, executor: Arc<smol::Executor<'static>>) -> Self {
        self.spawner.executor = Some(executor);
        self
    }

    /// Binds every listener.
    pub async fn bind(self) -> io::Result<BoundServer<H>> {
        let o = self.options;
        o.check()?;
        let limiter = o.limiter();
        let acceptor = o.tls.clone().map(TlsAcceptor::from);
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        for l in &o.listen {
            match l {
                Listen::Tcp(a) | Listen::Tls(a) => {
                    let tls = matches!(l, Listen::Tls(_));
                    let tcp = Async::<std::net::TcpListener>::bind(*a)?;
                    local_addrs.push(tcp.get_ref().local_addr()?);
                    listeners.push(Listener::Tcp { tcp, tls });
                }
                #[cfg(unix)]
                Listen::Unix(p) => {
                    let unix = Async::new(smtp_server::accept::bind_unix(p, o.unix_mode)?)?;
                    listeners.push(Listener::Unix(unix, p.clone()));
                }
                #[cfg(not(unix))]
                Listen::Unix(_) => return Err(io::ErrorKind::Unsupported.into()),
            }
        }
        Ok(BoundServer {
            listeners,
            local_addrs,
            shared: Arc::new(Shared {
                handler: self.handler,
                plain: o.tcp_config(false),
                config: o.tcp_config(true),
                unix: o.plain_config(),
                acceptor,
                limiter,
                proxy: o.proxy_front(),
                control: Arc::default(),
            }),
            shutdown: self.shutdown,
            grace: o.grace_period,
            spawner: self.spawner,
        })
    }

    /// Binds and runs until the shutdown signal (see [`BoundServer::run`]).
    pub async fn run(self) -> io::Result<()> {
        self.bind().await?.run().await
    }
}

enum Listener {
    Tcp {
        tcp: Async<std::net::TcpListener>,
        tls: bool,
    },
    #[cfg(unix)]
    Unix(Async<std::os::unix::net::UnixListener>, PathBuf),
}

struct Shared<H> {
    handler: Arc<H>,
    /// The configuration for plain TCP listeners (STARTTLS on when TLS is configured).
    plain: Arc<Config>,
    /// The configuration for implicit TLS.
    config: Arc<Config>,
    /// The configuration for Unix-domain listeners.
    unix: Arc<Config>,
    acceptor: Option<TlsAcceptor>,
    limiter: ConnectionLimiter,
    /// The PROXY protocol on TCP listeners, read before the session.
    proxy: Option<ProxyFront>,
    control: Arc<Control>,
}

/// An accepted stream, before it becomes a [`Connection`].
enum Accepted {
    Tcp(std::net::TcpStream, SocketAddr, bool),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

/// A server whose listeners are bound; [`BoundServer::run`] serves them.
pub struct BoundServer<H> {
    listeners: Vec<Listener>,
    local_addrs: Vec<SocketAddr>,
    shared: Arc<Shared<H>>,
    shutdown: Option<Signal>,
    grace: Duration,
    spawner: Spawner,
}

impl<H> std::fmt::Debug for BoundServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

/// Accepts from `l` without blocking, else registers for readiness.
fn poll_accept<T, X>(
    l: &Async<T>,
    cx: &mut Context<'_>,
    accept: impl Fn(&T) -> io::Result<X>,
) -> Poll<io::Result<X>> {
    loop {
        match accept(l.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            res => return Poll::Ready(res),
        }
        std::task::ready!(l.poll_readable(cx))?;
    }
}

impl<H: Handler> BoundServer<H> {
    /// The TCP addresses bound, in [`Server::listen`]/[`Server::listen_tls`]
    /// order (with the ports the OS picked for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Accepts and serves connections until the shutdown signal, then shuts
    /// down gracefully. Returns once every session has ended.
    pub async fn run(mut self) -> io::Result<()> {
        let mut shutdown = self
            .shutdown
            .take()
            .unwrap_or_else(|| Box::pin(future::pending()));
        let mut next = 0usize;
        loop {
            let listeners = &self.listeners;
            let accepted = poll_fn(|cx| {
                let n = listeners.len();
                for k in 0..n {
                    let i = (next + k) % n;
                    let r = match &listeners[i] {
                        Listener::Tcp { tcp, tls } => poll_accept(tcp, cx, |l| l.accept())
                            .map_ok(|(s, a)| Accepted::Tcp(s, a, *tls)),
                        #[cfg(unix)]
                        Listener::Unix(u, _) => {
                            poll_accept(u, cx, |l| l.accept()).map_ok(|(s, _)| Accepted::Unix(s))
                        }
                    };
                    if r.is_ready() {
                        next = i + 1;
                        return r;
                    }
                }
                Poll::Pending
            });
            let shutdown = async {
                (&mut shutdown).await;
                None
            };
            match shutdown.or(async { Some(accepted.await) }).await {
                None => break,
                Some(Ok(a)) => self.spawn(a),
                Some(Err(e)) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    Timer::after(Duration::from_millis(100)).await;
                }
            }
        }
        let control = &self.shared.control;
        tracing::info!(sessions = control.live(), "shutting down");
        for l in self.listeners.drain(..) {
            #[cfg(unix)]
            if let Listener::Unix(_, path) = l {
                let _ = std::fs::remove_file(path);
            }
            #[cfg(not(unix))]
            drop(l);
        }
        control.set_stop(Stop::Drain);
        let all_done = || control.until(|c| c.live() == 0);
        if timeout(self.grace, all_done()).await.is_none() {
            tracing::info!(
                sessions = control.live(),
                "grace period over; closing sessions"
            );
            control.set_stop(Stop::Abort);
            if timeout(LAST_WORDS, all_done()).await.is_none() {
                control.kill();
                let _ = timeout(LAST_WORDS, all_done()).await;
            }
        }
        Ok(())
    }

    fn spawn(&self, accepted: Accepted) {
        let ip = match &accepted {
            // Behind the PROXY protocol, the header's source counts per
            // address, once read (`ProxyFront::read`), not the balancer.
            Accepted::Tcp(_, a, _) => Some(a.ip()).filter(|_| self.shared.proxy.is_none()),
            #[cfg(unix)]
            Accepted::Unix(_) => None,
        };
        let Some(mut slot) = self.shared.limiter.admit(ip) else {
            tracing::info!(peer = ?ip, "too many connections");
            self.spawner.spawn(async move {
                match accepted {
                    Accepted::Tcp(tcp, _, tls) => {
                        if let Ok(tcp) = TcpStream::try_from(tcp) {
                            too_many(tcp, tls).await;
                        }
                    }
                    #[cfg(unix)]
                    Accepted::Unix(unix) => {
                        if let Ok(unix) = async_net::unix::UnixStream::try_from(unix) {
                            too_many(unix, false).await;
                        }
                    }
                }
            });
            return;
        };
        let shared = self.shared.clone();
        let live = Live::new(&shared.control);
        self.spawner.spawn(async move {
            let _live = live;
            let control = shared.control.clone();
            let serve = async {
                // Only the plain TCP path is held inline: the task's future
                // is as big as its biggest path, and an implicit-TLS
                // connection (rustls state inline) or a Unix one would more
                // than double every idle session's memory (issue 7, bench (f)).
                // `serve_tcp` boxes the TLS path; the Unix one is boxed here.
                match accepted {
                    Accepted::Tcp(tcp, remote, tls) => {
                        serve_tcp(&shared, tcp, remote, tls, &mut slot).await
                    }
                    #[cfg(unix)]
                    Accepted::Unix(s) => {
                        let s = async_net::unix::UnixStream::try_from(s)?;
                        let c = Connection::new(
                            s,
                            PeerInfo::default(),
                            shared.unix.clone(),
                            shared.handler.clone(),
                        );
                        let c = with_acceptor(c, &shared).with_stop(shared.control.watch());
                        Box::pin(c.run()).await
                    }
                }
            };
            // After the last words, the server drops what is left.
            let killed = async {
                control.until(Control::killed).await;
                Ok(())
            };
            match std::panic::AssertUnwindSafe(serve.or(killed))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
                Err(_) => tracing::error!("a connection task panicked; the server goes on"),
            }
            drop(slot);
        });
    }
}

/// Answers an over-limit connection with `421 4.7.0` and closes it; an
/// implicit-TLS one (`tls`) is just closed (no clear text before the handshake).
async fn too_many<S: AsyncWrite + Unpin>(mut s: S, tls: bool) {
    if tls {
        return;
    }
    let bye = Reply::TOO_MANY_CONNECTIONS.to_bytes();
    let _ = timeout(LAST_WORDS, async {
        s.write_all(&bye).await?;
        s.close().await
    })
    .await;
}

/// The PROXY header is read off the TCP stream itself ([`PeekRead`]).
struct Peek<'a>(&'a mut TcpStream);

impl PeekRead for Peek<'_> {
    async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.peek(buf).await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::io::AsyncReadExt::read(self.0, buf).await
    }
}

fn with_acceptor<S, H>(c: Connection<S, H>, shared: &Shared<H>) -> Connection<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    match &shared.acceptor {
        Some(a) => c.with_tls(a.clone()),
        None => c,
    }
}

fn tcp_peer(tcp: &std::net::TcpStream, remote: SocketAddr) -> PeerInfo {
    let _ = tcp.set_nodelay(true);
    PeerInfo {
        remote: Some(remote),
        local: tcp.local_addr().ok(),
        tls: None,
    }
}

/// Serves one TCP connection; `tls`: implicit TLS (the handshake first,
/// after the PROXY header if any).
async fn serve_tcp<H: Handler>(
    shared: &Shared<H>,
    tcp: std::net::TcpStream,
    remote: SocketAddr,
    tls: bool,
    slot: &mut Slot,
) -> io::Result<()> {
    let mut peer = tcp_peer(&tcp, remote);
    let mut tcp = TcpStream::try_from(tcp)?;
    if let Some(front) = &shared.proxy {
        let timer = async {
            Timer::after(front.timeout()).await;
        };
        match Box::pin(front.read(&mut Peek(&mut tcp), peer, slot, timer)).await {
            Proxied::Peer(p) => peer = p,
            Proxied::Close => return Ok(()),
            Proxied::TooMany => {
                too_many(tcp, tls).await;
                return Ok(());
            }
        }
    }
    let stop = shared.control.watch();
    if !tls {
        let c = Connection::new(tcp, peer, shared.plain.clone(), shared.handler.clone());
        return with_acceptor(c, shared).with_stop(stop).run().await;
    }
    let Some(acceptor) = &shared.acceptor else {
        return Ok(());
    };
    // Boxed: the rustls state would otherwise make every session's task
    // future as big as this path (see `spawn`).
    Box::pin(async move {
        let handshake = timeout(shared.config.timeouts.command, acceptor.accept(tcp)).await;
        let Some(stream) = implicit_tls_outcome(handshake, remote) else {
            return Ok(());
        };
        let peer = PeerInfo {
            tls: Some(tls_info(stream.get_ref().1)),
            ..peer
        };
        Connection::new(stream, peer, shared.config.clone(), shared.handler.clone())
            .with_stop(stop)
            .run()
            .await
    })
    .await
}
