//! Decision plumbing: events out, tickets in. While a decision is pending nothing more is parsed, so replies leave in command order.

use super::*;
use crate::command::ParseOptions;

impl Session {
    // ----- events and decisions -----

    /// The next event, or what the driver does next (the
    /// [drive loop](crate::drive#the-drive-loop)). Call it until it returns
    /// an [`Instruction`] after every input.
    pub fn poll(&mut self) -> Output<Event<'_>> {
        if let Some(e) = self.decisions.ready.take() {
            return Output::Event(self.materialize(e));
        }
        self.apply_release();
        self.check_shutdown();
        // As `has_event`, but handing the event out at once.
        let emit = loop {
            if let Some(n) = self.decisions.notices.pop_front() {
                return Output::Event(n.into_event());
            }
            if self.decisions.pending.is_some()
                || self.is_closed()
                || self.output_full()
                || self.timing.throttle_until.is_some()
            {
                return Output::Instruction(self.instruction());
            }
            match self.step() {
                Step::Idle => {
                    if let Some(n) = self.decisions.notices.pop_front() {
                        return Output::Event(n.into_event());
                    }
                    return Output::Instruction(self.instruction());
                }
                Step::Continue => self.check_shutdown(),
                Step::Emit(e) => break e,
            }
        };
        Output::Event(self.materialize(emit))
    }

    /// Whether [`Session::poll`] would return an event now, without
    /// borrowing the session: prepares the event, which the next `poll`
    /// hands out. For loops that do I/O until an event is ready and then
    /// return it.
    #[inline]
    pub fn has_event(&mut self) -> bool {
        if self.decisions.ready.is_some() || !self.decisions.notices.is_empty() {
            return true;
        }
        self.apply_release();
        self.check_shutdown();
        loop {
            if !self.decisions.notices.is_empty() {
                return true;
            }
            if self.decisions.pending.is_some()
                || self.is_closed()
                || self.output_full()
                || self.timing.throttle_until.is_some()
            {
                return false;
            }
            match self.step() {
                Step::Idle => return !self.decisions.notices.is_empty(),
                Step::Continue => self.check_shutdown(),
                Step::Emit(e) => {
                    self.decisions.ready = Some(e);
                    return true;
                }
            }
        }
    }

    /// What the driver does once no event is left.
    fn instruction(&self) -> Instruction {
        if self.is_closed() {
            Instruction::Closed
        } else if let Some(until) = self.timing.throttle_until {
            Instruction::Throttle(until)
        } else if self.decisions.pending.is_some() {
            Instruction::AwaitingDecision
        } else if matches!(self.phase, Phase::StartTls) {
            Instruction::StartTls
        } else {
            Instruction::Idle {
                read: self.wants_read(),
                deadline: self.poll_timeout(),
            }
        }
    }

    fn ticket(&self) -> Ticket {
        Ticket {
            session: self.decisions.nonce,
            seq: self.decisions.seq,
        }
    }

    pub(super) fn new_ticket(&mut self, what: Pending) -> Ticket {
        self.decisions.seq += 1;
        self.decisions.pending = Some((self.decisions.seq, what));
        self.ticket()
    }

    pub(super) fn materialize(&mut self, emit: Emit) -> Event<'_> {
        match emit {
            Emit::Body { start, end } => Event::Body(&self.inb.buf[start..end]),
            Emit::Connect => {
                let ticket = self.ticket();
                Event::Connect {
                    ticket,
                    peer: &self.peer,
                }
            }
            Emit::Auth(credentials) => Event::Auth {
                ticket: self.ticket(),
                credentials,
            },
            Emit::Sasl(request) => Event::Sasl {
                ticket: self.ticket(),
                request,
            },
            Emit::MessageEnd => Event::MessageEnd {
                ticket: self.ticket(),
                size: self.txn.body_len,
                recipients: self.txn.recipients,
            },
            Emit::Command => {
                let ticket = self.ticket();
                let end = (self.inb.start + self.decisions.pending_line).saturating_sub(2);
                let line = self.inb.buf.get(self.inb.start..end).unwrap_or(&[]);
                // Parsed when it was checked; parsed again only if the
                // offsets do not fit (they always should).
                if let Some(event) = self.decisions.decided.and_then(|d| d.event(line, ticket)) {
                    return event;
                }
                let ticket = self.ticket();
                let opts = ParseOptions {
                    utf8_addresses: self.txn.smtputf8,
                    lenient: self.config.lenient_addresses,
                };
                match parse_command(line, opts) {
                    Ok(cmd) => command_event(cmd, ticket),
                    // The line parsed to a decided command moments ago.
                    Err(_) => unreachable_command(ticket),
                }
            }
        }
    }

    /// Answers the decision event that carried `ticket`, at time `now`
    /// (the client's next deadline counts from the answer).
    pub fn respond(
        &mut self,
        ticket: Ticket,
        decision: impl Into<Decision>,
        now: Instant,
    ) -> Result<(), Misuse> {
        let decision = decision.into();
        let what = self.take_pending(ticket)?;
        self.timing.clock.advance(now);
        // In LMTP one decision for a message stands for every recipient.
        let n = match what {
            Pending::MessageEnd if self.config.lmtp => self.txn.recipients.max(1),
            _ => 1,
        };
        self.apply_decision(what, std::iter::repeat_n(decision, n));
        Ok(())
    }

    /// Answers an [`Event::Sasl`] with what the mechanism asked for (a
    /// challenge, a user's SCRAM salt and iteration count, a verified
    /// proof's signature, a token refusal), or a [`SaslAnswer::Decision`].
    pub fn respond_sasl(
        &mut self,
        ticket: Ticket,
        answer: SaslAnswer,
        now: Instant,
    ) -> Result<(), Misuse> {
        match self.decisions.pending {
            Some((_, Pending::Sasl)) => {}
            _ => return Err(Misuse::UnknownTicket(ticket)),
        }
        self.take_pending(ticket)?;
        self.timing.clock.advance(now);
        if self.is_closed() {
            return Ok(());
        }
        self.arm(self.config.timeouts.command);
        self.decisions.pending_line = 0;
        self.decisions.decided = None;
        self.answer_sasl(answer);
        Ok(())
    }

    /// Answers an LMTP [`Event::MessageEnd`] with one decision per accepted
    /// recipient, in RCPT order (RFC 2033 §4.2). Any other decision (and an
    /// SMTP message end) takes exactly one.
    pub fn respond_each(
        &mut self,
        ticket: Ticket,
        decisions: impl IntoIterator<Item = Decision>,
        now: Instant,
    ) -> Result<(), Misuse> {
        let decisions: Vec<Decision> = decisions.into_iter().collect();
        if !self.owns(&ticket) {
            return Err(Misuse::UnknownTicket(ticket));
        }
        let expected = match self.decisions.pending {
            Some((_, Pending::MessageEnd)) if self.config.lmtp => self.txn.recipients,
            _ => 1,
        };
        if decisions.len() != expected {
            return Err(Misuse::WrongReplyCount(ticket));
        }
        let what = self.take_pending(ticket)?;
        self.timing.clock.advance(now);
        self.apply_decision(what, decisions.into_iter());
        Ok(())
    }

    /// Whether `ticket` is the one the pending decision handed out.
    fn owns(&self, ticket: &Ticket) -> bool {
        matches!(self.decisions.pending, Some((seq, _)) if seq == ticket.seq && ticket.session == self.decisions.nonce)
    }

    pub(super) fn take_pending(&mut self, ticket: Ticket) -> Result<Pending, Misuse> {
        match self.decisions.pending {
            Some((_, what)) if self.owns(&ticket) => {
                self.decisions.pending = None;
                Ok(what)
            }
            _ => Err(Misuse::UnknownTicket(ticket)),
        }
    }

    pub(super) fn apply_decision(
        &mut self,
        what: Pending,
        mut decisions: impl Iterator<Item = Decision>,
    ) {
        if self.is_closed() {
            return;
        }
        // The client's clock restarts once we answered.
        self.arm(self.config.timeouts.command);
        let decision = decisions.next().unwrap_or(Decision::Accept);
        let accepted = decision.accepted();
        let closes = matches!(&decision, Decision::Reply(r) if r.code() == 421);
        let line = std::mem::take(&mut self.decisions.pending_line);
        self.decisions.decided = None;
        match what {
            Pending::Connect => {
                let greeting = Reply::plain(
                    220,
                    format!("{} {}", self.config.hostname, greeting_text(&self.config)),
                );
                match decision {
                    Decision::Accept => self.queue_greeting(&greeting),
                    Decision::Reply(r) if r.code() < 400 => self.queue_greeting(&r),
                    Decision::Reply(r) => {
                        self.queue(&r);
                        if r.is_transient() {
                            self.close(CloseReason::Rejected);
                        } else {
                            self.phase = Phase::NoService;
                        }
                    }
                }
            }
            Pending::Helo(kind) => {
                if accepted {
                    let name = self
                        .inb
                        .buf
                        .get(self.inb.start..self.inb.start + line)
                        .unwrap_or(&[]);
                    let name = helo_argument(name);
                    self.helo_name.clear();
                    self.helo_name.push_str(name);
                    self.reset_transaction();
                    self.helo = Some(kind);
                }
                match decision {
                    Decision::Accept if kind == HeloKind::Helo => {
                        let r = Reply::plain(250, self.config.hostname.clone());
                        self.queue(&r);
                    }
                    Decision::Accept => {
                        let r = self.ehlo_reply(None);
                        self.queue(&r);
                    }
                    Decision::Reply(r) if r.code() < 400 && kind != HeloKind::Helo => {
                        let r = self.ehlo_reply(Some(r.text()));
                        self.queue(&r);
                    }
                    Decision::Reply(r) if r.code() < 400 => self.queue(&r),
                    Decision::Reply(r) => self.queue_counted(&r),
                }
            }
            Pending::Mail { smtputf8, body } => {
                if accepted {
                    self.txn = Transaction {
                        mail: true,
                        smtputf8,
                        body,
                        forwarded: self.txn.forwarded.take(),
                        ..Transaction::default()
                    };
                }
                self.queue_decision(decision, &Reply::SENDER_OK);
            }
            Pending::Rcpt => {
                if accepted {
                    self.txn.recipients += 1;
                }
                self.queue_decision(decision, &Reply::RECIPIENT_OK);
            }
            Pending::Verify => self.queue_decision(decision, &Reply::CANNOT_VRFY),
            Pending::Sasl => self.answer_sasl(SaslAnswer::Decision(decision)),
            Pending::Auth => {
                let user = self.auth_user.take();
                if accepted {
                    self.authenticated = user;
                }
                self.queue_decision(decision, &Reply::AUTH_OK);
            }
            Pending::MessageEnd => {
                let reply = |d: Decision| match d {
                    Decision::Accept => Reply::MESSAGE_ACCEPTED,
                    Decision::Reply(r) => r,
                };
                self.queue(&reply(decision));
                for d in decisions {
                    self.queue(&reply(d));
                }
                self.counts.messages += 1;
                self.txn = Transaction::default();
                self.phase = Phase::Command;
            }
        }
        self.consume(line);
        self.framing.scan = 0;
        if closes {
            // RFC 5321 §3.8: after a 421 the server closes the channel.
            self.close(CloseReason::Rejected);
        }
    }

    pub(super) fn queue_decision(&mut self, decision: Decision, default: &Reply) {
        match decision {
            Decision::Accept => self.queue(default),
            Decision::Reply(r) if r.code() < 400 => self.queue(&r),
            Decision::Reply(r) => self.queue_counted(&r),
        }
    }
}
