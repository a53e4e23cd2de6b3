//! A synchronous flavour of [`Handler`]: the same hooks as plain `fn`s.
//!
//! Implement [`SyncHandler`] when your hooks need no futures (a static
//! policy, a local file, a blocking database client on a thread-per-session
//! server such as `smtp-blocking`), and wrap it in [`SyncAdapter`] wherever a
//! [`Handler`] is expected. Every hook has the same default as in
//! [`Handler`]: accept, and refuse AUTH.
//!
//! A hook runs on the thread that drives the session: on an async runtime a
//! slow hook blocks that runtime's thread, so keep them quick there. A panic
//! in a hook ends the session with `421 4.3.0`, as with [`Handler`].
//!
//! ```
//! use smtp_server::handler::{Envelope, Recipient, SessionInfo};
//! use smtp_proto::reply::Reply;
//! use smtp_proto::server::Decision;
//! use smtp_server::sync_handler::{SyncAdapter, SyncHandler};
//!
//! struct OnlyBob;
//!
//! impl SyncHandler for OnlyBob {
//!     fn rcpt(&self, _s: &SessionInfo, _e: &Envelope, to: &Recipient) -> Decision {
//!         if to.address == "bob@example.org" {
//!             Decision::Accept
//!         } else {
//!             Reply::NO_SUCH_USER.into()
//!         }
//!     }
//! }
//!
//! // A `Handler` for any adapter or for `Dispatcher::new`:
//! let handler = std::sync::Arc::new(SyncAdapter(OnlyBob));
//! # let _ = smtp_server::handler::Dispatcher::new(handler, "id");
//! ```

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::handler::{
    Body, BodySink, Envelope, Handler, MailOptions, Message, MessageDecision, Recipient,
    SessionInfo,
};
use smtp_proto::reply::Reply;
use smtp_proto::sasl::Credentials;
use smtp_proto::server::{AbortReason, CloseReason, Decision, HeloKind};

/// What to do with a message's body ([`SyncHandler::body`]); the
/// synchronous form of [`Body`], with the same memory costs.
pub enum SyncBody {
    /// Keep the whole message for [`SyncHandler::message`] (the default;
    /// costs the message's size in memory). See [`Body::Buffer`].
    Buffer,
    /// [`SyncBody::Buffer`] up to this many bytes; longer messages get
    /// `552 5.3.4`. See [`Body::BufferUpTo`].
    BufferUpTo(usize),
    /// Keep none of it. See [`Body::Discard`].
    Discard,
    /// Write it as it arrives into this sink, which decides at the end.
    Stream(Box<dyn SyncBodySink>),
    /// Refuse the message with this reply at its end.
    Refuse(Reply),
}

impl std::fmt::Debug for SyncBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncBody::Buffer => f.write_str("Buffer"),
            SyncBody::BufferUpTo(n) => f.debug_tuple("BufferUpTo").field(n).finish(),
            SyncBody::Discard => f.write_str("Discard"),
            SyncBody::Stream(_) => f.write_str("Stream"),
            SyncBody::Refuse(r) => f.debug_tuple("Refuse").field(r).finish(),
        }
    }
}

/// Where a streamed body goes as it arrives ([`SyncBody::Stream`]): the
/// synchronous form of [`BodySink`], with the same contract (the session
/// reads nothing more while `write` runs; dropping it unfinished counts as
/// `abort`).
pub trait SyncBodySink: Send {
    /// The next chunk, dot-unstuffed, in order; an `Err` refuses the message.
    fn write(&mut self, chunk: &[u8]) -> Result<(), Reply>;

    /// The body is complete: make it durable, then decide. See [`BodySink::finish`].
    fn finish(self: Box<Self>, message: &Arc<Message>) -> MessageDecision;

    /// The body was cut off or refused: deliver nothing of it.
    fn abort(self: Box<Self>, reason: AbortReason);
}

/// A [`SyncBodySink`] as a [`BodySink`].
struct SyncSink(Box<dyn SyncBodySink>);

