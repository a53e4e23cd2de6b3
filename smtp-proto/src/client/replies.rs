//! The server's replies, one at a time, each against the command it answers: greeting, EHLO/LHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, BDAT, the end of the body; failures and the end of the session.

use super::*;

impl Client {
    pub(super) fn process_input(&mut self) {
        while !self.is_closed() && self.phase != Phase::Handshake {
            match parse_reply(self.inb.data(), self.config.max_reply_len) {
                Ok(Some((reply, used))) => {
                    self.inb.consume(used);
                    self.on_reply(reply);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(ClientError::MalformedReply(e), false);
                    return;
                }
            }
        }
        if self.is_closed() {
            return;
        }
        if self.phase == Phase::Handshake && self.inb.len() > 0 {
            self.fail(ClientError::TlsInjection, false);
            return;
        }
        self.inb.compact();
        self.flush_queue();
    }

    pub(super) fn on_reply(&mut self, reply: Reply) {
        let Some(expect) = self.inflight.pop_front() else {
            let err = if reply.code() == 421 {
                ClientError::ServiceClosing(reply)
            } else {
                ClientError::UnexpectedReply(reply)
            };
            self.fail(err, false);
            return;
        };
        self.wait_since = self.clock.now();
        if expect == Expect::Quit {
            // Whatever the answer, the session is over.
            self.close();
            return;
        }
        if reply.code() == 421 {
            self.fail(ClientError::ServiceClosing(reply), false);
            return;
        }
        if self.phase == Phase::Quitting {
            // Replies to what was in flight before QUIT: nothing follows
            // them, but they must still make sense.
            if !expect.plausible(reply.code()) {
                self.fail(ClientError::UnexpectedReply(reply), false);
            }
            return;
        }
        match expect {
            Expect::Greeting => self.on_greeting(reply),
            Expect::Hello(kind) => self.on_hello(kind, reply),
            Expect::StartTls => self.on_starttls(reply),
            Expect::Auth => self.on_auth(reply),
            Expect::Mail => self.on_mail(reply),
            Expect::Rcpt(i) => self.on_rcpt(i, reply),
            Expect::Data => self.on_data(reply),
            Expect::Chunk => self.on_chunk(reply),
            Expect::End => self.on_end(reply),
            Expect::Rset => {
                if reply.code() != 250 {
                    self.refuse_session(reply);
                }
            }
            Expect::Quit => {}
            // Advice only: a refusal changes nothing.
            Expect::Xforward => {}
        }
        self.check_txn_done();
    }

    pub(super) fn on_greeting(&mut self, reply: Reply) {
        match reply.code() {
            220 => self.send_hello(self.first_hello()),
            _ => self.refuse_session(reply),
        }
    }

    pub(super) fn first_hello(&self) -> Hello {
        if self.lmtp() {
            Hello::Lhlo
        } else {
            Hello::Ehlo
        }
    }

    pub(super) fn send_hello(&mut self, kind: Hello) {
        self.phase = Phase::Hello;
        let domain = self.hello_name.as_str();
        let cmd = match kind {
            Hello::Ehlo => Command::Ehlo { domain },
            Hello::Helo => Command::Helo { domain },
            Hello::Lhlo => Command::Lhlo { domain },
        };
        let bytes = cmd.to_bytes();
        self.queue_command(bytes, Expect::Hello(kind));
        self.flush_queue();
    }

