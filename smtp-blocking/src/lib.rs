//! Blocking adapter for the [`smtp_proto`] SMTP/LMTP server core:
//! `std::net`, a thread per session, no async runtime in the API.
//!
//! The core ([`smtp_proto::server::Session`]) is a pure state machine; the
//! [`smtp_server::handler::Dispatcher`] runs your [`Handler`] on its events
//! (driven here with [`futures_executor::block_on`], so the built-in
//! [`smtp_server::store`] handlers work as they are). This crate is the glue
//! to blocking sockets:
//!
//! - [`Server`]: listeners (plain with STARTTLS, implicit TLS, Unix),
//!   connection limits, graceful shutdown through a [`ShutdownHandle`].
//! - [`Connection`]: one stream and one session on the calling thread, for
//!   your own accept loop; [`serve_stream`] is the shortest way to use it.
//! - [`SyncHandler`] + [`SyncAdapter`]: hooks as plain functions, no futures.
//! - [`cli::smtpd`] (feature `cli`): the `smtpd` server of `examples/smtpd.rs`.
//!
//! `examples/event_loop.rs` shows the other way to embed the core: one
//! thread, non-blocking sockets, no dispatcher.
//!
//! # Example
//!
//! A server that accepts and discards every message, on a port the OS picks:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use smtp_proto::config::Config;
//! use smtp_server::store::SinkHandler;
//! use smtp_blocking::Server;
//!
//! # fn main() -> std::io::Result<()> {
//! let server = Server::new(SinkHandler)
//!     .config(Arc::new(Config::new("mx.example")))
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .bind()?;
//! let addr = server.local_addrs()[0];
//! let stop = server.shutdown_handle();
//! let running = std::thread::spawn(move || server.run());
//!
//! let mut client = std::net::TcpStream::connect(addr)?;
//! let mut buf = [0u8; 512];
//! let n = client.read(&mut buf)?;
//! assert!(buf[..n].starts_with(b"220 mx.example"));
//! client.write_all(b"QUIT\r\n")?;
//! let n = client.read(&mut buf)?;
//! assert_eq!(&buf[..n], b"221 2.0.0 Bye\r\n");
//!
//! stop.shutdown();
//! running.join().unwrap()
//! # }
//! ```
//!
//! # What the adapter does
//!
//! Each session runs on its own thread under a `tracing` span with the peer
//! and a session id. It writes every pending reply before reading again and
//! never reads while the session does not want input (a client that
//! pipelines without reading replies is paused, not buffered). Each read is
//! bounded by the time left until the session's deadline
//! ([`smtp_proto::server::Session::poll_timeout`]), so a command trickled
//! byte by byte still times out; the writes of one flush and every TLS
//! handshake are bounded by the command timeout. A panic in a hook ends its
//! session with `421 4.3.0`; a panic anywhere else on a session thread ends
//! only that session. Over the connection limit a client gets `421 4.7.0`.

pub use rustls;
pub use smtp_proto;
pub use smtp_server::handler::Handler;
pub use smtp_server::sync_handler::{SyncAdapter, SyncHandler};

mod connection;
mod dial;
mod link;
mod pool;
mod server;
mod stop;

#[cfg(feature = "cli")]
pub mod cli;

pub use connection::{Connection, Socket, Untimed, serve_stream};
pub use server::{
    BoundServer, DEFAULT_GRACE_PERIOD, DEFAULT_MAX_CONNECTIONS, Server, ShutdownHandle,
};
