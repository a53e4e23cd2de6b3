//! AUTH (RFC 4954): the SASL exchange line by line.

use super::*;
use crate::sasl::SaslError;

impl Session {
    /// Whether AUTH is offered now (in EHLO, and as room for MAIL's
    /// `AUTH=`): never before TLS when TLS is required, whatever
    /// `allow_plaintext` says.
    pub(super) fn auth_offered(&self) -> bool {
        !self.config.auth.mechanisms.is_empty()
            && (self.is_tls() || (self.config.auth.allow_plaintext && !self.config.require_tls))
    }

    pub(super) fn start_auth(
        &mut self,
        start: Option<(Mechanism, SaslExchange, SaslStep)>,
    ) -> Outcome {
        if self.config.require_tls && !self.is_tls() {
            return Outcome::Error(Reply::TLS_REQUIRED);
        }
        if self.config.auth.mechanisms.is_empty() {
            return Outcome::Error(Reply::NOT_IMPLEMENTED);
        }
        if !self.auth_offered() {
            return Outcome::Error(Reply::AUTH_NEEDS_TLS);
        }
        if self.helo.is_none() {
            return Outcome::Error(if self.config.lmtp {
                Reply::NEED_LHLO
            } else {
                Reply::NEED_HELO
            });
        }
        if self.authenticated.is_some() {
            return Outcome::Error(Reply::ALREADY_AUTHENTICATED);
        }
        if self.txn.mail {
            return Outcome::Error(Reply::AUTH_IN_TRANSACTION);
        }
        let Some((_, exchange, step)) =
            start.filter(|(m, _, _)| self.config.auth.mechanisms.contains(m))
        else {
            return Outcome::Error(Reply::AUTH_MECHANISM_UNKNOWN);
        };
        self.phase = Phase::Auth(exchange);
        self.sasl_outcome(step)
    }

    pub(super) fn step_auth_line(&mut self, len: usize) -> Step {
        let line = &self.inb.buf[self.inb.start..self.inb.start + len - 2];
        let step = match (&mut self.phase, std::str::from_utf8(line)) {
            (Phase::Auth(ex), Ok(text)) => ex.step(text),
            (_, _) => SaslStep::Failed(SaslError::Base64),
        };
        self.consume(len);
        match self.sasl_outcome(step) {
            Outcome::Emit(e) => Step::Emit(e),
            Outcome::Reply(r) => {
                self.queue(&r);
                Step::Continue
            }
            Outcome::Error(r) => {
                self.queue_counted(&r);
                Step::Continue
            }
            Outcome::Done | Outcome::Decide(_) => Step::Continue,
        }
    }

    pub(super) fn sasl_outcome(&mut self, step: SaslStep) -> Outcome {
        match step {
            SaslStep::Challenge(text) => Outcome::Reply(Reply::plain(334, text)),
            SaslStep::Done(credentials) => {
                self.phase = Phase::Command;
                self.auth_user = Some(credentials.username.clone());
                let _t = self.new_ticket(Pending::Auth);
                Outcome::Emit(Emit::Auth(credentials))
            }
            // TODO(session): hand the request to the application (an event
            // with a ticket), then feed its answer to `SaslExchange::answer`.
            SaslStep::Request(_) => {
                self.phase = Phase::Command;
                Outcome::Error(Reply::AUTH_TEMPORARY)
            }
            // TODO(session): record the identity (from the request that led
            // here) as authenticated, then answer 235.
            SaslStep::Authenticated => {
                self.phase = Phase::Command;
                Outcome::Error(Reply::AUTH_TEMPORARY)
            }
            SaslStep::Refused(reply) => {
                self.phase = Phase::Command;
                Outcome::Error(reply)
            }
            SaslStep::Cancelled => {
                self.phase = Phase::Command;
                Outcome::Error(Reply::AUTH_CANCELLED)
            }
            SaslStep::Failed(e) => {
                self.phase = Phase::Command;
                Outcome::Error(match e {
                    SaslError::Base64 => Reply::AUTH_BAD_BASE64,
                    SaslError::ChannelBinding => Reply::AUTH_FAILED,
                    SaslError::Unexpected => Reply::AUTH_TEMPORARY,
                    _ => Reply::AUTH_MALFORMED,
                })
            }
        }
    }
}
