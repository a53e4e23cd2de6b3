//! The low level: one blocking stream driving one [`Session`].

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use rustls::ServerConfig;
use smtp_proto::config::Config;
use smtp_proto::drive::Instruction;
use smtp_proto::server::{Event, PeerInfo, Session};
use smtp_server::accept::Stop;
use smtp_server::handler::{Dispatcher, Handler};

use crate::link::{Link, Stream, TlsSide, TlsStream};
use crate::stop::Waiter;

/// A blocking byte stream whose reads and writes can be bounded in time.
///
/// Implemented for [`TcpStream`] and [`std::os::unix::net::UnixStream`];
/// wrap any other `Read + Write` in [`Untimed`].
pub trait Socket: Read + Write {
    /// Bounds the next reads (`None`: no bound), like [`TcpStream::set_read_timeout`].
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Bounds the next writes (`None`: no bound).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Closes the sending side (a FIN), where the stream has one.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Socket for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

#[cfg(unix)]
impl Socket for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, t)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Any `Read + Write` as a [`Socket`] without timeouts: the session's
/// deadlines are then checked only when a read returns.
#[derive(Debug)]
pub struct Untimed<S>(pub S);

impl<S: Read> Read for Untimed<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: Write> Write for Untimed<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<S: Read + Write> Socket for Untimed<S> {
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Sets a socket timeout to what is left until `deadline` (at least 1 ms:
/// a zero timeout means "none" to the OS).
pub(crate) fn bound(sock: &impl Socket, deadline: Instant, read: bool) -> io::Result<()> {
    Timeouts::default().bound(sock, Some(deadline), read)
}

/// The socket timeouts last set. Most waits ask for the same bound again
/// (the stop-check interval, the command timeout), so a new value within
/// [`Timeouts::SLACK`] of the last is not set again: a syscall saved per
/// read and write, a deadline kept within a few milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Timeouts {
    read: Option<Option<Duration>>,
    write: Option<Option<Duration>>,
}

impl Timeouts {
    const SLACK: Duration = Duration::from_millis(5);

    /// Bounds the next reads (`read`) or writes by `deadline` (`None`: unbounded).
    pub(crate) fn bound(
        &mut self,
        sock: &impl Socket,
        deadline: Option<Instant>,
        read: bool,
    ) -> io::Result<()> {
        let want = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        let last = if read {
            &mut self.read
        } else {
            &mut self.write
        };
        let same = match (*last, want) {
            (Some(None), None) => true,
            (Some(Some(a)), Some(b)) => a.abs_diff(b) < Self::SLACK,
            _ => false,
        };
        if same {
            return Ok(());
        }
        if read {
            sock.set_read_timeout(want)?;
        } else {
            sock.set_write_timeout(want)?;
        }
        *last = Some(want);
        Ok(())
    }
}

pub(crate) fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The server side of a TLS handshake on `sock`, all of it within `limit`.
pub(crate) fn handshake<S: Socket>(
    config: Arc<ServerConfig>,
    sock: S,
    limit: Duration,
) -> io::Result<(TlsStream<S>, smtp_proto::server::TlsInfo)> {
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    crate::link::handshake(conn, sock, limit)
}

/// One SMTP connection: a blocking stream, a [`Session`] and a
/// [`Dispatcher`] for a [`Handler`], served on the calling thread.
///
/// [`Connection::run`] writes every pending reply before it reads again
/// (and reads nothing while the session wants no input, so a client that
/// pipelines without reading is paused), bounds each read by the session's
/// next deadline ([`Session::poll_timeout`]) and all the writes of one
/// flush by the command timeout, runs the handler's hooks with
/// [`futures_executor::block_on`], and performs the STARTTLS upgrade when a
/// TLS configuration was given with [`Connection::with_tls`].
///
/// ```no_run
/// # fn f(tcp: std::net::TcpStream) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use smtp_proto::{config::Config, server::PeerInfo};
/// use smtp_server::store::SinkHandler;
///
/// let peer = PeerInfo::new(tcp.peer_addr()?);
/// let config = Arc::new(Config::new("mx.example"));
/// smtp_blocking::Connection::new(tcp, peer, config, Arc::new(SinkHandler)).run()
/// # }
/// ```
pub struct Connection<S: Socket, H> {
    link: Link<S, Session>,
    dispatcher: Dispatcher<H>,
}

impl<S: Socket, H> std::fmt::Debug for Connection<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.link.machine)
            .finish_non_exhaustive()
    }
}

impl<S: Socket> Connection<S, ()> {
    /// A connection without a handler, for [`Connection::next_event`]:
    /// the caller answers the events itself.
    pub fn manual(stream: S, peer: PeerInfo, config: Arc<Config>) -> Self {
        Connection::new(stream, peer, config, Arc::new(()))
    }
}

impl<S: Socket, H: Handler> Connection<S, H> {
    /// A connection over an accepted `stream` from `peer` (set `peer.tls`
    /// when the stream is already TLS).
    pub fn new(stream: S, peer: PeerInfo, config: Arc<Config>, handler: Arc<H>) -> Self {
        Connection::over(Stream::Plain(stream), peer, config, handler)
    }

