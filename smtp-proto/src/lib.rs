//! A sans-IO SMTP and LMTP core: the protocol, and nothing else.
//!
//! `smtp-proto` is a pure state machine: bytes in, replies and events out.
//! It has no sockets, no files, no runtime, no clock and no threads (time is
//! an input), and depends on nom, memchr and base64 only, so it can be
//! fuzzed, property-tested, and embedded in any event loop.
//!
//! Which layer you want:
//! - **your own event loop**: this crate's [`server::Session`] (and
//!   [`client::Client`] for the other side): feed bytes, drain events,
//!   answer decisions, write what it transmits;
//! - **your own runtime**: the `smtp-server` kit drives sessions for any
//!   runtime (handlers, dispatch, limits, shutdown, TLS settings, stores,
//!   relay, the `smtpd` command line);
//! - **a server**: an adapter's `Server` (`smtp-tokio`, `smtp-async-std`
//!   for smol and async-std, `smtp-blocking` for threads).
//!
//! The modules:
//! - [`drive`]: the drive contract both roles keep ([`drive::Drive`], the drive loop).
//! - [`server`]: the session state machine.
//! - [`command`], [`parse`]: the command grammar (RFC 5321, 2033, 3207, 3030, 4954, 6531, 1870, 3461).
//! - [`reply`]: typed replies with enhanced status codes (RFC 3463), and a reply parser.
//! - [`data`]: the streaming DATA decoder (dot-unstuffing, smuggling-safe end of data).
//! - [`proxy`]: HAProxy PROXY protocol v1/v2 headers.
//! - [`sasl`]: AUTH PLAIN and LOGIN exchanges.
//! - [`trace`]: the `Received:` header.
//! - [`client`]: the sans-IO SMTP/LMTP client (the other side of the same grammar).
//! - [`config`]: what a session needs to know (identity, extensions, limits, timeouts).
//!
//! # Replies the core sends by itself
//!
//! | situation | reply |
//! |---|---|
//! | unknown command | `500 5.5.2` |
//! | command line too long | `500 5.5.2` |
//! | SASL (AUTH) response line too long | `500 5.5.6` |
//! | bare LF / CR in a command line (at the first bare LF) | `500 5.5.2` |
//! | bad arguments | `501 5.5.4` |
//! | bad sender / recipient address | `501 5.1.7` / `501 5.1.3` |
//! | unknown or unadvertised parameter | `555 5.5.4` |
//! | non-ASCII address without SMTPUTF8 | `553 5.6.7` |
//! | command not implemented / not offered | `502 5.5.1` |
//! | bad sequence (MAIL before EHLO, RCPT before MAIL, nested MAIL, …) | `503 5.5.1` |
//! | DATA with no accepted recipient | `554 5.5.1` (LMTP: `503 5.5.1`) |
//! | too many recipients | `452 4.5.3` |
//! | message too big (SIZE, even past `u64`, or body) | `552 5.3.4` |
//! | bare LF / CR in a message (policy) | `550 5.5.2` |
//! | text line too long (policy) | `550 5.6.0` |
//! | NUL in a message (policy) | `550 5.6.0` |
//! | TLS required (MAIL, RCPT, DATA, BDAT, AUTH, VRFY, EXPN) | `530 5.7.0` |
//! | authentication required | `530 5.7.0` |
//! | AUTH on plaintext when not allowed | `538 5.7.11` |
//! | unknown AUTH mechanism | `504 5.5.4` |
//! | AUTH cancelled / bad base64 | `501 5.0.0` / `501 5.5.2` |
//! | STARTTLS under TLS | `554 5.5.1` |
//! | timeout | `421 4.4.2` |
//! | too many errors | `421 4.7.0` |
//! | protocol violation (disconnect policy) | `554 5.5.0` |
//! | shutdown | `421 4.3.2` |
//!
//! # Example: a whole session by hand
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use smtp_proto::config::Config;
//! use smtp_proto::server::{Decision, Event, PeerInfo, Session};
//! use smtp_proto::reply::Reply;
//!
//! let mut s = Session::new(Arc::new(Config::new("mx.example")), PeerInfo::default(), Instant::now());
//! let mut out = Vec::new();
//! let mut body = Vec::new();
//! let script: &[&[u8]] = &[
//!     b"",
//!     b"EHLO client.example\r\n",
//!     b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nRCPT TO:<nobody@example.net>\r\nDATA\r\n",
//!     b"Subject: test\r\n\r\nHello\r\n.\r\n",
//!     b"QUIT\r\n",
//! ];
//! for input in script {
//!     let now = Instant::now();
//!     s.receive(input, now);
//!     while let Some(event) = s.poll().event() {
//!         match event {
//!             Event::Rcpt { ticket, to, .. } => {
//!                 let known = format!("{to:?}").contains("bob");
//!                 let answer = if known { Decision::Accept } else { Reply::NO_SUCH_USER.into() };
//!                 s.respond(ticket, answer, now).unwrap();
//!             }
//!             Event::Body(chunk) => body.extend_from_slice(chunk),
//!             other => {
//!                 if let Some(ticket) = other.into_ticket() {
//!                     s.respond(ticket, Decision::Accept, now).unwrap();
//!                 }
//!             }
//!         }
//!     }
//!     out.extend_from_slice(s.transmit());
//!     let n = s.transmit().len();
//!     s.transmitted(n);
//! }
//! let out = String::from_utf8(out).unwrap();
//! assert!(out.starts_with("220 mx.example ESMTP ready\r\n250-mx.example\r\n250-PIPELINING\r\n"));
//! assert!(out.contains("250 2.1.5 Recipient OK\r\n550 5.1.1 Mailbox unavailable\r\n354 "));
//! assert!(out.ends_with("250 2.0.0 Message accepted for delivery\r\n221 2.0.0 Bye\r\n"));
//! assert_eq!(body, b"Subject: test\r\n\r\nHello\r\n");
//! assert!(s.is_closed());
//! ```
#![forbid(unsafe_code)]

mod buffers;
pub mod client;
pub mod command;
pub mod config;
pub mod data;
mod decided;
pub mod drive;
pub mod parse;
pub mod proxy;
pub mod reply;
pub mod sasl;
pub mod server;
pub mod trace;

/// The workspace README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
