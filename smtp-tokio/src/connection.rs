//! The low level: one connection driving one [`Session`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use smtp_proto::config::Config;
use smtp_proto::server::{Event, PeerInfo, Session};
use smtp_server::accept::{
    Alarm, IoStep, PollIo, SessionIds, StopSeen, StopWatch, drive_until_abort, tls_info,
};
use smtp_server::handler::{Dispatcher, Drive, Handler};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

/// A plain stream, or the same stream after STARTTLS.
enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// During (and after a failed) handshake.
    Gone,
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PollIo for Stream<S> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        AsyncRead::poll_read(Pin::new(self), cx, &mut buf).map_ok(|()| buf.filled().len())
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(self), cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(self), cx)
    }
}

/// The connection's timer: one tokio `Sleep`, reset in place.
struct Timer(Pin<Box<Sleep>>);

impl Alarm for Timer {
    fn set(&mut self, at: std::time::Instant) {
        self.0.as_mut().reset(Instant::from_std(at));
    }

    fn poll_alarm(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// One SMTP connection: a stream, a [`Session`] and a [`Dispatcher`] for a
/// [`Handler`].
///
/// [`Connection::run`] reads and writes concurrently (a client that
/// pipelines a lot never deadlocks the server), stops reading while replies
/// pile up unread (backpressure), enforces the session's timeouts with
/// tokio's timer, bounds every write by the command timeout, and performs the
/// STARTTLS upgrade when an acceptor was given with [`Connection::with_tls`].
///
/// ```no_run
/// # async fn f(tcp: tokio::net::TcpStream) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use smtp_proto::{config::Config, server::PeerInfo};
/// use smtp_server::store::SinkHandler;
///
/// let peer = PeerInfo::new(tcp.peer_addr()?);
/// let config = Arc::new(Config::new("mx.example"));
/// smtp_tokio::Connection::new(tcp, peer, config, Arc::new(SinkHandler)).run().await
/// # }
/// ```
pub struct Connection<S, H> {
    stream: Stream<S>,
    session: Session,
    dispatcher: Dispatcher<H>,
    tls: Option<TlsAcceptor>,
    stop: Option<StopWatch>,
    seen: StopSeen,
    io: IoStep,
    timer: Timer,
}

impl<S, H> std::fmt::Debug for Connection<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<S> Connection<S, ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// A connection without a handler, for [`Connection::next_event`]:
    /// the caller answers the events itself.
    pub fn manual(stream: S, peer: PeerInfo, config: Arc<Config>) -> Self {
        Connection::new(stream, peer, config, Arc::new(()))
    }
}

impl<S, H> Connection<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    /// A connection over an accepted `stream` from `peer`. Set `peer.tls`
    /// when the stream is already TLS: it is then shut down (TLS
    /// close_notify) at the end; a plain stream is just dropped (closing a
    /// socket sends its FIN; a `shutdown` first is one more system call).
    pub fn new(stream: S, peer: PeerInfo, config: Arc<Config>, handler: Arc<H>) -> Self {
        let session = Session::new(config, peer, Instant::now().into_std());
        Connection {
            stream: Stream::Plain(stream),
            session,
            dispatcher: Dispatcher::new(handler, SessionIds::global().next_id()),
            tls: None,
            stop: None,
            seen: StopSeen::default(),
            io: IoStep::default(),
            timer: Timer(Box::pin(sleep_until(Instant::now()))),
        }
    }