    pub(super) fn on_hello(&mut self, kind: Hello, reply: Reply) {
        match (kind, reply.code()) {
            (Hello::Ehlo | Hello::Lhlo, 250) => {
                self.ext = Some(ServerExtensions::parse(&reply));
                self.after_hello();
            }
            (Hello::Helo, 250) => {
                self.ext = Some(ServerExtensions {
                    name: ServerExtensions::parse(&reply).name,
                    ..ServerExtensions::default()
                });
                self.after_hello();
            }
            (Hello::Ehlo, 500 | 502) => self.send_hello(Hello::Helo),
            (_, c) if c >= 400 => self.refuse_session(reply),
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    /// After EHLO/HELO: STARTTLS, then AUTH, then ready.
    pub(super) fn after_hello(&mut self) {
        let ext = self.ext.clone().unwrap_or_default();
        if !self.tls && !self.tls_declined && self.config.tls != TlsPolicy::None {
            if ext.starttls {
                self.phase = Phase::StartTls;
                self.queue_command(b"STARTTLS\r\n".to_vec(), Expect::StartTls);
                self.flush_queue();
                return;
            }
            if self.config.tls == TlsPolicy::Required {
                self.fail(ClientError::TlsUnavailable, true);
                return;
            }
        }
        if let Some(auth) = self.config.auth.as_ref().filter(|_| !self.authenticated) {
            if !self.tls && !self.config.allow_plaintext_auth {
                self.fail(ClientError::AuthNeedsTls, true);
                return;
            }
            let Some(mech) = auth
                .mechanisms
                .iter()
                .copied()
                .find(|m| ext.offers_auth(*m))
            else {
                self.fail(ClientError::AuthUnavailable, true);
                return;
            };
            let (line, responses) = auth_exchange(auth, mech);
            self.auth_responses = responses;
            self.phase = Phase::Auth;
            self.queue_command(line, Expect::Auth);
            self.flush_queue();
            return;
        }
        self.become_ready();
    }

    pub(super) fn become_ready(&mut self) {
        self.phase = Phase::Ready;
        let extensions = self.ext.clone().unwrap_or_default();
        self.events.push_back(ClientEvent::Ready { extensions });
    }

    pub(super) fn on_starttls(&mut self, reply: Reply) {
        match reply.code() {
            // The event is reported once no byte follows the reply.
            220 => self.phase = Phase::Handshake,
            c if c >= 400 => {
                if self.config.tls == TlsPolicy::Required {
                    self.fail(ClientError::TlsRefused(reply), true);
                } else {
                    self.tls_declined = true;
                    self.after_hello();
                }
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    pub(super) fn on_auth(&mut self, reply: Reply) {
        match reply.code() {
            235 => {
                self.authenticated = true;
                self.auth_responses.clear();
                self.events.push_back(ClientEvent::Authenticated);
                self.become_ready();
            }
            334 => match self.auth_responses.pop_front() {
                Some(r) => {
                    self.wait_since = self.clock.now();
                    self.out.tail().extend_from_slice(r.expose().as_bytes());
                    self.out.tail().extend_from_slice(b"\r\n");
                    self.inflight.push_back(Expect::Auth);
                }
                None => self.fail(ClientError::UnexpectedReply(reply), false),
            },
            c if c >= 400 => {
                self.auth_responses.clear();
                self.fail(ClientError::AuthFailed(reply), true);
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    pub(super) fn on_mail(&mut self, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        match reply.code() {
            250 => txn.needs_rset = true,
            c if c >= 400 => {
                txn.mail_refused = true;
                txn.failed = Some(reply);
                txn.body = BodyState::Dead;
                txn.buf = Vec::new();
                self.drop_queued_txn();
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    pub(super) fn on_rcpt(&mut self, index: usize, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        let code = reply.code();
        if txn.mail_refused {
            // Replies to RCPTs pipelined after a refused MAIL can only be refusals.
            if code < 400 {
                self.fail(ClientError::UnexpectedReply(reply), false);
            }
            return;
        }
        txn.rcpt_replies += 1;
        match code {
            250 | 251 => txn.accepted.push(index),
            c if c >= 400 => txn.last_refusal = Some(reply.clone()),
            _ => return self.fail(ClientError::UnexpectedReply(reply), false),
        }
        self.events
            .push_back(ClientEvent::Recipient { index, reply });
        if txn.rcpt_replies < txn.recipients || txn.open {
            return;
        }
        self.recipients_answered();
    }

    /// Every recipient is answered and no more come: fail without any
    /// accepted, or open the BDAT body.
    pub(super) fn recipients_answered(&mut self) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        if txn.failed.is_some() {
            return;
        }
        if txn.accepted.is_empty() {
            txn.failed = txn.last_refusal.clone();
            txn.body = BodyState::Dead;
            txn.buf = Vec::new();
            self.drop_queued_txn();
        } else if txn.bdat {
            self.open_body();
        }
    }

    pub(super) fn on_data(&mut self, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        match reply.code() {
            354 if txn.failed.is_some() => {
                // No valid recipient, but DATA was pipelined: an empty body
                // ends it (RFC 2920 §3.1).
                self.wait_since = self.clock.now();
                self.out.tail().extend_from_slice(b".\r\n");
                self.inflight.push_back(Expect::End);
            }
            354 => self.open_body(),
            c if c >= 400 => {
                if txn.failed.is_none() {
                    txn.failed = Some(reply);
                    txn.body = BodyState::Dead;
                    txn.buf = Vec::new();
                }
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    pub(super) fn on_chunk(&mut self, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        let code = reply.code();
        if txn.failed.is_some() {
            // Chunks pipelined after a refused one: their replies change nothing.
            return;
        }
        match code {
            250 => {}
            c if c >= 400 => {
                txn.failed = Some(reply);
                txn.body = BodyState::Dead;
                txn.buf = Vec::new();
                self.drop_queued_txn();
            }
            _ => self.fail(ClientError::UnexpectedReply(reply), false),
        }
    }

    pub(super) fn on_end(&mut self, reply: Reply) {
        let lmtp = self.lmtp();
        let Some(txn) = self.txn.as_mut() else {
            return self.fail(ClientError::UnexpectedReply(reply), false);
        };
        let code = reply.code();
        if txn.failed.is_some() {
            // An empty or cut-off body after a failure: it must not be accepted.
            if code < 400 {
                self.fail(ClientError::UnexpectedReply(reply), false);
            }
            return;
        }
        let recipient = if lmtp {
            txn.accepted.get(txn.end_replies).copied()
        } else {
            None
        };
        txn.end_replies += 1;
        let event = match code {
            250 => ClientEvent::MessageAccepted { recipient, reply },
            c if c >= 400 => ClientEvent::MessageRejected { recipient, reply },
            _ => return self.fail(ClientError::UnexpectedReply(reply), false),
        };
        self.events.push_back(event);
        let expected = if lmtp { txn.accepted.len().max(1) } else { 1 };
        if txn.end_replies >= expected {
            // The end of the body ends the transaction, accepted or not.
            self.txn = None;
        }
    }

    /// The server refused the session (greeting, EHLO, RSET): QUIT.
    pub(super) fn refuse_session(&mut self, reply: Reply) {
        self.fail(ClientError::Rejected(reply), true);
    }

    /// Reports a fatal error; with `quit`, QUIT is sent first (the
    /// protocol is still in step), else the client closes at once.
    pub(super) fn fail(&mut self, err: ClientError, quit: bool) {
        if self.is_closed() {
            return;
        }
        self.events.push_back(ClientEvent::Error(err));
        self.txn = None;
        self.queue.clear();
        self.auth_responses.clear();
        if quit && self.phase != Phase::Quitting {
            self.phase = Phase::Quitting;
            self.inflight.clear();
            self.queue_command(b"QUIT\r\n".to_vec(), Expect::Quit);
            self.flush_queue();
        } else {
            self.close();
        }
    }

    pub(super) fn close(&mut self) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Closed;
        self.inflight.clear();
        self.queue.clear();
        self.txn = None;
        self.inb.release();
    }
}
