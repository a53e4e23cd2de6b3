//! The high level: a [`Server`] builder with listeners, limits and graceful shutdown.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use smtp_proto::config::Config;
use smtp_proto::reply::Reply;
use smtp_proto::server::PeerInfo;
use smtp_server::accept::{
    ConnectionLimiter, LAST_WORDS, Listen, PeekRead, Proxied, ProxyFront, ServerOptions, Slot,
    Stop, StopSignal, StopWatch, implicit_tls_outcome, tls_info,
};
use smtp_server::handler::Handler;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::connection::Connection;

pub use smtp_server::accept::{DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS};

/// Builds an SMTP server: listeners, configuration, handler, TLS, limits, shutdown.
///
/// See the [crate docs](crate) for an example.
pub struct Server<H> {
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
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
        }
    }

    /// Replaces the handler.
    pub fn handler<H2: Handler>(self, handler: H2) -> Server<H2> {
        Server {
            handler: Arc::new(handler),
            options: self.options,
            shutdown: self.shutdown,
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
                    let tcp = TcpListener::bind(a).await?;
                    local_addrs.push(tcp.local_addr()?);
                    listeners.push(Listener::Tcp { tcp, tls });
                }
                #[cfg(unix)]
                Listen::Unix(p) => {
                    let unix = smtp_server::accept::bind_unix(p, o.unix_mode)?;
                    unix.set_nonblocking(true)?;
                    let unix = tokio::net::UnixListener::from_std(unix)?;
                    listeners.push(Listener::Unix(unix, p.clone()));
                }
                #[cfg(not(unix))]
                Listen::Unix(_) => return Err(io::ErrorKind::Unsupported.into()),
            }
        }
        let stop = StopSignal::new();
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
            }),
            stop,
            shutdown: self.shutdown,
            grace: o.grace_period,
        })
    }

    /// Binds and runs until the shutdown signal (see [`BoundServer::run`]).
    pub async fn run(self) -> io::Result<()> {
        self.bind().await?.run().await
    }
}

enum Listener {
    Tcp {
        tcp: TcpListener,
        tls: bool,
    },
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, PathBuf),
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
}

/// An accepted stream, before it becomes a [`Connection`].
enum Accepted {
    Tcp(TcpStream, SocketAddr, bool),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// A server whose listeners are bound; [`BoundServer::run`] serves them.
pub struct BoundServer<H> {
    listeners: Vec<Listener>,
    local_addrs: Vec<SocketAddr>,
    shared: Arc<Shared<H>>,
    stop: Arc<StopSignal>,
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    grace: Duration,
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

    /// Accepts and serves connections until the shutdown signal, then shuts
    /// down gracefully. Returns once every session has ended.
    ///
    /// The accept loop runs as a task of its own (spawned when the returned
    /// future is first polled), so on a multi-thread runtime it sits on a
    /// worker even when `run` is awaited from `block_on` (`#[tokio::main]`):
    /// each new session is then scheduled on that worker's own queue
    /// instead of waking another thread. Dropping the returned future
    /// aborts the loop, which closes the listeners and aborts the sessions
    /// (on the runtime, moments later).
    pub async fn run(self) -> io::Result<()> {
        let mut task = AbortOnDrop(tokio::spawn(self.accept_loop()));
        match (&mut task.0).await {
            Ok(res) => res,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(io::Error::other("the accept loop was cancelled")),
        }
    }

