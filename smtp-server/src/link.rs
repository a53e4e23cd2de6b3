//! The one async driver for either role: a stream of the runtime `R` and a
//! sans-IO machine that implements [`Drive`] (the server's [`Session`],
//! the relay's [`Client`]), kept to the
//! [drive loop](smtp_proto::drive#the-drive-loop).
//!
//! [`Session`]: smtp_proto::server::Session
//! [`Client`]: smtp_proto::client::Client

use std::future::{Future, poll_fn};
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_rustls::pki_types::ServerName;
use futures_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use futures_util::io::{AsyncRead, AsyncWrite};
use smtp_proto::drive::{Drive, Instruction, Output};
use smtp_proto::reply::Reply;
use smtp_proto::server::{CloseReason, Session};

use crate::accept::{IoStep, PollIo, Stop, StopSeen, StopWatch, tls_info};
use crate::runtime::{IoOp, Runtime, StreamIo, Wrap, timeout};

/// A plain stream, or the same stream after STARTTLS (or an implicit-TLS
/// handshake), on either side.
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

/// How a link starts TLS when its machine says [`Instruction::StartTls`].
#[derive(Clone)]
pub(crate) enum TlsSide {
    /// The server side (STARTTLS offered by a session).
    Accept(TlsAcceptor),
    /// The client side, to this server name.
    Connect(TlsConnector, ServerName<'static>),
}

/// What a server's stop phase does to a machine.
pub trait Stoppable {
    /// Applies `phase` ([`Stop::Drain`]: finish the transaction, then
    /// close; [`Stop::Abort`]: close now).
    fn stop(&mut self, phase: Stop, now: Instant);
}

impl Stoppable for Session {
    fn stop(&mut self, phase: Stop, _now: Instant) {
        match phase {
            Stop::Drain => self.shutdown(),
            Stop::Abort => self.abort(Reply::SHUTTING_DOWN, CloseReason::Shutdown),
            Stop::Run => {}
        }
    }
}

impl Stoppable for smtp_proto::client::Client {
    fn stop(&mut self, phase: Stop, now: Instant) {
        // A draining server lets the transaction finish; an aborting one
        // ends the upstream session at once (the relay then fails with 451).
        if phase == Stop::Abort {
            self.abort(now);
        }
    }
}

/// A stream of the runtime `R` driving a machine `E`: the
/// [drive loop](smtp_proto::drive#the-drive-loop) written once, for the
/// server's sessions and the relay's upstream clients alike.
///
/// Reading and writing go on together ([`IoStep`]); every write, TLS
/// handshake and close is bounded by the I/O timeout; a server stop signal
/// reaches the machine through [`Stoppable`].
pub struct Link<R: Runtime, S, E> {
    stream: Stream<R, S>,
    machine: E,
    tls: Option<TlsSide>,
    stop: Option<StopWatch>,
    seen: StopSeen,
    io: IoStep,
    timer: R::Timer,
    io_timeout: Duration,
    /// Shut the stream down at the end: it is TLS (ours, or a TLS stream
    /// the caller handed in), which wants its close_notify.
    close_at_end: bool,
}

impl<R: Runtime, S, E: std::fmt::Debug> std::fmt::Debug for Link<R, S, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("machine", &self.machine)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime, S, E> Link<R, S, E>
where
    R::Io: StreamIo<S>,
    S: Unpin + Send,
    E: Drive + Stoppable,
{
    pub(crate) fn new(stream: Stream<R, S>, machine: E, io_timeout: Duration) -> Self {
        Link {
            stream,
            machine,
            tls: None,
            stop: None,
            seen: StopSeen::default(),
            io: IoStep::default(),
            timer: R::timer(),
            io_timeout,
            close_at_end: false,
        }
    }

    /// Shuts the stream down at the end even while it is `Plain` to us (a
    /// TLS stream of the caller's).
    pub(crate) fn close_at_end(&mut self, close: bool) {
        self.close_at_end = close;
    }

    pub(crate) fn set_tls(&mut self, tls: Option<TlsSide>) {
        self.tls = tls;
    }

    pub(crate) fn set_stop(&mut self, stop: StopWatch) {
        self.stop = Some(stop);
    }

    /// The machine.
    pub fn machine(&self) -> &E {
        &self.machine
    }

    /// The machine, to give it input of its own (a decision, a command).
    pub fn machine_mut(&mut self) -> &mut E {
        &mut self.machine
    }

    /// Applies a stop phase the link has not acted on yet.
    pub(crate) fn apply_stop(&mut self) {
        if let Some(w) = &self.stop {
            self.seen.apply(w.get(), &mut self.machine);
        }
    }

    /// The machine and the stop watch, for a dispatcher that an abort
    /// interrupts ([`crate::accept::drive_until_abort`]).
    pub(crate) fn parts(&mut self) -> (&mut E, Option<&mut StopWatch>, &mut StopSeen) {
        (&mut self.machine, self.stop.as_mut(), &mut self.seen)
    }

    /// Does I/O until the machine has an event and returns it; `None` once
    /// it is closed and its last bytes are written ([`next_event`]).
    pub async fn next_event(&mut self) -> io::Result<Option<E::Event<'_>>>
    where
        E: Send,
    {
        next_event(self).await
    }

    /// After the last flush: closes a TLS stream (close_notify), within
    /// the I/O timeout.
    async fn close_tls(&mut self) {
        if self.close_at_end || matches!(self.stream, Stream::Tls(_)) {
            let _ = timeout::<R, _>(self.io_timeout, self.stream.op(|| IoOp::Close)).await;
        }
    }

    /// Writes everything pending, within the I/O timeout.
    pub async fn flush(&mut self) -> io::Result<()> {
        let Link {
            stream, machine, ..
        } = self;
        let all = async {
            while !machine.transmit().is_empty() {
                let (s, m) = (&mut *stream, &mut *machine);
                let n = poll_fn(move |cx| s.poll_op(cx, IoOp::Write(m.transmit()))).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                machine.transmitted(n);
            }
            stream.op(|| IoOp::Flush).await.map(drop)
        };
        self.io.flushed();
        timeout::<R, _>(self.io_timeout, all)
            .await
            .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
    }

    /// The TLS handshake the machine asked for, reported to it.
    async fn start_tls(&mut self) {
        let stream = std::mem::replace(&mut self.stream, Stream::Gone);
        let (Some(side), Stream::Plain(plain)) = (self.tls.clone(), stream) else {
            tracing::warn!("STARTTLS without TLS settings");
            self.machine.tls_failed(Instant::now());
            return;
        };
        let plain = Wrap::new(plain);
        // Only the server's side counts in the metrics (not a relay's).
        let server = matches!(side, TlsSide::Accept(_));
        // The facts are read before the stream becomes the common type,
        // which no longer offers the exporter.
        let handshake = async {
            match side {
                TlsSide::Accept(a) => a.accept(plain).await.map(|tls| {
                    let conn = tls.get_ref().1;
                    let mut info = tls_info(conn);
                    info.channel_binding = crate::accept::channel_binding(&info, |out, label| {
                        conn.export_keying_material(out, label, None)
                    });
                    (TlsStream::from(tls), info)
                }),
                TlsSide::Connect(c, name) => c.connect(name, plain).await.map(|tls| {
                    let info = tls_info(tls.get_ref().1);
                    (TlsStream::from(tls), info)
                }),
            }
        };
        let outcome = timeout::<R, _>(self.io_timeout, Box::pin(handshake)).await;
        if server {
            let version = match &outcome {
                Some(Ok((_, info))) => Some(info.version.as_str()),
                _ => None,
            };
            crate::metrics::tls_handshake(version);
        }
        match outcome {
            Some(Ok((tls, info))) => {
                tracing::debug!(version = %info.version, cipher = %info.cipher, "STARTTLS done");
                self.stream = Stream::Tls(Box::new(tls));
                if let Err(e) = self.machine.tls_established(info, Instant::now()) {
                    tracing::error!(error = %e, "tls_established refused");
                }
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "STARTTLS handshake failed");
                self.machine.tls_failed(Instant::now());
            }
            None => {
                tracing::info!("STARTTLS handshake timed out");
                self.machine.tls_failed(Instant::now());
            }
        }
    }

