//! The high level, written once for every async runtime: a [`Server`]
//! builder with listeners, limits and graceful shutdown.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_channel::oneshot;
use futures_rustls::TlsAcceptor;
use futures_util::task::AtomicWaker;
use smtp_proto::reply::Reply;
use smtp_proto::server::PeerInfo;

#[cfg(unix)]
use crate::accept::SocketFile;
use crate::accept::{
    ConnectionLimiter, LAST_WORDS, Listen, PeekRead, Protocol, Proxied, ProxyFront, ServerOptions,
    SessionConfigs, Slot, Stop, StopSignal, implicit_tls_outcome, tls_info,
};
use crate::activation::Socket;
use crate::connection::Connection;
use crate::handler::Handler;
use crate::link::Stream;
use crate::runtime::{IoOp, Runtime, StreamIo, Wrap, sleep, timeout};

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Builds an SMTP server on the runtime `R`: listeners, configuration,
/// handler, TLS, limits, shutdown. The adapters name it in their idiom
/// (`smtp_tokio::Server<H>`, `smtp_async_std::Server<H>`); their crate
/// docs show it at work.
pub struct Server<R, H> {
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: Option<Signal>,
    runtime: R,
}

impl<R, H> std::fmt::Debug for Server<R, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime, H: Handler> Server<R, H> {
    /// A server for `handler`, with [`Config::default`](smtp_proto::config::Config::default) and no listener yet.
    pub fn new(handler: H) -> Self {
        Server {
            handler: Arc::new(handler),
            options: ServerOptions::default(),
            shutdown: None,
            runtime: R::default(),
        }
    }

    /// Replaces the handler.
    pub fn handler<H2: Handler>(self, handler: H2) -> Server<R, H2> {
        Server {
            handler: Arc::new(handler),
            options: self.options,
            shutdown: self.shutdown,
            runtime: self.runtime,
        }
    }

    crate::server_builder_methods!();

