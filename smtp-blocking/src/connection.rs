//! The low level: one blocking stream driving one [`Session`].

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use smtp_proto::config::Config;
use smtp_proto::server::{Event, PeerInfo, Session, TlsInfo};
use smtp_server::accept::{SessionIds, Stop, StopSeen, tls_info};
use smtp_server::handler::{Dispatcher, Drive, Handler};

use crate::stop::Waiter;

/// How often a session blocked on a read looks at the server's stop phase.
const STOP_CHECK: Duration = Duration::from_millis(200);

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

/// A TLS stream over a [`Socket`].
pub(crate) type TlsStream<S> = StreamOwned<ServerConnection, S>;

/// A plain stream, or the same stream after STARTTLS.
enum Stream<S: Socket> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// During (and after a failed) handshake.
    Gone,
}

impl<S: Socket> Stream<S> {
    fn sock(&self) -> Option<&S> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(&t.sock),
            Stream::Gone => None,
        }
    }

    fn io(&mut self) -> io::Result<&mut dyn ReadWrite> {
        match self {
            Stream::Plain(s) => Ok(s),
            Stream::Tls(t) => Ok(&mut **t),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write + ?Sized> ReadWrite for T {}

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
struct Timeouts {
    read: Option<Option<Duration>>,
    write: Option<Option<Duration>>,
}

impl Timeouts {
    const SLACK: Duration = Duration::from_millis(5);

    /// Bounds the next reads (`read`) or writes by `deadline` (`None`: unbounded).
    fn bound(
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

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The server side of a TLS handshake on `sock`, all of it within `limit`.
pub(crate) fn handshake<S: Socket>(
    config: Arc<ServerConfig>,
    mut sock: S,
    limit: Duration,
) -> io::Result<(TlsStream<S>, TlsInfo)> {
    let deadline = Instant::now() + limit;
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if conn.wants_write() {
            bound(&sock, deadline, false)?;
            conn.write_tls(&mut sock)?;
            continue;
        }
        bound(&sock, deadline, true)?;
        match conn.read_tls(&mut sock) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = conn.process_new_packets() {
            // The alert, best effort.
            let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = conn.write_tls(&mut sock);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    let info = tls_info(&conn);
    Ok((StreamOwned::new(conn, sock), info))
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
    stream: Stream<S>,
    session: Session,
    dispatcher: Dispatcher<H>,
    tls: Option<Arc<ServerConfig>>,
    stop: Option<Waiter>,
    seen: StopSeen,
    /// The socket timeouts last set (read, write), to skip setsockopt calls
    /// that would change nothing.
    timeouts: Timeouts,
}

impl<S: Socket, H> std::fmt::Debug for Connection<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
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
        Connection::over(Stream::Tls(Box::new(stream)), peer, config, handler)
    }

    fn over(stream: Stream<S>, peer: PeerInfo, config: Arc<Config>, handler: Arc<H>) -> Self {
        Connection {
            stream,
            session: Session::new(config, peer, Instant::now()),
            dispatcher: Dispatcher::new(handler, SessionIds::global().next_id()),
            tls: None,
            stop: None,
            seen: StopSeen::default(),
            timeouts: Timeouts::default(),
        }
    }

    /// Enables the STARTTLS upgrade with `tls`. STARTTLS is offered only if
    /// the configuration says so (`config.extensions.starttls`).
    pub fn with_tls(mut self, tls: Arc<ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    pub(crate) fn with_stop(mut self, waiter: Waiter) -> Self {
        self.stop = Some(waiter);
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

    /// The low level: does blocking I/O until the session has an event and
    /// returns it; `None` once the session is over and its last replies
    /// are written (then drop the connection: that closes a plain socket;
    /// a TLS one has been shut down already). Timeouts, backpressure and
    /// shutdown work as in [`Connection::run`]. Answer each decision event with
    /// `session_mut().respond(ticket, ..)` before calling again (the session
    /// reads nothing while a decision is pending); on
    /// [`Event::StartTls`] call [`Connection::upgrade`]; on
    /// [`Event::Throttle`] wait that long first. Do not mix with `run`.
    ///
    /// ```no_run
    /// # fn f(tcp: std::net::TcpStream) -> std::io::Result<()> {
    /// use std::sync::Arc;
    /// use smtp_proto::{config::Config, server::{Decision, Event, PeerInfo}};
    ///
    /// let peer = PeerInfo::new(tcp.peer_addr()?);
    /// let mut conn = smtp_blocking::Connection::manual(tcp, peer, Arc::new(Config::new("mx.example")));
    /// let mut body = Vec::new();
    /// while let Some(event) = conn.next_event()? {
    ///     match event {
    ///         Event::Body(chunk) => body.extend_from_slice(chunk),
    ///         Event::StartTls => conn.upgrade(),
    ///         Event::Throttle(d) => std::thread::sleep(d),
    ///         other => {
    ///             if let Some(ticket) = other.into_ticket() {
    ///                 conn.session_mut().respond(ticket, Decision::Accept).ok();
    ///             }
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_event(&mut self) -> io::Result<Option<Event<'_>>> {
        loop {
            self.apply_stop();
            if self.session.has_event() {
                return Ok(self.session.poll_event());
            }
            if self.session.is_closed() {
                return self.finish().map(|()| None);
            }
            self.io_step()?;
        }
    }

    /// Performs the STARTTLS handshake the session asked for with
    /// [`Event::StartTls`] (writes the `220` first; a failure is reported
    /// to the session, which answers or closes).
    pub fn upgrade(&mut self) {
        if self.flush().is_err() {
            self.session.tls_failed();
            return;
        }
        let t = self.session.config().timeouts.command;
        self.start_tls(t);
    }

    /// Serves the connection until the session closes. Errors are I/O
    /// errors and write timeouts; the client has been answered as far as possible.
    pub fn run(self) -> io::Result<()> {
        let peer = self.session.peer().remote;
        let span = tracing::info_span!("smtp", id = %self.id(), peer = ?peer);
        span.in_scope(|| self.run_inner())
    }

    fn run_inner(mut self) -> io::Result<()> {
        tracing::debug!("session start");
        let command_timeout = self.session.config().timeouts.command;
        loop {
            self.apply_stop();
            match self.drive() {
                Drive::Idle => {}
                Drive::StartTls => {
                    self.flush()?;
                    self.start_tls(command_timeout);
                    continue;
                }
                Drive::Throttle(d) => {
                    self.flush()?;
                    std::thread::sleep(d);
                    continue;
                }
                Drive::Closed => {
                    let res = self.finish();
                    tracing::debug!("session end");
                    return res;
                }
            }
            self.io_step()?;
        }
    }

    /// Writes the pending replies, then reads once.
    fn io_step(&mut self) -> io::Result<()> {
        self.flush()?;
        self.read_step()
    }

    /// The end of a closed session: writes its last replies, then closes.
    fn finish(&mut self) -> io::Result<()> {
        let res = self.flush();
        self.close();
        res
    }

    /// Applies a stop phase the connection has not acted on yet.
    fn apply_stop(&mut self) {
        if let Some(w) = &self.stop {
            self.seen.apply(w.phase(), &mut self.session);
        }
    }

    /// Runs the dispatcher; an abort from the server interrupts a slow hook.
    fn drive(&mut self) -> Drive {
        let Connection {
            session,
            dispatcher,
            stop,
            seen,
            ..
        } = self;
        let Some(w) = stop.as_ref().filter(|_| seen.get() < Stop::Abort) else {
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
        seen.apply(Stop::Abort, session);
        block_on(dispatcher.drive(session))
    }

    /// Writes everything pending, all of it within the command timeout.
    fn flush(&mut self) -> io::Result<()> {
        if !self.session.wants_write() {
            return Ok(());
        }
        let deadline = Instant::now() + self.session.config().timeouts.command;
        let Connection {
            stream,
            session,
            timeouts,
            ..
        } = self;
        let mut sock_bound = |stream: &Stream<S>| match stream.sock() {
            Some(s) => timeouts.bound(s, Some(deadline), false),
            None => Ok(()),
        };
        let res = (|| {
            while session.wants_write() {
                sock_bound(stream)?;
                let n = stream.io()?.write(session.transmit())?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                session.transmitted(n);
            }
            sock_bound(stream)?;
            stream.io()?.flush()
        })();
        if let Err(e) = &res {
            if timed_out(e) {
                tracing::info!("write timed out; closing");
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
        res
    }

    /// Closes our side of a TLS stream: close_notify, then a FIN, each
    /// bounded. A plain socket gets its FIN when it is dropped (a
    /// `shutdown` first would be one more system call).
    fn close(&mut self) {
        let limit = self.session.config().timeouts.command;
        self.timeouts = Timeouts::default();
        if let Stream::Tls(t) = &mut self.stream {
            t.conn.send_close_notify();
            let _ = t.sock.set_write_timeout(Some(limit));
            let _ = t.flush();
            let _ = t.sock.shutdown_write();
        }
    }

    fn start_tls(&mut self, limit: Duration) {
        // The handshake sets the socket's timeouts itself.
        self.timeouts = Timeouts::default();
        let stream = std::mem::replace(&mut self.stream, Stream::Gone);
        let (Some(config), Stream::Plain(plain)) = (self.tls.clone(), stream) else {
            tracing::warn!("STARTTLS without a TLS configuration");
            self.session.tls_failed();
            return;
        };
        match handshake(config, plain, limit) {
            Ok((tls, info)) => {
                tracing::debug!(version = %info.version, cipher = %info.cipher, "STARTTLS done");
                self.stream = Stream::Tls(Box::new(tls));
                if let Err(e) = self.session.tls_established(info) {
                    tracing::error!(error = %e, "tls_established refused");
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "STARTTLS handshake failed");
                self.session.tls_failed();
            }
        }
    }

    /// One read, bounded by the session's deadline (and, under a server, by
    /// [`STOP_CHECK`]); feeds the bytes, the EOF or the time to the session.
    fn read_step(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let deadline = self.session.poll_timeout();
        if deadline.is_some_and(|d| now >= d) || !self.session.wants_read() {
            // Nothing to read now: let time pass (a session that wants no
            // input and has no deadline only waits for a stop phase).
            self.session.handle_timeout(now);
            if !self.session.is_closed() && !self.session.wants_read() {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Ok(());
        }
        let check = self.stop.as_ref().map(|_| now + STOP_CHECK);
        let wake = match (deadline, check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Connection {
            stream,
            session,
            timeouts,
            ..
        } = self;
        if let Some(sock) = stream.sock() {
            timeouts.bound(sock, wake, true)?;
        }
        let buf = session.read_buf();
        if buf.is_empty() {
            // (A zero-length read would look like an EOF.)
            return Ok(());
        }
        match stream.io()?.read(buf) {
            Ok(0) => session.receive_eof(),
            Ok(n) => session.filled(n, Instant::now()),
            Err(e) if timed_out(&e) => session.handle_timeout(Instant::now()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "read failed");
                session.receive_eof();
            }
        }
        Ok(())
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
