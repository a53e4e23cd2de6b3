//! The low level, written once for every async runtime: one connection
//! driving one [`Session`].

use std::future::{Future, poll_fn};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_rustls::TlsAcceptor;
use futures_rustls::server::TlsStream;
use futures_util::io::{AsyncRead, AsyncWrite};
use smtp_proto::config::Config;
use smtp_proto::server::{Event, PeerInfo, Session};
use tracing::Instrument;

use crate::accept::{IoStep, PollIo, SessionIds, StopSeen, StopWatch, drive_until_abort, tls_info};
use crate::handler::{Dispatcher, Drive, Handler};
use crate::runtime::{IoOp, Runtime, StreamIo, Wrap, sleep, timeout};

/// A plain stream, or the same stream after STARTTLS (or an implicit-TLS
/// handshake).
pub(crate) enum Stream<R, S> {
    Plain(S),
    Tls(Box<TlsStream<Wrap<R, S>>>),
    /// During (and after a failed) handshake.
    Gone,
}

impl<R: Runtime, S: Unpin> Stream<R, S>
where
    R::Io: StreamIo<S>,
{
    #[inline(always)]
    fn poll_op(&mut self, cx: &mut Context<'_>, op: IoOp<'_>) -> Poll<io::Result<usize>> {
        let tls = match self {
            Stream::Plain(s) => return R::Io::poll_io(s, cx, op),
            Stream::Tls(s) => std::pin::Pin::new(&mut **s),
            Stream::Gone if matches!(op, IoOp::Close) => return Poll::Ready(Ok(0)),
            Stream::Gone => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        };
        match op {
            IoOp::Read(buf) => tls.poll_read(cx, buf),
            IoOp::Write(buf) => tls.poll_write(cx, buf),
            IoOp::Flush => tls.poll_flush(cx).map_ok(|()| 0),
            IoOp::Close => tls.poll_close(cx).map_ok(|()| 0),
        }
    }

    async fn op(&mut self, op: impl Fn() -> IoOp<'static>) -> io::Result<usize> {
        poll_fn(|cx| self.poll_op(cx, op())).await
    }
}

impl<R: Runtime, S: Unpin> PollIo for Stream<R, S>
where
    R::Io: StreamIo<S>,
{
    #[inline(always)]
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_op(cx, IoOp::Read(buf))
    }

    #[inline(always)]
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_op(cx, IoOp::Write(buf))
    }

    #[inline(always)]
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_op(cx, IoOp::Flush).map_ok(drop)
    }
}

/// One SMTP connection: a stream, a [`Session`] and a [`Dispatcher`] for a
/// [`Handler`], on the runtime `R`.
///
/// [`Connection::run`] reads and writes concurrently (a client that
/// pipelines a lot never deadlocks the server), stops reading while replies
/// pile up unread (backpressure), enforces the session's timeouts with the
/// runtime's timer, bounds every write by the command timeout, and
/// performs the STARTTLS upgrade when an acceptor was given with
/// [`Connection::with_tls`]. The adapters name it in their idiom
/// (`smtp_tokio::Connection<S, H>`, `smtp_async_std::Connection<S, H>`),
/// where `S` is any stream of that runtime's I/O traits.
pub struct Connection<R: Runtime, S, H> {
    stream: Stream<R, S>,
    session: Session,
    dispatcher: Dispatcher<H>,
    tls: Option<TlsAcceptor>,
    stop: Option<StopWatch>,
    seen: StopSeen,
    io: IoStep,
    timer: R::Timer,
}

impl<R: Runtime, S, H> std::fmt::Debug for Connection<R, S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime, S> Connection<R, S, ()>
where
    R::Io: StreamIo<S>,
    S: Unpin + Send,
{
    /// A connection without a handler, for [`Connection::next_event`]:
    /// the caller answers the events itself.
    pub fn manual(stream: S, peer: PeerInfo, config: Arc<Config>) -> Self {
        Connection::new(stream, peer, config, Arc::new(()))
    }
}

