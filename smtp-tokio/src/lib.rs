//! Tokio adapter for the [`smtp_proto`] SMTP/LMTP server core.
//!
//! The core ([`smtp_proto::server::Session`]) is a pure state machine; the
//! [`smtp_server::handler::Dispatcher`] runs your [`Handler`] on its events.
//! This crate is the glue to tokio: [`TokioRuntime`] implements the kit's
//! [`Runtime`](smtp_server::runtime::Runtime), and the kit's generic
//! connection and server are named here in tokio's idiom:
//!
//! - [`Server`]: listeners (plain with STARTTLS, implicit TLS, Unix),
//!   connection limits, graceful shutdown.
//! - [`Connection`]: one stream and one session, for your own accept loop;
//!   [`serve_stream`] is the shortest way to use it.
//! - the `smtpd` binary (feature `cli`): a debugging, Maildir or mbox server.
//!
//! # Example
//!
//! A server that accepts and discards every message, on a port the OS picks:
//!
//! ```
//! use std::sync::Arc;
//! use smtp_proto::config::Config;
//! use smtp_server::store::SinkHandler;
//! use smtp_tokio::Server;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = Server::new(SinkHandler)
//!     .config(Arc::new(Config::new("mx.example")))
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .shutdown_signal(async { let _ = stopped.await; })
//!     .bind()
//!     .await?;
//! let addr = server.local_addrs()[0];
//! let running = tokio::spawn(server.run());
//!
//! let mut client = tokio::net::TcpStream::connect(addr).await?;
//! let mut buf = [0u8; 512];
//! let n = client.read(&mut buf).await?;
//! assert!(buf[..n].starts_with(b"220 mx.example"));
//! client.write_all(b"QUIT\r\n").await?;
//! let n = client.read(&mut buf).await?;
//! assert_eq!(&buf[..n], b"221 2.0.0 Bye\r\n");
//!
//! stop.send(()).unwrap();
//! running.await.unwrap()
//! # }
//! ```
//!
//! # What the adapter does
//!
//! The kit's [`Connection`](smtp_server::connection::Connection) and
//! [`Server`](smtp_server::server::Server) do the work, written once for
//! every runtime (TLS over `futures-rustls`, which tokio streams reach
//! through [`TokioIo`](runtime::TokioIo)). They read into the session's buffer and writes its replies concurrently,
//! never reads while the session does not want input (so a client that
//! pipelines without reading replies is paused, not buffered), arms tokio's
//! timer at [`smtp_proto::server::Session::poll_timeout`], bounds every write
//! and TLS handshake by the command timeout, and runs each connection in its
//! own task under a `tracing` span with the peer and a session id (a panic in
//! one never stops the server; the dispatcher already turns a panicking hook
//! into `421`).

pub use smtp_proto;
pub use smtp_server::accept::{DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS};
pub use smtp_server::handler::Handler;
pub use smtp_server::server::ServerHandle;
pub use tokio_rustls;
pub use tokio_rustls::rustls;

pub mod runtime;

#[cfg(feature = "cli")]
pub mod cli;

pub use runtime::TokioRuntime;

/// One SMTP connection over any tokio stream (`AsyncRead + AsyncWrite +
/// Unpin + Send`): the kit's [`Connection`](smtp_server::connection::Connection)
/// on tokio. STARTTLS takes a [`tokio_rustls::TlsAcceptor`] (`with_tls`).
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
///
/// The low level, `next_event` with every answer given by hand:
///
/// ```no_run
/// # async fn f(tcp: tokio::net::TcpStream) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use std::time::Instant;
/// use smtp_proto::{config::Config, server::{Decision, Event, PeerInfo}};
///
/// let peer = PeerInfo::new(tcp.peer_addr()?);
/// let mut conn = smtp_tokio::Connection::manual(tcp, peer, Arc::new(Config::new("mx.example")));
/// let mut body = Vec::new();
/// while let Some(event) = conn.next_event().await? {
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
pub type Connection<S, H> = smtp_server::connection::Connection<TokioRuntime, S, H>;

/// The server builder on tokio: the kit's [`Server`](smtp_server::server::Server).
/// See the [crate docs](crate) for an example.
pub type Server<H> = smtp_server::server::Server<TokioRuntime, H>;

/// A tokio server whose listeners are bound: the kit's
/// [`BoundServer`](smtp_server::server::BoundServer).
pub type BoundServer<H> = smtp_server::server::BoundServer<TokioRuntime, H>;

/// Serves one already-accepted plain tokio stream (no STARTTLS) until the
/// session closes. For STARTTLS, build a [`Connection`] and call `with_tls`.
pub async fn serve_stream<S, H>(
    stream: S,
    peer: smtp_proto::server::PeerInfo,
    config: std::sync::Arc<smtp_proto::config::Config>,
    handler: std::sync::Arc<H>,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    H: Handler,
{
    smtp_server::connection::serve_stream::<TokioRuntime, _, _>(stream, peer, config, handler).await
}