    /// One round of I/O ([`IoStep::run`]).
    async fn io_step(&mut self, read: bool, deadline: Option<Instant>) -> io::Result<()> {
        let Link {
            stream,
            machine,
            stop,
            seen,
            io,
            timer,
            io_timeout,
            ..
        } = self;
        let wait = crate::accept::Wait {
            read,
            deadline,
            write_timeout: *io_timeout,
        };
        io.run(stream, timer, machine, wait, stop.as_mut(), seen.get())
            .await
    }
}

/// The I/O one driver does for the [drive loop](smtp_proto::drive#the-drive-loop):
/// the async [`Link`], and `smtp-blocking`'s link on threads. The loop
/// itself ([`next_event`], [`obey`]) is written once, here.
pub trait Driver {
    /// The machine driven.
    type Machine: Drive + Stoppable;
    /// The machine.
    fn machine(&mut self) -> &mut Self::Machine;
    /// Applies a server stop phase not acted on yet.
    fn apply_stop(&mut self);
    /// Writes everything the machine holds (bounded by the I/O timeout).
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// After the last flush: closes the TLS layer, if any (close_notify).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// The TLS handshake, reported to the machine.
    fn start_tls(&mut self) -> impl Future<Output = ()> + Send;
    /// One round of I/O for [`Instruction::Idle`] (and, reading nothing
    /// until its end, [`Instruction::Throttle`]): writes, reads if `read`,
    /// and calls `handle_timeout` once `deadline` passed.
    fn wait(
        &mut self,
        read: bool,
        deadline: Option<Instant>,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// Does I/O until the machine has an event and returns it; `None` once it
/// is closed and its last bytes are written (a TLS stream shut down).
/// STARTTLS, throttling, timeouts and stop phases are handled here. A
/// pending decision is an `InvalidInput` error: answer its ticket first.
pub async fn next_event<D: Driver>(
    d: &mut D,
) -> io::Result<Option<<D::Machine as Drive>::Event<'_>>> {
    next_event_unless(d, |_| false).await
}

/// [`next_event`], but `Ok(None)` also as soon as `enough` holds before
/// more I/O: e.g. a client whose BDAT chunk replies made room for more
/// body ([`Client::wants_body`](smtp_proto::client::Client::wants_body)),
/// which is no event.
pub async fn next_event_unless<D: Driver>(
    d: &mut D,
    enough: fn(&D::Machine) -> bool,
) -> io::Result<Option<<D::Machine as Drive>::Event<'_>>> {
    loop {
        d.apply_stop();
        if d.machine().has_event() {
            return Ok(d.machine().poll().event());
        }
        if enough(d.machine()) {
            return Ok(None);
        }
        let Output::Instruction(i) = d.machine().poll() else {
            debug_assert!(false, "has_event said no event, poll gave one");
            continue;
        };
        if i == Instruction::AwaitingDecision {
            d.flush().await?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a decision is pending: answer its ticket first",
            ));
        }
        if obey(d, i).await? {
            return Ok(None);
        }
    }
}

