//! The mail transaction the caller drives: the envelope checked against what the server offers, recipients, the body (dot-stuffed for DATA, cut into BDAT chunks), QUIT.

use super::*;

impl Client {
    // ----- commands -----

    /// Starts a mail transaction: MAIL, one RCPT per recipient, then DATA
    /// or BDAT once the body comes ([`Client::push_body`],
    /// [`Client::end_body`]). Checked against what the server offers before
    /// anything is sent.
    pub fn send_mail(&mut self, envelope: &Envelope, now: Instant) -> Result<(), Misuse> {
        if self.is_closed() || self.phase == Phase::Quitting {
            return Err(Misuse::Closed);
        }
        if !self.is_ready() {
            return Err(Misuse::NotReady);
        }
        if envelope.recipients.is_empty() {
            return Err(Misuse::NoRecipients);
        }
        self.start_txn(envelope, false, now)
    }

    /// Starts a transaction whose recipients are added one by one
    /// ([`Client::add_recipient`], e.g. as a proxy receives them), then
    /// closed with [`Client::close_recipients`] before the body, or
    /// abandoned with [`Client::reset`]. Sends MAIL (and the envelope's
    /// recipients, if any). A refused MAIL is reported as
    /// [`ClientEvent::MessageRejected`] once its reply is in.
    pub fn begin_mail(&mut self, envelope: &Envelope, now: Instant) -> Result<(), Misuse> {
        if self.is_closed() || self.phase == Phase::Quitting {
            return Err(Misuse::Closed);
        }
        if !self.is_ready() {
            return Err(Misuse::NotReady);
        }
        self.start_txn(envelope, true, now)
    }

    /// Adds a recipient to a transaction begun with [`Client::begin_mail`];
    /// returns its index (in [`ClientEvent::Recipient`]). A non-ASCII
    /// address needs SMTPUTF8 in the envelope.
    pub fn add_recipient(&mut self, recipient: &Recipient, now: Instant) -> Result<usize, Misuse> {
        let ext = self.ext.clone().unwrap_or_default();
        let Some(txn) = self.txn.as_mut().filter(|t| t.open && t.failed.is_none()) else {
            return Err(Misuse::NotReady);
        };
        if !recipient.address.is_ascii() && !txn.utf8 {
            return Err(Misuse::Unsupported("SMTPUTF8"));
        }
        let line = rcpt_line(recipient, &ext)?;
        let index = txn.recipients;
        txn.recipients += 1;
        self.set_time(now);
        self.queue_command(line, Expect::Rcpt(index));
        self.flush_queue();
        Ok(index)
    }

    /// Ends the recipients of a transaction begun with
    /// [`Client::begin_mail`]: the body follows (DATA is sent, or BDAT
    /// chunks once the recipients are answered). With no recipient
    /// accepted, the transaction fails as with [`Client::send_mail`].
    pub fn close_recipients(&mut self, now: Instant) -> Result<(), Misuse> {
        let Some(txn) = self.txn.as_mut().filter(|t| t.open) else {
            return Err(Misuse::NotReady);
        };
        if txn.recipients == 0 && txn.failed.is_none() {
            return Err(Misuse::NoRecipients);
        }
        txn.open = false;
        let bdat = txn.bdat;
        let answered = txn.rcpt_replies >= txn.recipients;
        self.set_time(now);
        if !bdat {
            self.queue_command(b"DATA\r\n".to_vec(), Expect::Data);
        }
        if answered {
            self.recipients_answered();
        }
        self.flush_queue();
        self.check_txn_done();
        Ok(())
    }

    /// Abandons a transaction begun with [`Client::begin_mail`] before its
    /// body (RSET). Only once every reply awaited for it is in.
    pub fn reset(&mut self, now: Instant) -> Result<(), Misuse> {
        if self.inflight.iter().any(|e| e.in_txn()) {
            return Err(Misuse::NotReady);
        }
        let Some(txn) = self.txn.take_if(|t| t.open || t.failed.is_some()) else {
            return Err(Misuse::NotReady);
        };
        self.set_time(now);
        self.drop_queued_txn();
        if txn.needs_rset || !txn.mail_refused {
            self.queue_command(b"RSET\r\n".to_vec(), Expect::Rset);
            self.flush_queue();
        }
        Ok(())
    }