    async fn accept_loop(mut self) -> io::Result<()> {
        let mut shutdown = self
            .shutdown
            .take()
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        let mut tasks = JoinSet::new();
        let mut next = 0usize;
        loop {
            let accepted = poll_fn(|cx| {
                let n = self.listeners.len();
                for k in 0..n {
                    let i = (next + k) % n;
                    let r = match &self.listeners[i] {
                        Listener::Tcp { tcp, tls } => tcp
                            .poll_accept(cx)
                            .map_ok(|(s, a)| Accepted::Tcp(s, a, *tls)),
                        #[cfg(unix)]
                        Listener::Unix(u, _) => {
                            u.poll_accept(cx).map_ok(|(s, _)| Accepted::Unix(s))
                        }
                    };
                    if r.is_ready() {
                        next = i + 1;
                        return r;
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(res) = tasks.join_next(), if !tasks.is_empty() => log_join(res),
                res = accepted => match res {
                    Ok(a) => self.spawn(&mut tasks, a),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::info!(sessions = tasks.len(), "shutting down");
        for l in self.listeners.drain(..) {
            #[cfg(unix)]
            if let Listener::Unix(_, path) = l {
                let _ = std::fs::remove_file(path);
            }
            #[cfg(not(unix))]
            drop(l);
        }
        self.stop.set(Stop::Drain);
        if timeout(self.grace, join_all(&mut tasks)).await.is_err() {
            tracing::info!(
                sessions = tasks.len(),
                "grace period over; closing sessions"
            );
            self.stop.set(Stop::Abort);
            if timeout(LAST_WORDS, join_all(&mut tasks)).await.is_err() {
                tasks.shutdown().await;
            }
        }
        Ok(())
    }

    fn spawn(&self, tasks: &mut JoinSet<()>, accepted: Accepted) {
        let ip = match &accepted {
            // Behind the PROXY protocol, the header's source counts per
            // address, once read (`ProxyFront::read`), not the balancer.
            Accepted::Tcp(_, a, _) => Some(a.ip()).filter(|_| self.shared.proxy.is_none()),
            #[cfg(unix)]
            Accepted::Unix(_) => None,
        };
        let Some(mut slot) = self.shared.limiter.admit(ip) else {
            tracing::info!(peer = ?ip, "too many connections");
            tokio::spawn(async move {
                match accepted {
                    Accepted::Tcp(tcp, _, tls) => too_many(tcp, tls).await,
                    #[cfg(unix)]
                    Accepted::Unix(unix) => too_many(unix, false).await,
                }
            });
            return;
        };
        let shared = self.shared.clone();
        let stop = self.stop.watch();
        tasks.spawn(async move {
            // Only the plain TCP path is held inline: the task's future is
            // as big as its biggest path, and an implicit-TLS connection
            // (rustls state inline) or a Unix one would more than double
            // every idle session's memory (issue 7, bench (f)). `serve_tcp`
            // boxes the TLS path; the Unix one is boxed here.
            let res = match accepted {
                Accepted::Tcp(tcp, remote, tls) => {
                    serve_tcp(&shared, tcp, remote, stop, tls, &mut slot).await
                }
                #[cfg(unix)]
                Accepted::Unix(s) => {
                    let c = Connection::new(
                        s,
                        PeerInfo::default(),
                        shared.unix.clone(),
                        shared.handler.clone(),
                    );
                    Box::pin(with_acceptor(c, &shared).with_stop(stop).run()).await
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Answers an over-limit connection with `421 4.7.0` and closes it; an
/// implicit-TLS one (`tls`) is just closed (no clear text before the handshake).
async fn too_many<S: tokio::io::AsyncWrite + Unpin>(mut s: S, tls: bool) {
    if tls {
        return;
    }
    let bye = Reply::TOO_MANY_CONNECTIONS.to_bytes();
    let _ = timeout(LAST_WORDS, async {
        s.write_all(&bye).await?;
        s.shutdown().await
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
        tokio::io::AsyncReadExt::read(self.0, buf).await
    }
}

fn with_acceptor<S, H>(c: Connection<S, H>, shared: &Shared<H>) -> Connection<S, H>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    H: Handler,
{
    match &shared.acceptor {
        Some(a) => c.with_tls(a.clone()),
        None => c,
    }
}

fn tcp_peer(tcp: &TcpStream, remote: SocketAddr) -> PeerInfo {
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
    mut tcp: TcpStream,
    remote: SocketAddr,
    stop: StopWatch,
    tls: bool,
    slot: &mut Slot,
) -> io::Result<()> {
    let mut peer = tcp_peer(&tcp, remote);
    if let Some(front) = &shared.proxy {
        let timer = tokio::time::sleep(front.timeout());
        match Box::pin(front.read(&mut Peek(&mut tcp), peer, slot, timer)).await {
            Proxied::Peer(p) => peer = p,
            Proxied::Close => return Ok(()),
            Proxied::TooMany => {
                too_many(tcp, tls).await;
                return Ok(());
            }
        }
    }
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
        let Some(stream) = implicit_tls_outcome(handshake.ok(), remote) else {
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

/// Aborts the task when dropped (the `run` future was dropped).
struct AbortOnDrop(tokio::task::JoinHandle<io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while let Some(res) = tasks.join_next().await {
        log_join(res);
    }
}

fn log_join(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        if e.is_panic() {
            tracing::error!("a connection task panicked; the server goes on");
        }
    }
}
