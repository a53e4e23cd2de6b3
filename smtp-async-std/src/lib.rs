//! futures-io adapter for the [`smtp_proto`] SMTP/LMTP server core, on
//! **smol** (default) or **async-std**.
//!
//! The core ([`smtp_proto::server::Session`]) is a pure state machine; the
//! [`smtp_server::handler::Dispatcher`] runs your [`Handler`] on its events.
//! This crate is the glue to any `futures-io` stream (`AsyncRead +
//! AsyncWrite + Unpin`) on an `async-io` reactor: [`AsyncIoRuntime`]
//! implements the kit's [`Runtime`](smtp_server::runtime::Runtime), and
//! the kit's generic connection and server are named here in this idiom:
//!
//! - [`Server`]: listeners (plain with STARTTLS, implicit TLS, Unix),
//!   connection limits, graceful shutdown.
//! - [`Connection`]: one stream and one session, for your own accept loop;
//!   [`serve_stream`] is the shortest way to use it.
//! - `cli::smtpd` (feature `cli`): the entry of `examples/smtpd.rs`, a
//!   debugging, Maildir or mbox server with the flags of `smtp_server::cli`:
//!   `cargo run -p smtp-async-std --features cli --example smtpd -- --maildir ./mail`
//!   (on async-std: `--no-default-features --features async-std,store,cli`).
//!
//! **smol is the primary runtime.** async-std is discontinued upstream (its
//! maintainers point users to smol); it stays supported here, tested in CI,
//! for code that already runs on it, but new users should pick smol.
//!
//! The runtime is a feature: `smol` (default) or `async-std` (with
//! `default-features = false`, so a smol user never compiles async-std and
//! the other way round). It decides only where session tasks are spawned;
//! with both on, smol is used. Timers are [`async_io::Timer`], TLS is
//! [`futures_rustls`].
//!
//! # Example
//!
//! A server that accepts and discards every message, on a port the OS picks:
//!
//! ```
//! # #[cfg(all(feature = "smol", feature = "store"))]
//! # fn main() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use smol::io::{AsyncReadExt, AsyncWriteExt};
//! use smtp_async_std::Server;
//! use smtp_proto::config::Config;
//! use smtp_server::store::SinkHandler;
//!
//! smol::block_on(async {
//!     let (stop, stopped) = smol::channel::bounded::<()>(1);
//!     let server = Server::new(SinkHandler)
//!         .config(Arc::new(Config::new("mx.example")))
//!         .listen("127.0.0.1:0".parse().unwrap())
//!         .shutdown_signal(async move { let _ = stopped.recv().await; })
//!         .bind()
//!         .await?;
//!     let addr = server.local_addrs()[0];
//!     let running = smol::spawn(server.run());
//!
//!     let mut client = smol::net::TcpStream::connect(addr).await?;
//!     let mut buf = [0u8; 512];
//!     let n = client.read(&mut buf).await?;
//!     assert!(buf[..n].starts_with(b"220 mx.example"));
//!     client.write_all(b"QUIT\r\n").await?;
//!     let n = client.read(&mut buf).await?;
//!     assert_eq!(&buf[..n], b"221 2.0.0 Bye\r\n");
//!
//!     drop(stop);
//!     running.await
//! })
//! # }
//! # #[cfg(not(all(feature = "smol", feature = "store")))]
//! # fn main() {}
//! ```
//!
//! # What the adapter does
//!
//! The kit's [`Connection`](smtp_server::connection::Connection) and
//! [`Server`](smtp_server::server::Server) do the work, written once for
//! every runtime. They read into the session's buffer and writes its replies concurrently,
//! never reads while the session does not want input (so a client that
//! pipelines without reading replies is paused, not buffered), arms an
//! [`async_io::Timer`] at [`smtp_proto::server::Session::poll_timeout`],
//! bounds every write and TLS handshake by the command timeout, and runs
//! each connection in its own task under a `tracing` span with the peer and
//! a session id (a panic in one never stops the server; the dispatcher
//! already turns a panicking hook into `421`).

pub use futures_rustls;
pub use futures_rustls::rustls;
pub use smtp_proto;
pub use smtp_server::accept::{DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS};
pub use smtp_server::handler::Handler;
pub use smtp_server::server::ServerHandle;

pub mod runtime;

#[cfg(feature = "cli")]
pub mod cli;

pub use runtime::AsyncIoRuntime;

/// One SMTP connection over any `futures-io` stream (`AsyncRead +
/// AsyncWrite + Unpin + Send`): the kit's
/// [`Connection`](smtp_server::connection::Connection) on `async-io`.
/// STARTTLS takes a [`futures_rustls::TlsAcceptor`] (`with_tls`).
///
/// ```no_run
/// # async fn f(tcp: async_net::TcpStream) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use smtp_proto::{config::Config, server::PeerInfo};
/// use smtp_server::store::SinkHandler;
///
/// let peer = PeerInfo::new(tcp.peer_addr()?);
/// let config = Arc::new(Config::new("mx.example"));
/// smtp_async_std::Connection::new(tcp, peer, config, Arc::new(SinkHandler)).run().await
/// # }
/// ```
///
/// The low level, `next_event` with every answer given by hand:
///
/// ```no_run
/// # async fn f(tcp: async_net::TcpStream) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use std::time::Instant;
/// use smtp_proto::{config::Config, server::{Decision, Event, PeerInfo}};
///
/// let peer = PeerInfo::new(tcp.peer_addr()?);
/// let mut conn = smtp_async_std::Connection::manual(tcp, peer, Arc::new(Config::new("mx.example")));
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
pub type Connection<S, H> = smtp_server::connection::Connection<AsyncIoRuntime, S, H>;

/// The server builder on smol or async-std: the kit's
/// [`Server`](smtp_server::server::Server). See the [crate docs](crate) for
/// an example; `executor(Arc<smol::Executor>)` runs sessions on that
/// executor instead of smol's global one (whose thread count is the
/// `SMOL_THREADS` environment variable, default 1).
pub type Server<H> = smtp_server::server::Server<AsyncIoRuntime, H>;

/// A server whose listeners are bound: the kit's
/// [`BoundServer`](smtp_server::server::BoundServer).
pub type BoundServer<H> = smtp_server::server::BoundServer<AsyncIoRuntime, H>;

/// Serves one already-accepted plain stream (no STARTTLS) until the session
/// closes. For STARTTLS, build a [`Connection`] and call `with_tls`.
pub fn serve_stream<S, H: Handler>(
    stream: S,
    peer: smtp_proto::server::PeerInfo,
    config: std::sync::Arc<smtp_proto::config::Config>,
    handler: std::sync::Arc<H>,
) -> impl std::future::Future<Output = std::io::Result<()>> + Send
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send,
{
    smtp_server::connection::serve_stream::<AsyncIoRuntime, _, _>(stream, peer, config, handler)
}
