//! Command semantics: one complete line becomes a command, the command an outcome (a reply, or an event that needs a decision).

use super::*;
use crate::command::ParseOptions;
use crate::proxy::{ProxyCommand, ProxyParse, parse_proxy_header};
use crate::reply::EnhancedCode;

impl Session {
    // ----- the parser -----

    pub(super) fn step(&mut self) -> Step {
        match self.phase {
            Phase::Proxy => self.step_proxy(),
            Phase::Connect => {
                let _t = self.new_ticket(Pending::Connect);
                Step::Emit(Emit::Connect)
            }
            Phase::Data => self.step_data(),
            Phase::Bdat { .. } => self.step_bdat(),
            Phase::StartTls | Phase::Closed => Step::Idle,
            Phase::Command | Phase::NoService | Phase::Auth(_) => self.step_line(),
        }
    }

    pub(super) fn step_proxy(&mut self) -> Step {
        match parse_proxy_header(self.inb.data()) {
            ProxyParse::Incomplete => Step::Idle,
            ProxyParse::Invalid(_) => {
                self.decisions
                    .notices
                    .push_back(Notice::Violation(Violation::InvalidProxyHeader));
                self.close(CloseReason::Violation);
                Step::Continue
            }
            ProxyParse::Done { header, consumed } => {
                self.consume(consumed);
                if header.command == ProxyCommand::Proxy {
                    if let Some(src) = header.source {
                        self.peer.remote = Some(src);
                    }
                    if let Some(dst) = header.destination {
                        self.peer.local = Some(dst);
                    }
                }
                self.phase = Phase::Connect;
                Step::Continue
            }
        }
    }

    pub(super) fn step_line(&mut self) -> Step {
        let max = self.line_limit();
        let len = match self.next_line(max) {
            None => return Step::Idle,
            Some(Line::Dropped) => {
                self.arm(self.config.timeouts.command);
                return Step::Continue;
            }
            Some(Line::Refused(reply)) => {
                self.arm(self.config.timeouts.command);
                let reply = if let Phase::Auth(_) = self.phase {
                    // The refused line ends the SASL exchange.
                    self.phase = Phase::Command;
                    if reply == Reply::LINE_TOO_LONG {
                        Reply::AUTH_LINE_TOO_LONG
                    } else {
                        reply
                    }
                } else {
                    reply
                };
                self.queue_counted(&reply);
                return Step::Continue;
            }
            Some(Line::Complete(len)) => len,
        };
        self.arm(self.config.timeouts.command);
        if let Phase::Auth(_) = self.phase {
            return self.step_auth_line(len);
        }
        if let Phase::NoService = self.phase {
            let is_quit = self.inb.buf[self.inb.start..self.inb.start + len - 2]
                .eq_ignore_ascii_case(b"QUIT");
            self.consume(len);
            if is_quit {
                self.queue(&Reply::BYE);
                self.close(CloseReason::Quit);
            } else {
                self.queue_counted(&Reply::NO_SERVICE);
            }
            return Step::Continue;
        }
        self.step_command(len)
    }

