//! The runtime-neutral server kit over [`smtp_proto`]: everything a server
//! needs that no runtime decides.
//!
//! `smtp-proto` is the protocol (pure state machines, no I/O); this crate is
//! the service around it, written once for every runtime; the adapters
//! (`smtp-tokio`, `smtp-async-std`, `smtp-blocking`) bind it to their runtime.
//!
//! - [`handler`]: the async [`handler::Handler`] trait (Tcl smtpd's
//!   `validate_host` … `deliver`, Python smtpd's `process_message`, Pike's
//!   parsed-MIME DATA callback) and the [`handler::Dispatcher`] that feeds a
//!   session's events to it; [`sync_handler`] for hooks without futures.
//! - [`accept`]: connection limits, session ids, shutdown phases, the I/O
//!   step shared by the async adapters, the PROXY front, TLS settings.
//! - [`link`]: the one async driver of a sans-IO machine over a runtime's
//!   stream, for both roles ([`smtp_proto::drive::Drive`]: the server's
//!   sessions and the relay's upstream client).
//! - [`dial`]: how a handler reaches another server on its session's own
//!   runtime ([`dial::Dialer`], in every [`handler::SessionInfo`]).
//! - [`runtime`]: the small [`runtime::Runtime`] trait an async adapter
//!   implements (spawn, one timer, TCP/Unix listen and accept, how its
//!   streams are read and written), and the one generic
//!   [`connection::Connection`] and [`server::Server`] over it: the I/O
//!   loop, STARTTLS and implicit TLS (over `futures-rustls`, written once),
//!   limits, the PROXY front and graceful shutdown.
//! - [`activation`]: serving sockets opened by someone else (systemd
//!   socket activation, inetd).
//! - [`certs`]: TLS certificates chosen by SNI and re-read without a
//!   restart; [`reload`]: settings swapped in while the server runs
//!   (the `reload()` of every adapter's server handle, SIGHUP in `smtpd`).
//! - [`access`]: an access list by client network (Tcl smtpd's
//!   `validate_host` as `--allow`/`--deny`).
//! - [`metrics`]: the server's counters through the `metrics` facade
//!   (any recorder an embedder installs; `smtpd --metrics` serves them).
//! - [`sasl`]: SASL verification: SCRAM-SHA-256 and CRAM-MD5 crypto, the `--auth` user store.
//! - `store` (feature `store`): debug, sink, Maildir and mbox handlers, served domains.
//! - `relay` (feature `relay`): forwarding to an upstream server, local-or-relay routing.
//! - `cli` (feature `cli`): the `smtpd` flags every adapter's server shares.
//!
//! # Example: a handler driven by the dispatcher, without any runtime
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use smtp_proto::config::Config;
//! use smtp_proto::reply::Reply;
//! use smtp_proto::server::{Decision, PeerInfo, Session};
//! use smtp_proto::drive::Instruction;
//! use smtp_server::handler::{Dispatcher, Envelope, Handler, Recipient, SessionInfo};
//!
//! struct OnlyBob;
//!
//! impl Handler for OnlyBob {
//!     async fn rcpt(&self, _: &SessionInfo, _: &Envelope, to: &Recipient) -> Decision {
//!         if to.address == "bob@example.net" {
//!             Decision::Accept
//!         } else {
//!             Reply::NO_SUCH_USER.into()
//!         }
//!     }
//! }
//!
//! let mut s = Session::new(Arc::new(Config::new("mx.example")), PeerInfo::default(), Instant::now());
//! let mut d = Dispatcher::new(Arc::new(OnlyBob), "s1");
//! let mut out = Vec::new();
//! for input in [&b""[..], b"EHLO me\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<eve@example.net>\r\n"] {
//!     s.receive(input, Instant::now());
//!     let next = futures_executor::block_on(d.drive(&mut s));
//!     assert!(matches!(next, Instruction::Idle { read: true, .. }));
//!     out.extend_from_slice(s.transmit());
//!     let n = s.transmit().len();
//!     s.transmitted(n);
//! }
//! assert!(String::from_utf8(out).unwrap().ends_with("550 5.1.1 Mailbox unavailable\r\n"));
//! ```
#![forbid(unsafe_code)]

pub mod accept;
pub mod access;
pub mod activation;
pub mod certs;
#[cfg(feature = "cli")]
pub mod cli;
pub mod connection;
pub mod dial;
pub mod handler;
pub mod link;
pub mod metrics;
pub mod rate;
#[cfg(feature = "relay")]
pub mod relay;
pub mod reload;
pub mod runtime;
pub mod sasl;
pub mod server;
#[cfg(feature = "store")]
pub mod store;
pub mod sync_handler;

/// The TLS the generic connection and server speak (over `futures-io`).
pub use futures_rustls;
/// The rustls crate the TLS settings use.
pub use rustls;
/// The protocol crate this kit drives.
pub use smtp_proto;
