//! [`TokioRuntime`]: the kit's [`Runtime`] on tokio, the whole of this
//! adapter's runtime glue.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use smtp_server::futures_rustls;
use smtp_server::runtime::{Alarm, IoOp, Runtime, StreamIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Tokio as the kit's [`Runtime`]: tasks go to the runtime the server runs
/// on (`tokio::spawn`), timers are tokio's, streams are tokio's
/// `AsyncRead + AsyncWrite`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

/// [`StreamIo`] for every tokio stream (`AsyncRead + AsyncWrite + Unpin`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioIo;

impl<S: AsyncRead + AsyncWrite + Unpin> StreamIo<S> for TokioIo {
    #[inline(always)]
    fn poll_io(stream: &mut S, cx: &mut Context<'_>, op: IoOp<'_>) -> Poll<io::Result<usize>> {
        let s = Pin::new(stream);
        match op {
            IoOp::Read(buf) => {
                let mut buf = ReadBuf::new(buf);
                s.poll_read(cx, &mut buf).map_ok(|()| buf.filled().len())
            }
            IoOp::Write(buf) => s.poll_write(cx, buf),
            IoOp::Flush => s.poll_flush(cx).map_ok(|()| 0),
            IoOp::Close => s.poll_shutdown(cx).map_ok(|()| 0),
        }
    }
}

/// A connection's timer: one tokio `Sleep`, reset in place.
#[derive(Debug)]
pub struct TokioTimer(Pin<Box<Sleep>>);

impl Alarm for TokioTimer {
    fn set(&mut self, at: std::time::Instant) {
        self.0.as_mut().reset(Instant::from_std(at));
    }

    fn poll_alarm(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Runtime for TokioRuntime {
    type Io = TokioIo;
    type Timer = TokioTimer;
    type TlsAcceptor = tokio_rustls::TlsAcceptor;
    type TcpListener = TcpListener;
    type TcpStream = TcpStream;
    #[cfg(unix)]
    type UnixListener = tokio::net::UnixListener;
    #[cfg(unix)]
    type UnixStream = tokio::net::UnixStream;

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Outside a runtime (a hook's cleanup dropped after the runtime
        // stopped) there is nowhere to run it: it is dropped, not a panic.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(task)),
            Err(_) => tracing::debug!("no tokio runtime: background task dropped"),
        }
    }

    fn timer() -> TokioTimer {
        TokioTimer(Box::pin(tokio::time::sleep_until(Instant::now())))
    }

    fn tls_acceptor(acceptor: tokio_rustls::TlsAcceptor) -> futures_rustls::TlsAcceptor {
        acceptor.config().clone().into()
    }

    async fn bind_tcp(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    }

    fn tcp_listener(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    }

    fn tcp_stream(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        TcpStream::from_std(stream)
    }

    async fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    fn poll_accept_tcp(
        listener: &TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        listener.poll_accept(cx).map_ok(|(s, a)| {
            let _ = s.set_nodelay(true);
            (s, a)
        })
    }

    fn local_addr(stream: &TcpStream) -> io::Result<SocketAddr> {
        stream.local_addr()
    }

    async fn peek(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        stream.peek(buf).await
    }

    #[cfg(unix)]
    fn unix_listener(
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<tokio::net::UnixListener> {
        listener.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(listener)
    }

    #[cfg(unix)]
    fn unix_stream(stream: std::os::unix::net::UnixStream) -> io::Result<tokio::net::UnixStream> {
        stream.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(stream)
    }

    #[cfg(unix)]
    async fn connect_unix(path: std::path::PathBuf) -> io::Result<tokio::net::UnixStream> {
        tokio::net::UnixStream::connect(path).await
    }

    #[cfg(unix)]
    fn poll_accept_unix(
        listener: &tokio::net::UnixListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<tokio::net::UnixStream>> {
        listener.poll_accept(cx).map_ok(|(s, _)| s)
    }
}