    /// When `signal` completes, the server stops accepting, asks every
    /// session to finish ([`smtp_proto::server::Session::shutdown`]), waits up to the grace
    /// period, then closes the rest with `421 4.3.2`.
    pub fn shutdown_signal(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Runs the server's tasks on `executor` (anything the runtime handle
    /// `R` is made from, e.g. an `Arc<smol::Executor>` for smol) instead of
    /// `R::default()`.
    pub fn executor(mut self, executor: impl Into<R>) -> Self {
        self.runtime = executor.into();
        self
    }

    /// Binds every listener.
    pub async fn bind(self) -> io::Result<BoundServer<R, H>> {
        let o = self.options;
        o.check()?;
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        let mut pending = Vec::new();
        for l in &o.listen {
            let protocol = l.protocol();
            match l {
                Listen::Tcp(a) | Listen::Tls(a) => {
                    let (tcp, addr) = R::bind_tcp(*a).await?;
                    local_addrs.push(addr);
                    listeners.push(Listener::Tcp { tcp, protocol });
                }
                #[cfg(unix)]
                Listen::Unix(p) => {
                    let unix = R::unix_listener(crate::accept::bind_unix(p, o.unix_mode)?)?;
                    listeners.push(Listener::Unix {
                        listener: unix,
                        protocol,
                        _file: Some(SocketFile(p.clone())),
                    });
                }
                #[cfg(not(unix))]
                Listen::Unix(_) => return Err(io::ErrorKind::Unsupported.into()),
                Listen::Inherited(inherited) => match inherited.take()? {
                    Socket::TcpListener(l) => {
                        local_addrs.push(l.local_addr()?);
                        let tcp = R::tcp_listener(l)?;
                        listeners.push(Listener::Tcp { tcp, protocol });
                    }
                    Socket::TcpStream(s) => {
                        let remote = s.peer_addr()?;
                        pending.push(Accepted::Tcp(R::tcp_stream(s)?, remote, protocol));
                    }
                    #[cfg(unix)]
                    Socket::UnixListener(l) => listeners.push(Listener::Unix {
                        listener: R::unix_listener(l)?,
                        protocol,
                        _file: None,
                    }),
                    #[cfg(unix)]
                    Socket::UnixStream(s) => {
                        pending.push(Accepted::Unix(R::unix_stream(s)?, protocol));
                    }
                },
            }
        }
        Ok(BoundServer {
            listeners,
            local_addrs,
            pending,
            shared: Arc::new(Shared {
                handler: self.handler,
                configs: o.session_configs(),
                acceptor: o.tls.clone().map(TlsAcceptor::from),
                limiter: o.limiter(),
                proxy: o.proxy_front(),
                control: Arc::default(),
            }),
            shutdown: self.shutdown,
            grace: o.grace_period,
            runtime: self.runtime,
            handle: ServerHandle {
                reload: o.reload.clone(),
                stop: Arc::default(),
            },
        })
    }

    /// Binds and runs until the shutdown signal (see [`BoundServer::run`]).
    pub async fn run(self) -> io::Result<()> {
        self.bind().await?.run().await
    }

    /// What every adapter's `smtpd` does once its runtime is up: takes the
    /// [`Setup`](crate::cli::Setup)'s options, binds, logs one
    /// `listening addr=…` line per address (scripts and tests read the
    /// OS-picked ports from them), reloads on SIGHUP
    /// ([`ServerHandle::reload`]), and runs until `stop`.
    #[cfg(feature = "cli")]
    pub async fn serve_smtpd(
        self,
        options: crate::accept::ServerOptions,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let server = self.options(options).shutdown_signal(stop).bind().await?;
        crate::cli::log_listening(server.local_addrs());
        let handle = server.handle();
        let _hangups = crate::cli::SignalWatch::reload_on_hangup(move || {
            let _ = handle.reload();
        });
        server.run().await
    }
}

enum Listener<R: Runtime> {
    Tcp {
        tcp: R::TcpListener,
        protocol: Protocol,
    },
    #[cfg(unix)]
    /// Its socket file, if we bound it, goes with it (a drop guard).
    Unix {
        listener: R::UnixListener,
        protocol: Protocol,
        _file: Option<SocketFile>,
    },
}

/// An accepted stream, before it becomes a [`Connection`], with what its
/// listener serves.
enum Accepted<R: Runtime> {
    Tcp(R::TcpStream, SocketAddr, Protocol),
    #[cfg(unix)]
    Unix(R::UnixStream, Protocol),
}

struct Shared<H> {
    handler: Arc<H>,
    configs: SessionConfigs,
    acceptor: Option<TlsAcceptor>,
    limiter: ConnectionLimiter,
    /// The PROXY protocol on TCP listeners, read before the session.
    proxy: Option<ProxyFront>,
    control: Arc<Control>,
}

/// What a server tells its session tasks (the [`Stop`] phase, and a final
/// kill), and how many are alive.
#[derive(Debug, Default)]
struct Control {
    stop: Arc<StopSignal>,
    killed: AtomicBool,
    live: AtomicUsize,
    idle: AtomicWaker,
}

impl Control {
    /// Drops every session task: each sees `killed` when next polled, and
    /// the stop signal wakes them all (every session's [`StopWatch`] holds
    /// its task's waker since its first wait). One atomic load a poll.
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.stop.set(Stop::Abort);
    }