    pub(super) fn step_command(&mut self, len: usize) -> Step {
        let opts = ParseOptions {
            utf8_addresses: self.txn.smtputf8,
            lenient: self.config.lenient_addresses,
        };
        let line = &self.inb.buf[self.inb.start..self.inb.start + len - 2];
        let more_input = self.inb.end > self.inb.start + len;
        let (cmd, verb, sync_point, decided) = match parse_command(line, opts) {
            Ok(cmd) => (
                Cmd::from(&cmd),
                cmd.verb(),
                is_sync_point(&cmd),
                Decided::of(&cmd, line),
            ),
            Err(e) => {
                self.consume(len);
                self.queue_counted(&parse_error_reply(e));
                return Step::Continue;
            }
        };
        // Pipelining hygiene (RFC 2920 §3.1): some commands must end a group,
        // and nothing may be pipelined at all without PIPELINING. STARTTLS
        // (its tail is discarded), QUIT and BDAT (its octets follow) are exempt.
        let may_pipeline = self.ext.pipelining && self.helo != Some(HeloKind::Helo);
        let exempt = matches!(cmd, Cmd::StartTls | Cmd::Quit | Cmd::Bdat { .. });
        if more_input && (sync_point || !may_pipeline) && !exempt {
            self.violation(Violation::Pipelining { after: verb });
            if self.is_closed() {
                return Step::Continue;
            }
        }
        let junk = matches!(cmd, Cmd::Rset | Cmd::Noop | Cmd::Verify | Cmd::Help);
        let outcome = self.command(cmd, more_input);
        // Junk is counted after the command's own reply is queued.
        let mut junk =
            junk || matches!(&outcome, Outcome::Reply(r) if *r == Reply::TOO_MANY_RECIPIENTS);
        if junk && matches!(outcome, Outcome::Decide(_)) {
            // A decision holds the line: count first, and ask nothing of a
            // session that this closes.
            junk = false;
            self.count_junk();
            if self.is_closed() {
                return Step::Continue;
            }
        }
        let step = match outcome {
            Outcome::Decide(what) => {
                self.decisions.pending_line = len;
                self.decisions.decided = decided;
                let _t = self.new_ticket(what);
                Step::Emit(Emit::Command)
            }
            Outcome::Reply(r) => {
                self.consume(len);
                self.queue(&r);
                Step::Continue
            }
            Outcome::Error(r) => {
                self.consume(len);
                self.queue_counted(&r);
                Step::Continue
            }
            Outcome::Done => {
                self.consume(len);
                if matches!(self.phase, Phase::StartTls) {
                    // Plaintext pipelined after STARTTLS is discarded, never
                    // executed after the handshake (CVE-2011-0411 class).
                    self.inb.start = self.inb.end;
                }
                Step::Continue
            }
            Outcome::Emit(e) => {
                self.consume(len);
                Step::Emit(e)
            }
        };
        if junk && !self.is_closed() {
            self.count_junk();
        }
        step
    }

