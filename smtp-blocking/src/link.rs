//! The drive loop on the calling thread, for either role: a blocking
//! [`Socket`] driving a machine that implements [`Drive`] (the server's
//! `Session`, the relay's `Client`).

use std::future::{Future, ready};
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};
use rustls::{SideData, StreamOwned};
use smtp_proto::drive::{Drive, Instruction, TlsInfo};
use smtp_server::accept::{Stop, StopSeen, tls_info};
use smtp_server::link::{Driver, Stoppable};

use crate::connection::{Socket, Timeouts, timed_out};
use crate::stop::{StopBus, Waiter};

/// How often a machine blocked on a read looks at the server's stop phase.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// A TLS stream over a [`Socket`] (server side).
pub(crate) type TlsStream<S> = StreamOwned<ServerConnection, S>;

/// A plain stream, or the same stream after STARTTLS, on either side.
pub(crate) enum Stream<S: Socket> {
    Plain(S),
    Server(Box<TlsStream<S>>),
    Client(Box<StreamOwned<ClientConnection, S>>),
    /// During (and after a failed) handshake.
    Gone,
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write + ?Sized> ReadWrite for T {}

impl<S: Socket> Stream<S> {
    fn sock(&self) -> Option<&S> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Server(t) => Some(&t.sock),
            Stream::Client(t) => Some(&t.sock),
            Stream::Gone => None,
        }
    }

    fn io(&mut self) -> io::Result<&mut dyn ReadWrite> {
        match self {
            Stream::Plain(s) => Ok(s),
            Stream::Server(t) => Ok(&mut **t),
            Stream::Client(t) => Ok(&mut **t),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// How a link starts TLS when its machine says [`Instruction::StartTls`].
#[derive(Clone)]
pub(crate) enum TlsSide {
    Accept(Arc<ServerConfig>),
    Connect(Arc<ClientConfig>, ServerName<'static>),
}

/// A TLS handshake on `sock` with `conn`, all of it within `limit`.
pub(crate) fn handshake<C, D, S>(
    mut conn: C,
    mut sock: S,
    limit: Duration,
) -> io::Result<(StreamOwned<C, S>, TlsInfo)>
where
    C: Deref<Target = ConnectionCommon<D>> + DerefMut,
    D: SideData,
    S: Socket,
{
    let deadline = Instant::now() + limit;
    let mut timeouts = Timeouts::default();
    while conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if conn.wants_write() {
            timeouts.bound(&sock, Some(deadline), false)?;
            conn.write_tls(&mut sock)?;
            continue;
        }
        timeouts.bound(&sock, Some(deadline), true)?;
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
    let mut info = tls_info(&conn);
    info.channel_binding = smtp_server::accept::channel_binding(&info, |out, label| {
        conn.export_keying_material(out, label, None)
    });
    Ok((StreamOwned::new(conn, sock), info))
}

/// A blocking stream driving a machine `E`: writes every pending byte
/// before it reads again (and reads nothing while the machine wants no
/// input, so a peer that pipelines without reading is paused), bounds each
/// read by the machine's deadline and each flush by the I/O timeout, and
/// does the TLS handshakes the machine asks for.
pub(crate) struct Link<S: Socket, E> {
    stream: Stream<S>,
    pub(crate) machine: E,
    tls: Option<TlsSide>,
    pub(crate) stop: Option<Waiter>,
    /// The stop phase of the server whose session opened this link (the
    /// relay's upstream): watched, not counted as a session.
    pub(crate) bus: Option<Arc<StopBus>>,
    pub(crate) seen: StopSeen,
    /// The socket timeouts last set, to skip setsockopt calls that would
    /// change nothing.
    timeouts: Timeouts,
    io_timeout: Duration,
}

impl<S: Socket, E: Drive + Stoppable> Link<S, E> {
    pub(crate) fn new(stream: Stream<S>, machine: E, io_timeout: Duration) -> Self {
        Link {
            stream,
            machine,
            tls: None,
            stop: None,
            bus: None,
            seen: StopSeen::default(),
            timeouts: Timeouts::default(),
            io_timeout,
        }
    }

    pub(crate) fn set_tls(&mut self, tls: Option<TlsSide>) {
        self.tls = tls;
    }

    /// Applies a stop phase the link has not acted on yet.
    pub(crate) fn apply_stop(&mut self) {
        if let Some(phase) = self.phase() {
            self.seen.apply(phase, &mut self.machine);
        }
    }

    /// The server's stop phase, when the link runs under a server.
    fn phase(&self) -> Option<Stop> {
        match (&self.stop, &self.bus) {
            (Some(w), _) => Some(w.phase()),
            (None, Some(b)) => Some(b.phase()),
            (None, None) => None,
        }
    }

    /// Does I/O until the machine has an event and returns it; `None` once
    /// it is closed and its last bytes are written: the kit's one
    /// [`next_event`](smtp_server::link::next_event), on this thread.
    pub(crate) fn next_event(&mut self) -> io::Result<Option<E::Event<'_>>> {
        block_on(smtp_server::link::next_event(self))
    }

    /// Carries out one instruction (the kit's [`obey`](smtp_server::link::obey)).
    pub(crate) fn obey(&mut self, i: Instruction) -> io::Result<bool> {
        block_on(smtp_server::link::obey(self, i))
    }

    /// Writes everything pending, all of it within the I/O timeout.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.machine.transmit().is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.io_timeout;
        let Link {
            stream,
            machine,
            timeouts,
            ..
        } = self;
        let mut sock_bound = |stream: &Stream<S>| match stream.sock() {
            Some(s) => timeouts.bound(s, Some(deadline), false),
            None => Ok(()),
        };
        let res = (|| {
            while !machine.transmit().is_empty() {
                sock_bound(stream)?;
                let n = stream.io()?.write(machine.transmit())?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                machine.transmitted(n);
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
    fn close_tls(&mut self) {
        self.timeouts = Timeouts::default();
        let limit = Some(self.io_timeout);
        let sock = match &mut self.stream {
            Stream::Server(t) => {
                t.conn.send_close_notify();
                let _ = t.sock.set_write_timeout(limit);
                let _ = t.flush();
                &t.sock
            }
            Stream::Client(t) => {
                t.conn.send_close_notify();
                let _ = t.sock.set_write_timeout(limit);
                let _ = t.flush();
                &t.sock
            }
            _ => return,
        };
        let _ = sock.shutdown_write();
    }

    /// The TLS handshake the machine asked for, reported to it.
    fn handshake(&mut self) {
        // The handshake sets the socket's timeouts itself.
        self.timeouts = Timeouts::default();
        let stream = std::mem::replace(&mut self.stream, Stream::Gone);
        let (Some(side), Stream::Plain(plain)) = (self.tls.clone(), stream) else {
            tracing::warn!("STARTTLS without TLS settings");
            self.machine.tls_failed(Instant::now());
            return;
        };
        let limit = self.io_timeout;
        let done = match side {
            TlsSide::Accept(config) => {
                let done = ServerConnection::new(config)
                    .map_err(io::Error::other)
                    .and_then(|c| handshake(c, plain, limit));
                // Only the server's side counts in the metrics (not a relay's).
                let version = done.as_ref().ok().map(|(_, info)| info.version.as_str());
                smtp_server::metrics::tls_handshake(version);
                done.map(|(s, info)| (Stream::Server(Box::new(s)), info))
            }
            TlsSide::Connect(config, name) => ClientConnection::new(config, name)
                .map_err(io::Error::other)
                .and_then(|c| handshake(c, plain, limit))
                .map(|(s, info)| (Stream::Client(Box::new(s)), info)),
        };
        match done {
            Ok((stream, info)) => {
                tracing::debug!(version = %info.version, cipher = %info.cipher, "STARTTLS done");
                self.stream = stream;
                if let Err(e) = self.machine.tls_established(info, Instant::now()) {
                    tracing::error!(error = %e, "tls_established refused");
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "STARTTLS handshake failed");
                self.machine.tls_failed(Instant::now());
            }
        }
    }

    /// Writes what is pending, then reads once, bounded by the machine's
    /// deadline (and, under a server, by [`STOP_CHECK`]); feeds the bytes,
    /// the EOF or the time to the machine.
    fn io_step(&mut self, read: bool, deadline: Option<Instant>) -> io::Result<()> {
        if !self.machine.transmit().is_empty() && !read {
            // Writing may make room to read: ask the machine again first.
            return self.flush();
        }
        self.flush()?;
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            self.machine.handle_timeout(now);
            return Ok(());
        }
        let check = self.phase().map(|_| now + STOP_CHECK);
        let wake = match (deadline, check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !read {
            // Nothing to read (throttled, …): let time pass until the
            // deadline or the next look at the stop phase.
            let nap = wake.map_or(Duration::from_millis(10), |w| {
                w.saturating_duration_since(now)
            });
            std::thread::sleep(nap);
            self.machine.handle_timeout(Instant::now());
            return Ok(());
        }
        let Link {
            stream,
            machine,
            timeouts,
            ..
        } = self;
        if let Some(sock) = stream.sock() {
            timeouts.bound(sock, wake, true)?;
        }
        let buf = machine.read_buf();
        if buf.is_empty() {
            // (A zero-length read would look like an EOF.)
            return Ok(());
        }
        match stream.io()?.read(buf) {
            Ok(0) => machine.receive_eof(Instant::now()),
            Ok(n) => machine.filled(n, Instant::now()),
            Err(e) if timed_out(&e) => machine.handle_timeout(Instant::now()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "read failed");
                machine.receive_eof(Instant::now());
            }
        }
        Ok(())
    }
}

/// The kit's drive loop over this link: every future is ready at once (the
/// I/O blocks the thread that polls it).
impl<S: Socket, E: Drive + Stoppable> Driver for Link<S, E> {
    type Machine = E;

    fn machine(&mut self) -> &mut E {
        &mut self.machine
    }

    fn apply_stop(&mut self) {
        Link::apply_stop(self);
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        ready(Link::flush(self))
    }

    fn close(&mut self) -> impl Future<Output = ()> + Send {
        self.close_tls();
        ready(())
    }

    fn start_tls(&mut self) -> impl Future<Output = ()> + Send {
        self.handshake();
        ready(())
    }

    fn wait(
        &mut self,
        read: bool,
        deadline: Option<Instant>,
    ) -> impl Future<Output = io::Result<()>> + Send {
        ready(self.io_step(read, deadline))
    }
}