    /// Completes once no session task is alive.
    async fn all_done(&self) {
        poll_fn(|cx| {
            self.idle.register(cx.waker());
            if self.live.load(Ordering::SeqCst) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// Counts one live session task while it exists.
struct Live(Arc<Control>);

impl Live {
    fn new(c: &Arc<Control>) -> Self {
        c.live.fetch_add(1, Ordering::SeqCst);
        Live(c.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.idle.wake();
    }
}

/// A server whose listeners are bound; [`BoundServer::run`] serves them.
pub struct BoundServer<R: Runtime, H> {
    listeners: Vec<Listener<R>>,
    local_addrs: Vec<SocketAddr>,
    /// Connections handed over already accepted (inetd), served first.
    pending: Vec<Accepted<R>>,
    shared: Arc<Shared<H>>,
    shutdown: Option<Signal>,
    grace: Duration,
    runtime: R,
    handle: ServerHandle,
}

/// Controls a running [`BoundServer`] from anywhere (any thread, any
/// runtime): re-reads its settings, stops it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    reload: crate::reload::Reloader,
    stop: Arc<StopRequest>,
}

/// A shutdown asked through a [`ServerHandle`].
#[derive(Debug, Default)]
struct StopRequest {
    asked: AtomicBool,
    waker: AtomicWaker,
}

impl ServerHandle {
    /// Re-reads every reloadable setting (the certificates given with
    /// `certificates`, sources given with `on_reload`): handshakes, AUTHs
    /// and upstream connections from now on use the new values (a session
    /// in progress keeps its TLS session; see [`crate::reload`]); a source
    /// that fails keeps its old value and is logged and returned.
    /// Reads files: call it off the runtime's threads (e.g. from a
    /// thread of its own, as `smtpd`'s SIGHUP does).
    pub fn reload(&self) -> Result<(), Vec<String>> {
        self.reload.reload()
    }

    /// Stops the server as its shutdown signal would: no new connections,
    /// sessions finish their transaction within the grace period.
    pub fn shutdown(&self) {
        self.stop.asked.store(true, Ordering::SeqCst);
        self.stop.waker.wake();
    }

    fn poll_asked(&self, cx: &mut std::task::Context<'_>) -> bool {
        self.stop.waker.register(cx.waker());
        self.stop.asked.load(Ordering::SeqCst)
    }
}

impl<R: Runtime, H> std::fmt::Debug for BoundServer<R, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime, H: Handler> BoundServer<R, H> {
    /// The TCP addresses bound, in [`Server::listen`]/[`Server::listen_tls`]
    /// order (with the ports the OS picked for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// A handle to reload or stop the server once it runs.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Accepts and serves connections until the shutdown signal, then shuts
    /// down gracefully. Returns once every session has ended. A server
    /// with no listener that was given connected sockets
    /// ([`Listen::Inherited`], inetd) stops by itself once their
    /// sessions have ended.
    ///
    /// The accept loop runs as a task of its own (spawned when the returned
    /// future is first polled), so on a multi-thread runtime it sits on a
    /// worker even when `run` is awaited from `block_on`: each new session
    /// is then scheduled on that worker's own queue instead of waking
    /// another thread. Dropping the returned future ends the loop, which
    /// closes the listeners and drops the sessions (on the runtime,
    /// moments later).
    pub async fn run(self) -> io::Result<()> {
        let (done, result) = oneshot::channel();
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            let mut done = done;
            let res = self.accept_loop(&mut done).await;
            let _ = done.send(res);
        });
        result
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the accept loop panicked")))
    }

    async fn accept_loop(mut self, done: &mut oneshot::Sender<io::Result<()>>) -> io::Result<()> {
        let mut shutdown = self
            .shutdown
            .take()
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        let mut next = 0usize;
        let handle = self.handle.clone();
        let until_idle = self.listeners.is_empty() && !self.pending.is_empty();
        for accepted in std::mem::take(&mut self.pending) {
            self.spawn(accepted);
        }
        loop {
            let listeners = &self.listeners;
            let control = &self.shared.control;
            let accepted = poll_fn(|cx| {
                if shutdown.as_mut().poll(cx).is_ready()
                    || handle.poll_asked(cx)
                    || done.poll_canceled(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                if until_idle {
                    control.idle.register(cx.waker());
                    if control.live() == 0 {
                        return Poll::Ready(None);
                    }
                }
                let n = listeners.len();
                for k in 0..n {
                    let i = (next + k) % n;
                    let r = match &listeners[i] {
                        Listener::Tcp { tcp, protocol } => R::poll_accept_tcp(tcp, cx)
                            .map_ok(|(s, a)| Accepted::<R>::Tcp(s, a, *protocol)),
                        #[cfg(unix)]
                        Listener::Unix {
                            listener: u,
                            protocol,
                            ..
                        } => R::poll_accept_unix(u, cx).map_ok(|s| Accepted::Unix(s, *protocol)),
                    };
                    if r.is_ready() {
                        next = i + 1;
                        return r.map(Some);
                    }
                }
                Poll::Pending
            });
            match accepted.await {
                None => break,
                Some(Ok(a)) => self.spawn(a),
                Some(Err(e)) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    sleep::<R>(Duration::from_millis(100)).await;
                }
            }
        }
        let control = &self.shared.control;
        tracing::info!(sessions = control.live(), "shutting down");
        // Unix listeners remove their socket files as they go.
        self.listeners.clear();
        if done.is_canceled() {
            // Nobody waits for the result: drop every session now.
            control.kill();
            return Ok(());
        }
        control.stop.set(Stop::Drain);
        if timeout::<R, _>(self.grace, control.all_done())
            .await
            .is_none()
        {
            tracing::info!(
                sessions = control.live(),
                "grace period over; closing sessions"
            );
            control.stop.set(Stop::Abort);
            if timeout::<R, _>(LAST_WORDS, control.all_done())
                .await
                .is_none()
            {
                // After the last words, the server drops what is left.
                control.kill();
                let _ = timeout::<R, _>(LAST_WORDS, control.all_done()).await;
            }
        }
        Ok(())
    }

    fn spawn(&self, accepted: Accepted<R>) {
        let ip = match &accepted {
            // Behind the PROXY protocol, the header's source counts per
            // address, once read (`ProxyFront::read`), not the balancer.
            Accepted::Tcp(_, a, _) => Some(a.ip()).filter(|_| self.shared.proxy.is_none()),
            #[cfg(unix)]
            Accepted::Unix(..) => None,
        };
        let Some(slot) = self.shared.limiter.admit(ip) else {
            tracing::info!(peer = ?ip, "too many connections");
            self.runtime.spawn(async move {
                match accepted {
                    Accepted::Tcp(tcp, _, protocol) => {
                        too_many::<R, _>(tcp, protocol == Protocol::Submissions).await
                    }
                    #[cfg(unix)]
                    Accepted::Unix(unix, _) => too_many::<R, _>(unix, false).await,
                }
            });
            return;
        };
        let live = Live::new(&self.shared.control);
        let serve = serve::<R, H>(self.shared.clone(), accepted, slot);
        self.runtime.spawn(Supervised { serve, live });
    }
}

/// Serves one admitted connection: the body of its session task.
///
/// Built outside any `async` block and polled in place by [`Supervised`]:
/// a future captured by an `async` block and awaited there is stored
/// twice, and this one is most of an idle session's memory.
async fn serve<R: Runtime, H: Handler>(
    shared: Arc<Shared<H>>,
    accepted: Accepted<R>,
    mut slot: Slot,
) -> io::Result<()> {
    // Only the plain TCP path is held inline: the task's future is as big
    // as its biggest path, and an implicit-TLS connection (rustls state
    // inline) or a Unix one would more than double every idle session's
    // memory (issue 7, bench (f)). `serve_tcp` boxes the TLS path; the Unix
    // one is boxed here.
    match accepted {
        Accepted::Tcp(tcp, remote, protocol) => {
            serve_tcp::<R, H>(&shared, tcp, remote, protocol, &mut slot).await
        }
        #[cfg(unix)]
        Accepted::Unix(s, protocol) => {
            let config = shared.configs.get(protocol, true).clone();
            let handler = shared.handler.clone();
            let c = Connection::<R, _, H>::new(s, PeerInfo::default(), config, handler);
            let c = c.with_acceptor(shared.acceptor.clone());
            Box::pin(c.with_stop(shared.control.stop.watch()).run()).await
        }
    }
}

pin_project_lite::pin_project! {
    /// A session task: ends at once when the server kills its sessions
    /// (one atomic load a poll), turns a panic into a log line, and counts
    /// as live until dropped.
    struct Supervised<F> {
        #[pin]
        serve: F,
        live: Live,
    }
}

impl<F: Future<Output = io::Result<()>>> Future for Supervised<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.live.0.killed.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        let serve = this.serve;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => {}
            Ok(Poll::Ready(Err(e))) => {
                tracing::debug!(error = %e, "connection ended with an error")
            }
            Err(_) => tracing::error!("a connection task panicked; the server goes on"),
        }
        Poll::Ready(())
    }
}