    /// The session state, for answering events from [`Connection::next_event`]
    /// (`respond(ticket, decision)`).
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The low level: does I/O until the session has an event and returns
    /// it; `None` once the session is over and its last replies are
    /// written (then drop the connection: that closes a plain stream; a
    /// TLS one has been shut down already). Timeouts, backpressure and
    /// shutdown work as in [`Connection::run`]. Answer each decision event with
    /// `session_mut().respond(ticket, ..)` before calling again (the session
    /// reads nothing while a decision is pending); on
    /// [`Event::StartTls`] call [`Connection::upgrade`]; on
    /// [`Event::Throttle`] wait that long first. Do not mix with `run`.
    ///
    /// ```no_run
    /// # async fn f(tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    /// use std::sync::Arc;
    /// use smtp_proto::{config::Config, server::{Decision, Event, PeerInfo}};
    ///
    /// let peer = PeerInfo::new(tcp.peer_addr()?);
    /// let mut conn = smtp_tokio::Connection::manual(tcp, peer, Arc::new(Config::new("mx.example")));
    /// let mut body = Vec::new();
    /// while let Some(event) = conn.next_event().await? {
    ///     match event {
    ///         Event::Body(chunk) => body.extend_from_slice(chunk),
    ///         Event::StartTls => conn.upgrade().await,
    ///         Event::Throttle(d) => tokio::time::sleep(d).await,
    ///         other => {
    ///             if let Some(ticket) = other.into_ticket() {
    ///                 conn.session_mut().respond(ticket, Decision::Accept).ok();
    ///             }
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_event(&mut self) -> io::Result<Option<Event<'_>>> {
        loop {
            self.apply_stop();
            if self.session.has_event() {
                return Ok(self.session.poll_event());
            }
            if self.session.is_closed() {
                return self.finish().await.map(|()| None);
            }
            self.io_step().await?;
        }
    }

    /// Performs the STARTTLS handshake the session asked for with
    /// [`Event::StartTls`] (writes the `220` first; a failure is reported
    /// to the session, which answers or closes).
    pub async fn upgrade(&mut self) {
        if self.flush().await.is_err() {
            self.session.tls_failed();
            return;
        }
        let t = self.session.config().timeouts.command;
        self.start_tls(t).await;
    }

    /// Enables the STARTTLS upgrade with `acceptor`. STARTTLS is offered
    /// only if the configuration says so (`config.extensions.starttls`).
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    pub(crate) fn with_stop(mut self, stop: StopWatch) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The session id (in logs and the `Received:` header).
    pub fn id(&self) -> &str {
        &self.dispatcher.info().id
    }

    /// The session state.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Serves the connection until the session closes. Errors are I/O
    /// errors and write timeouts; the client has been answered as far as possible.
    pub fn run(self) -> impl Future<Output = io::Result<()>> + Send {
        // Not an `async fn`: the connection is moved into `run_inner`'s
        // future only, not held twice in the task.
        let peer = self.session.peer().remote;
        let span = tracing::info_span!("smtp", id = %self.id(), peer = ?peer);
        self.run_inner().instrument(span)
    }

    async fn run_inner(mut self) -> io::Result<()> {
        tracing::debug!("session start");
        let command_timeout = self.session.config().timeouts.command;
        loop {
            self.apply_stop();
            match self.drive().await {
                Drive::Idle => {}
                Drive::StartTls => {
                    self.flush().await?;
                    self.start_tls(command_timeout).await;
                    continue;
                }
                Drive::Throttle(d) => {
                    self.flush().await?;
                    tokio::time::sleep(d).await;
                    continue;
                }
                Drive::Closed => {
                    tracing::debug!("session end");
                    return self.finish().await;
                }
            }
            self.io_step().await?;
        }
    }

    /// Applies a stop state the connection has not acted on yet.
    fn apply_stop(&mut self) {
        let Some(w) = &self.stop else { return };
        self.seen.apply(w.get(), &mut self.session);
    }

    /// Runs the dispatcher; an abort from the server interrupts a slow hook.
    async fn drive(&mut self) -> Drive {
        let Connection {
            session,
            dispatcher,
            stop,
            seen,
            ..
        } = self;
        drive_until_abort(dispatcher, session, stop.as_mut(), seen).await
    }

    /// The end of a closed session: writes its last replies, then shuts a
    /// TLS stream down (close_notify), each within the command timeout.
    async fn finish(&mut self) -> io::Result<()> {
        let res = self.flush().await;
        if self.session.is_tls() {
            let t = self.session.config().timeouts.command;
            let _ = timeout(t, self.stream.shutdown()).await;
        }
        res
    }

    /// Writes everything pending, within the command timeout.
    async fn flush(&mut self) -> io::Result<()> {
        let Connection {
            stream, session, ..
        } = self;
        let t = session.config().timeouts.command;
        let all = async {
            while session.wants_write() {
                let n = stream.write(session.transmit()).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                session.transmitted(n);
            }
            stream.flush().await
        };
        self.io.flushed();
        timeout(t, all)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    async fn start_tls(&mut self, handshake_timeout: Duration) {
        let stream = std::mem::replace(&mut self.stream, Stream::Gone);
        let (Some(acceptor), Stream::Plain(plain)) = (self.tls.clone(), stream) else {
            tracing::warn!("STARTTLS without a TLS acceptor");
            self.session.tls_failed();
            return;
        };
        match timeout(handshake_timeout, Box::pin(acceptor.accept(plain))).await {
            Ok(Ok(tls)) => {
                let info = tls_info(tls.get_ref().1);
                tracing::debug!(version = %info.version, cipher = %info.cipher, "STARTTLS done");
                self.stream = Stream::Tls(Box::new(tls));
                if let Err(e) = self.session.tls_established(info) {
                    tracing::error!(error = %e, "tls_established refused");
                }
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "STARTTLS handshake failed");
                self.session.tls_failed();
            }
            Err(_) => {
                tracing::info!("STARTTLS handshake timed out");
                self.session.tls_failed();
            }
        }
    }

    /// One round of I/O ([`IoStep::run`]).
    async fn io_step(&mut self) -> io::Result<()> {
        let Connection {
            stream,
            session,
            stop,
            seen,
            io,
            timer,
            ..
        } = self;
        io.run(stream, timer, session, stop.as_mut(), seen.get())
            .await
    }
}

/// Serves one already-accepted plain stream (no STARTTLS) until the session closes.
///
/// For STARTTLS, build a [`Connection`] and call [`Connection::with_tls`].
pub async fn serve_stream<S, H>(
    stream: S,
    peer: PeerInfo,
    config: Arc<Config>,
    handler: Arc<H>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    Connection::new(stream, peer, config, handler).run().await
}