impl BodySink for SyncSink {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), Reply>> {
        let r = self.0.write(chunk);
        Box::pin(async move { r })
    }

    fn finish(self: Box<Self>, message: Arc<Message>) -> BoxFuture<'static, MessageDecision> {
        Box::pin(async move { self.0.finish(&message) })
    }

    fn abort(self: Box<Self>, reason: AbortReason) {
        self.0.abort(reason);
    }
}

/// The application's hooks as plain functions; see [`Handler`] for what each
/// one means. Wrap it in [`SyncAdapter`] to use it as a [`Handler`].
pub trait SyncHandler: Send + Sync + 'static {
    /// A client connected. See [`Handler::connect`].
    fn connect(&self, session: &SessionInfo) -> Decision {
        let _ = session;
        Decision::Accept
    }

    /// HELO, EHLO or LHLO. See [`Handler::helo`].
    fn helo(&self, session: &SessionInfo, kind: HeloKind, name: &str) -> Decision {
        let _ = (session, kind, name);
        Decision::Accept
    }

    /// MAIL FROM; `from` is empty for `<>`. See [`Handler::mail`].
    fn mail(&self, session: &SessionInfo, from: &str, options: &MailOptions) -> Decision {
        let _ = (session, from, options);
        Decision::Accept
    }

    /// RCPT TO. See [`Handler::rcpt`].
    fn rcpt(&self, session: &SessionInfo, envelope: &Envelope, to: &Recipient) -> Decision {
        let _ = (session, envelope, to);
        Decision::Accept
    }

    /// VRFY/EXPN. The default answers `252 2.5.0`. See [`Handler::verify`].
    fn verify(&self, session: &SessionInfo, arg: &str, expand: bool) -> Decision {
        let _ = (session, arg, expand);
        Decision::Accept
    }

    /// AUTH credentials. The default refuses (`535 5.7.8`). See [`Handler::auth`].
    fn auth(&self, session: &SessionInfo, credentials: &Credentials) -> Decision {
        let _ = (session, credentials);
        Decision::Reply(Reply::AUTH_FAILED)
    }

    /// A message's body starts: how to take it. The default keeps it whole
    /// for [`SyncHandler::message`]. See [`Handler::body`].
    fn body(&self, session: &SessionInfo, envelope: &Envelope, message: &Message) -> SyncBody {
        let _ = (session, envelope, message);
        SyncBody::Buffer
    }

    /// A complete message: store it durably before accepting. See [`Handler::message`].
    fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> MessageDecision {
        let _ = (session, envelope, message);
        MessageDecision::All(Decision::Accept)
    }

    /// The session ended. See [`Handler::disconnect`].
    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        let _ = (session, reason);
    }

    /// [`Handler::wants_trace`].
    fn wants_trace(&self) -> bool {
        true
    }
}

/// Makes a [`SyncHandler`] a [`Handler`]: each hook runs when its future is
/// first polled (so a panicking hook is caught like an async one).
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncAdapter<H>(pub H);

impl<H: SyncHandler> Handler for SyncAdapter<H> {
    async fn connect(&self, session: &SessionInfo) -> Decision {
        self.0.connect(session)
    }

    async fn helo(&self, session: &SessionInfo, kind: HeloKind, name: &str) -> Decision {
        self.0.helo(session, kind, name)
    }

    async fn mail(&self, session: &SessionInfo, from: &str, options: &MailOptions) -> Decision {
        self.0.mail(session, from, options)
    }

    async fn rcpt(&self, session: &SessionInfo, envelope: &Envelope, to: &Recipient) -> Decision {
        self.0.rcpt(session, envelope, to)
    }

    async fn verify(&self, session: &SessionInfo, arg: &str, expand: bool) -> Decision {
        self.0.verify(session, arg, expand)
    }

    async fn auth(&self, session: &SessionInfo, credentials: &Credentials) -> Decision {
        self.0.auth(session, credentials)
    }