/// Carries out one instruction; `true` once the machine is closed and its
/// last bytes are written (and a TLS stream shut down).
pub async fn obey<D: Driver>(d: &mut D, i: Instruction) -> io::Result<bool> {
    let flushed = match i {
        Instruction::Idle { read, deadline } => {
            return d.wait(read, deadline).await.map(|()| false);
        }
        Instruction::Throttle(until) => return d.wait(false, Some(until)).await.map(|()| false),
        _ => d.flush().await,
    };
    match i {
        Instruction::Closed => {
            d.close().await;
            flushed?;
            return Ok(true);
        }
        Instruction::StartTls => {
            flushed?;
            d.start_tls().await;
        }
        // Written; the answer to a pending decision comes from elsewhere.
        _ => flushed?,
    }
    Ok(false)
}

impl<R: Runtime, S, E> Driver for Link<R, S, E>
where
    R::Io: StreamIo<S>,
    S: Unpin + Send,
    E: Drive + Stoppable + Send,
{
    type Machine = E;

    fn machine(&mut self) -> &mut E {
        &mut self.machine
    }

    fn apply_stop(&mut self) {
        Link::apply_stop(self);
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        Link::flush(self)
    }

    fn close(&mut self) -> impl Future<Output = ()> + Send {
        self.close_tls()
    }

    fn start_tls(&mut self) -> impl Future<Output = ()> + Send {
        Link::start_tls(self)
    }

    fn wait(
        &mut self,
        read: bool,
        deadline: Option<Instant>,
    ) -> impl Future<Output = io::Result<()>> + Send {
        self.io_step(read, deadline)
    }
}
