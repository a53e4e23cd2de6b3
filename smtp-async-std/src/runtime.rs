//! [`AsyncIoRuntime`]: the kit's [`Runtime`] on `async-io` (smol, or
//! async-std with only the `async-std` feature), the whole of this
//! adapter's runtime glue.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::{Async, Timer};
use futures_rustls::TlsAcceptor;
use smtp_server::runtime::{Alarm, FuturesIo, Runtime};

/// Accepted TCP streams: `Async` itself (16 bytes), not `async_net`'s
/// stream (about 140, with its readiness futures), since the session
/// task holds the accepted stream until its connection takes it.
type TcpStream = Async<std::net::TcpStream>;

#[cfg(not(any(feature = "smol", feature = "async-std")))]
compile_error!("smtp-async-std needs a runtime: enable the `smol` or the `async-std` feature");

/// The `async-io` reactor as the kit's [`Runtime`]: streams are
/// `futures-io` ([`FuturesIo`]), timers are [`async_io::Timer`], and tasks
/// go to smol's global executor, or the one given with
/// [`Server::executor`](crate::Server) (an `Arc<smol::Executor>` converts
/// into this), or, with only the `async-std` feature, to async-std's.
#[derive(Debug, Clone, Default)]
pub struct AsyncIoRuntime {
    #[cfg(feature = "smol")]
    executor: Option<std::sync::Arc<smol::Executor<'static>>>,
}

#[cfg(feature = "smol")]
impl From<std::sync::Arc<smol::Executor<'static>>> for AsyncIoRuntime {
    fn from(executor: std::sync::Arc<smol::Executor<'static>>) -> Self {
        AsyncIoRuntime {
            executor: Some(executor),
        }
    }
}

/// A connection's one [`async_io::Timer`], re-armed in place (a busy
/// session does not touch the reactor's timers at every command).
#[derive(Debug)]
pub struct AsyncIoTimer(Timer);

impl Alarm for AsyncIoTimer {
    fn set(&mut self, at: std::time::Instant) {
        self.0.set_at(at);
    }

    fn poll_alarm(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

/// Accepts from `l` without blocking, else registers for readiness.
fn poll_accept<T, X>(
    l: &Async<T>,
    cx: &mut Context<'_>,
    accept: impl Fn(&T) -> io::Result<X>,
) -> Poll<io::Result<X>> {
    loop {
        match accept(l.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            res => return Poll::Ready(res),
        }
        std::task::ready!(l.poll_readable(cx))?;
    }
}

impl Runtime for AsyncIoRuntime {
    type Io = FuturesIo;
    type Timer = AsyncIoTimer;
    type TlsAcceptor = TlsAcceptor;
    type TcpListener = Async<std::net::TcpListener>;
    type TcpStream = TcpStream;
    #[cfg(unix)]
    type UnixListener = Async<std::os::unix::net::UnixListener>;
    #[cfg(unix)]
    type UnixStream = Async<std::os::unix::net::UnixStream>;

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        #[cfg(feature = "smol")]
        match &self.executor {
            Some(ex) => ex.spawn(task).detach(),
            None => smol::spawn(task).detach(),
        }
        #[cfg(all(feature = "async-std", not(feature = "smol")))]
        drop(async_std::task::spawn(task));
    }

    fn timer() -> AsyncIoTimer {
        AsyncIoTimer(Timer::never())
    }

    fn tls_acceptor(acceptor: TlsAcceptor) -> TlsAcceptor {
        acceptor
    }

    fn local_addr(stream: &TcpStream) -> io::Result<SocketAddr> {
        stream.get_ref().local_addr()
    }

    async fn peek(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        stream.peek(buf).await
    }

    async fn bind_tcp(addr: SocketAddr) -> io::Result<(Self::TcpListener, SocketAddr)> {
        let listener = Async::<std::net::TcpListener>::bind(addr)?;
        let local = listener.get_ref().local_addr()?;
        Ok((listener, local))
    }

    fn tcp_listener(listener: std::net::TcpListener) -> io::Result<Self::TcpListener> {
        // `Async::new` sets non-blocking mode.
        Async::new(listener)
    }

    fn tcp_stream(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        let _ = stream.set_nodelay(true);
        Async::new(stream)
    }

    async fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.get_ref().set_nodelay(true);
        Ok(s)
    }

    fn poll_accept_tcp(
        listener: &Self::TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        poll_accept(listener, cx, |l| {
            let (s, remote) = l.accept()?;
            let _ = s.set_nodelay(true);
            Ok((Async::new(s)?, remote))
        })
    }

    #[cfg(unix)]
    fn unix_listener(listener: std::os::unix::net::UnixListener) -> io::Result<Self::UnixListener> {
        Async::new(listener)
    }

    #[cfg(unix)]
    fn unix_stream(stream: std::os::unix::net::UnixStream) -> io::Result<Self::UnixStream> {
        Async::new(stream)
    }

    #[cfg(unix)]
    async fn connect_unix(path: std::path::PathBuf) -> io::Result<Self::UnixStream> {
        Async::<std::os::unix::net::UnixStream>::connect(path).await
    }

    #[cfg(unix)]
    fn poll_accept_unix(
        listener: &Self::UnixListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Self::UnixStream>> {
        poll_accept(listener, cx, |l| {
            let (s, _) = l.accept()?;
            Async::new(s)
        })
    }
}