    /// Queues MAIL, the envelope's RCPTs and (unless `open` or BDAT) DATA.
    pub(super) fn start_txn(
        &mut self,
        envelope: &Envelope,
        open: bool,
        now: Instant,
    ) -> Result<(), Misuse> {
        let ext = self.ext.clone().unwrap_or_default();
        let lines = build_transaction(envelope, &ext, self.tls)?;
        self.set_time(now);
        let bdat = lines.bdat || (ext.chunking && self.config.chunking);
        for line in xforward_lines(&envelope.xforward, &ext.xforward()) {
            self.queue_command(line, Expect::Xforward);
        }
        self.queue_command(lines.mail, Expect::Mail);
        let recipients = lines.rcpts.len();
        for (i, line) in lines.rcpts.into_iter().enumerate() {
            self.queue_command(line, Expect::Rcpt(i));
        }
        if !bdat && !open {
            self.queue_command(b"DATA\r\n".to_vec(), Expect::Data);
        }
        self.txn = Some(Transaction {
            recipients,
            bdat,
            accepted: Vec::new(),
            rcpt_replies: 0,
            mail_refused: false,
            last_refusal: None,
            failed: None,
            needs_rset: false,
            body: BodyState::Pending,
            ended: false,
            buf: Vec::new(),
            stuffer: DotStuffer::new(),
            end_replies: 0,
            open,
            utf8: lines.utf8,
        });
        self.body_progress = now;
        self.flush_queue();
        Ok(())
    }

    /// Offers body bytes (the message as it should arrive: the client
    /// dot-stuffs for DATA). Returns how many were taken: fewer than given
    /// when the client holds [`ClientConfig::max_pending_output`] bytes
    /// (write [`Client::transmit`] out, then offer the rest). Bytes pushed
    /// before the server is ready for the body are buffered.
    ///
    /// With DATA, a body that does not end with CRLF gets one added.
    pub fn push_body(&mut self, bytes: &[u8], now: Instant) -> Result<usize, Misuse> {
        if self.is_closed() {
            return Err(Misuse::Closed);
        }
        let budget = self.budget();
        if !self.wants_body_now() {
            return Err(Misuse::NoBody);
        }
        let n = bytes.len().min(budget);
        let bytes = bytes.get(..n).unwrap_or_default();
        if n == 0 {
            return Ok(0);
        }
        self.body_progress = now;
        self.set_time(now);
        let Some(txn) = self.txn.as_mut() else {
            return Err(Misuse::NoBody);
        };
        if txn.body == BodyState::Open && !txn.bdat {
            txn.stuffer.feed(bytes, self.out.tail());
        } else {
            txn.buf.extend_from_slice(bytes);
            if txn.body == BodyState::Open {
                self.cut_chunks();
            }
        }
        Ok(n)
    }

    /// Ends the body: the end of data (`.`) or the last BDAT chunk is sent
    /// once everything before it is.
    pub fn end_body(&mut self, now: Instant) -> Result<(), Misuse> {
        if self.is_closed() {
            return Err(Misuse::Closed);
        }
        if !self.wants_body_now() {
            return Err(Misuse::NoBody);
        }
        self.set_time(now);
        self.body_progress = now;
        let Some(txn) = self.txn.as_mut() else {
            return Err(Misuse::NoBody);
        };
        txn.ended = true;
        if txn.body == BodyState::Open {
            self.finish_body();
        }
        Ok(())
    }

    /// Ends the session now, without a word (the application is stopping):
    /// what waits unwritten is dropped, and [`Instruction::Closed`] follows
    /// with no event. A transaction in progress is abandoned.
    pub fn abort(&mut self, now: Instant) {
        self.set_time(now);
        self.out.clear();
        self.close();
    }

    /// Ends the session: QUIT once the replies awaited have come. During a
    /// transaction, an AUTH exchange or STARTTLS there is no clean way out:
    /// the client closes at once (the server discards an unfinished
    /// message, but one whose body was complete may have been delivered).
    pub fn quit(&mut self, now: Instant) -> Result<(), Misuse> {
        match self.phase {
            Phase::Closed => return Err(Misuse::Closed),
            Phase::Quitting => return Ok(()),
            _ => {}
        }
        self.set_time(now);
        let stuck = matches!(self.phase, Phase::StartTls | Phase::Handshake | Phase::Auth);
        if self.txn.is_some() || stuck {
            self.out.clear();
            self.close();
            return Ok(());
        }
        self.phase = Phase::Quitting;
        self.queue.clear();
        self.queue_command(b"QUIT\r\n".to_vec(), Expect::Quit);
        self.flush_queue();
        Ok(())
    }

