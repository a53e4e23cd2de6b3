//! AUTH (RFC 4954): the SASL exchange line by line.

use super::*;
use crate::sasl::{SaslContext, SaslError};

impl Session {
    /// Whether AUTH is offered now (in EHLO, and as room for MAIL's
    /// `AUTH=`): never before TLS when TLS is required, whatever
    /// `allow_plaintext` says.
    pub(super) fn auth_offered(&self) -> bool {
        !self.config.auth.mechanisms.is_empty()
            && (self.is_tls() || (self.config.auth.allow_plaintext && !self.config.require_tls))
    }

    pub(super) fn start_auth(&mut self, start: Option<(Mechanism, Option<String>)>) -> Outcome {
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
        let Some((mechanism, initial)) = start.filter(|(m, _)| self.mechanism_offered(*m)) else {
            return Outcome::Error(Reply::AUTH_MECHANISM_UNKNOWN);
        };
        let (exchange, step) =
            SaslExchange::start(mechanism, initial.as_deref(), self.sasl_context());
        self.phase = Phase::Auth(exchange);
        self.sasl_outcome(step)
    }

    /// What an exchange needs of the session: the TLS channel binding
    /// (`tls-exporter`, given by the caller in [`TlsInfo`] under TLS 1.3)
    /// and whether SCRAM-SHA-256-PLUS is offered.
    fn sasl_context(&self) -> SaslContext {
        SaslContext {
            plus_offered: self.mechanism_offered(Mechanism::ScramSha256Plus),
            channel_binding: self
                .peer
                .tls
                .as_ref()
                .and_then(|t| t.channel_binding.clone()),
        }
    }

    /// Whether `m` is offered now: configured, and for SCRAM-SHA-256-PLUS
    /// only with a channel binding to bind to.
    pub(super) fn mechanism_offered(&self, m: Mechanism) -> bool {
        self.config.auth.mechanisms.contains(&m)
            && (m != Mechanism::ScramSha256Plus
                || self
                    .peer
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.channel_binding.is_some()))
    }

    /// Feeds the application's answer to the running exchange and queues
    /// what follows (a challenge, 235, or the refusal).
    pub(super) fn answer_sasl(&mut self, answer: SaslAnswer) {
        let step = match &mut self.phase {
            Phase::Auth(ex) => ex.answer(answer),
            _ => SaslStep::Failed(SaslError::Unexpected),
        };
        match self.sasl_outcome(step) {
            Outcome::Reply(r) => self.queue(&r),
            Outcome::Error(r) => self.queue_counted(&r),
            // An answer never leads to another request; if it did, the
            // event is handed out next.
            Outcome::Emit(e) => self.decisions.ready = Some(e),
            Outcome::Done | Outcome::Decide(_) => {}
        }
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
            SaslStep::Request(request) => {
                let user = match &request {
                    SaslRequest::CramMd5 { username, .. }
                    | SaslRequest::ScramFirst { username, .. }
                    | SaslRequest::ScramFinal { username, .. } => Some(username.clone()),
                    SaslRequest::Token(t) => t.user.clone(),
                    SaslRequest::CramMd5Challenge => None,
                };
                if user.is_some() {
                    self.auth_user = user;
                }
                let _t = self.new_ticket(Pending::Sasl);
                Outcome::Emit(Emit::Sasl(request))
            }
            SaslStep::Authenticated => {
                self.phase = Phase::Command;
                // A token without a user name authenticates as "".
                self.authenticated = Some(self.auth_user.take().unwrap_or_default());
                Outcome::Reply(Reply::AUTH_OK)
            }
            SaslStep::Refused(reply) => {
                self.phase = Phase::Command;
                self.auth_user = None;
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