    /// Applies one parsed command to the state.
    pub(super) fn command(&mut self, cmd: Cmd, more_input: bool) -> Outcome {
        let lmtp = self.config.lmtp;
        let need_helo = if lmtp {
            Reply::NEED_LHLO
        } else {
            Reply::NEED_HELO
        };
        match cmd {
            Cmd::Helo(HeloKind::Helo | HeloKind::Ehlo) if lmtp => Outcome::Error(Reply::USE_LHLO),
            Cmd::Helo(HeloKind::Lhlo) if !lmtp => Outcome::Error(Reply::UNKNOWN_COMMAND),
            Cmd::Helo(kind) => Outcome::Decide(Pending::Helo(kind)),
            Cmd::Mail(params) => {
                if self.helo.is_none() && (self.config.require_helo || lmtp) {
                    return Outcome::Error(need_helo);
                }
                if self.config.require_tls && !self.is_tls() {
                    return Outcome::Error(Reply::TLS_REQUIRED);
                }
                if self.config.auth.required && self.authenticated.is_none() {
                    return Outcome::Error(Reply::AUTH_REQUIRED);
                }
                if self.txn.mail {
                    return Outcome::Error(Reply::NESTED_MAIL);
                }
                let max_messages = self.config.limits.max_messages;
                if max_messages > 0 && self.counts.messages >= max_messages {
                    self.queue(&Reply::new(
                        421,
                        EnhancedCode::new(4, 7, 0),
                        "Too many messages in this session, closing connection",
                    ));
                    self.close(CloseReason::TooManyErrors);
                    return Outcome::Done;
                }
                if let Some(r) = self.check_mail_params(&params) {
                    return Outcome::Error(r);
                }
                Outcome::Decide(Pending::Mail {
                    smtputf8: params.smtputf8,
                    body: params.body.unwrap_or_default(),
                })
            }
            Cmd::Rcpt { dsn } => {
                if !self.txn.mail {
                    return Outcome::Error(Reply::NEED_MAIL);
                }
                if dsn && !self.ext.dsn {
                    return Outcome::Error(Reply::UNKNOWN_PARAMETER);
                }
                if self.txn.recipients >= self.config.limits.max_recipients {
                    return Outcome::Reply(Reply::TOO_MANY_RECIPIENTS);
                }
                Outcome::Decide(Pending::Rcpt)
            }
            Cmd::Data => {
                if let Some(r) = self.check_body_start(BodyKind::Data) {
                    return Outcome::Error(r);
                }
                if self.txn.body == BodyType::BinaryMime {
                    return Outcome::Error(Reply::BINARYMIME_NEEDS_BDAT);
                }
                self.txn.body_kind = Some(BodyKind::Data);
                self.decoder.reset();
                self.phase = Phase::Data;
                self.arm(self.config.timeouts.data);
                self.decisions
                    .notices
                    .push_back(Notice::BodyStart(BodyKind::Data));
                Outcome::Reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"))
            }
            Cmd::Bdat { size, last } => {
                let refuse = if !self.ext.chunking {
                    Some(Reply::NOT_IMPLEMENTED)
                } else {
                    self.check_body_start(BodyKind::Bdat)
                };
                if refuse.is_none() && self.txn.body_kind.is_none() {
                    self.txn.body_kind = Some(BodyKind::Bdat);
                    self.checker.reset();
                    self.decisions
                        .notices
                        .push_back(Notice::BodyStart(BodyKind::Bdat));
                }
                self.phase = Phase::Bdat {
                    remaining: size,
                    last,
                    refuse,
                };
                self.arm(self.config.timeouts.data);
                Outcome::Done
            }
            Cmd::Rset => {
                self.reset_transaction();
                Outcome::Reply(Reply::RESET_OK)
            }
            Cmd::Noop => Outcome::Reply(Reply::OK),
            Cmd::Quit => {
                self.abort_body(AbortReason::Disconnected);
                let r = Reply::new(221, EnhancedCode::new(2, 0, 0), "Bye");
                self.queue(&r);
                self.close(CloseReason::Quit);
                Outcome::Done
            }
            Cmd::Verify if self.config.require_tls && !self.is_tls() => {
                Outcome::Error(Reply::TLS_REQUIRED)
            }
            Cmd::Verify => Outcome::Decide(Pending::Verify),
            Cmd::Help => {
                if self.ext.help {
                    Outcome::Reply(Reply::HELP)
                } else {
                    Outcome::Error(Reply::NOT_IMPLEMENTED)
                }
            }
            Cmd::StartTls => {
                if self.is_tls() {
                    return Outcome::Error(Reply::TLS_ALREADY_ACTIVE);
                }
                if !self.ext.starttls {
                    return Outcome::Error(Reply::NOT_IMPLEMENTED);
                }
                self.queue(&Reply::READY_TLS);
                if more_input {
                    self.decisions
                        .notices
                        .push_back(Notice::Violation(Violation::StartTlsInjection));
                }
                self.reset_transaction();
                // The handshake must finish within the command timeout.
                self.phase = Phase::StartTls;
                Outcome::Done
            }
            Cmd::Auth(start) => self.start_auth(start),
            Cmd::Xclient(attrs) => self.xclient(attrs),
            Cmd::Xforward(attrs) => self.xforward(attrs),
        }
    }

    pub(super) fn check_mail_params(&self, p: &MailSummary) -> Option<Reply> {
        let e = &self.ext;
        let unknown = (p.size.is_some() && !e.size)
            || (p.body == Some(BodyType::EightBitMime) && !e.eightbitmime)
            || (p.body == Some(BodyType::BinaryMime) && !(e.binarymime && e.chunking))
            || (p.smtputf8 && !e.smtputf8)
            || (p.dsn && !e.dsn)
            || (p.auth && !self.auth_offered())
            || (p.requiretls && !(e.requiretls && self.is_tls()));
        if unknown {
            return Some(Reply::UNKNOWN_PARAMETER);
        }
        let max = self.config.limits.max_message_size;
        if max > 0 && p.size.is_some_and(|s| s > max) {
            return Some(Reply::MESSAGE_TOO_BIG);
        }
        None
    }

    pub(super) fn check_body_start(&self, kind: BodyKind) -> Option<Reply> {
        if !self.txn.mail {
            return Some(Reply::NEED_MAIL);
        }
        if self.txn.recipients == 0 {
            return Some(if self.config.lmtp {
                Reply::NEED_RCPT
            } else {
                Reply::NO_VALID_RECIPIENTS
            });
        }
        match (self.txn.body_kind, kind) {
            (Some(BodyKind::Bdat), BodyKind::Data) => Some(Reply::MIXED_DATA_BDAT),
            _ => None,
        }
    }
}
