//! The low level, written once for every async runtime: one connection
//! driving one [`Session`].

use std::future::Future;
use std::io;
use std::sync::Arc;

use futures_rustls::TlsAcceptor;
use smtp_proto::config::Config;
use smtp_proto::server::{Event, PeerInfo, Session};
use tracing::Instrument;

use crate::accept::{StopWatch, drive_until_abort};
use crate::handler::{Dispatcher, Handler};
use crate::link::{Link, Stream, TlsSide};
use crate::runtime::{Runtime, StreamIo};

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
    link: Link<R, S, Session>,
    dispatcher: Dispatcher<H>,
}

impl<R: Runtime, S, H> std::fmt::Debug for Connection<R, S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.link)
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
        let io_timeout = config.timeouts.command;
        let tls = peer.tls.is_some();
        let dialer = crate::dial::Dialer::of::<R>();
        let (session, dispatcher) = Dispatcher::start(config, peer, handler, dialer);
        let mut link = Link::new(stream, session, io_timeout);
        link.close_at_end(tls);
        Connection { link, dispatcher }
    }

    /// Enables the STARTTLS upgrade with `acceptor`. STARTTLS is offered
    /// only if the configuration says so (`config.extensions.starttls`).
    pub fn with_tls(self, acceptor: R::TlsAcceptor) -> Self {
        self.with_acceptor(Some(R::tls_acceptor(acceptor)))
    }

    pub(crate) fn with_acceptor(mut self, acceptor: Option<TlsAcceptor>) -> Self {
        self.link.set_tls(acceptor.map(TlsSide::Accept));
        self
    }

    pub(crate) fn with_stop(mut self, stop: StopWatch) -> Self {
        self.link.set_stop(stop);
        self
    }

    /// The session id (in logs and the `Received:` header).
    pub fn id(&self) -> &str {
        &self.dispatcher.info().id
    }

    /// The session state.
    pub fn session(&self) -> &Session {
        self.link.machine()
    }

    /// The session state, for answering events from [`Connection::next_event`]
    /// (`respond(ticket, decision, now)`).
    pub fn session_mut(&mut self) -> &mut Session {
        self.link.machine_mut()
    }

    /// The low level: does I/O until the session has an event and returns
    /// it; `None` once the session is over and its last replies are
    /// written (then drop the connection: that closes a plain stream; a
    /// TLS one has been shut down already). Timeouts, backpressure,
    /// STARTTLS (with [`Connection::with_tls`]), throttling and shutdown
    /// work as in [`Connection::run`]. Answer each decision event with
    /// `session_mut().respond(ticket, decision, now)` before calling again
    /// (the session reads nothing while a decision is pending, and calling
    /// with one pending is an `InvalidInput` error). Do not mix with `run`.
    /// The adapters' docs show the loop in their runtime's idiom.
    pub async fn next_event(&mut self) -> io::Result<Option<Event<'_>>> {
        self.link.next_event().await
    }

    /// Serves the connection until the session closes. Errors are I/O
    /// errors and write timeouts; the client has been answered as far as possible.
    pub fn run(self) -> impl Future<Output = io::Result<()>> + Send {
        // Not an `async fn`: the connection is moved into `run_inner`'s
        // future only, not held twice in the task.
        let peer = self.session().peer().remote;
        let span = tracing::info_span!("smtp", id = %self.id(), peer = ?peer);
        self.run_inner().instrument(span)
    }

    async fn run_inner(mut self) -> io::Result<()> {
        tracing::debug!("session start");
        loop {
            self.link.apply_stop();
            let (session, stop, seen) = self.link.parts();
            let i = drive_until_abort(&mut self.dispatcher, session, stop, seen).await;
            if crate::link::obey(&mut self.link, i).await? {
                tracing::debug!("session end");
                return Ok(());
            }
        }
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
