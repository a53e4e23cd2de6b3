//! futures-io adapter for the [`smtp_proto`] SMTP/LMTP server core, on
//! **smol** (default) or **async-std**.
//!
//! The core ([`smtp_proto::server::Session`]) is a pure state machine; the
//! [`smtp_server::handler::Dispatcher`] runs your [`Handler`] on its events.
//! This crate is the glue to any `futures-io` stream (`AsyncRead +
//! AsyncWrite + Unpin`) on an `async-io` reactor:
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
//! It reads into the session's buffer and writes its replies concurrently,
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
pub use smtp_server::handler::Handler;

mod connection;
mod rt;
mod server;

#[cfg(feature = "cli")]
pub mod cli;

pub use connection::{Connection, serve_stream};
pub use server::{BoundServer, DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS, Server};