    /// Reports a failed transaction once none of its replies is awaited.
    pub(super) fn check_txn_done(&mut self) {
        if self.inflight.iter().any(|e| e.in_txn()) || self.is_closed() {
            return;
        }
        let Some(txn) = self.txn.as_ref() else {
            return;
        };
        let Some(reply) = txn.failed.clone() else {
            return;
        };
        let rset = txn.needs_rset;
        self.txn = None;
        self.events.push_back(ClientEvent::MessageRejected {
            recipient: None,
            reply,
        });
        if rset && self.phase != Phase::Quitting {
            self.queue_command(b"RSET\r\n".to_vec(), Expect::Rset);
            self.flush_queue();
        }
    }

    /// The server is ready for the body.
    pub(super) fn open_body(&mut self) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        txn.body = BodyState::Open;
        self.events.push_back(ClientEvent::SendBody);
        if !txn.bdat {
            let buf = std::mem::take(&mut txn.buf);
            txn.stuffer.feed(&buf, self.out.tail());
        }
        if txn.ended {
            self.finish_body();
        } else if txn.bdat {
            self.cut_chunks();
        }
    }

    /// Sends the end of the body (the body is open and ended).
    pub(super) fn finish_body(&mut self) {
        let lmtp = self.lmtp();
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        txn.body = BodyState::Ended;
        let replies = if lmtp { txn.accepted.len().max(1) } else { 1 };
        if txn.bdat {
            self.cut_chunks();
            let Some(txn) = self.txn.as_mut() else {
                return;
            };
            let chunk = std::mem::take(&mut txn.buf);
            let mut bytes = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
            bytes.extend_from_slice(&chunk);
            // In LMTP the number of replies to BDAT LAST depends on the
            // transaction still standing: send it once all else is answered.
            self.queue.push_back(Outgoing {
                bytes,
                expect: Expect::End,
                replies,
                wait_idle: lmtp,
            });
            self.flush_queue();
        } else {
            txn.stuffer.finish(self.out.tail());
            if self.inflight.is_empty() {
                self.wait_since = self.clock.now();
            }
            for _ in 0..replies {
                self.inflight.push_back(Expect::End);
            }
        }
    }

    /// Queues the full BDAT chunks of the buffered body.
    pub(super) fn cut_chunks(&mut self) {
        let size = self.chunk_size();
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        while txn.buf.len() >= size {
            let rest = txn.buf.split_off(size);
            let chunk = std::mem::replace(&mut txn.buf, rest);
            let mut bytes = format!("BDAT {}\r\n", chunk.len()).into_bytes();
            bytes.extend_from_slice(&chunk);
            self.queue.push_back(Outgoing {
                bytes,
                expect: Expect::Chunk,
                replies: 1,
                wait_idle: false,
            });
        }
        self.flush_queue();
    }
}

/// The XFORWARD commands for `facts`: the attributes the server `offered`,
/// as few lines as fit in 512 octets each (Postfix splits them the same
/// way). A value too long for a line alone is cut to fit.
fn xforward_lines(
    facts: &[(ForwardAttr, Option<String>)],
    offered: &[ForwardAttr],
) -> Vec<Vec<u8>> {
    const MAX: usize = 512 - "XFORWARD \r\n".len();
    let mut lines = Vec::new();
    let mut text = String::new();
    for (attr, value) in facts.iter().filter(|(a, _)| offered.contains(a)) {
        let mut one = ForwardAttrs::encode(&[(*attr, value.as_deref())]);
        if one.len() > MAX {
            // xtext is ASCII: cut anywhere but inside a `+XX` escape.
            let tail = one.get(MAX - 2..MAX).and_then(|t| t.find('+'));
            one.truncate(tail.map_or(MAX, |p| MAX - 2 + p));
        }
        if !text.is_empty() && text.len() + 1 + one.len() > MAX {
            lines.push(std::mem::take(&mut text));
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&one);
    }
    if !text.is_empty() {
        lines.push(text);
    }
    lines
        .into_iter()
        .map(|t| format!("XFORWARD {t}\r\n").into_bytes())
        .collect()
}
