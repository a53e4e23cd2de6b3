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

use crate::handler::{
    Envelope, Handler, MailOptions, Message, MessageDecision, Recipient, SessionInfo,
};
use smtp_proto::reply::Reply;
use smtp_proto::sasl::Credentials;
use smtp_proto::server::{CloseReason, Decision, HeloKind};

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
        let mut s = Session::new(
            Arc::new(Config::new("mx.test")),
            PeerInfo::default(),
            Instant::now(),
        );
        let mut d = Dispatcher::new(Arc::new(SyncAdapter(Picky)), "t");
        s.receive(input, Instant::now());
        let mut out = Vec::new();
        while matches!(
            futures_executor::block_on(d.drive(&mut s)),
            Instruction::Idle { .. }
        ) && s.wants_write()
        {
            out.extend_from_slice(s.transmit());
            s.transmitted(s.transmit().len());
        }
        out.extend_from_slice(s.transmit());
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

    #[test]
    fn a_panicking_hook_is_a_421() {
        let out = run(b"EHLO x\r\nMAIL FROM:<>\r\n");
        assert!(out.contains("\r\n421 4.3.0 "), "{out}");
    }
}
