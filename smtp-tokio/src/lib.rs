//! Tokio adapter for the [`smtp_proto`] SMTP/LMTP server core.
//!
//! The core ([`smtp_proto::server::Session`]) is a pure state machine; the
//! [`smtp_server::handler::Dispatcher`] runs your [`Handler`] on its events.
//! This crate is the glue to tokio:
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
//! It reads into the session's buffer and writes its replies concurrently,
//! never reads while the session does not want input (so a client that
//! pipelines without reading replies is paused, not buffered), arms tokio's
//! timer at [`smtp_proto::server::Session::poll_timeout`], bounds every write
//! and TLS handshake by the command timeout, and runs each connection in its
//! own task under a `tracing` span with the peer and a session id (a panic in
//! one never stops the server; the dispatcher already turns a panicking hook
//! into `421`).

pub use smtp_proto;
pub use smtp_server::handler::Handler;
pub use tokio_rustls;
pub use tokio_rustls::rustls;

mod connection;
mod server;

#[cfg(feature = "cli")]
pub mod cli;

pub use connection::{Connection, serve_stream};
pub use server::{BoundServer, DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS, Server};