/// Answers an over-limit connection with `421 4.7.0` and closes it; an
/// implicit-TLS one (`tls`) is just closed (no clear text before the handshake).
async fn too_many<R: Runtime, S: Unpin>(mut s: S, tls: bool)
where
    R::Io: StreamIo<S>,
{
    if tls {
        return;
    }
    let bye = Reply::TOO_MANY_CONNECTIONS.to_bytes();
    let _ = timeout::<R, _>(LAST_WORDS, async {
        let mut sent = 0;
        while sent < bye.len() {
            let rest = bye.get(sent..).unwrap_or_default();
            match poll_fn(|cx| R::Io::poll_io(&mut s, cx, IoOp::Write(rest))).await? {
                0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                n => sent += n,
            }
        }
        poll_fn(|cx| R::Io::poll_io(&mut s, cx, IoOp::Close)).await
    })
    .await;
}

/// The PROXY header is read off the TCP stream itself ([`PeekRead`]).
struct Peek<'a, R: Runtime>(&'a mut R::TcpStream);

impl<R: Runtime> PeekRead for Peek<'_, R> {
    async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        R::peek(self.0, buf).await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| R::Io::poll_io(self.0, cx, IoOp::Read(buf))).await
    }
}

/// Serves one TCP connection; [`Protocol::Submissions`]: implicit TLS
/// (the handshake first, after the PROXY header if any).
async fn serve_tcp<R: Runtime, H: Handler>(
    shared: &Shared<H>,
    mut tcp: R::TcpStream,
    remote: SocketAddr,
    protocol: Protocol,
    slot: &mut Slot,
) -> io::Result<()> {
    let tls = protocol == Protocol::Submissions;
    let mut peer = PeerInfo {
        remote: Some(remote),
        local: R::local_addr(&tcp).ok(),
        ..PeerInfo::default()
    };
    if let Some(front) = &shared.proxy {
        let timer = sleep::<R>(front.timeout());
        match Box::pin(front.read(&mut Peek::<R>(&mut tcp), peer, slot, timer)).await {
            Proxied::Peer(p) => peer = *p,
            Proxied::Close => return Ok(()),
            Proxied::TooMany => {
                too_many::<R, _>(tcp, tls).await;
                return Ok(());
            }
        }
    }
    let stop = shared.control.stop.watch();
    if !tls {
        let c = Connection::<R, _, H>::new(
            tcp,
            peer,
            shared.configs.get(protocol, false).clone(),
            shared.handler.clone(),
        );
        return c
            .with_acceptor(shared.acceptor.clone())
            .with_stop(stop)
            .run()
            .await;
    }
    let Some(acceptor) = &shared.acceptor else {
        return Ok(());
    };
    // Boxed: the rustls state would otherwise make every session's task
    // future as big as this path (see `spawn`).
    Box::pin(async move {
        let handshake = acceptor.accept(Wrap::<R, _>::new(tcp));
        let handshake = timeout::<R, _>(shared.configs.tls.timeouts.command, handshake).await;
        let Some(stream) = implicit_tls_outcome(handshake, remote) else {
            return Ok(());
        };
        let peer = PeerInfo {
            tls: Some({
                let conn = stream.get_ref().1;
                let mut info = tls_info(conn);
                crate::metrics::tls_handshake(Some(&info.version));
                info.channel_binding = crate::accept::channel_binding(&info, |out, label| {
                    conn.export_keying_material(out, label, None)
                });
                info
            }),
            ..peer
        };
        let stream = Stream::Tls(Box::new(stream.into()));
        Connection::<R, _, H>::over(
            stream,
            peer,
            shared.configs.tls.clone(),
            shared.handler.clone(),
        )
        .with_stop(stop)
        .run()
        .await
    })
    .await
}