impl<R: Runtime, S, H> Connection<R, S, H>
where
    R::Io: StreamIo<S>,
    S: Unpin + Send,
    H: Handler,
{
    /// A connection over an accepted `stream` from `peer`. Set `peer.tls`
    /// when the stream is already TLS: it is then shut down (TLS
    /// close_notify) at the end; a plain stream is just dropped (closing a
    /// socket sends its FIN; a `shutdown` first is one more system call).
    pub fn new(stream: S, peer: PeerInfo, config: Arc<Config>, handler: Arc<H>) -> Self {
        Self::over(Stream::Plain(stream), peer, config, handler)
    }

    pub(crate) fn over(
        stream: Stream<R, S>,
        peer: PeerInfo,
        config: Arc<Config>,
        handler: Arc<H>,
    ) -> Self {
        Connection {
            stream,
            session: Session::new(config, peer, Instant::now()),
            dispatcher: Dispatcher::new(handler, SessionIds::global().next_id()),
            tls: None,
            stop: None,
            seen: StopSeen::default(),
            io: IoStep::default(),
            timer: R::timer(),
        }
    }

    /// Enables the STARTTLS upgrade with `acceptor`. STARTTLS is offered
    /// only if the configuration says so (`config.extensions.starttls`).
    pub fn with_tls(self, acceptor: R::TlsAcceptor) -> Self {
        self.with_acceptor(Some(R::tls_acceptor(acceptor)))
    }

    pub(crate) fn with_acceptor(mut self, acceptor: Option<TlsAcceptor>) -> Self {
        self.tls = acceptor;
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
    /// The adapters' docs show the loop in their runtime's idiom.
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
                    sleep::<R>(d).await;
                    continue;
                }
                Drive::Closed => {
                    let res = self.finish().await;
                    tracing::debug!("session end");
                    return res;
                }
            }
            self.io_step().await?;
        }
    }

    /// Applies a stop state the connection has not acted on yet.
    fn apply_stop(&mut self) {
        if let Some(w) = &self.stop {
            self.seen.apply(w.get(), &mut self.session);
        }
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

    /// The end of a closed session: writes its last replies, then closes
    /// a TLS stream (close_notify), each within the command timeout.
    async fn finish(&mut self) -> io::Result<()> {
        let res = self.flush().await;
        if self.session.is_tls() {
            let t = self.session.config().timeouts.command;
            let _ = timeout::<R, _>(t, self.stream.op(|| IoOp::Close)).await;
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
                let n = poll_fn(|cx| stream.poll_op(cx, IoOp::Write(session.transmit()))).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                session.transmitted(n);
            }
            stream.op(|| IoOp::Flush).await.map(drop)
        };
        self.io.flushed();
        timeout::<R, _>(t, all)
            .await
            .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
    }

    async fn start_tls(&mut self, handshake_timeout: Duration) {
        let stream = std::mem::replace(&mut self.stream, Stream::Gone);
        let (Some(acceptor), Stream::Plain(plain)) = (self.tls.clone(), stream) else {
            tracing::warn!("STARTTLS without a TLS acceptor");
            self.session.tls_failed();
            return;
        };
        let handshake = Box::pin(acceptor.accept(Wrap::new(plain)));
        match timeout::<R, _>(handshake_timeout, handshake).await {
            Some(Ok(tls)) => {
                let info = tls_info(tls.get_ref().1);
                tracing::debug!(version = %info.version, cipher = %info.cipher, "STARTTLS done");
                self.stream = Stream::Tls(Box::new(tls));
                if let Err(e) = self.session.tls_established(info) {
                    tracing::error!(error = %e, "tls_established refused");
                }
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "STARTTLS handshake failed");
                self.session.tls_failed();
            }
            None => {
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

/// Serves one already-accepted plain stream (no STARTTLS) until the session
/// closes, on the runtime `R`.
///
/// For STARTTLS, build a [`Connection`] and call [`Connection::with_tls`].
pub async fn serve_stream<R: Runtime, S, H>(
    stream: S,
    peer: PeerInfo,
    config: Arc<Config>,
    handler: Arc<H>,
) -> io::Result<()>
where
    R::Io: StreamIo<S>,
    S: Unpin + Send,
    H: Handler,
{
    Connection::<R, S, H>::new(stream, peer, config, handler)
        .run()
        .await
}