    /// A connection over an implicit-TLS stream whose handshake is done.
    pub(crate) fn tls(
        stream: TlsStream<S>,
        peer: PeerInfo,
        config: Arc<Config>,
        handler: Arc<H>,
    ) -> Self {
        Connection::over(Stream::Server(Box::new(stream)), peer, config, handler)
    }

    fn over(stream: Stream<S>, peer: PeerInfo, config: Arc<Config>, handler: Arc<H>) -> Self {
        let io_timeout = config.timeouts.command;
        let dialer = crate::dial::dialer();
        let (session, dispatcher) = Dispatcher::start(config, peer, handler, dialer);
        let link = Link::new(stream, session, io_timeout);
        Connection { link, dispatcher }
    }

    /// Enables the STARTTLS upgrade with `tls`. STARTTLS is offered only if
    /// the configuration says so (`config.extensions.starttls`).
    pub fn with_tls(mut self, tls: Arc<ServerConfig>) -> Self {
        self.link.set_tls(Some(TlsSide::Accept(tls)));
        self
    }

    pub(crate) fn with_stop(mut self, waiter: Waiter) -> Self {
        self.link.stop = Some(waiter);
        self
    }

    /// The session id (in logs and the `Received:` header).
    pub fn id(&self) -> &str {
        &self.dispatcher.info().id
    }

    /// The session state.
    pub fn session(&self) -> &Session {
        &self.link.machine
    }

    /// The session state, for answering events from [`Connection::next_event`]
    /// (`respond(ticket, decision, now)`).
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.link.machine
    }

    /// The low level: does blocking I/O until the session has an event and
    /// returns it; `None` once the session is over and its last replies
    /// are written (then drop the connection: that closes a plain socket;
    /// a TLS one has been shut down already). Timeouts, backpressure,
    /// STARTTLS (with [`Connection::with_tls`]), throttling and shutdown
    /// work as in [`Connection::run`]. Answer each decision event with
    /// `session_mut().respond(ticket, decision, now)` before calling again
    /// (the session reads nothing while a decision is pending, and calling
    /// with one pending is an `InvalidInput` error). Do not mix with `run`,
    /// and do not call it from inside an async executor (it runs the kit's
    /// drive loop with `futures_executor::block_on`).
    ///
    /// ```no_run
    /// # fn f(tcp: std::net::TcpStream) -> std::io::Result<()> {
    /// use std::sync::Arc;
    /// use std::time::Instant;
    /// use smtp_proto::{config::Config, server::{Decision, Event, PeerInfo}};
    ///
    /// let peer = PeerInfo::new(tcp.peer_addr()?);
    /// let mut conn = smtp_blocking::Connection::manual(tcp, peer, Arc::new(Config::new("mx.example")));
    /// let mut body = Vec::new();
    /// while let Some(event) = conn.next_event()? {
    ///     match event {
    ///         Event::Body(chunk) => body.extend_from_slice(chunk),
    ///         other => {
    ///             if let Some(ticket) = other.into_ticket() {
    ///                 conn.session_mut().respond(ticket, Decision::Accept, Instant::now()).ok();
    ///             }
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_event(&mut self) -> io::Result<Option<Event<'_>>> {
        self.link.next_event()
    }

    /// Serves the connection until the session closes. Errors are I/O
    /// errors and write timeouts; the client has been answered as far as possible.
    pub fn run(self) -> io::Result<()> {
        let peer = self.session().peer().remote;
        let span = tracing::info_span!("smtp", id = %self.id(), peer = ?peer);
        span.in_scope(|| self.run_inner())
    }

    fn run_inner(mut self) -> io::Result<()> {
        tracing::debug!("session start");
        loop {
            self.link.apply_stop();
            let i = self.drive();
            if self.link.obey(i)? {
                tracing::debug!("session end");
                return Ok(());
            }
        }
    }

    /// Runs the dispatcher; an abort from the server interrupts a slow hook.
    fn drive(&mut self) -> Instruction {
        let Connection { link, dispatcher } = self;
        let session = &mut link.machine;
        // Connections the hooks open (the relay's upstream) watch the
        // server's phase too: their blocking waits end at an abort.
        let bus = link.stop.as_ref().map(|w| w.bus().clone());
        crate::dial::under_server(bus, || {
            let Some(w) = link.stop.as_ref().filter(|_| link.seen.get() < Stop::Abort) else {
                return block_on(dispatcher.drive(session));
            };
            let done = {
                let mut fut = pin!(dispatcher.drive(session));
                block_on(poll_fn(|cx| match fut.as_mut().poll(cx) {
                    Poll::Ready(d) => Poll::Ready(Some(d)),
                    Poll::Pending if w.poll_abort(cx) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }))
            };
            if let Some(d) = done {
                return d;
            }
            link.seen.apply(Stop::Abort, session);
            block_on(dispatcher.drive(session))
        })
    }
}

/// Serves one already-accepted plain stream (no STARTTLS) on the calling
/// thread until the session closes. Any `Read + Write` works through
/// [`Untimed`].
///
/// For STARTTLS, build a [`Connection`] and call [`Connection::with_tls`].
pub fn serve_stream<S, H>(
    stream: S,
    peer: PeerInfo,
    config: Arc<Config>,
    handler: Arc<H>,
) -> io::Result<()>
where
    S: Socket,
    H: Handler,
{
    Connection::new(stream, peer, config, handler).run()
}
