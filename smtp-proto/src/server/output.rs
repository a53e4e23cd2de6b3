//! The output side: replies queued in command order, the error and junk counters, and the EHLO and Received texts.

use super::*;
use crate::trace::{ReceivedHeader, WithProtocol};

impl Session {
    // ----- output -----

    /// Bytes to send to the client.
    #[inline]
    pub fn transmit(&self) -> &[u8] {
        self.out.pending()
    }

    /// Reports that `n` bytes of [`Session::transmit`] were written.
    #[inline]
    pub fn transmitted(&mut self, n: usize) {
        if self.out.written(n) && self.greeting_queued {
            self.greeting_sent = true;
        }
    }

    #[inline]
    pub(super) fn output_full(&self) -> bool {
        self.out.len() > self.config.limits.max_pending_output
    }

    /// The `Received:` header for the current message (RFC 5321 §4.4), with
    /// the `with` protocol from the session state (RFC 3848, RFC 6531). The
    /// client is the one XFORWARD named, when it did (its HELO, name and
    /// address), and otherwise the peer (XCLIENT's facts included).
    /// `timestamp` is Unix seconds; the core has no clock.
    pub fn received_header(
        &self,
        id: Option<&str>,
        for_recipient: Option<&str>,
        timestamp: i64,
        utc_offset_minutes: i16,
    ) -> Vec<u8> {
        let tls = self.peer.tls.as_ref().map(|t| crate::trace::TlsInfo {
            version: &t.version,
            cipher: &t.cipher,
        });
        // XFORWARD's facts stand for the client, as in Postfix's trace:
        // the content filter in between is not the message's origin.
        let f = self.txn.forwarded.as_deref();
        let header = ReceivedHeader {
            helo: f.and_then(|f| f.helo.as_deref()).or(self.helo_name()),
            peer_ip: f.and_then(|f| f.addr).or(self.peer.remote.map(|a| a.ip())),
            peer_name: f
                .and_then(|f| f.name.as_deref())
                .or(self.peer.name.as_deref()),
            by: &self.config.hostname,
            protocol: WithProtocol::new(
                self.config.lmtp,
                !matches!(self.helo, Some(HeloKind::Helo) | None),
                self.peer.tls.is_some(),
                self.authenticated.is_some(),
                self.txn.smtputf8,
            ),
            id,
            for_recipient,
            tls,
            timestamp,
            utc_offset_minutes,
        };
        header.to_vec()
    }

    pub(super) fn queue(&mut self, reply: &Reply) {
        // RFC 2034: enhanced codes go to clients that saw them advertised
        // (not to HELO clients).
        let enhanced = self.ext.enhanced_status_codes && self.helo != Some(HeloKind::Helo);
        reply.write_to(self.out.tail(), enhanced);
    }

    pub(super) fn queue_greeting(&mut self, reply: &Reply) {
        self.queue(reply);
        self.greeting_queued = true;
        self.phase = Phase::Command;
        self.arm(self.config.timeouts.command);
        if self.inb.end > self.inb.start {
            self.violation(Violation::PreGreeting);
        }
    }

    /// Queues an error reply and counts it against the error limits.
    pub(super) fn queue_counted(&mut self, reply: &Reply) {
        self.queue(reply);
        self.count_error();
    }

    /// Refuses a complete message: in LMTP one reply per accepted recipient
    /// (RFC 2033 §4.2); the transaction is over.
    pub(super) fn queue_message_refusal(&mut self, reply: &Reply) {
        let n = if self.config.lmtp {
            self.txn.recipients.max(1)
        } else {
            1
        };
        self.txn = Transaction::default();
        for _ in 1..n {
            self.queue(reply);
        }
        self.queue_counted(reply);
    }

    pub(super) fn count_error(&mut self) {
        self.counts.errors += 1;
        let limits = &self.config.limits;
        if self.counts.errors >= limits.hard_error_limit {
            self.queue(&Reply::TOO_MANY_ERRORS);
            self.close(CloseReason::TooManyErrors);
        } else if self.counts.errors > limits.soft_error_limit {
            self.timing.throttle_until = self.timing.clock.after(limits.error_delay);
        }
    }

    pub(super) fn count_junk(&mut self) {
        self.counts.junk += 1;
        if self.counts.junk > self.config.limits.junk_command_limit {
            self.count_error();
        }
    }

    pub(super) fn violation(&mut self, v: Violation) {
        self.decisions.notices.push_back(Notice::Violation(v));
        if self.config.violations == ViolationPolicy::Disconnect && !self.is_closed() {
            self.abort_body(AbortReason::Shutdown);
            self.queue(&Reply::PROTOCOL_VIOLATION);
            self.close(CloseReason::Violation);
        }
    }

    pub(super) fn ehlo_reply(&self, first: Option<&str>) -> Reply {
        use std::fmt::Write;
        let e = &self.ext;
        let mut t = String::with_capacity(256);
        match first {
            Some(f) => t.push_str(f),
            None => t.push_str(&self.config.hostname),
        }
        let max = self.config.limits.max_message_size;
        let mut kw = |s: &str| {
            t.push('\n');
            t.push_str(s);
        };
        if e.pipelining {
            kw("PIPELINING");
        }
        if e.size {
            if max > 0 {
                kw(&format!("SIZE {max}"));
            } else {
                kw("SIZE");
            }
        }
        if e.eightbitmime {
            kw("8BITMIME");
        }
        if e.enhanced_status_codes {
            kw("ENHANCEDSTATUSCODES");
        }
        if e.smtputf8 {
            kw("SMTPUTF8");
        }
        if e.chunking {
            kw("CHUNKING");
            if e.binarymime {
                kw("BINARYMIME");
            }
        }
        if e.dsn {
            kw("DSN");
        }
        if e.requiretls && self.is_tls() {
            kw("REQUIRETLS");
        }
        if e.limits {
            kw(&format!(
                "LIMITS RCPTMAX={}",
                self.config.limits.max_recipients
            ));
        }
        if e.starttls && !self.is_tls() {
            kw("STARTTLS");
        }
        for (may, verb, attrs) in [
            (self.may_xclient(), "XCLIENT", &ForwardAttr::XCLIENT[..]),
            (self.may_xforward(), "XFORWARD", &ForwardAttr::XFORWARD[..]),
        ] {
            if may {
                let mut line = String::from(verb);
                for a in attrs {
                    let _ = write!(line, " {}", a.name());
                }
                kw(&line);
            }
        }
        if self.auth_offered() && self.authenticated.is_none() {
            let mut line = String::from("AUTH");
            for m in &self.config.auth.mechanisms {
                if self.mechanism_offered(*m) {
                    let _ = write!(line, " {}", m.name());
                }
            }
            // Only -PLUS configured, and no channel binding: no AUTH at all.
            if line.len() > "AUTH".len() {
                kw(&line);
            }
        }
        if e.help {
            kw("HELP");
        }
        for k in &self.extra_keywords {
            kw(k);
        }
        Reply::plain(250, t)
    }
}