    async fn body(&self, session: &SessionInfo, envelope: &Envelope, message: &Message) -> Body {
        match self.0.body(session, envelope, message) {
            SyncBody::Buffer => Body::Buffer,
            SyncBody::BufferUpTo(n) => Body::BufferUpTo(n),
            SyncBody::Discard => Body::Discard,
            SyncBody::Stream(sink) => Body::Stream(Box::new(SyncSink(sink))),
            SyncBody::Refuse(r) => Body::Refuse(r),
        }
    }

    async fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> MessageDecision {
        self.0.message(session, envelope, message)
    }

    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        self.0.disconnect(session, reason);
    }

    fn wants_trace(&self) -> bool {
        self.0.wants_trace()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handler::Dispatcher;
    use smtp_proto::config::Config;
    use smtp_proto::drive::Instruction;
    use smtp_proto::reply::EnhancedCode;
    use smtp_proto::server::{PeerInfo, Session};
    use std::time::Instant;

    struct Picky;

    impl SyncHandler for Picky {
        fn mail(&self, _s: &SessionInfo, from: &str, _o: &MailOptions) -> Decision {
            if from.is_empty() {
                panic!("hook bug");
            }
            Decision::Accept
        }
        fn rcpt(&self, _s: &SessionInfo, _e: &Envelope, to: &Recipient) -> Decision {
            if to.address.starts_with("bob@") {
                Decision::Accept
            } else {
                Reply::NO_SUCH_USER.into()
            }
        }
    }

    fn run(input: &[u8]) -> String {
        run_with(Picky, input)
    }

    /// Feeds `input` (as much as the session takes at a time) and returns
    /// everything the session sent.
    fn run_with(h: impl SyncHandler, mut input: &[u8]) -> String {
        let mut s = Session::new(
            Arc::new(Config::new("mx.test")),
            PeerInfo::default(),
            Instant::now(),
        );
        let mut d = Dispatcher::new(Arc::new(SyncAdapter(h)), "t");
        let mut out = Vec::new();
        loop {
            let n = s.receive(input, Instant::now());
            input = &input[n..];
            let i = futures_executor::block_on(d.drive(&mut s));
            out.extend_from_slice(s.transmit());
            s.transmitted(s.transmit().len());
            if !matches!(i, Instruction::Idle { .. }) || (n == 0 && input.is_empty()) {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hooks_and_defaults() {
        let out =
            run(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@y>\r\nRCPT TO:<eve@y>\r\nVRFY z\r\n");
        assert!(out.contains("250 2.1.5"), "{out}");
        assert!(out.contains("550 5.1.1"), "{out}");
        assert!(out.contains("252 2."), "{out}");
    }

    /// Counts the body's bytes as they arrive, and answers with the count.
    struct Counter;

    struct Counted(usize);

    impl SyncBodySink for Counted {
        fn write(&mut self, chunk: &[u8]) -> Result<(), Reply> {
            self.0 += chunk.len();
            Ok(())
        }
        fn finish(self: Box<Self>, _: &Arc<Message>) -> MessageDecision {
            let text = format!("counted {}", self.0);
            Reply::new(250, EnhancedCode::new(2, 0, 0), text).into()
        }
        fn abort(self: Box<Self>, _: AbortReason) {}
    }

    impl SyncHandler for Counter {
        fn body(&self, _: &SessionInfo, _: &Envelope, _: &Message) -> SyncBody {
            SyncBody::Stream(Box::new(Counted(0)))
        }
    }

    #[test]
    fn a_sync_body_sink_gets_the_body_as_it_arrives() {
        let mut input = b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(b"Subject: x\r\n\r\n");
        for _ in 0..1000 {
            input.extend_from_slice(&[b'y'; 98]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        let out = run_with(Counter, &input);
        assert!(out.contains("250 2.0.0 counted 100014\r\n"), "{out}");
    }

    #[test]
    fn a_panicking_hook_is_a_421() {
        let out = run(b"EHLO x\r\nMAIL FROM:<>\r\n");
        assert!(out.contains("\r\n421 4.3.0 "), "{out}");
    }
}
