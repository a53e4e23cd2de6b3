//! The [`Runtime`] trait: what the generic [`Connection`] and [`Server`]
//! need from an async runtime, and nothing more.
//!
//! An adapter crate implements it in about a hundred lines (as quinn's
//! `runtime/tokio.rs` and `runtime/smol.rs` do): where tasks run, one
//! re-armable timer, TCP (and Unix-domain) listeners, and how the runtime's
//! streams are read and written ([`StreamIo`]). Everything else (the I/O
//! step, STARTTLS and implicit TLS over `futures-rustls`, limits, the PROXY
//! front, graceful shutdown) is written once in this crate.
//!
//! [`Connection`]: crate::connection::Connection
//! [`Server`]: crate::server::Server

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::io::{AsyncRead, AsyncWrite};

pub use crate::accept::Alarm;

/// An async runtime the kit's [`Connection`](crate::connection::Connection)
/// and [`Server`](crate::server::Server) run on.
///
/// The value is the runtime's handle (where the server spawns its tasks);
/// [`Default`] is "the runtime the caller is on". Every other item is a
/// type or an associated function.
pub trait Runtime: Clone + Default + Send + Sync + 'static {
    /// How the runtime's streams are read and written ([`FuturesIo`] for
    /// runtimes on `futures-io`).
    #[cfg(unix)]
    type Io: StreamIo<Self::TcpStream> + StreamIo<Self::UnixStream>;
    /// How the runtime's streams are read and written ([`FuturesIo`] for
    /// runtimes on `futures-io`).
    #[cfg(not(unix))]
    type Io: StreamIo<Self::TcpStream>;
    /// A connection's one timer, re-armed in place.
    type Timer: Alarm + Send + Unpin + 'static;
    /// The TLS acceptor the runtime's users know (e.g. `tokio_rustls::TlsAcceptor`).
    type TlsAcceptor: Clone + Send + Sync + 'static;
    /// A bound TCP listener.
    type TcpListener: Send + Sync + 'static;
    /// An accepted TCP stream.
    type TcpStream: Send + Unpin + 'static;
    /// A bound Unix-domain listener.
    #[cfg(unix)]
    type UnixListener: Send + Sync + 'static;
    /// An accepted Unix-domain stream.
    #[cfg(unix)]
    type UnixStream: Send + Unpin + 'static;

    /// Runs `task` to completion in the background (detached).
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);

    /// A timer that does not fire until [`Alarm::set`].
    fn timer() -> Self::Timer;

    /// The `futures-rustls` acceptor for `acceptor` (TLS is written once,
    /// over `futures-io`).
    fn tls_acceptor(acceptor: Self::TlsAcceptor) -> futures_rustls::TlsAcceptor;

    /// Binds a TCP listener; returns it with its address (the port the OS
    /// picked for port 0).
    fn bind_tcp(
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<(Self::TcpListener, SocketAddr)>> + Send;

    /// Registers a listening TCP socket opened elsewhere (socket
    /// activation) with the runtime, in non-blocking mode.
    fn tcp_listener(listener: std::net::TcpListener) -> io::Result<Self::TcpListener>;

    /// Registers a connected TCP socket opened elsewhere (inetd) with the
    /// runtime, in non-blocking mode, with `TCP_NODELAY` set.
    fn tcp_stream(stream: std::net::TcpStream) -> io::Result<Self::TcpStream>;

    /// Opens a TCP connection to `addr` (with `TCP_NODELAY` set).
    fn connect_tcp(addr: SocketAddr) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;

    /// Accepts a connection: the stream, with `TCP_NODELAY` set, and the peer's address.
    fn poll_accept_tcp(
        listener: &Self::TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::TcpStream, SocketAddr)>>;

    /// The local address of an accepted stream.
    fn local_addr(stream: &Self::TcpStream) -> io::Result<SocketAddr>;

    /// Copies the bytes waiting on `stream` into `buf` without consuming
    /// them (`MSG_PEEK`), waiting for at least one; `Ok(0)` at the end.
    fn peek<'a>(
        stream: &'a mut Self::TcpStream,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Registers a bound Unix-domain listener with the runtime.
    #[cfg(unix)]
    fn unix_listener(listener: std::os::unix::net::UnixListener) -> io::Result<Self::UnixListener>;

    /// Registers a connected Unix-domain socket opened elsewhere (inetd)
    /// with the runtime, in non-blocking mode.
    #[cfg(unix)]
    fn unix_stream(stream: std::os::unix::net::UnixStream) -> io::Result<Self::UnixStream>;

    /// Connects to the Unix-domain socket at `path` (an LMTP store's,
    /// say: the relay's `unix:PATH` upstream).
    #[cfg(unix)]
    fn connect_unix(
        path: std::path::PathBuf,
    ) -> impl Future<Output = io::Result<Self::UnixStream>> + Send;

    /// Accepts a Unix-domain connection.
    #[cfg(unix)]
    fn poll_accept_unix(
        listener: &Self::UnixListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Self::UnixStream>>;
}

/// One I/O operation of [`StreamIo::poll_io`].
#[derive(Debug)]
pub enum IoOp<'a> {
    /// Read into the buffer; `Ok(0)` is the end of the stream.
    Read(&'a mut [u8]),
    /// Write from the buffer; `Ok(n)`: `n` bytes written.
    Write(&'a [u8]),
    /// Flush what was written; `Ok(0)` when done.
    Flush,
    /// Flush and close the writing half (TLS: `close_notify`); `Ok(0)` when done.
    Close,
}

/// How a runtime reads and writes a stream type `S` (implemented by a
/// runtime's [`Runtime::Io`] for the streams of its I/O traits).
pub trait StreamIo<S> {
    /// Performs `op` on `stream`.
    fn poll_io(stream: &mut S, cx: &mut Context<'_>, op: IoOp<'_>) -> Poll<io::Result<usize>>;
}

/// [`StreamIo`] for every `futures-io` stream (smol, async-std).
#[derive(Debug, Clone, Copy, Default)]
pub struct FuturesIo;

impl<S: AsyncRead + AsyncWrite + Unpin> StreamIo<S> for FuturesIo {
    #[inline(always)]
    fn poll_io(stream: &mut S, cx: &mut Context<'_>, op: IoOp<'_>) -> Poll<io::Result<usize>> {
        let s = Pin::new(stream);
        match op {
            IoOp::Read(buf) => s.poll_read(cx, buf),
            IoOp::Write(buf) => s.poll_write(cx, buf),
            IoOp::Flush => s.poll_flush(cx).map_ok(|()| 0),
            IoOp::Close => s.poll_close(cx).map_ok(|()| 0),
        }
    }
}

/// A runtime's stream seen through `futures-io` (what `futures-rustls`
/// reads and writes), at no cost.
pub struct Wrap<R, S>(S, PhantomData<fn() -> R>);

impl<R, S> Wrap<R, S> {
    /// Wraps `stream`.
    pub fn new(stream: S) -> Self {
        Wrap(stream, PhantomData)
    }

    /// The stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.0
    }
}

impl<R, S> std::fmt::Debug for Wrap<R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wrap")
    }
}

impl<R: Runtime, S: Unpin> AsyncRead for Wrap<R, S>
where
    R::Io: StreamIo<S>,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        R::Io::poll_io(&mut self.get_mut().0, cx, IoOp::Read(buf))
    }
}

impl<R: Runtime, S: Unpin> AsyncWrite for Wrap<R, S>
where
    R::Io: StreamIo<S>,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        R::Io::poll_io(&mut self.get_mut().0, cx, IoOp::Write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        R::Io::poll_io(&mut self.get_mut().0, cx, IoOp::Flush).map_ok(drop)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        R::Io::poll_io(&mut self.get_mut().0, cx, IoOp::Close).map_ok(drop)
    }
}

/// Completes after `d`, on `R`'s timer.
pub async fn sleep<R: Runtime>(d: Duration) {
    let mut t = R::timer();
    t.set(Instant::now() + d);
    std::future::poll_fn(|cx| t.poll_alarm(cx)).await;
}

/// `f`, or `None` once `d` has passed (on `R`'s timer).
pub async fn timeout<R: Runtime, F: Future>(d: Duration, f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut t = R::timer();
    t.set(Instant::now() + d);
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => t.poll_alarm(cx).map(|()| None),
    })
    .await
}
